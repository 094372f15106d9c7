"""``procfhir validate PATH...``: validate FHIR R4 resources offline (OperationOutcome + summary).

Exit codes: 0 no errors; 1 errors found (in any input); 2 the validation could not run at all
(the core definitions are missing or unreadable, no input could be read, or the outcome file
cannot be written). The OperationOutcome is written in every case."""

from __future__ import annotations

import atexit
import gc
import json
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from procfhir.safeout import OutputRefused, check_file, is_json_resource, write_file
from procfhir.validator.issues import Issue, to_operation_outcome


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
    "--workers",
    "-j",
    type=click.IntRange(min=1, max=64),
    default=1,
    show_default=True,
    help="Validate in this many processes.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Our package's policy on top of the reference's rules: unknown extensions, unresolvable "
    "meta.profile and canonicals under the package's base are errors; narratives must not load "
    "external images or style resources.",
)
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
    workers: int,
    strict: bool,
    list_unsupported: bool,
) -> None:
    """Validate files, folders, Bundles or package .tgz files; exit 0 clean, 1 errors found,
    2 could not run."""
    if list_unsupported:
        from procfhir.validator.invariants import unsupported_report

        for key, reason in unsupported_report():
            click.echo(f"{key}: {reason}")
        return
    if not paths:
        raise click.UsageError("give at least one file, folder, Bundle or package .tgz to validate")
    from procfhir.validator.issues import has_errors, sort_issues, summary
    from procfhir.validator.run import run

    if outcome_path and outcome_path != "-":
        try:  # before validating: a file that is not ours is refused at once
            check_file(outcome_path, may_replace=_our_outcome, what="not an OperationOutcome", parents=False)
        except OutputRefused as exc:
            click.echo(f"error: cannot write the OperationOutcome: {exc}", err=True)
            sys.exit(2)

    # A one-shot process: what it holds at the end (the definitions, 40,000 issues...) is freed at
    # exit; the cycle collector would only walk it again and again (run() collects its own).
    gc.disable()
    _freeze_at_exit()
    result = run(list(paths), profile=profile, definitions=list(definitions), workers=workers, strict=strict)
    issues = sort_issues(result.issues)
    result.issues = []  # one list of the issues held (sorted)
    shown = [i for i in issues if not quiet or i.severity != "information"]
    code = 2 if result.could_not_run else 1 if has_errors(issues) else 0
    if outcome_path == "-":
        click.echo(json.dumps(to_operation_outcome(issues), indent=2, ensure_ascii=False))
        sys.exit(code)
    click.echo(summary(shown, result.resources))
    del shown
    if outcome_path:
        data = _outcome_chunks(issues)
        try:
            write_file(
                outcome_path, data, may_replace=_our_outcome, what="not an OperationOutcome", parents=False
            )
        except OutputRefused as exc:
            click.echo(f"error: cannot write the OperationOutcome: {exc}", err=True)
            sys.exit(2)
    sys.exit(code)


_FREEZE_AT_EXIT: list[bool] = []


def _freeze_at_exit() -> None:
    """At exit the interpreter's last collections (made even with the collector off) would walk
    every object still alive (the definitions, the issues: ~0.4 s after the R4 examples);
    frozen first, they are not (they are freed all the same). Registered once per process."""
    if not _FREEZE_AT_EXIT:
        atexit.register(gc.freeze)
        _FREEZE_AT_EXIT.append(True)


_HEAD = b'{\n  "resourceType": "OperationOutcome",\n  "issue": [\n    '


def _outcome_chunks(issues: list[Issue]) -> list[bytes]:
    """:func:`_outcome_bytes` of the OperationOutcome of ``issues`` (sorted), one piece per
    batch of issues, made without the outcome's dicts all at once (44,000 issues: ~40 MB of
    objects at the end of a run, when memory is at its fullest). A batch is written as a JSON
    list (its items indented by 2), then shifted by 2 more spaces, as in the whole (a JSON
    string holds no raw line break)."""
    if not issues:
        return [_outcome_bytes(to_operation_outcome(issues))]
    out = [_HEAD]
    collecting = gc.isenabled()
    gc.disable()  # a batch's dicts (no cycle) would set off collections of all that is alive
    try:
        for start in range(0, len(issues), _BATCH):
            if start:
                out.append(b",\n    ")
            batch = orjson.dumps(
                [i.to_fhir() for i in issues[start : start + _BATCH]], option=orjson.OPT_INDENT_2
            )
            out.append(batch[4:-2].replace(b"\n", b"\n  "))  # b"[\n  " and b"\n]" left out
    except TypeError:  # what orjson refuses (a lone surrogate): the standard encoder decides
        return [_outcome_bytes(to_operation_outcome(issues))]
    finally:
        if collecting:
            gc.enable()
    out.append(b"\n  ]\n}\n")
    return out


_BATCH = 1000


def _outcome_bytes(outcome: dict[str, Any]) -> bytes:
    """The OperationOutcome as indented UTF-8 JSON: orjson writes the same bytes as
    ``json.dumps(indent=2, ensure_ascii=False)`` about ten times faster (json's indenting
    encoder is pure Python: ~0.7 s for the R4 examples' 44,000 issues)."""
    try:
        return bytes(orjson.dumps(outcome, option=orjson.OPT_INDENT_2)) + b"\n"
    except TypeError:  # what orjson refuses (a lone surrogate): the standard encoder decides
        return (json.dumps(outcome, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


_JUDGED: dict[tuple[str, int, int, int, int], bool] = {}


def _our_outcome(path: Path) -> bool:
    """An existing --outcome file is replaced only when it holds an OperationOutcome (what we write).
    Asked before validating and again when writing: the file unchanged since (same inode, size
    and modification time), the first answer stands (reading a large outcome again at the end,
    with all the issues in memory, would be the run's peak of memory)."""
    try:
        st = path.stat()
    except OSError:
        return is_json_resource(path, "OperationOutcome")
    key = (str(path.absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _JUDGED:
        _JUDGED[key] = is_json_resource(path, "OperationOutcome")
    return _JUDGED[key]
