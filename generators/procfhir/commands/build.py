"""``procfhir build``: text + mapping -> validated FHIR package in fhir/."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from procfhir.commands.options import config_option


@click.command("build")
@config_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: fhir/ beside the configuration file).",
)
@click.option("--no-validate", is_flag=True, help="Skip the offline validation of the output.")
def command(config: Path | None, out_dir: Path | None, no_validate: bool) -> None:
    """Build the FHIR content package from the source texts and their mappings."""
    from procfhir.build import build
    from procfhir.config import ConfigError
    from procfhir.errors import BuildError

    try:
        result = build(config, out_dir, validate=not no_validate)
    except BuildError as exc:
        click.echo(f"build failed: {exc}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    counts: dict[str, int] = {}
    for r in result.resources:
        counts[r["resourceType"]] = counts.get(r["resourceType"], 0) + 1
    click.echo(
        f"built {len(result.resources)} resources into {result.out_dir}: "
        + ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    )
    term = result.terminology
    click.echo(
        f"terminology: {len(term['codes'])} codes used, "
        f"{len(term['local_codes_awaiting_review'])} local codes awaiting review "
        "(see terminology-report.md)"
    )
    warnings = [f for f in result.validation if getattr(f[1], "severity", "") == "warning"]
    if not no_validate:
        click.echo(f"validation: no errors, {len(warnings)} warning(s)")
