"""``procfhir validate PATH...``: validate FHIR R4 resources offline (OperationOutcome + summary)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click


@click.command(name="validate")
@click.argument("paths", nargs=-1)
@click.option("--profile", default=None, help="Also validate every resource against this profile URL.")
@click.option(
    "--definitions",
    "-d",
    multiple=True,
    help="Extra conformance resources (file, folder, .tgz): profiles, ValueSets, CodeSystems.",
)
@click.option(
    "--outcome",
    "outcome_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the OperationOutcome (JSON) to this file ('-' for stdout).",
)
@click.option("--quiet", "-q", is_flag=True, help="Only errors and warnings in the summary.")
@click.option(
    "--list-unsupported",
    is_flag=True,
    help="List the core invariants not evaluated through fhirpathpy, and why, then exit.",
)
def command(
    paths: tuple[str, ...],
    profile: str | None,
    definitions: tuple[str, ...],
    outcome_path: str | None,
    quiet: bool,
    list_unsupported: bool,
) -> None:
    """Validate files, folders, Bundles or package .tgz files; exit 1 when any error."""
    if list_unsupported:
        from procfhir.validator.invariants import unsupported_report

        for key, reason in unsupported_report():
            click.echo(f"{key}: {reason}")
        return
    if not paths:
        raise click.UsageError("give at least one file, folder, Bundle or package .tgz to validate")
    from procfhir.validator.issues import has_errors, summary, to_operation_outcome
    from procfhir.validator.run import validate_paths

    issues, count = validate_paths(list(paths), profile=profile, definitions=list(definitions))
    shown = [i for i in issues if not quiet or i.severity != "information"]
    outcome = to_operation_outcome(issues)
    if outcome_path == "-":
        click.echo(json.dumps(outcome, indent=2, ensure_ascii=False))
    else:
        click.echo(summary(shown, count), err=outcome_path is None and False)
        if outcome_path:
            target = Path(outcome_path)
            fd, tmp = tempfile.mkstemp(prefix=".outcome-", dir=target.resolve().parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(outcome, fh, indent=2, ensure_ascii=False)
                fh.write("\n")
            os.replace(tmp, target)
    sys.exit(1 if has_errors(issues) else 0)
