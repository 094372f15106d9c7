"""Validate inputs (files, folders, Bundles, package tarballs) in one call: used by the CLI,
tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from procfhir.validator.definitions import DefinitionsError
from procfhir.validator.engine import Validator
from procfhir.validator.inputs import definitions_in, read_inputs
from procfhir.validator.issues import Issue


def validate_paths(
    paths: list[str],
    profile: str | None = None,
    definitions: list[str] | None = None,
    core_dir: Path | None = None,
) -> tuple[list[Issue], int]:
    """(issues, number of resources validated). Resources with a url among the inputs (and in
    ``definitions`` paths) resolve canonicals and profiles."""
    issues: list[Issue] = []
    loaded: list[tuple[str, Any]] = []
    for source, res, issue in read_inputs(paths):
        if issue is not None:
            issues.append(issue)
        if res is not None:
            loaded.append((source, res))
    extra_defs: list[dict[str, Any]] = []
    for _source, res, issue in read_inputs(definitions or []):
        if issue is not None and issue.is_error:
            issues.append(issue)
        if res is not None:
            extra_defs.extend(definitions_in([res]))
    extra_defs.extend(definitions_in([r for _, r in loaded]))
    try:
        validator = Validator(extra_definitions=extra_defs, core_dir=core_dir)
    except DefinitionsError as exc:
        issues.append(Issue("fatal", "", str(exc), "processing"))
        return issues, 0
    for source, res in loaded:
        issues.extend(validator.validate(res, profile=profile, source=source))
    from procfhir.validator.invariants import save_ast_cache

    save_ast_cache()
    return issues, len(loaded)
