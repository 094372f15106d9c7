"""Completing a planned Procedure: performed time, materials used, complications observed.

The result has status ``completed``, ``performed[x]``, the code and subject of the planned one:
what US Core Procedure requires (us-core-7: performed when completed or in-progress).
Complications are checked against the plan's own complications value set (the binding of
Procedure.complication in the plan's Procedure profile); materials are coded from the plan's
materials when it names them, else kept as the words given.
"""

from __future__ import annotations

import copy
from typing import Any

from procfhir.apply.context import _DATETIME
from procfhir.apply.engine import Plan, load_plan
from procfhir.apply.errors import ApplyError
from procfhir.narrative import ordered_procedure, procedure_narrative


def _when(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _DATETIME.match(value):
        raise ApplyError(
            field, f"{value!r} is not a FHIR dateTime with time zone (e.g. 2026-12-01T09:30:00+01:00)"
        )
    return value


def complete_procedure(
    procedure: dict[str, Any],
    performed: str | tuple[str, str],
    used: str | list[str | dict[str, Any]] | None = None,
    complications: list[str | dict[str, Any]] | None = None,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """A completed copy of a Procedure in preparation (or in progress).

    ``performed``: a dateTime, or (start, end); ``used``: what was used: words (e.g. "4 mL of
    material X"), a code of the plan's materials, a Coding or a CodeableConcept, or a list of
    these; ``complications``: codes (or Codings) of the plan's complications value set, empty
    when none was observed. ``plan``: default, the package's plan the Procedure instantiates.
    """
    if not isinstance(procedure, dict) or procedure.get("resourceType") != "Procedure":
        raise ApplyError("procedure", "not a Procedure resource")
    if plan is None:
        canonical = (procedure.get("instantiatesCanonical") or [None])[0]
        plan = load_plan(None, canonical)
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
    if used is not None:
        items = used if isinstance(used, list) else [used]
        materials = _materials(plan, procedure)
        out["usedCode"] = [_used(materials, u, f"used[{i}]") for i, u in enumerate(items)]
    if plan.k.complications is None and complications:
        raise ApplyError(
            "complications", "the plan names no complications (no value set to check them against)"
        )
    vs_name = plan.k.complications or ""
    known = plan.k.value_set_codings(plan.k.complications) if plan.k.complications else []
    found = []
    for i, c in enumerate(complications or []):
        code = c.get("code") if isinstance(c, dict) else c
        system = c.get("system") if isinstance(c, dict) else None
        match = [k for k in known if k["code"] == code and (system is None or k["system"] == system)]
        if not match:
            raise ApplyError(
                f"complications[{i}]",
                f"{code!r} is not in the plan's complications (value set {vs_name}: "
                f"{', '.join(k['code'] for k in known)})",
            )
        found.append({"coding": [match[0]], "text": match[0]["display"]})
    if found:
        out["complication"] = found
    else:
        out.pop("complication", None)
        out["outcome"] = {"text": "No complication observed"}
    out["text"] = procedure_narrative(out, plan.sites_label)
    return ordered_procedure(out)


def _materials(plan: Plan, procedure: dict[str, Any]) -> list[dict[str, Any]]:
    """The materials and devices of the technique the Procedure was coded with."""
    codes = {(c.get("system"), c.get("code")) for c in (procedure.get("code") or {}).get("coding") or []}
    for action_id, items in plan.materials.items():
        if plan.action_codings(action_id) & codes:
            return items
    return []


def _used(materials: list[dict[str, Any]], item: Any, field: str) -> dict[str, Any]:
    """A usedCode: a Coding or CodeableConcept, a code of the technique's materials, or words
    (coded as the technique's material when it names exactly one)."""
    if isinstance(item, dict):
        if "coding" in item or "text" in item:
            return item
        if item.get("code"):
            return {"coding": [item], **({"text": item["display"]} if item.get("display") else {})}
        raise ApplyError(field, "expected words, a code, a Coding or a CodeableConcept")
    if not isinstance(item, str) or not item.strip():
        raise ApplyError(field, "describe what was used in words, or give a code of the plan's materials")
    text = item.strip()
    for m in materials:
        if any(c.get("code") == text for c in m.get("coding") or []):
            return m
    if len(materials) == 1:  # the technique's one material, described in words
        return {"coding": materials[0].get("coding", []), "text": text}
    return {"text": text}
