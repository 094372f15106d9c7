"""Coded units: a Quantity's (and its specialisations': Age, Distance, Duration, Count; the
SimpleQuantity and MoneyQuantity profiles are Quantities) ``system`` + ``code``, as the HL7
validator checks them through its terminology layer:

- UCUM (``http://unitsofmeasure.org``): the code must be a valid UCUM expression, parsed against
  the installed UCUM tables (:mod:`procfhir.terminology.ucum`); an error otherwise on a Quantity.
  The reference checks the unit of Quantity only (its type dispatch does not reach Age, Distance,
  Duration, Count: HAPI's ``$validate`` accepts an Age in ``years``): for those, a unit that is
  not UCUM is reported as a warning, so that verdicts stay the reference's;
- another code system available locally with complete content (R4 core, THO: e.g. a dose in
  ``v3-orderableDrugForm``): the code must be one of its concepts; an error otherwise.

A Coding whose system is UCUM is checked the same way (:func:`ucum_coding`, called by the
Coding rule). Without the UCUM tables installed, UCUM codes are not judged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procfhir.terminology import ucum
from procfhir.validator import messages as M
from procfhir.validator.definitions import Node

if TYPE_CHECKING:
    from procfhir.validator.engine import Ctx, Validator

UCUM = ucum.SYSTEM
QUANTITY_TYPES = ("Quantity", "Age", "Distance", "Duration", "Count")


def ucum_issue(code: str) -> str | None:
    """Why ``code`` is not a valid UCUM unit (None when it is, or when no tables are installed)."""
    tables = ucum.load()
    return tables.check(code) if tables is not None else None


def quantity_code(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    system, code = value.get("system"), value.get("code")
    if not isinstance(system, str) or not isinstance(code, str):
        return
    if system == UCUM:
        why = ucum_issue(code)
        if why is not None:
            msg = f"{code!r} is not a valid UCUM unit: {why} (for '{UCUM}#{code}')"
            sev = "error" if tcode == "Quantity" else "warning"
            ctx.add(sev, loc, msg, "processing", mid=M.UCUM_INVALID)
        return
    cs = v.terminology.code_system(system)
    if cs is None or not cs.complete or code in cs.codes:
        return
    if not cs.case_sensitive and code.lower() in {c.lower() for c in cs.codes}:
        return
    msg = f"unknown code {code!r} in code system {system} (the unit of a {tcode})"
    ctx.add("error", loc, msg, "code-invalid", mid=M.TX_UNKNOWN_CODE)


def ucum_coding(code: str, loc: str, ctx: Ctx) -> None:
    """A Coding of system UCUM: its code must be a valid UCUM expression."""
    why = ucum_issue(code)
    if why is not None:
        msg = f"{code!r} is not a valid UCUM unit: {why} (for '{UCUM}#{code}')"
        ctx.add("error", f"{loc}.code", msg, "code-invalid", mid=M.UCUM_INVALID)
