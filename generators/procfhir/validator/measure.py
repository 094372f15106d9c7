"""Measure rules, as the HL7 validator's Measure validator checks them (a resource rule):

- ``Measure.library``: each canonical should resolve to a Library (core, the package's
  definitions); one that does not is ``information`` (MEASURE_M_LIB_UNKNOWN);
- groups: none is a warning; with several groups (populations, stratifiers) each needs a code
  (warnings), and a group needs populations (warning);
- a stratifier's ``criteria`` in CQL (``text/cql``, ``text/cql.identifier``) needs the Measure's
  libraries: none resolving is an error (MEASURE_M_CRITERIA_CQL_NO_LIB); ``Lib.Def`` names a
  library by its ``name`` (error when none has it, or several), a bare ``Def`` needs exactly one
  library; that library must carry its ELM (``application/elm+xml`` content, an error without),
  the ELM must be an ELM library and define the expression's name (errors). Another language
  cannot be evaluated here: a warning (MEASURE_M_CRITERIA_UNKNOWN).

As in the reference, only stratifier criteria are checked (not populations'), and the ids are
the reference's message keys.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from procfhir.validator import messages as M

if TYPE_CHECKING:
    from procfhir.validator.engine import Ctx, Validator

_CQL = ("text/cql", "text/cql.identifier")
_ELM_NS = "urn:hl7-org:elm:r1"
_ELM_MAX_BYTES = 32 << 20


def measure(v: Validator, res: dict[str, Any], loc: str, ctx: Ctx, contained: bool) -> None:
    libraries: list[dict[str, Any]] = []
    for ref in _list(res.get("library")):
        if not isinstance(ref, str) or not ref:
            continue
        lib = v.defs.resource(ref)
        if lib is None or lib.get("resourceType") != "Library":
            msg = f"the library {ref} cannot be found (not in core nor in the package's definitions)"
            ctx.add("information", loc, msg, "not-found", mid=M.MEASURE_M_LIB_UNKNOWN)
            continue
        libraries.append(lib)
    groups = [g for g in _list(res.get("group")) if isinstance(g, dict)]
    if not groups:
        ctx.add("warning", loc, "the measure has no groups", "required", mid=M.MEASURE_M_NO_GROUPS)
        return
    for gi, group in enumerate(groups):
        gloc = f"{loc}.group[{gi}]"
        if len(groups) > 1 and "code" not in group:
            msg = "with several groups, each group needs a code"
            ctx.add("warning", gloc, msg, "required", mid=M.MEASURE_M_GROUP_CODE)
        populations = _list(group.get("population"))
        if not populations:
            ctx.add("warning", gloc, "the group has no populations", "required", mid=M.MEASURE_M_GROUP_POP)
        for pi, pop in enumerate(populations):
            if len(populations) > 1 and isinstance(pop, dict) and "code" not in pop:
                msg = "with several populations, each population needs a code"
                ctx.add(
                    "warning", f"{gloc}.population[{pi}]", msg, "required", mid=M.MEASURE_M_GROUP_POP_NO_CODE
                )
        stratifiers = _list(group.get("stratifier"))
        for si, strat in enumerate(stratifiers):
            if not isinstance(strat, dict):
                continue
            sloc = f"{gloc}.stratifier[{si}]"
            if len(stratifiers) > 1 and "code" not in strat:
                msg = "with several stratifiers, each stratifier needs a code"
                ctx.add("warning", sloc, msg, "required", mid=M.MEASURE_M_GROUP_STRATA_NO_CODE)
            crit = strat.get("criteria")
            if isinstance(crit, dict):
                _criteria(crit, libraries, f"{sloc}.criteria", ctx)


def _criteria(crit: dict[str, Any], libraries: list[dict[str, Any]], loc: str, ctx: Ctx) -> None:
    language = crit.get("language")
    if not isinstance(language, str) or not language:
        return  # reported by the element's own rules
    if language not in _CQL:
        msg = f"criteria in {language} cannot be checked (only CQL criteria are)"
        ctx.add("warning", loc, msg, "required", mid=M.MEASURE_M_CRITERIA_UNKNOWN)
        return
    expr = crit.get("expression")
    expr = expr if isinstance(expr, str) else ""
    if not libraries:
        msg = "CQL criteria, but no library of the measure can be found"
        ctx.add("error", loc, msg, "invalid", mid=M.MEASURE_M_CRITERIA_CQL_NO_LIB)
        return
    if "." in expr:
        name, expr = expr.split(".", 1)
        named = [lib for lib in libraries if lib.get("name") == name]
        if len(named) > 1:
            msg = f"several libraries of the measure are named {name!r}"
            ctx.add("error", loc, msg, "invalid", mid=M.MEASURE_M_CRITERIA_CQL_LIB_DUPL)
            return
        if not named:
            msg = f"no library of the measure is named {name!r}"
            ctx.add("error", loc, msg, "invalid", mid=M.MEASURE_M_CRITERIA_CQL_LIB_NOT_FOUND)
            return
        lib = named[0]
    elif len(libraries) != 1:
        msg = "the criteria names no library (Library.Definition) and the measure has several"
        ctx.add("error", loc, msg, "invalid", mid=M.MEASURE_M_CRITERIA_CQL_ONLY_ONE_LIB)
        return
    else:
        lib = libraries[0]
    url = lib.get("url", "")
    elm = _elm(lib)
    if elm is None:
        msg = f"the library {url} carries no ELM (application/elm+xml content) to check the criteria against"
        ctx.add("error", loc, msg, "invalid", mid=M.MEASURE_M_CRITERIA_CQL_NO_ELM)
    elif isinstance(elm, str):
        msg = f"the ELM of the library {url} cannot be read: {elm}"
        ctx.add("error", loc, msg, "invalid", mid=M.MEASURE_M_CRITERIA_CQL_ERROR)
    elif elm.tag != f"{{{_ELM_NS}}}library":
        msg = f"the ELM of the library {url} is not an ELM library ({_ELM_NS})"
        ctx.add("error", loc, msg, "invalid", mid=M.MEASURE_M_CRITERIA_CQL_ELM_NOT_VALID)
    elif expr not in _definitions(elm):
        msg = f"the library {url} defines no {expr!r}"
        ctx.add("error", loc, msg, "invalid", mid=M.MEASURE_M_CRITERIA_CQL_NOT_FOUND)


def _elm(lib: dict[str, Any]) -> ET.Element | str | None:
    """The library's ELM as XML, an error text when it cannot be read, None without one."""
    for att in _list(lib.get("content")):
        if not isinstance(att, dict) or att.get("contentType") != "application/elm+xml":
            continue
        data = att.get("data")
        if not isinstance(data, str) or len(data) > _ELM_MAX_BYTES * 4 // 3 + 4:
            return "no inline data, or too large"
        try:
            return ET.fromstring(base64.b64decode(data, validate=True))  # noqa: S314 - size-limited
        except (binascii.Error, ValueError, ET.ParseError) as exc:
            return str(exc)[:200]
    return None


def _definitions(elm: ET.Element) -> set[str]:
    stmts = elm.find(f"{{{_ELM_NS}}}statements")
    if stmts is None:
        return set()
    return {str(d.get("name")) for d in stmts.findall(f"{{{_ELM_NS}}}def")}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
