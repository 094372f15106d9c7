"""``procfhir review``: build the package in memory and write its review page (one HTML file)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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
@click.option(
    "--sign-off",
    "sign_off",
    is_flag=True,
    help="Record the review lock of the current text (beside each mapping), after showing what "
    "changed since the last sign-off.",
)
@click.option("--reviewer", default=None, help="The clinician signing off (with --sign-off).")
@click.option(
    "--document",
    "documents",
    multiple=True,
    help="Sign off only this document key (repeatable; default: every document of the package).",
)
@click.option(
    "--at",
    "at",
    default=None,
    help="Sign-off time, YYYY-MM-DDThh:mm:ssZ (default: now, UTC).",
)
@click.option("--yes", is_flag=True, help="Sign off without asking for confirmation.")
def command(
    config: Path | None,
    out: Path,
    no_validate: bool,
    sign_off: bool,
    reviewer: str | None,
    documents: tuple[str, ...],
    at: str | None,
    yes: bool,
) -> None:
    """Write the review page of a fresh build: source text and what each sentence became (and
    whether it is signed off), the plan as a diagram, the consent form, the codes, the validation
    result. With --sign-off --reviewer NAME, first record the review lock of the current text."""
    from procfhir.build import build, validation_findings
    from procfhir.errors import BuildError
    from procfhir.review import PAGE_MARKER, render_review
    from procfhir.safeout import OutputRefused, check_file, starts_with, write_file

    target = out / "review.html" if out.is_dir() else out

    def ours(path: Path) -> bool:  # a review page we wrote before
        return starts_with(path, PAGE_MARKER.encode())

    try:
        check_file(target, may_replace=ours, what="not a review page", parents=False)
    except OutputRefused as exc:
        click.echo(f"review failed: {exc}", err=True)
        sys.exit(2)
    if not sign_off and (reviewer or documents or at or yes):
        click.echo("review failed: --reviewer, --document, --at and --yes go with --sign-off", err=True)
        sys.exit(2)
    try:
        result = build(config, write=False, validate=False, enforce_signoff=False)
        if sign_off and _sign_off(result, reviewer, documents, at, yes):  # the page shows the new lock
            result = build(config, write=False, validate=False, enforce_signoff=False)
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
        write_file(target, page, may_replace=ours, what="not a review page", parents=False)
    except OutputRefused as exc:
        click.echo(f"review failed: {exc}", err=True)
        sys.exit(2)
    errors = sum(1 for _ref, i in result.validation if getattr(i, "severity", "") in ("error", "fatal"))
    warnings = sum(1 for _ref, i in result.validation if getattr(i, "severity", "") == "warning")
    summary = f"{errors} error(s), {warnings} warning(s)" if validated else "not validated"
    click.echo(f"wrote {target} ({len(page)} bytes; validation: {summary}); open {target.resolve().as_uri()}")


def _sign_off(
    result: Any, reviewer: str | None, documents: tuple[str, ...], at: str | None, yes: bool
) -> bool:
    """Show what changed since the last sign-off of each document, confirm, write the locks.

    Return True when a lock was written.
    """
    from procfhir.errors import BuildError
    from procfhir.signoff import describe_changes, lock_path, now_utc, sign_off, write_lock

    if not reviewer or not reviewer.strip():
        raise BuildError("--sign-off needs the reviewer's name: --reviewer NAME")
    keys = [m.key for m in result.mappings]
    unknown = [d for d in documents if d not in keys]
    if unknown:
        raise BuildError(f"no document {', '.join(unknown)} in the package (documents: {', '.join(keys)})")
    chosen = [m for m in result.mappings if not documents or m.key in documents]
    at = at or now_utc()
    pending = []
    for m in chosen:
        lock, comp = sign_off(m.source, m.key, m.text_file, lock_path(m.path), reviewer, at)
        click.echo(f"{m.key} ({m.source.path}):")
        for line in describe_changes(comp, m.source):
            click.echo(f"  {line}")
        if comp.matches and comp.lock is not None and comp.lock.text_file == lock.text_file:
            click.echo(f"  {lock.path.name} already matches the text; left as it is")
            continue
        pending.append(lock)
    if not pending:
        click.echo("nothing to sign off")
        return False
    names = ", ".join(str(lock.path) for lock in pending)
    if not yes:
        if not sys.stdin.isatty():
            raise BuildError(f"not signed off: confirm with --yes to write {names} without a terminal")
        if not click.confirm(f"Sign off as {reviewer.strip()} at {at} and write {names}?", default=False):
            click.echo("not signed off")
            return False
    for lock in pending:
        write_lock(lock)
        click.echo(f"signed off: wrote {lock.path} ({len(lock.sentences)} sentences and headings)")
    click.echo("run `procfhir build` to put the sign-off (Provenance) into the package")
    return True
