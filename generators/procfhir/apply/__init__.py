"""PlanDefinition ``$apply`` done in Python, offline: the plan applied to one patient context.

Python API::

    from procfhir.apply import Applier, apply, complete_procedure, load_plan
    result = apply({"patient": {...}, "conditions": [...], "medications": [...],
                    "priorProcedures": [...], "technique": "...", "sites": ["..."],
                    "date": "2026-12-01", "performer": "Practitioner/dr-a",
                    "organization": "Organization/hosp"})
    result.resources   # CarePlan, RequestGroup, requests (ServiceRequest, MedicationRequest, Task,
                       # CommunicationRequest...), Consent, Procedure
    result.warnings    # the notes the plan selects (advice, preferences, rules left as text)
    done = complete_procedure(result.procedure, "2026-12-01T10:30:00+01:00", "4 mL", [])
    other = Applier(load_plan("pkg.tgz", "https://example.org/PlanDefinition/x")).apply(ctx)

The knowledge comes from FHIR resources only (:mod:`procfhir.apply.knowledge`: a folder, a .tgz
package, a Bundle or a FHIR server). A context the plan excludes or that is malformed raises
:class:`ApplyError` (``.field`` names the input field; :class:`NotApplicable` gives the words of
the conditions not met). Batch mode: :mod:`procfhir.apply.batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from procfhir.apply.completion import complete_procedure
from procfhir.apply.engine import Plan, load_plan
from procfhir.apply.errors import ApplyError, ConditionCheck, KnowledgeError, NotApplicable
from procfhir.apply.resources import Builder

__all__ = [
    "ApplyError",
    "ApplyResult",
    "ConditionCheck",
    "KnowledgeError",
    "NotApplicable",
    "Plan",
    "Applier",
    "apply",
    "complete_procedure",
    "load_plan",
]


@dataclass
class ApplyResult:
    resources: list[dict[str, Any]]
    warnings: list[str]
    checks: list[ConditionCheck]

    @property
    def procedure(self) -> dict[str, Any]:
        return next(r for r in self.resources if r["resourceType"] == "Procedure")

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["resourceType"] == rtype]


class Applier:
    """A compiled plan and its resource builder: apply it to many contexts."""

    def __init__(self, plan: Plan | None = None) -> None:
        from procfhir.apply.fast import JsonOutput

        self.plan = plan or load_plan()
        self.builder = Builder(self.plan)
        self.json = JsonOutput(self.builder)

    def apply(self, context: Any) -> ApplyResult:
        ctx = self.plan.parse(context)
        outcome = self.plan.evaluate(ctx)
        resources = self.builder.build(outcome)
        return ApplyResult(resources, [w.text for w in outcome.warnings], outcome.checks)

    def apply_json(self, context: Any) -> tuple[list[tuple[str, bytes]], int]:
        """The resources as JSON lines (``orjson.dumps`` of :meth:`apply`'s, made from templates)
        and the number of warnings."""
        ctx = self.plan.parse(context)
        outcome = self.plan.evaluate(ctx)
        lines = self.json.render(outcome)
        if lines is None:
            lines = [(r["resourceType"], orjson.dumps(r)) for r in self.builder.build(outcome)]
        return lines, len(outcome.warnings)


_DEFAULT: Applier | None = None


def apply(context: Any, plan: Plan | None = None) -> ApplyResult:
    """Apply the package's plan to one patient context (JSON object or collection Bundle)."""
    global _DEFAULT
    if plan is not None:
        return Applier(plan).apply(context)
    if _DEFAULT is None:
        _DEFAULT = Applier()
    return _DEFAULT.apply(context)
