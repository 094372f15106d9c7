"""The whole build: configuration, mappings, resources, checks, package on disk.

Python API::

    from procfhir.build import build
    result = build()                 # package.yaml next to the project, writes fhir/
    result.resources, result.terminology, result.trace
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procfhir.builders.consent import build_consent, consent_profile
from procfhir.builders.plandefinition import build_activities, build_plan
from procfhir.builders.procedure import build_patient, build_procedures, procedure_profile
from procfhir.builders.terminology import build_codesystem, build_value_sets
from procfhir.config import PROJECT_ROOT, Config, load_config
from procfhir.errors import BuildError
from procfhir.mapping import check_shared_codes, load_mapping
from procfhir.model import Document
from procfhir.packaging import (
    dumps,
    implementation_guide,
    package_files,
    sort_resources,
    write_output,
)
from procfhir.safeout import check_folder
from procfhir.source import load_source
from procfhir.terminology.verify import verify_mappings
from procfhir.terminology_report import report_markdown, terminology_report
from procfhir.trace import build_trace

DEFAULT_OUT = PROJECT_ROOT / "fhir"


@dataclass
class BuildResult:
    config: Config
    mappings: list[Document]
    resources: list[dict[str, Any]]
    terminology: dict[str, Any]
    trace: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    validation: list[Any] = field(default_factory=list)
    out_dir: Path | None = None
    signoff: dict[str, Any] = field(default_factory=dict)  # document key -> signoff.Comparison


def load_mappings(cfg: Config) -> list[Document]:
    mappings: list[Document] = []
    problems: list[str] = []
    for doc in cfg.documents:
        try:
            mappings.append(load_mapping(doc, cfg.local_system))
        except BuildError as exc:
            problems.extend(exc.problems)
    if problems:
        raise BuildError("the mappings do not match their texts", problems)
    keys = [m.key for m in mappings]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise BuildError(f"{cfg.path}: document key(s) used twice: {', '.join(sorted(dupes))}")
    check_shared_codes(mappings)
    return mappings


def build_resources(
    cfg: Config, mappings: list[Document], signoff: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = [build_codesystem(cfg, mappings)]
    for m in mappings:
        resources += build_value_sets(cfg, m)
        resources += build_activities(cfg, m)
        resources.append(build_plan(cfg, m))
        resources.append(build_consent(cfg, m))
        if m.examples is not None:
            resources.append(build_patient(m.examples))
            resources += build_procedures(cfg, m)
    resources += package_profiles(cfg, mappings)
    if signoff:  # the sign-off of each document, as Provenance of what rests on its sentences
        from procfhir.builders.provenance import build_provenances

        resources += [p for m in mappings for p in build_provenances(cfg, m, signoff[m.key], resources)]
    seen: dict[str, int] = {}
    for r in resources:
        ref = f"{r['resourceType']}/{r['id']}"
        seen[ref] = seen.get(ref, 0) + 1
    dupes = [ref for ref, n in seen.items() if n > 1]
    if dupes:
        # e.g. two documents whose mappings give the same patient or value set id
        raise BuildError(f"resource ids generated twice: {', '.join(sorted(dupes))}")
    resources = sort_resources(resources)
    return sort_resources([implementation_guide(cfg, resources), *resources])


def package_profiles(cfg: Config, mappings: list[Document] | None = None) -> list[dict[str, Any]]:
    """The package's StructureDefinitions: those of ``profiles/`` and each plan's own."""
    docs = load_mappings(cfg) if mappings is None else mappings
    return _profiles(cfg, [p for m in docs for p in (procedure_profile(cfg, m), consent_profile(cfg, m))])


def _profiles(cfg: Config, generated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from procfhir.profiles import load_profiles

    return load_profiles(cfg, generated)


def validation_findings(resources: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Every finding of the offline validator on ``resources``, errors included.

    Each resource is validated with the whole package as context, so that canonical references
    between the package's resources resolve.
    """
    from procfhir.validator import Validator

    validator = Validator(extra_definitions=resources, strict=True)
    return [(f"{r['resourceType']}/{r['id']}", issue) for r in resources for issue in validator.validate(r)]


def _validate(resources: list[dict[str, Any]]) -> list[Any]:
    """Run the offline validator on every resource; errors stop the build."""
    findings = validation_findings(resources)
    errors = [
        f"{ref}: {issue.location}: {issue.message}"
        for ref, issue in findings
        if issue.severity in ("error", "fatal")
    ]
    if errors:
        raise BuildError("generated resources fail validation", errors)
    return findings


def build(
    config: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    validate: bool = True,
    write: bool = True,
    log: Callable[[str], None] | None = None,
    enforce_signoff: bool = True,
) -> BuildResult:
    """Build the package; raise :class:`BuildError` (nothing written) on any problem.

    ``enforce_signoff=False`` (the review page, the sign-off itself) builds a text that differs
    from its review lock; the sign-off state is in ``result.signoff`` either way.
    """
    from procfhir import signoff

    cfg = load_config(config)
    if write:  # refuse an output folder we must not replace before any work
        check_folder(Path(out_dir) if out_dir is not None else DEFAULT_OUT)
    try:
        mappings = load_mappings(cfg)
    except BuildError as exc:
        if enforce_signoff:  # a signed sentence removed or changed shows here too
            locks = [signoff.lock_path(doc) for doc in cfg.documents]
            exc.problems += signoff.unchecked_lock_problems(locks, load_source)
        raise
    from procfhir.builders.provenance import CODES as PROVENANCE_CODES

    # every standard code against the installed terminology content (an input problem: first)
    checks = verify_mappings(mappings, extra=PROVENANCE_CODES)
    comparisons = signoff.compare_documents(mappings)
    resources = build_resources(cfg, mappings, comparisons)
    from procfhir.offsets import provenance_problems

    inexact = provenance_problems(resources, cfg.url("StructureDefinition", "source-text"))
    if inexact:  # a defect of the generator, never of the input: say so plainly
        raise BuildError("the package's provenance is not exact (a bug in the generator)", inexact)
    terminology = terminology_report(cfg, mappings, resources, checks)
    trace = build_trace(cfg, mappings, resources)
    refusal = signoff.signoff_check(cfg.status, mappings, comparisons, trace)
    if refusal is not None and enforce_signoff:
        raise refusal
    result = BuildResult(cfg, mappings, resources, terminology, trace, signoff=comparisons)
    if validate:
        result.validation = _validate(resources)
    extra = {
        "terminology-report.json": dumps(terminology).encode(),
        "terminology-report.md": report_markdown(terminology).encode(),
        "trace.json": dumps(trace).encode(),
    }
    from procfhir.review import render_review

    extra["review.html"] = render_review(result, validated=validate).encode()
    result.files = package_files(cfg, resources, extra)
    if write:
        # Default: fhir/ beside the configuration (the project's fhir/ for its package.yaml).
        target = Path(out_dir) if out_dir is not None else cfg.path.resolve().parent / DEFAULT_OUT.name
        write_output(target, result.files)
        result.out_dir = target
        if log:
            log(f"wrote {len(result.files)} files to {target}")
    return result
