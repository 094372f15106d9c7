"""``procfhir review``: build the package in memory and write its review page (one HTML file)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from procfhir.commands.options import config_option


@click.command("review")
@config_option
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=Path("review.html"),
    show_default=True,
    help="Where to write the page (a folder gets review.html).",
)
@click.option("--no-validate", is_flag=True, help="Leave the validation section empty.")
def command(config: Path | None, out: Path, no_validate: bool) -> None:
    """Write the review page of a fresh build: source text and what each sentence became, the
    plan as a diagram, the consent form, the codes, the validation result."""
    from procfhir.build import build, validation_findings
    from procfhir.errors import BuildError
    from procfhir.review import render_review

    target = out / "review.html" if out.is_dir() else out
    if not target.parent.is_dir():
        click.echo(f"review failed: folder {target.parent} does not exist", err=True)
        sys.exit(1)
    try:
        result = build(config, write=False, validate=False)
    except BuildError as exc:
        click.echo(f"review failed: {exc}", err=True)
        sys.exit(1)
    validated = False
    if not no_validate:
        try:
            result.validation = validation_findings(result.resources)
            validated = True
        except ImportError as exc:
            click.echo(f"warning: the validator is not available ({exc}); no validation results", err=True)
    page = render_review(result, validated=validated).encode()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".review-", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(page)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        click.echo(f"review failed: cannot write {target}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    errors = sum(1 for _ref, i in result.validation if getattr(i, "severity", "") in ("error", "fatal"))
    warnings = sum(1 for _ref, i in result.validation if getattr(i, "severity", "") == "warning")
    summary = f"{errors} error(s), {warnings} warning(s)" if validated else "not validated"
    click.echo(f"wrote {target} ({len(page)} bytes; validation: {summary}); open {target.resolve().as_uri()}")
