"""``procfhir draft TEXT [--out FILE]``: the skeleton of a mapping for a new text."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("draft")
@click.argument("text", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the draft mapping here (default: standard output).",
)
@click.option(
    "--codes",
    "code_files",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    multiple=True,
    help="Where candidate codes come from: a mapping (.yaml) or a Markdown code table (.md); "
    "repeatable (default: the project's mappings and ../shared/reference/codes.md).",
)
@click.option("--key", default=None, help="The document key (default: from the text's file name).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def command(text: Path, out: Path | None, code_files: tuple[Path, ...], key: str | None, force: bool) -> None:
    """Write the skeleton of a mapping for TEXT: every sentence and heading with its id and exact
    quote, the suggested kind and candidate codes, each marked for a person to decide."""
    from procfhir.codesources import default_sources, known_codes, source_for
    from procfhir.config import PROJECT_ROOT
    from procfhir.draft import HEADER_MARK, draft, render
    from procfhir.errors import BuildError
    from procfhir.safeout import OutputRefused, check_file, starts_with, write_file

    def ours(path: Path) -> bool:  # a draft we wrote before (its first line says so)
        head = b"# Draft mapping of "
        return starts_with(path, head, within=len(head)) and starts_with(
            path, HEADER_MARK.encode(), within=1024
        )

    if out is not None and out.exists() and not force:
        click.echo(f"draft failed: {out} exists (it may hold decisions); use --force to overwrite", err=True)
        sys.exit(2)
    if out is not None:
        try:
            check_file(out, may_replace=ours, what="not a draft mapping", parents=False)
        except OutputRefused as exc:
            click.echo(f"draft failed: {exc}", err=True)
            sys.exit(2)
    try:
        sources = [source_for(p) for p in code_files] if code_files else default_sources(PROJECT_ROOT)
        result = draft(text, known_codes(sources), key=key)
    except BuildError as exc:
        click.echo(f"draft failed: {exc}", err=True)
        sys.exit(1)
    page = render(result, out)
    if out is None:
        click.echo(page, nl=False)
        return
    try:
        write_file(out, page.encode("utf-8"), may_replace=ours, what="not a draft mapping", parents=False)
    except OutputRefused as exc:
        click.echo(f"draft failed: {exc}", err=True)
        sys.exit(2)
    undecided = sum(1 for e in result.entries if e.segment is not result.source.title)
    click.echo(f"wrote {out}: {len(result.entries)} segments, {undecided} to decide")
