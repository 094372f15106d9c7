"""The children of a complex value: JSON properties matched to element definitions (unknown
properties, choice types, primitive-extension twins), cardinality and array shape, then slicing
and extensions. Each step is one small function; :func:`children` strings them together."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from procfhir.validator import messages as M
from procfhir.validator.definitions import DefinitionsError, Node
from procfhir.validator.engine import MAX_DEPTH, internal_error
from procfhir.validator.plan import PRIMITIVE
from procfhir.validator.rules import pattern_match

if TYPE_CHECKING:
    from procfhir.validator.engine import Ctx, Validator

_EXT_TYPES = ("Extension",)
_EXTENSION_STEP = re.compile(r"extension\('([^']*)'\)")
_EXAMPLE_HOSTS = re.compile(r"^https?://([^/]*\.)?(example\.(org|com|net)|acme\.(com|org))(/|$)")

# one JSON property for a child: (key, type code, value)
Entry = tuple[str, str, Any]


def children(v: Validator, obj: dict[str, Any], parent: Node, loc: str, ctx: Ctx, is_root: bool) -> None:
    """The object's properties against ``parent``'s children, in the definitions' order: those
    present, and those absent that have a minimum cardinality or slices."""
    table = parent.table or v.planner.table(parent)
    more: dict[str, list[Entry]] = {}  # a choice's further typed names (an error), rarely any
    groups = _group(v, obj, parent, table.keymap, loc, ctx, is_root, more)
    order = table.order
    kids = parent.children
    if not table.absent:  # only what is present: in the object's order when it is the definitions'
        if len(groups) > 1 and not _in_order(groups, order):
            for name in sorted(groups, key=order.__getitem__):
                _present(v, obj, name, kids[name], groups[name], more, loc, ctx, parent)
            return
        for name, entry in groups.items():
            _present(v, obj, name, kids[name], entry, more, loc, ctx, parent)
        return
    todo = [(order[name], name) for name in groups]
    todo.extend(a for a in table.absent if a[1] not in groups)
    todo.sort()
    for _, name in todo:
        got = groups.get(name)
        if got is None:
            _absent(v, obj, name, kids[name], loc, ctx, parent)
        else:
            _present(v, obj, name, kids[name], got, more, loc, ctx, parent)


def _in_order(groups: dict[str, Entry], order: dict[str, int]) -> bool:
    """Whether the names come in the definitions' order (JSON is mostly written so)."""
    last = -1
    for name in groups:
        i = order[name]
        if i < last:
            return False
        last = i
    return True


def _group(
    v: Validator,
    obj: dict[str, Any],
    parent: Node,
    keymap: dict[str, tuple[str, str]],
    loc: str,
    ctx: Ctx,
    is_root: bool,
    more: dict[str, list[Entry]],
) -> dict[str, Entry]:
    """The object's properties by child name, the first of each (a choice's further typed
    names in ``more``); unknown properties reported."""
    groups: dict[str, Entry] = {}
    for key, value in obj.items():
        if (key == "resourceType" and is_root) or key == "fhir_comments":
            continue
        if key[:1] == "_":
            hit = keymap.get(key[1:])
            if hit is None or not hit[1][:1].islower():
                ctx.add(
                    "error", f"{loc}.{key}", f"unknown element {key!r}", "structure", mid=M.UNKNOWN_ELEMENT
                )
                continue
            _primitive_ext(v, value, hit[1], f"{loc}.{key[1:]}", ctx, parent.children[hit[0]])
            continue
        hit = keymap.get(key)
        if hit is None:
            _unknown(key, parent, loc, ctx)
            continue
        name, tcode = hit
        if name not in groups:
            groups[name] = (key, tcode, value)
        else:
            more.setdefault(name, []).append((key, tcode, value))
    return groups


def _unknown(key: str, parent: Node, loc: str, ctx: Ctx) -> None:
    msg = f"unknown element {key!r}"
    mid = M.UNKNOWN_ELEMENT
    for name, child in parent.children.items():
        if child.choice and key.startswith(name) and len(key) > len(name):
            allowed = ", ".join(name + c[:1].upper() + c[1:] for c in child.type_codes())
            msg = f"{key!r}: type {key[len(name) :]} is not allowed for {name}[x] (allowed: {allowed})"
            mid = M.CHOICE_TYPE_NOT_ALLOWED
    ctx.add("error", f"{loc}.{key}", msg, "structure", mid=mid)


def _absent(
    v: Validator, obj: dict[str, Any], name: str, child: Node, loc: str, ctx: Ctx, parent: Node
) -> None:
    if child.min > 0:
        only_ext = any(k.startswith("_" + name) for k in obj) if child.choice else "_" + name in obj
        if not only_ext:
            where = f"{loc}.{name}" if not child.choice else f"{loc}.{name}[x]"
            msg = f"minimum cardinality of {child.path} is {child.min}, found 0"
            ctx.add("error", where, msg, "required", mid=M.CARD_MIN)
    if child.slices:
        slices(v, child, [], loc, ctx, parent)


def _present(
    v: Validator,
    obj: dict[str, Any],
    name: str,
    child: Node,
    entry: Entry,
    more: dict[str, list[Entry]],
    loc: str,
    ctx: Ctx,
    parent: Node,
) -> None:
    if more and name in more and child.choice:
        entries = [entry, *more[name]]
        msg = f"only one of {name}[x] may be present ({', '.join(e[0] for e in entries)})"
        ctx.add("error", f"{loc}.{entries[1][0]}", msg, "structure", mid=M.CHOICE_MULTIPLE)
    key, tcode, value = entry
    if not isinstance(value, list) and not child.slices and tcode and tcode not in _EXT_TYPES:
        # one value, no slicing (most properties): _items, _cardinality and the walk, inline
        if child.repeats:
            msg = f"{child.path} repeats (max {child.max or '*'}): it must be a JSON array"
            ctx.add("error", f"{loc}.{key}", msg, "structure", mid=M.MUST_BE_ARRAY)
        if child.min > 1 or (child.max is not None and child.max < 1):
            _cardinality(child, key, 1, loc, ctx)
        iloc = f"{loc}.{key}"
        if value is None:
            ctx.add("error", iloc, "null is not allowed here", "structure", mid=M.NULL_NOT_ALLOWED)
            return
        try:
            plan = child.plans.get(tcode)
            if plan is not None and plan.kind == PRIMITIVE and ctx.depth < MAX_DEPTH:
                for rule in plan.rules:  # Validator.instance of a primitive, inline
                    rule(v, value, child, tcode, iloc, ctx, parent)
            else:
                v.instance(value, child, tcode, iloc, ctx, parent)
        except (RecursionError, DefinitionsError):
            raise
        except Exception as exc:  # noqa: BLE001 - never a traceback: the failure is an issue
            ctx.add("fatal", iloc, internal_error(exc), "exception", mid=M.INTERNAL_ERROR)
        return
    items = _items(key, value, child, loc, ctx)
    _cardinality(child, key, len(items), loc, ctx)
    if not tcode:
        codes = child.type_codes()
        tcode = codes[0] if codes else ("BackboneElement" if child.children else "Element")
    real = []
    for iloc, item in items:
        if item is None:
            if not (isinstance(value, list) and f"_{key}" in obj):
                ctx.add("error", iloc, "null is not allowed here", "structure", mid=M.NULL_NOT_ALLOWED)
        else:
            real.append((iloc, item, tcode))
    if child.slices or tcode in _EXT_TYPES:
        slices(v, child, real, loc, ctx, parent)
    else:
        instance = v.instance
        plan = child.plans.get(tcode)
        rules_ = plan.rules if plan is not None and plan.kind == PRIMITIVE and ctx.depth < MAX_DEPTH else None
        for iloc, item, _ in real:
            try:  # Validator.safely, inline
                if rules_ is not None:
                    for rule in rules_:  # Validator.instance of a primitive, inline
                        rule(v, item, child, tcode, iloc, ctx, parent)
                else:
                    instance(item, child, tcode, iloc, ctx, parent)
            except (RecursionError, DefinitionsError):
                raise
            except Exception as exc:  # noqa: BLE001 - never a traceback: the failure is an issue
                ctx.add("fatal", iloc, internal_error(exc), "exception", mid=M.INTERNAL_ERROR)


def _items(key: str, value: Any, child: Node, loc: str, ctx: Ctx) -> list[tuple[str, Any]]:
    """The values of a property, with their locations; array shape checked against max."""
    if isinstance(value, list):
        if not child.repeats:
            msg = f"{child.path} has max cardinality 1: it must not be an array"
            ctx.add("error", f"{loc}.{key}", msg, "structure", mid=M.NOT_AN_ARRAY)
        if not value:
            ctx.add("error", f"{loc}.{key}", "arrays must not be empty", "structure", mid=M.ARRAY_EMPTY)
        kloc = f"{loc}.{key}"
        return [(f"{kloc}[{i}]", item) for i, item in enumerate(value)]
    if child.repeats:
        msg = f"{child.path} repeats (max {child.max or '*'}): it must be a JSON array"
        ctx.add("error", f"{loc}.{key}", msg, "structure", mid=M.MUST_BE_ARRAY)
    return [(f"{loc}.{key}", value)]


def _cardinality(child: Node, key: str, count: int, loc: str, ctx: Ctx) -> None:
    if count < child.min:
        msg = f"minimum cardinality of {child.path} is {child.min}, found {count}"
        ctx.add("error", f"{loc}.{key}", msg, "required", mid=M.CARD_MIN)
    if child.max is not None and count > child.max:
        msg = f"maximum cardinality of {child.path} is {child.max}, found {count}"
        ctx.add("error", f"{loc}.{key}", msg, "structure", mid=M.CARD_MAX)


def _primitive_ext(v: Validator, value: Any, tcode: str, loc: str, ctx: Ctx, node: Node) -> None:
    """The ``_name`` twin of a primitive: id and extensions only."""
    tsd = v.defs.type_sd(tcode)
    if tsd is None:
        return
    vals = value if isinstance(value, list) else [value]
    for i, item in enumerate(vals):
        iloc = f"{loc}[{i}]" if isinstance(value, list) else loc
        if item is None:
            continue
        if not isinstance(item, dict):
            msg = f"_{node.name} must hold objects (id, extension)"
            ctx.add("error", iloc, msg, "structure", mid=M.PRIMITIVE_EXT_HOLDER)
            continue
        for k in item:
            if k not in ("id", "extension", "fhir_comments"):
                msg = f"unknown element {k!r} in a primitive's extension holder"
                ctx.add("error", f"{iloc}.{k}", msg, "structure", mid=M.PRIMITIVE_EXT_HOLDER)
        ext_node = tsd.root.children.get("extension")
        if ext_node is not None and isinstance(item.get("extension"), list):
            exts = [(f"{iloc}.extension[{j}]", e, "Extension") for j, e in enumerate(item["extension"])]
            slices(v, ext_node, exts, iloc, ctx, node)


# ---------------------------------------------------------------- slicing and extensions
def slices(
    v: Validator, child: Node, items: list[tuple[str, Any, str]], loc: str, ctx: Ctx, parent: Node
) -> None:
    slicing = child.slicing or {}
    discs = slicing.get("discriminator") or []
    is_ext = bool(child.types) and child.types[0].get("code") in _EXT_TYPES
    if is_ext and not discs:
        discs = [{"type": "value", "path": "url"}]
    matched: dict[int, list[tuple[str, Any, str]]] = {i: [] for i in range(len(child.slices))}
    for iloc, item, tcode in items:
        which = next(
            (i for i, sl in enumerate(child.slices) if _matches_slice(v, item, sl, discs, is_ext, ctx, iloc)),
            None,
        )
        if which is not None:
            matched[which].append((iloc, item, tcode))
        elif slicing.get("rules") == "closed":
            msg = f"does not match any slice of {child.path} (slicing is closed)"
            ctx.add("error", iloc, msg, "structure", mid=M.SLICE_CLOSED)
        elif is_ext:
            _unsliced_extension(v, item, child, tcode, iloc, ctx, parent)
        else:
            v.safely(item, child, tcode, iloc, ctx, parent)
    for i, sl in enumerate(child.slices):
        got = matched[i]
        if len(got) < sl.min:
            msg = f"slice {child.path}:{sl.slice_name} needs at least {sl.min}, found {len(got)}"
            ctx.add("error", f"{loc}.{child.name}", msg, "required", mid=M.SLICE_MIN)
        if sl.max is not None and len(got) > sl.max:
            msg = f"slice {child.path}:{sl.slice_name} allows at most {sl.max}, found {len(got)}"
            ctx.add("error", got[sl.max][0], msg, "structure", mid=M.SLICE_MAX)
        if sl.slices:  # re-slicing: the slice's own slices share its items
            slices(v, sl, got, loc, ctx, parent)
            continue
        for iloc, item, tcode in got:
            v.safely(item, sl, tcode, iloc, ctx, parent)


def _matches_slice(
    v: Validator, value: Any, sl: Node, discs: list[dict[str, Any]], is_ext: bool, ctx: Ctx, loc: str
) -> bool:
    if not isinstance(value, dict) and not discs:
        return False
    for d in discs:
        path = d.get("path", "$this")
        if "resolve()" in path:  # the reference resolved within the resource or its bundle
            from procfhir.validator.resolve import resolve_matches

            if not resolve_matches(v, value, sl, d.get("type", "value"), path, ctx, loc):
                return False
        elif not _disc_matches(v, value, sl, d.get("type", "value"), path, is_ext):
            return False
    return True


def _disc_matches(v: Validator, value: Any, sl: Node, dtype: str, path: str, is_ext: bool) -> bool:
    if dtype in ("value", "pattern"):
        want = _slice_value(sl, path, is_ext)
        return want is not None and any(pattern_match(want, g) for g in follow(value, path))
    if dtype == "exists":
        target = sl if path == "$this" else descend(sl, path)
        must = target is not None and target.min > 0
        return must == bool(follow(value, path))
    if dtype == "type":
        target = sl if path == "$this" else descend(sl, path)
        codes = target.type_codes() if target else []
        got = follow(value, path)
        if not got:
            return False
        g = got[0]
        if isinstance(g, dict) and "resourceType" in g:
            return g.get("resourceType") in codes
        return len(codes) == 1 and path == "$this"
    if dtype == "profile":
        target = sl if path == "$this" else descend(sl, path)
        profs = [p for t in (target.types if target else []) for p in t.get("profile") or []]
        got = follow(value, path)
        for p in profs:
            sd = v.defs.sd(p)
            if sd is None:
                continue
            for g in got:
                if isinstance(g, dict) and not _has_errors_against(v, g, sd):
                    return True
        return False
    return False


def _has_errors_against(v: Validator, value: dict[str, Any], sd: Any) -> bool:
    from procfhir.validator.engine import Ctx

    issues: list[Any] = []
    probe = Ctx(value, issues, "")
    rtype = value.get("resourceType")
    v.safely(value, sd.root, rtype if isinstance(rtype, str) else sd.type, sd.type, probe, None)
    return any(i.is_error for i in issues)


def _slice_value(sl: Node, path: str, is_ext: bool) -> Any:
    target = sl if path == "$this" else descend(sl, path)
    if target is not None:
        if target.fixed is not None:
            return target.fixed[1]
        if target.pattern is not None:
            return target.pattern[1]
    if is_ext and path == "url":
        for t in sl.types:
            for p in t.get("profile") or []:
                return p
    return None


def _unsliced_extension(
    v: Validator, value: Any, child: Node, tcode: str, loc: str, ctx: Ctx, parent: Node
) -> None:
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str):
        v.safely(value, child, tcode, loc, ctx, parent)  # reports the missing url
        return
    sd = v.defs.sd(url) if "/" in url or ":" in url else None
    if sd is None:
        why = v.defs.sd_errors.get(url)
        if why:
            msg = f"extension {url} cannot be used: {why}"
            ctx.add("error", loc, msg, "processing", mid=M.PROFILE_UNUSABLE)
        elif parent.sd.type == "Extension" and "/" not in url:
            msg = f"sub-extension {url!r} is not defined by extension {parent.sd.url}"
            ctx.add("error", loc, msg, "extension", mid=M.EXT_SUB_UNKNOWN)
        else:
            example = _EXAMPLE_HOSTS.match(url) and not v.strict
            sev = "warning" if example else v.unknown_extension_severity
            msg = f"unknown extension {url} (no StructureDefinition in core or the package)"
            ctx.add(sev, loc, msg, "extension", mid=M.EXT_UNKNOWN)
        v.safely(value, child, tcode, loc, ctx, parent)
        return
    if sd.type != "Extension":
        msg = f"{url} is a {sd.type} definition, not an extension"
        ctx.add("error", loc, msg, "extension", mid=M.EXT_NOT_EXTENSION)
        return
    v.safely(value, sd.root, "Extension", loc, ctx, parent)


def descend(node: Node, path: str) -> Node | None:
    cur: Node | None = node
    for part in path.split("."):
        if cur is None:
            return None
        part = part.split("(", 1)[0]
        nxt = cur.children.get(part)
        if nxt is None and part.startswith("extension") is False:
            nxt = cur.children.get(part.replace("[x]", ""))
        cur = nxt
    return cur


def follow(value: Any, path: str) -> list[Any]:
    if path == "$this":
        return [value]
    cur = [value]
    for part in path.split("."):
        nxt: list[Any] = []
        m = _EXTENSION_STEP.fullmatch(part)
        for item in cur:
            if not isinstance(item, dict):
                continue
            if m:
                nxt.extend(
                    e
                    for e in item.get("extension") or []
                    if isinstance(e, dict) and e.get("url") == m.group(1)
                )
            elif part.startswith("ofType("):
                nxt.append(item)
            elif part in item:
                got = item[part]
                nxt.extend(got if isinstance(got, list) else [got])
        cur = nxt
    return cur
