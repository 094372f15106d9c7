"""Completing a planned Procedure: performed time, cement used, complications observed.

The result has status ``completed``, ``performed[x]``, the code and subject of the planned one:
what US Core Procedure requires (us-core-7: performed when completed or in-progress).
"""

from __future__ import annotations

import copy
from typing import Any

from procfhir.apply.context import _DATETIME
from procfhir.apply.engine import Plan, load_plan
from procfhir.apply.errors import ApplyError
from procfhir.apply.knowledge import COMPLICATIONS_VALUE_SET
from procfhir.builders.procedure import _ordered, procedure_narrative

CEMENT_CODE = "bone-cement"  # in the package's local CodeSystem


def _when(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _DATETIME.match(value):
        raise ApplyError(
            field, f"{value!r} is not a FHIR dateTime with time zone (e.g. 2026-12-01T09:30:00+01:00)"
        )
    return value


def complete_procedure(
    procedure: dict[str, Any],
    performed: str | tuple[str, str],
    cement: str | None = None,
    complications: list[str | dict[str, Any]] | None = None,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """A completed copy of a Procedure in preparation (or in progress).

    ``performed``: a dateTime, or (start, end); ``cement``: what was used, in words (e.g. "PMMA
    bone cement, 4 mL"); ``complications``: codes (or Codings) of the package's complications
    value set, empty when none was observed.
    """
    plan = plan or load_plan()
    if not isinstance(procedure, dict) or procedure.get("resourceType") != "Procedure":
        raise ApplyError("procedure", "not a Procedure resource")
    if procedure.get("status") not in ("preparation", "in-progress"):
        raise ApplyError(
            "procedure.status",
            f"{procedure.get('status')!r}: only a Procedure in preparation or in progress is completed",
        )
    out = copy.deepcopy(procedure)
    out["status"] = "completed"
    out.pop("performedDateTime", None)
    out.pop("performedPeriod", None)
    if isinstance(performed, tuple | list):
        if len(performed) != 2:
            raise ApplyError("performed", "give a dateTime or (start, end)")
        start, end = _when(performed[0], "performed.start"), _when(performed[1], "performed.end")
        if start > end and start[:19] > end[:19]:
            raise ApplyError("performed", f"ends ({end}) before it starts ({start})")
        out["performedPeriod"] = {"start": start, "end": end}
    else:
        out["performedDateTime"] = _when(performed, "performed")
    if cement is not None:
        if not isinstance(cement, str) or not cement.strip():
            raise ApplyError("cement", 'describe the cement used in words (e.g. "PMMA bone cement, 4 mL")')
        coding = _local_coding(plan, CEMENT_CODE)
        out["usedCode"] = [{"coding": [coding], "text": cement.strip()}]
    known = plan.k.value_set_codings(COMPLICATIONS_VALUE_SET)
    found = []
    for i, c in enumerate(complications or []):
        code = c.get("code") if isinstance(c, dict) else c
        system = c.get("system") if isinstance(c, dict) else None
        match = [k for k in known if k["code"] == code and (system is None or k["system"] == system)]
        if not match:
            raise ApplyError(
                f"complications[{i}]",
                f"{code!r} is not in the value set {COMPLICATIONS_VALUE_SET} "
                f"(codes: {', '.join(k['code'] for k in known)})",
            )
        found.append({"coding": [match[0]], "text": match[0]["display"]})
    if found:
        out["complication"] = found
    else:
        out.pop("complication", None)
        out["outcome"] = {"text": "No complication observed"}
    out["text"] = procedure_narrative(out)
    return _ordered(out)


def _local_coding(plan: Plan, code: str) -> dict[str, str]:
    system = plan.k.cfg.local_system
    cs = plan.k.code_systems.get(system, {})
    for c in cs.get("concept", []):
        if c["code"] == code:
            return {"system": system, "code": code, "display": c.get("display", code)}
    raise ApplyError("cement", f"the package's CodeSystem has no code {code!r} for bone cement")
