"""``procfhir apply``: the plan applied to one patient context, or to an NDJSON batch."""

from __future__ import annotations

import json
from pathlib import Path

import click

from procfhir.apply.errors import ApplyError, KnowledgeError
from procfhir.safeout import write_file


class _CouldNotRun(click.ClickException):
    exit_code = 2


def _our_bundle(path: Path) -> bool:
    """An existing --out file is replaced only when it is a Bundle (what this command writes)."""
    from procfhir.strictio import StrictInputError, read_json

    try:
        obj = read_json(path, max_bytes=256 * 1024 * 1024)
    except StrictInputError:
        return False
    return isinstance(obj, dict) and obj.get("resourceType") == "Bundle"


@click.command("apply")
@click.argument("context", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--batch",
    "batch",
    type=click.Path(dir_okay=False, path_type=Path),
    help="NDJSON file of contexts (one per line).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    help="Batch: output folder (Bulk Data NDJSON). Single: output Bundle file (default stdout).",
)
@click.option(
    "--package",
    "package",
    help="The package: a folder of FHIR resources, an NPM package (.tgz), a Bundle (.json) or a "
    "FHIR server's base URL (default: the project's fhir/ folder).",
)
@click.option(
    "--plan",
    "plan",
    help="The PlanDefinition's canonical url (url or url|version) or id; needed when the package "
    "holds several plans.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Batch: worker processes."
)
@click.option("--overwrite", is_flag=True, help="Batch: replace an existing, non-empty output folder.")
def command(
    context: Path | None,
    batch: Path | None,
    out: Path | None,
    package: str | None,
    plan: str | None,
    workers: int,
    overwrite: bool,
) -> None:
    """Apply a PlanDefinition of the package to a patient CONTEXT (JSON object or collection
    Bundle), or to every line of --batch; print or write CarePlan, RequestGroup, the requests of
    the selected actions, Consent and Procedure."""
    if (context is None) == (batch is None):
        raise click.UsageError("give either a CONTEXT file or --batch FILE")
    try:
        if batch is not None:
            if out is None:
                raise click.UsageError("--batch needs --out DIR")
            from procfhir.apply.batch import apply_batch

            report = apply_batch(batch, out, package=package, plan=plan, workers=workers, overwrite=overwrite)
            click.echo(
                f"{report.applied} of {report.contexts} context(s) applied, {report.failed} failed, "
                f"{report.warnings} warning(s); wrote {out}",
                err=True,
            )
            if report.failed:
                click.echo(f"failed contexts: {out / 'OperationOutcome.ndjson'}", err=True)
                raise SystemExit(1)
            return
        assert context is not None
        from procfhir.apply import Applier
        from procfhir.apply.engine import load_plan
        from procfhir.strictio import StrictInputError, read_json

        load_plan(package, plan)
        try:
            obj = read_json(context, max_bytes=64 * 1024 * 1024)
        except StrictInputError as exc:
            raise ApplyError("context", str(exc)) from None
        applier = Applier(load_plan(package, plan))  # the package first: its errors come first
        result = applier.apply(obj)
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in result.resources],
        }
        text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
        for w in result.warnings:
            click.echo(f"warning: {w}", err=True)
        if out is None:
            click.echo(text, nl=False)
        else:
            write_file(out, text.encode("utf-8"), may_replace=_our_bundle)
            click.echo(f"wrote {len(result.resources)} resources to {out}", err=True)
    except ApplyError as exc:
        where = f"{context}: " if context is not None else ""
        raise click.ClickException(f"{where}{exc}") from None
    except KnowledgeError as exc:  # the package, not a patient: the command could not run
        raise _CouldNotRun(f"the package's plan cannot be applied: {exc}") from None
