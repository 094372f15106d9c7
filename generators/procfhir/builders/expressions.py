"""The FHIRPath of a plan's conditions, built from the model (docs/contract.md, "Expression
building blocks"). Only forms that also run in HAPI's ``$apply`` (cqf-fhir-cr translates FHIRPath
to CQL): codes tested as ``code = 'a' or code = 'b'``, never ``in ('a' | 'b')``.

Variables: ``%conditions`` (Condition), ``%sites`` (Coding), ``%medications``
(MedicationStatement), ``%priorProcedures`` (Procedure, performedDateTime at date precision),
``%plannedDate`` (date).
"""

from __future__ import annotations

from collections.abc import Iterable

from procfhir.model import Code, Limit, Patients

# FHIRPath calendar duration keywords (singular for 1, as the texts say "1 year", "6 months")
_UNITS = {"day": "days", "week": "weeks", "month": "months", "year": "years"}
# UCUM codes of the same units, for valueDuration
UCUM_UNITS = {"day": "d", "week": "wk", "month": "mo", "year": "a"}


def coding_expression(codes: Iterable[Code]) -> str:
    """Criteria matching a Coding against the given codes, grouped by system.

    Written ``code = 'a' or code = 'b'`` (the same as ``code in ('a' | 'b')`` in FHIRPath) so that
    HAPI's clinical reasoning ``$apply`` evaluates it too: it translates FHIRPath to CQL, where
    ``'a' | 'b'`` (union of two strings) and ``code in 'a'`` do not resolve.
    """
    by_system: dict[str, list[str]] = {}
    for c in codes:
        by_system.setdefault(c.system, []).append(c.code)
    parts = []
    for system, values in by_system.items():
        alternatives = " or ".join("code = '" + v.replace("'", "\\'") + "'" for v in values)
        if len(values) > 1:
            alternatives = f"({alternatives})"
        parts.append(f"(system = '{system}' and {alternatives})")
    return " or ".join(parts)


def has_condition(codes: Iterable[Code]) -> str:
    """One of the patient's Conditions (``%conditions``), not refuted, has one of the codes."""
    return (
        "%conditions.where(verificationStatus.coding.where(code = 'refuted' or "
        "code = 'entered-in-error').exists().not()).code.coding.where("
        + coding_expression(codes)
        + ").exists()"
    )


def takes_medication(codes: Iterable[Code]) -> str:
    """The patient takes (or is about to take, or has paused) one of the medications. The choice
    element is named by its FHIRPath name ``medication``, the form tests/test_apply_hapi.py runs
    in HAPI's ``$apply``."""
    return (
        "%medications.where(status = 'active' or status = 'intended' or status = 'on-hold')"
        ".medication.coding.where(" + coding_expression(codes) + ").exists()"
    )


def patients(p: Patients) -> str:
    """``P``: the patients a rule applies to (computable ones only)."""
    parts = []
    if p.conditions:
        parts.append(has_condition(p.conditions))
    if p.medications:
        parts.append(takes_medication(p.medications))
    if not parts:
        raise ValueError("no computable patients")
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


def prior_treatments(codes: Iterable[Code]) -> str:
    """Earlier completed treatments by the plan's procedures (``PRIOR``)."""
    return (
        "%priorProcedures.where(status = 'completed' and code.coding.where("
        + coding_expression(codes)
        + ").exists())"
    )


def period_quantity(value: int, unit: str) -> str:
    return f"{value} {unit if value == 1 else _UNITS[unit]}"


def limit_allowed(limit: Limit, procedure_codes: Iterable[Code]) -> str:
    """The applicability condition of a limit: true when the planned procedure is within it."""
    if limit.type == "sites-per-session":
        assert limit.maximum is not None
        if limit.groups:
            within = " and ".join(
                f"%sites.where({coding_expression(g)}).count() <= {limit.maximum}" for g in limit.groups
            )
            within = f"({within})" if len(limit.groups) > 1 else within
        else:
            within = f"%sites.count() <= {limit.maximum}"
    else:
        assert limit.period is not None
        since = f"(%plannedDate - {period_quantity(limit.period.value, limit.period.unit)})"
        recent = f"{prior_treatments(procedure_codes)}.where(performed > {since})"
        if limit.type == "repetitions-per-period":
            within = f"{recent}.count() < {limit.maximum}"
        else:  # min-interval
            within = f"{recent}.exists().not()"
    if limit.applies_to is None:
        return within
    return f"{patients(limit.applies_to)}.not() or {within}"


def limit_preference(limit: Limit) -> str | None:
    """When a sites-per-session limit states a preferred number below its maximum: the condition
    under which the preference is to be shown (more sites than preferred)."""
    if limit.type != "sites-per-session" or limit.preferred is None:
        return None
    more = f"%sites.count() > {limit.preferred}"
    if limit.applies_to is None:
        return more
    return f"{patients(limit.applies_to)} and {more}"
