"""Validation issues, their OperationOutcome form and a readable summary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MESSAGE_ID_EXT = "http://hl7.org/fhir/StructureDefinition/operationoutcome-message-id"
SEVERITIES = ("fatal", "error", "warning", "information")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True, order=True)
class Issue:
    """One finding: ``severity`` (fatal/error/warning/information), an OperationOutcome issue
    ``code`` (structure, required, value, invariant, code-invalid, extension, not-found, invalid,
    processing, informational, not-supported...), a FHIRPath-like ``location``, a ``message``,
    and, for invariants, the constraint ``key``. ``source`` names the file the resource came from.
    ``message_id`` is the rule's stable id (see :mod:`procfhir.validator.messages`): tests and
    tools match it, never the wording."""

    severity: str
    location: str
    message: str
    code: str = "invalid"
    key: str = ""
    source: str = field(default="", compare=False)
    message_id: str = field(default="", compare=False)

    @property
    def is_error(self) -> bool:
        return self.severity in ("fatal", "error")

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.message}
        if self.message_id:
            out["extension"] = [{"url": MESSAGE_ID_EXT, "valueString": self.message_id}]
        if self.key:
            out["details"] = {"text": f"[{self.key}] {self.message}"}
        loc = f"{self.source}: {self.location}" if self.source else self.location
        if self.location:
            out["expression"] = [self.location]
        if loc:
            out["location"] = [loc]
        return out


def has_errors(issues: Iterable[Issue]) -> bool:
    return any(i.is_error for i in issues)


def sort_issues(issues: Iterable[Issue]) -> list[Issue]:
    return sorted(issues, key=lambda i: (i.source, _RANK.get(i.severity, 9), i.location, i.message))


def to_operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    """An R4 OperationOutcome for the issues (an ``information`` "no issues" entry when empty)."""
    items = [i.to_fhir() for i in sort_issues(issues)]
    if not items:
        items = [{"severity": "information", "code": "informational", "diagnostics": "No issues detected"}]
    return {"resourceType": "OperationOutcome", "issue": items}


def summary(issues: Iterable[Issue], resources: int | None = None) -> str:
    """Human-readable lines: one per issue, then the counts."""
    lst = sort_issues(issues)
    lines = []
    for i in lst:
        where = f"{i.source}: " if i.source else ""
        key = f" [{i.key}]" if i.key else ""
        lines.append(f"{i.severity.upper():11} {where}{i.location}{key}: {i.message}")
    counts = {s: sum(1 for i in lst if i.severity == s) for s in SEVERITIES}
    head = f"{resources} resource(s): " if resources is not None else ""
    lines.append(
        f"{head}{counts['fatal'] + counts['error']} error(s), {counts['warning']} warning(s), "
        f"{counts['information']} information message(s)"
    )
    return "\n".join(lines)
