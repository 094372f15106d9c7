"""Errors of the ``$apply`` stage: each names the input field (or the plan condition) at fault."""

from __future__ import annotations

from dataclasses import dataclass


class ApplyError(Exception):
    """A patient context that cannot be applied; ``field`` names the input field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ConditionCheck:
    """One applicability condition of the plan, evaluated for a patient."""

    action: str
    name: str
    description: str
    result: bool

    def describe(self) -> str:
        state = "met" if self.result else "NOT met"
        return f"{self.name} (action {self.action}): {state}: {self.description}"


class NotApplicable(ApplyError):
    """The plan's own conditions exclude the patient (no indication, level limit...)."""

    def __init__(self, plan: str, failed: list[ConditionCheck], checked: list[ConditionCheck]) -> None:
        names = "; ".join(
            f"{c.name} ({c.description.rstrip('.')})" if c.description else c.name for c in failed
        )
        lines = "; ".join(c.describe() for c in checked)
        super().__init__(
            "plan",
            f"the plan {plan} does not apply to this patient: condition(s) not met: {names}. "
            f"Conditions checked: {lines}",
        )
        self.failed = failed
        self.checked = checked


class KnowledgeError(Exception):
    """The package's PlanDefinition/ActivityDefinitions cannot be applied (not the patient's fault)."""
