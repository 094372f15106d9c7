"""``procfhir fhir-cache``: fill or inspect the FHIR package cache (R4 core + the spec's examples)."""

from __future__ import annotations

import click


@click.group(name="fhir-cache")
def command() -> None:
    """The FHIR package cache (~/.fhir/packages, or $FHIR_PACKAGE_CACHE)."""


@command.command()
@click.option("--registry", default=None, help="npm-style registry URL (default: the npm registry).")
@click.option("--force", is_flag=True, help="Download and install again even when filled.")
def fill(registry: str | None, force: bool) -> None:
    """Install hl7.fhir.r4.core#4.0.1 (and the R4 examples) from a registry tarball."""
    from procfhir import fhircache

    try:
        done = fhircache.fill(
            registry or fhircache.DEFAULT_REGISTRY, force=force, log=lambda m: click.echo(m, err=True)
        )
    except (fhircache.CacheError, OSError) as exc:
        raise click.ClickException(f"fhir-cache fill failed: {exc}") from None
    if done:
        click.echo(f"filled {fhircache.core_dir()}")
    else:
        click.echo(f"already filled: {fhircache.core_dir()}")


@command.command()
def status() -> None:
    """Say where the cache is and whether the core package is installed."""
    from procfhir import fhircache

    click.echo(f"cache: {fhircache.cache_root()}")
    for d in (fhircache.core_dir(), fhircache.examples_dir()):
        click.echo(f"{d}: {'installed' if (d / '.index.json').is_file() else 'missing'}")
