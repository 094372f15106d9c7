"""``procfhir native``: build or inspect the compiled (mypyc) validator modules."""

from __future__ import annotations

import click


@click.group(name="native")
def command() -> None:
    """Compiled builds of the validator's hot modules (same source, about twice as fast)."""


@command.command()
@click.option("--force", is_flag=True, help="Compile again even when a build of this source exists.")
@click.option("--verbose", is_flag=True, help="Show the compiler's output.")
def build(force: bool, verbose: bool) -> None:
    """Compile the validator's modules with mypyc (needs mypy and a C compiler)."""
    from procfhir import native

    try:
        folder = native.build(force=force, verbose=verbose)
    except (native.NativeBuildError, OSError) as exc:
        raise click.ClickException(f"native build failed: {exc}") from None
    click.echo(f"built: {folder} ({len(native.MODULES)} modules)")


@command.command()
def status() -> None:
    """Say whether a build of the current source exists and where."""
    from procfhir import native

    st = native.status()
    click.echo(f"folder: {st.folder}")
    click.echo(f"built: {'yes' if st.built else 'no'} ({st.reason})")


@command.command()
@click.option("--all", "everything", is_flag=True, help="Also remove the build of the current source.")
def clean(everything: bool) -> None:
    """Remove builds of older sources."""
    from procfhir import native

    for folder in native.clean(keep_current=not everything):
        click.echo(f"removed {folder}")
