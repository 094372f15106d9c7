"""Rules on terminology resources, as the HL7 validator's ConceptMap and ValueSet validators
check them (resource-level rules: ``rule(validator, resource, loc, ctx, contained)``):

- ConceptMap: each group names its source and target code systems (a warning when missing or
  unknown locally; an ``example`` or ``fragment`` code system is not used to judge codes, with a
  warning; a ``not-present`` one silently); with a usable code system, every ``element.code``
  and ``target.code`` must be one of its concepts (an error when its content is complete, else a
  warning), and a display given must be the concept's (a warning). Code systems are those of R4
  core, the package and the installed THO (:class:`procfhir.validator.terminology.Terminology`).
- ValueSet: ``compose.include.system`` / ``exclude.system`` must not carry a ``|version``
  (the version belongs in ``version``): an error, a warning when nothing follows the ``|``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procfhir.validator import messages as M

if TYPE_CHECKING:
    from procfhir.validator.engine import Ctx, Validator

_SKIPPED_CONTENT = ("example", "fragment")
# (side, finding) -> message id (the HL7 validator's keys)
_MID = {
    ("source", "missing"): M.CONCEPTMAP_GROUP_SOURCE_MISSING,
    ("source", "unknown"): M.CONCEPTMAP_GROUP_SOURCE_UNKNOWN,
    ("source", "incomplete"): M.CONCEPTMAP_GROUP_SOURCE_INCOMPLETE,
    ("source", "code"): M.CONCEPTMAP_GROUP_SOURCE_CODE_INVALID,
    ("source", "display"): M.CONCEPTMAP_GROUP_SOURCE_DISPLAY_INVALID,
    ("target", "missing"): M.CONCEPTMAP_GROUP_TARGET_MISSING,
    ("target", "unknown"): M.CONCEPTMAP_GROUP_TARGET_UNKNOWN,
    ("target", "incomplete"): M.CONCEPTMAP_GROUP_TARGET_INCOMPLETE,
    ("target", "code"): M.CONCEPTMAP_GROUP_TARGET_CODE_INVALID,
    ("target", "display"): M.CONCEPTMAP_GROUP_TARGET_DISPLAY_INVALID,
}


def concept_map(v: Validator, res: dict[str, Any], loc: str, ctx: Ctx, contained: bool) -> None:
    groups = res.get("group")
    if not isinstance(groups, list):
        return
    for gi, group in enumerate(groups):
        if not isinstance(group, dict):
            continue
        gloc = f"{loc}.group[{gi}]"
        src = _group_system(v, group, "source", gloc, ctx)
        tgt = _group_system(v, group, "target", gloc, ctx)
        for ei, element in enumerate(_list(group.get("element"))):
            if not isinstance(element, dict):
                continue
            eloc = f"{gloc}.element[{ei}]"
            if src is not None:
                _code_in(v, src, element, eloc, "source", ctx)
            if tgt is None:
                continue
            for ti, target in enumerate(_list(element.get("target"))):
                if isinstance(target, dict):
                    _code_in(v, tgt, target, f"{eloc}.target[{ti}]", "target", ctx)


def _group_system(
    v: Validator, group: dict[str, Any], side: str, gloc: str, ctx: Ctx
) -> tuple[str, dict[str, Any]] | None:
    """The group's source or target code system, when it can judge codes."""
    url = group.get(side)
    if not isinstance(url, str):
        msg = f"the group has no {side} code system: its {side} codes cannot be checked"
        ctx.add("warning", gloc, msg, "required", mid=_MID[side, "missing"])
        return None
    res = v.terminology.resource(url)
    if res is None or res.get("resourceType") != "CodeSystem":
        msg = f"the {side} code system {url} is not known locally: its codes are not checked"
        ctx.add("warning", f"{gloc}.{side}", msg, "not-found", mid=_MID[side, "unknown"])
        return None
    content = res.get("content")
    if content == "not-present":
        return None
    if content in _SKIPPED_CONTENT:
        msg = f"the {side} code system {url} has only {content} content: its codes are not checked"
        ctx.add("warning", f"{gloc}.{side}", msg, "not-found", mid=_MID[side, "incomplete"])
        return None
    return url.split("|", 1)[0], res


def _code_in(
    v: Validator, system: tuple[str, dict[str, Any]], item: dict[str, Any], iloc: str, side: str, ctx: Ctx
) -> None:
    code = item.get("code")
    if not isinstance(code, str):
        return
    url, res = system
    cs = v.terminology.code_system(url)
    if cs is None:
        return
    version = res.get("version")
    named = f"{url}|{version}" if isinstance(version, str) else url
    known = code in cs.codes
    if not known and not cs.case_sensitive:
        known = code.lower() in {c.lower() for c in cs.codes}
    if not known:
        sev = "error" if res.get("content") == "complete" else "warning"
        msg = f"the {side} code {code!r} is not valid in the code system {named}"
        ctx.add(sev, f"{iloc}.code", msg, "code-invalid", mid=_MID[side, "code"])
        return
    display = item.get("display")
    if not isinstance(display, str) or code not in cs.codes:
        return
    valid = _displays(res, code)
    if valid and _norm(display) not in {_norm(d) for d in valid}:
        shown = " or ".join(repr(d) for d in sorted(valid))
        msg = f"the display {display!r} for {side} code {code!r} is not {shown} ({named})"
        ctx.add("warning", f"{iloc}.display", msg, "code-invalid", mid=_MID[side, "display"])


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _displays(cs: dict[str, Any], code: str) -> set[str]:
    """The display and designations of a concept of a CodeSystem resource."""
    todo = list(_list(cs.get("concept")))
    while todo:
        c = todo.pop()
        if not isinstance(c, dict):
            continue
        if c.get("code") == code:
            out = {c["display"]} if isinstance(c.get("display"), str) else set()
            for d in _list(c.get("designation")):
                if isinstance(d, dict) and isinstance(d.get("value"), str):
                    out.add(d["value"])
            return out
        todo.extend(_list(c.get("concept")))
    return set()


def value_set(v: Validator, res: dict[str, Any], loc: str, ctx: Ctx, contained: bool) -> None:
    compose = res.get("compose")
    if not isinstance(compose, dict):
        return
    for part in ("include", "exclude"):
        items = compose.get(part)
        if not isinstance(items, list):
            continue
        for i, inc in enumerate(items):
            system = inc.get("system") if isinstance(inc, dict) else None
            if not isinstance(system, str) or "|" not in system:
                continue
            iloc = f"{loc}.compose.{part}[{i}]"
            base, given = system.split("|", 1)
            version = inc.get("version")
            if not given:
                msg = f"the system {system!r} ends with '|' and no version: the system is {base}"
                ctx.add("warning", iloc, msg, "business-rule", mid=M.VALUESET_INCLUDE_SYSTEM_VERSION)
                continue
            if version is None:
                why = f"the version '{given}' belongs in the version element"
            elif version != given:
                why = f"the version '{given}' differs from the version element '{version}'"
            else:
                why = "the version is already in the version element"
            msg = f"a value set's system must not use the canonical version syntax ({system}): {why}"
            ctx.add("error", iloc, msg, "business-rule", mid=M.VALUESET_INCLUDE_SYSTEM_VERSION)
