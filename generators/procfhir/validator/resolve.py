"""Slices discriminated on ``resolve()`` (``item.resolve()``, ``resolve()`` on a Reference,
``subject.resolve()``): the reference is resolved within what is being validated, offline, as
the HL7 validator resolves it, then the resolved resource is matched against the slice:

- ``#id``: a contained resource of the container;
- in a Bundle: the entry whose ``fullUrl`` is the reference, or whose resource has the
  reference's type and id (``Patient/1``, or an absolute URL ending in ``Patient/1``).

A ``type`` discriminator matches when the resolved resource's type is one the slice's Reference
allows (its target profiles); when the reference cannot be resolved, the type a literal
reference states (``Patient/1``) or ``Reference.type`` stands for it, as nothing else is known.
A ``profile`` discriminator matches when the resolved resource conforms to one of the slice's
target profiles. What cannot be decided offline (nothing resolves and no type is stated, or a
profile to check on an unresolvable reference) matches no slice and is reported as
``information`` (``SLICE_RESOLVE_UNRESOLVED``), never as an error of its own.
A ``value`` or ``pattern`` discriminator on an element after ``resolve()`` (``resolve().code``,
as R4's lipidprofile slices its results) compares the resolved resource's element with the
fixed value or pattern the slice's target profile sets there (or, without one, its required
binding, when the value set expands locally). Other discriminators after
``resolve()`` are not evaluated: reported as ``information``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procfhir.validator import messages as M
from procfhir.validator.definitions import Node

if TYPE_CHECKING:
    from procfhir.validator.engine import Ctx, Validator


def resolve_matches(v: Validator, value: Any, sl: Node, dtype: str, path: str, ctx: Ctx, loc: str) -> bool:
    """Whether ``value`` (an item of the sliced element) matches slice ``sl`` on a discriminator
    whose path holds ``resolve()``."""
    from procfhir.validator.rules import _LITERAL_REF, pattern_match, target_types
    from procfhir.validator.structure import _has_errors_against, _slice_value, descend, follow

    before, _, after = path.partition("resolve()")
    before = before.rstrip(".") or "$this"
    after = after.strip(".")
    kind = "type" if dtype == "type" and not after else "profile" if dtype == "profile" and not after else ""
    if after and dtype in ("value", "pattern"):
        kind = "value"
    if not kind:
        msg = f"the slices of {sl.path}: a {dtype} discriminator on {path!r} is not evaluated"
        ctx.add("information", loc, msg, "not-supported", mid=M.SLICE_RESOLVE_UNRESOLVED)
        return False
    node = sl if before == "$this" else descend(sl, before)
    if node is None:
        return False
    profiles = [
        p
        for t in node.types
        if t.get("code") == "Reference"
        for p in t.get("targetProfile") or []
        if isinstance(p, str)
    ]
    for ref in (r for r in follow(value, before) if isinstance(r, dict)):
        text = ref.get("reference")
        target = find_target(text, ctx) if isinstance(text, str) else None
        if kind == "type":
            rtype = target.get("resourceType") if target is not None else None
            if rtype is None and isinstance(text, str):
                m = _LITERAL_REF.fullmatch(text)
                rtype = m.group("type") if m and m.group("type") in v.defs.resource_types else None
            if rtype is None and isinstance(ref.get("type"), str):
                rtype = ref["type"]
            if rtype is None:
                _unresolved(sl, text, ctx, loc)
                continue
            allowed = target_types(v, node, "Reference")
            if not allowed or rtype in allowed or "Resource" in allowed:
                return True
            continue
        if target is None:
            _unresolved(sl, text, ctx, loc)
            continue
        for p in profiles:
            sd = v.defs.sd(p)
            if sd is None or sd.type != target.get("resourceType"):
                continue
            if kind == "profile":
                if not _has_errors_against(v, target, sd):
                    return True
                continue
            got = follow(target, after)
            want = _slice_value(sd.root, after, False)  # the target profile's fixed value or pattern
            if want is not None:
                if any(pattern_match(want, g) for g in got):
                    return True
            elif _in_required_binding(v, descend(sd.root, after), got):
                return True
    return False


def _in_required_binding(v: Validator, node: Node | None, values: list[Any]) -> bool:
    """A value discriminator met by a required binding (no fixed value there): a code of the
    bound value set, when it can be expanded locally."""
    binding = node.binding if node is not None else None
    if not binding or binding.get("strength") != "required" or not isinstance(binding.get("valueSet"), str):
        return False
    codes = v.terminology.expand(binding["valueSet"]).codes
    if not codes:
        return False
    for val in values:
        codings = val.get("coding") if isinstance(val, dict) and "coding" in val else [val]
        for c in codings if isinstance(codings, list) else []:
            if isinstance(c, dict) and (c.get("system"), c.get("code")) in codes:
                return True
    return False


def _unresolved(sl: Node, text: Any, ctx: Ctx, loc: str) -> None:
    msg = (
        f"the slices of {sl.path} cannot be evaluated: the reference {text!r} "
        "does not resolve within the resource or its bundle"
    )
    ctx.add("information", loc, msg, "not-found", mid=M.SLICE_RESOLVE_UNRESOLVED)


def find_target(ref: str, ctx: Ctx) -> dict[str, Any] | None:
    """The resource a reference names within the container or the Bundle, or None."""
    from procfhir.validator.rules import _LITERAL_REF

    ctx.looked_outside()  # (a Bundle, or none: the resource's place, not its content)
    ctx.looked_at_resource()
    if ref.startswith("#"):
        contained = ctx.root.get("contained")
        for c in contained if isinstance(contained, list) else []:
            if isinstance(c, dict) and c.get("id") == ref[1:]:
                return c
        return None
    bundle = ctx.bundle
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if not isinstance(entries, list):
        return None
    m = _LITERAL_REF.fullmatch(ref)
    for e in entries:
        r = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(r, dict):
            continue
        if e.get("fullUrl") == ref:
            return r
        if m is not None and r.get("resourceType") == m.group("type") and r.get("id") == m.group("id"):
            return r
    return None
