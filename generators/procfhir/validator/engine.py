"""The validator: walks a resource against StructureDefinition snapshots (core and profiles)."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

from procfhir.jsonwalk import strings
from procfhir.validator.definitions import CompiledSD, Definitions, DefinitionsError, Node
from procfhir.validator.invariants import Invariants
from procfhir.validator.issues import Issue
from procfhir.validator.terminology import Terminology
from procfhir.validator.xhtml import check_div

_EXT_TYPES = ("Extension",)
_ID_RE = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
_LITERAL_REF = re.compile(
    r"(?:(?P<base>https?://\S+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-\.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-\.]{1,64})?"
)
_EXAMPLE_HOSTS = re.compile(r"^https?://([^/]*\.)?(example\.(org|com|net)|acme\.(com|org))(/|$)")
_INT_TYPES = {
    "integer": (-2147483648, 2147483647),
    "positiveInt": (1, 2147483647),
    "unsignedInt": (0, 2147483647),
}
_STRING_JSON = {
    "string",
    "code",
    "id",
    "markdown",
    "uri",
    "url",
    "canonical",
    "oid",
    "uuid",
    "base64Binary",
    "instant",
    "date",
    "dateTime",
    "time",
    "xhtml",
}
_SEVERITY_BY_STRENGTH = {"required": "error", "extensible": "warning", "preferred": "information"}
_CODED = {"code", "Coding", "CodeableConcept", "string", "uri"}


def _pattern_match(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(_pattern_match(v, value.get(k)) for k, v in pattern.items())
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return False
        return all(any(_pattern_match(p, v) for v in value) for p in pattern)
    return pattern == value


def _jtype(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


class _Ctx:
    """Per-resource state: the resource being validated and its issues."""

    __slots__ = ("resource", "root", "issues", "source", "seen")

    def __init__(self, resource: dict[str, Any], issues: list[Issue], source: str) -> None:
        self.resource = resource
        self.root = resource  # the container whose contained resources '#id' references name
        self.issues = issues
        self.source = source
        self.seen: set[tuple[str, str, str]] = set()

    def add(self, severity: str, location: str, message: str, code: str = "invalid", key: str = "") -> None:
        sig = (severity, location, message)
        if sig in self.seen:
            return
        self.seen.add(sig)
        self.issues.append(Issue(severity, location, message, code, key, self.source))


class Validator:
    """Validate FHIR R4 resources (JSON dicts) against core and profiles.

    ``extra_definitions``: conformance and knowledge resources beyond core (a package's profiles,
    extensions, ValueSets, CodeSystems, PlanDefinitions...): they resolve canonical references and
    meta.profile. ``core_dir``: the core package folder (default: the FHIR package cache)."""

    def __init__(
        self,
        extra_definitions: list[dict[str, Any]] | None = None,
        core_dir: Path | None = None,
        unknown_extension_severity: str = "error",
    ) -> None:
        self.defs = Definitions(extra_definitions, core_dir)
        self.terminology = Terminology(self.defs)
        self.invariants = Invariants()
        self.unknown_extension_severity = unknown_extension_severity
        self._regex: dict[str, re.Pattern[str] | None] = {}

    def add_definitions(self, resources: list[dict[str, Any]]) -> None:
        for r in resources:
            self.defs.add(r)

    # ---------------------------------------------------------------- entry point
    def validate(self, resource: Any, profile: str | None = None, source: str = "") -> list[Issue]:
        """All issues for one resource (against core, its meta.profile and ``profile``)."""
        issues: list[Issue] = []
        ctx = _Ctx(resource if isinstance(resource, dict) else {}, issues, source)
        try:
            self._resource(resource, "", ctx, profile)
        except DefinitionsError as exc:
            ctx.add("fatal", "", str(exc), "processing")
        except RecursionError:
            ctx.add("fatal", "", "the resource is nested too deeply to validate", "too-costly")
        return issues

    def _resource(
        self, res: Any, loc: str, ctx: _Ctx, profile: str | None = None, contained: bool = False
    ) -> None:
        if not isinstance(res, dict):
            ctx.add(
                "error", loc, f"expected a FHIR resource (a JSON object), found {_jtype(res)}", "structure"
            )
            return
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            ctx.add("error", loc, "not a FHIR resource: no resourceType", "structure")
            return
        if rtype not in self.defs.resource_types:
            ctx.add("error", loc, f"unknown resourceType {rtype!r} (not an R4 resource type)", "structure")
            return
        loc = loc or rtype
        outer, outer_root = ctx.resource, ctx.root
        ctx.resource = res
        if not contained:
            ctx.root = res
        try:
            profiles: list[str] = []
            meta = res.get("meta")
            if isinstance(meta, dict) and isinstance(meta.get("profile"), list):
                profiles = [p for p in meta["profile"] if isinstance(p, str)]
            if profile:
                profiles = [profile] + [p for p in profiles if p != profile]
            sds: list[CompiledSD] = []
            for url in profiles:
                sd = self.defs.sd(url)
                if sd is None:
                    where = f"{loc}.meta.profile" if url != profile else loc
                    ctx.add(
                        "error",
                        where,
                        f"profile {url} cannot be found (not in core nor in the package's definitions)",
                        "not-found",
                    )
                elif sd.type != rtype:
                    ctx.add("error", loc, f"profile {url} is for {sd.type}, not {rtype}", "invalid")
                else:
                    sds.append(sd)
            if not sds:  # a profile's snapshot contains all of core's rules
                core = self.defs.type_sd(rtype)
                assert core is not None
                sds = [core]
            rid = res.get("id")
            if rid is not None and (not isinstance(rid, str) or not _ID_RE.fullmatch(rid)):
                ctx.add(
                    "error", f"{loc}.id", f"invalid resource id {rid!r} (1-64 of A-Z a-z 0-9 - .)", "value"
                )
            for sd in sds:
                self._instance(res, sd.root, rtype, loc, ctx, host=None)
            if isinstance(res.get("contained"), list) and not contained:
                self._dom3(res, loc, ctx)
            if rtype == "StructureDefinition" and res.get("derivation") == "constraint":
                self._differential(res, loc, ctx)
        finally:
            ctx.resource, ctx.root = outer, outer_root

    # ---------------------------------------------------------------- one value at one node
    def _instance(self, value: Any, node: Node, tcode: str, loc: str, ctx: _Ctx, host: Node | None) -> None:
        if tcode in ("Resource", "DomainResource") and node is not node.sd.root:
            self._resource(value, loc, ctx, contained=node.name == "contained")
            return
        primitive = tcode[:1].islower()
        if primitive:
            self._primitive(value, tcode, loc, ctx)
        elif not isinstance(value, dict):
            ctx.add("error", loc, f"{tcode} must be a JSON object, found {_jtype(value)}", "structure")
            return
        elif not value or set(value) == {"id"}:
            ctx.add("error", loc, "an element must have a value or children (ele-1)", "invariant", "ele-1")
        if node.fixed is not None:
            key, want = node.fixed
            if value != want:
                ctx.add(
                    "error",
                    loc,
                    f"value must be exactly {_short(want)} ({key}), found {_short(value)}",
                    "value",
                )
        if node.pattern is not None:
            key, want = node.pattern
            if not _pattern_match(want, value):
                ctx.add(
                    "error",
                    loc,
                    f"value must match the pattern {_short(want)} ({key}), found {_short(value)}",
                    "value",
                )
        if node.binding is not None and tcode in _CODED:
            self._binding(value, tcode, node, loc, ctx)
        if tcode == "Coding" and isinstance(value, dict):
            self._coding_in_system(value, loc, ctx)
        elif tcode == "CodeableConcept" and isinstance(value, dict) and isinstance(value.get("coding"), list):
            for i, c in enumerate(value["coding"]):
                if isinstance(c, dict):
                    self._coding_in_system(c, f"{loc}.coding[{i}]", ctx)
        if primitive:
            if tcode == "canonical" and isinstance(value, str):
                self._canonical(value, node, loc, ctx)
            if node.constraints:
                self._invariants(value, node.constraints, node, loc, ctx)
            return
        # complex: children from this definition, or from the type's (profile's) definition
        tsd = self._type_sd(node, tcode)
        constraints = node.constraints
        if tsd is not None and tsd.root is not node and tsd.root.constraints:
            have = {c.get("key") for c in constraints}
            constraints = constraints + [c for c in tsd.root.constraints if c.get("key") not in have]
        if node.children:
            parent = node
        elif node.content_ref:
            target = node.sd.node_for_ref(node.content_ref)
            parent = target if target is not None else node
        elif tsd is not None:
            parent = tsd.root
        else:
            ctx.add("error", loc, f"type {tcode} is unknown", "structure")
            return
        self._children(value, parent, loc, ctx, is_root=node is node.sd.root and node.sd.kind == "resource")
        if constraints:
            self._invariants(value, constraints, node, loc, ctx)
        if tcode == "Reference":
            self._reference(value, node, loc, ctx)
        elif tcode == "Narrative" and isinstance(value.get("div"), str):
            for msg, code in check_div(value["div"]):
                ctx.add("error", f"{loc}.div", msg, code, "txt-1" if code != "invariant" else "txt-2")
        elif tcode == "Extension":
            self._extension_context(value, node, loc, ctx, host)

    def _dom3(self, res: dict[str, Any], loc: str, ctx: _Ctx) -> None:
        """dom-3, natively: every contained resource is referenced ('#id') from elsewhere in the
        resource, or itself refers to its container ('#')."""

        def local_refs(value: Any, out: set[str]) -> None:
            out.update(s for s in strings(value) if s.startswith("#"))

        for i, c in enumerate(res["contained"]):
            if not isinstance(c, dict):
                continue
            elsewhere: set[str] = set()
            local_refs({k: v for k, v in res.items() if k != "contained"}, elsewhere)
            for j, other in enumerate(res["contained"]):
                if j != i:
                    local_refs(other, elsewhere)
            own: set[str] = set()
            local_refs(c, own)
            if f"#{c.get('id')}" not in elsewhere and "#" not in own:
                ctx.add(
                    "error",
                    f"{loc}.contained[{i}]",
                    f"contained resource {c.get('id')!r} is not referenced "
                    "from elsewhere in the resource and does not refer to it (dom-3)",
                    "invariant",
                    "dom-3",
                )

    def _differential(self, sd: dict[str, Any], loc: str, ctx: _Ctx) -> None:
        """A profile's differential must apply to its base (as HL7 snapshot generators require)."""
        from procfhir.validator.snapshot import SnapshotError, generate_snapshot

        if not isinstance((sd.get("differential") or {}).get("element"), list):
            return
        try:
            generate_snapshot(sd, self.defs)
        except SnapshotError as exc:
            ctx.add(
                "error",
                f"{loc}.differential",
                f"the differential cannot be applied to its base: {exc}",
                "structure",
            )
        except (KeyError, TypeError, ValueError) as exc:
            ctx.add("error", f"{loc}.differential", f"the differential is malformed: {exc!r}", "structure")

    def _type_sd(self, node: Node, tcode: str) -> CompiledSD | None:
        for t in node.types:
            if t.get("code") == tcode and t.get("profile"):
                for p in t["profile"]:
                    sd = self.defs.sd(p)
                    if sd is not None:
                        return sd
        if node is node.sd.root:
            return node.sd
        return self.defs.type_sd(tcode)

    # ---------------------------------------------------------------- children of an object
    def _children(self, obj: dict[str, Any], parent: Node, loc: str, ctx: _Ctx, is_root: bool) -> None:
        keymap = parent.keymap()
        groups: dict[str, list[tuple[str, str, Any, bool]]] = {}
        for key, value in obj.items():
            if key == "resourceType" and is_root:
                continue
            if key == "fhir_comments":
                continue
            if key.startswith("_"):
                hit = keymap.get(key[1:])
                if hit is None or not hit[1][:1].islower():
                    ctx.add("error", f"{loc}.{key}", f"unknown element {key!r}", "structure")
                    continue
                self._primitive_ext(value, hit[1], f"{loc}.{key[1:]}", ctx, parent.children[hit[0]])
                continue
            hit = keymap.get(key)
            if hit is None:
                msg = f"unknown element {key!r}"
                for name, child in parent.children.items():
                    if child.choice and key.startswith(name) and len(key) > len(name):
                        allowed = ", ".join(name + c[:1].upper() + c[1:] for c in child.type_codes())
                        suffix = key[len(name) :]
                        msg = f"{key!r}: type {suffix} is not allowed for {name}[x] (allowed: {allowed})"
                ctx.add("error", f"{loc}.{key}", msg, "structure")
                continue
            name, tcode = hit
            groups.setdefault(name, []).append((key, tcode, value, key[:1] != "_"))
        for name, child in parent.children.items():
            entries = groups.get(name)
            if name == "id" and not is_root and entries:
                pass
            if not entries:
                if child.min > 0 and not self._has_primitive_ext_only(obj, name, child):
                    ctx.add(
                        "error",
                        f"{loc}.{name}" if not child.choice else f"{loc}.{name}[x]",
                        f"minimum cardinality of {child.path} is {child.min}, found 0",
                        "required",
                    )
                if child.slices:
                    self._slices(child, [], loc, ctx, parent)
                continue
            if child.choice and len(entries) > 1:
                ctx.add(
                    "error",
                    f"{loc}.{entries[1][0]}",
                    f"only one of {name}[x] may be present ({', '.join(e[0] for e in entries)})",
                    "structure",
                )
            key, tcode, value, _ = entries[0]
            items: list[tuple[str, Any]]
            if isinstance(value, list):
                if not child.repeats:
                    ctx.add(
                        "error",
                        f"{loc}.{key}",
                        f"{child.path} has max cardinality 1: it must not be an array",
                        "structure",
                    )
                if not value:
                    ctx.add("error", f"{loc}.{key}", "arrays must not be empty", "structure")
                items = [(f"{loc}.{key}[{i}]", v) for i, v in enumerate(value)]
            else:
                if child.repeats:
                    ctx.add(
                        "error",
                        f"{loc}.{key}",
                        f"{child.path} repeats (max {child.max or '*'}): it must be a JSON array",
                        "structure",
                    )
                items = [(f"{loc}.{key}", value)]
            count = len(items)
            if count < child.min:
                ctx.add(
                    "error",
                    f"{loc}.{key}",
                    f"minimum cardinality of {child.path} is {child.min}, found {count}",
                    "required",
                )
            if child.max is not None and count > child.max:
                ctx.add(
                    "error",
                    f"{loc}.{key}",
                    f"maximum cardinality of {child.path} is {child.max}, found {count}",
                    "structure",
                )
            if not tcode:
                codes = child.type_codes()
                tcode = codes[0] if codes else ("BackboneElement" if child.children else "Element")
            real = [(iloc, v) for iloc, v in items if v is not None]
            for iloc, v in items:
                if v is None and not (isinstance(value, list) and f"_{key}" in obj):
                    ctx.add("error", iloc, "null is not allowed here", "structure")
            if child.slices or tcode in _EXT_TYPES:
                self._slices(child, [(iloc, v, tcode) for iloc, v in real], loc, ctx, parent)
            else:
                for iloc, v in real:
                    self._instance(v, child, tcode, iloc, ctx, parent)

    def _has_primitive_ext_only(self, obj: dict[str, Any], name: str, child: Node) -> bool:
        if child.choice:
            return any(k.startswith("_" + name) for k in obj)
        return "_" + name in obj

    def _primitive_ext(self, value: Any, tcode: str, loc: str, ctx: _Ctx, node: Node) -> None:
        tsd = self.defs.type_sd(tcode)
        if tsd is None:
            return
        vals = value if isinstance(value, list) else [value]
        for i, v in enumerate(vals):
            iloc = f"{loc}[{i}]" if isinstance(value, list) else loc
            if v is None:
                continue
            if not isinstance(v, dict):
                ctx.add("error", iloc, f"_{node.name} must hold objects (id, extension)", "structure")
                continue
            bad = [k for k in v if k not in ("id", "extension", "fhir_comments")]
            for k in bad:
                ctx.add(
                    "error",
                    f"{iloc}.{k}",
                    f"unknown element {k!r} in a primitive's extension holder",
                    "structure",
                )
            if "extension" in v:
                ext_node = tsd.root.children.get("extension")
                if ext_node is not None and isinstance(v["extension"], list):
                    self._slices(
                        ext_node,
                        [(f"{iloc}.extension[{j}]", e, "Extension") for j, e in enumerate(v["extension"])],
                        iloc,
                        ctx,
                        node,
                    )

    # ---------------------------------------------------------------- primitives
    def _primitive(self, value: Any, tcode: str, loc: str, ctx: _Ctx) -> None:
        if tcode == "boolean":
            if not isinstance(value, bool):
                ctx.add("error", loc, f"boolean expected, found {_jtype(value)} {_short(value)}", "structure")
            return
        if tcode in _INT_TYPES:
            if not isinstance(value, int) or isinstance(value, bool):
                ctx.add(
                    "error",
                    loc,
                    f"{tcode} must be a JSON integer, found {_jtype(value)} {_short(value)}",
                    "structure",
                )
                return
            lo, hi = _INT_TYPES[tcode]
            if not lo <= value <= hi:
                ctx.add("error", loc, f"{tcode} {value} is out of range [{lo}, {hi}]", "value")
            return
        if tcode == "decimal":
            if not isinstance(value, int | float) or isinstance(value, bool):
                ctx.add(
                    "error",
                    loc,
                    f"decimal must be a JSON number, found {_jtype(value)} {_short(value)}",
                    "structure",
                )
            return
        if tcode in _STRING_JSON or tcode not in self.defs.core_types:
            if not isinstance(value, str):
                ctx.add(
                    "error",
                    loc,
                    f"{tcode} must be a JSON string, found {_jtype(value)} {_short(value)}",
                    "structure",
                )
                return
            if tcode == "xhtml":
                return
            rx = self._regex_for(tcode)
            if value == "" or (value.strip() == "" and tcode != "string"):
                ctx.add("error", loc, f"{tcode} must not be empty", "value")
                return
            if value != value.strip() and tcode not in ("string", "markdown"):
                ctx.add("error", loc, f"{tcode} {value!r} has leading or trailing whitespace", "value")
            elif rx is not None and not rx.fullmatch(value):
                ctx.add("error", loc, f"{value!r} is not a valid {tcode}", "value")
            elif tcode in ("date", "dateTime", "instant") and len(value) >= 10:
                try:
                    _dt.date(int(value[:4]), int(value[5:7]), int(value[8:10]))
                except ValueError:
                    ctx.add("error", loc, f"{value!r} is not a valid {tcode}: no such calendar date", "value")

    def _regex_for(self, tcode: str) -> re.Pattern[str] | None:
        if tcode not in self._regex:
            sd = self.defs.type_sd(tcode)
            rx = sd.regex if sd is not None else None
            try:
                self._regex[tcode] = re.compile(rx) if rx else None
            except re.error:
                self._regex[tcode] = None
        return self._regex[tcode]

    # ---------------------------------------------------------------- slicing and extensions
    def _slices(
        self, child: Node, items: list[tuple[str, Any, str]], loc: str, ctx: _Ctx, parent: Node
    ) -> None:
        slicing = child.slicing or {}
        discs = slicing.get("discriminator") or []
        is_ext = bool(child.types) and child.types[0].get("code") in _EXT_TYPES
        if is_ext and not discs:
            discs = [{"type": "value", "path": "url"}]
        matched: dict[int, list[tuple[str, Any, str]]] = {i: [] for i in range(len(child.slices))}
        for iloc, v, tcode in items:
            which = None
            for i, sl in enumerate(child.slices):
                if self._matches_slice(v, sl, discs, is_ext):
                    which = i
                    break
            if which is not None:
                matched[which].append((iloc, v, tcode))
                continue
            if slicing.get("rules") == "closed":
                ctx.add(
                    "error",
                    iloc,
                    f"does not match any slice of {child.path} (slicing is closed)",
                    "structure",
                )
                continue
            if is_ext:
                self._unsliced_extension(v, child, tcode, iloc, ctx, parent)
            else:
                self._instance(v, child, tcode, iloc, ctx, parent)
        for i, sl in enumerate(child.slices):
            got = matched[i]
            if len(got) < sl.min:
                ctx.add(
                    "error",
                    f"{loc}.{child.name}",
                    f"slice {child.path}:{sl.slice_name} needs at least {sl.min}, found {len(got)}",
                    "required",
                )
            if sl.max is not None and len(got) > sl.max:
                ctx.add(
                    "error",
                    got[sl.max][0],
                    f"slice {child.path}:{sl.slice_name} allows at most {sl.max}, found {len(got)}",
                    "structure",
                )
            for iloc, v, tcode in got:
                self._instance(v, sl, tcode, iloc, ctx, parent)

    def _matches_slice(self, value: Any, sl: Node, discs: list[dict[str, Any]], is_ext: bool) -> bool:
        if not isinstance(value, dict) and not discs:
            return False
        for d in discs:
            path = d.get("path", "$this")
            dtype = d.get("type", "value")
            if dtype in ("value", "pattern"):
                want = self._slice_value(sl, path, is_ext)
                if want is None:
                    return False
                got = _follow(value, path)
                if not any(_pattern_match(want, g) for g in got):
                    return False
            elif dtype == "exists":
                target = sl if path == "$this" else _descend(sl, path)
                must = target is not None and target.min > 0
                if must != bool(_follow(value, path)):
                    return False
            elif dtype == "type":
                target = sl if path == "$this" else _descend(sl, path)
                codes = target.type_codes() if target else []
                got = _follow(value, path)
                if not got or not isinstance(got[0], dict) or got[0].get("resourceType") not in codes:
                    return False
            else:
                return False  # profile discriminators: not used by our profiles
        return True

    def _slice_value(self, sl: Node, path: str, is_ext: bool) -> Any:
        target = sl if path == "$this" else _descend(sl, path)
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
        self, value: Any, child: Node, tcode: str, loc: str, ctx: _Ctx, parent: Node
    ) -> None:
        url = value.get("url") if isinstance(value, dict) else None
        if not isinstance(url, str):
            self._instance(value, child, tcode, loc, ctx, parent)  # reports the missing url
            return
        sd = self.defs.sd(url) if "/" in url or ":" in url else None
        if sd is None:
            if parent.sd.type == "Extension" and "/" not in url:
                ctx.add(
                    "error",
                    loc,
                    f"sub-extension {url!r} is not defined by extension {parent.sd.url}",
                    "extension",
                )
            else:
                ours = any(
                    url.startswith(f"{b}StructureDefinition/")
                    for b, t in self.defs.package_types
                    if t == "StructureDefinition"
                )
                example = _EXAMPLE_HOSTS.match(url) and not ours
                sev = "warning" if example else self.unknown_extension_severity
                ctx.add(
                    sev,
                    loc,
                    f"unknown extension {url} (no StructureDefinition in core or the package)",
                    "extension",
                )
            self._instance(value, child, tcode, loc, ctx, parent)
            return
        if sd.type != "Extension":
            ctx.add("error", loc, f"{url} is a {sd.type} definition, not an extension", "extension")
            return
        self._instance(value, sd.root, "Extension", loc, ctx, parent)

    def _extension_context(
        self, value: dict[str, Any], node: Node, loc: str, ctx: _Ctx, host: Node | None
    ) -> None:
        sd = node.sd
        if sd.type != "Extension" or node is not sd.root or host is None or host.sd.type == "Extension":
            return
        contexts = sd.resource.get("context") or []
        if not contexts:
            return
        host_path = host.path
        host_types = set(host.type_codes()) | {host.sd.type if host is host.sd.root else ""}
        is_resource = host is host.sd.root and host.sd.kind == "resource"
        for c in contexts:
            expr = c.get("expression", "")
            if c.get("type") != "element":
                return  # fhirpath/extension contexts: not judged
            if expr in ("Element", "Base") or expr == host_path or expr in host_types:
                return
            if expr.startswith(host_path + "."):
                return  # core itself puts e.g. structuredefinition-fhir-type on ElementDefinition.type
            if is_resource and expr in ("Resource", "DomainResource"):
                return
            if expr.split(".", 1)[0] in ("BackboneElement",) and not is_resource:
                return
        allowed = ", ".join(c.get("expression", "") for c in contexts)
        ctx.add(
            "error",
            loc,
            f"extension {sd.url} is not allowed on {host_path} (its context: {allowed})",
            "extension",
        )

    # ---------------------------------------------------------------- terminology
    def _binding(self, value: Any, tcode: str, node: Node, loc: str, ctx: _Ctx) -> None:
        b = node.binding or {}
        strength = b.get("strength")
        vs_url = b.get("valueSet")
        severity = _SEVERITY_BY_STRENGTH.get(strength or "")
        if severity is None or not isinstance(vs_url, str):
            return
        exp = self.terminology.expand(vs_url)
        if exp.grammar:
            self._grammar_binding(value, tcode, exp.grammar, severity, strength, vs_url, loc, ctx)
            return
        if not exp.expandable:
            if strength in ("required", "extensible"):
                ctx.add(
                    "information",
                    loc,
                    f"{strength} binding to {vs_url} not checked: the value set "
                    f"cannot be expanded locally ({exp.reason})",
                    "not-supported",
                )
            return
        codes = exp.codes or frozenset()
        if tcode in ("code", "string", "uri"):
            if not isinstance(value, str) or value.startswith("http://hl7.org/fhirpath/System."):
                return  # FHIRPath system types (ElementDefinition.type.code of id/url elements)
            if not any(c == value for _, c in codes):
                ctx.add(
                    severity,
                    loc,
                    f"code {value!r} is not in the {strength} value set {vs_url}",
                    "code-invalid",
                )
            return
        codings = (
            [value] if tcode == "Coding" else (value.get("coding") or [] if isinstance(value, dict) else [])
        )
        codings = [c for c in codings if isinstance(c, dict)]
        if not codings:
            if strength == "required":
                ctx.add(
                    "error",
                    loc,
                    f"no code given: a code from the required value set {vs_url} is needed",
                    "code-invalid",
                )
            return
        if any((c.get("system"), c.get("code")) in codes for c in codings):
            return
        shown = ", ".join(f"{c.get('system')}#{c.get('code')}" for c in codings)
        ctx.add(
            severity,
            loc,
            f"none of the codes ({shown}) is in the {strength} value set {vs_url}",
            "code-invalid",
        )

    def _grammar_binding(
        self,
        value: Any,
        tcode: str,
        grammar: dict[str, re.Pattern[str]],
        severity: str,
        strength: str,
        vs_url: str,
        loc: str,
        ctx: _Ctx,
    ) -> None:
        if tcode in ("code", "string", "uri"):
            if isinstance(value, str) and not any(rx.fullmatch(value) for rx in grammar.values()):
                ctx.add(
                    severity,
                    loc,
                    f"{value!r} is not a valid code of {', '.join(grammar)} ({strength} binding to {vs_url})",
                    "code-invalid",
                )
            return
        codings = (
            [value] if tcode == "Coding" else (value.get("coding") or []) if isinstance(value, dict) else []
        )
        for c in codings:
            ok = isinstance(c, dict) and c.get("system") in grammar and isinstance(c.get("code"), str)
            if ok and grammar[c["system"]].fullmatch(c["code"]):
                return
        if codings or strength == "required":
            ctx.add(
                severity,
                loc,
                f"no valid code of {', '.join(grammar)} ({strength} binding to {vs_url})",
                "code-invalid",
            )

    def _coding_in_system(self, coding: dict[str, Any], loc: str, ctx: _Ctx) -> None:
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            return
        cs = self.terminology.code_system(system)
        if cs is None or not cs.complete:
            return
        if code not in cs.codes:
            if cs.case_sensitive or code.lower() not in {c.lower() for c in cs.codes}:
                ctx.add(
                    "error", f"{loc}.code", f"unknown code {code!r} in code system {system}", "code-invalid"
                )
            return
        display = coding.get("display")
        want = cs.codes.get(code)
        if isinstance(display, str) and want and display.strip().lower() != want.strip().lower():
            ctx.add(
                "warning",
                f"{loc}.display",
                f"display {display!r} differs from the code system's {want!r} for {system}#{code}",
                "code-invalid",
            )

    # ---------------------------------------------------------------- references
    def _reference(self, value: dict[str, Any], node: Node, loc: str, ctx: _Ctx) -> None:
        ref = value.get("reference")
        if not isinstance(ref, str):
            return
        rtype = value.get("type") if isinstance(value.get("type"), str) else None
        if ref.startswith("#"):
            cid = ref[1:]
            if cid:
                contained = ctx.root.get("contained") or []
                hit = next((c for c in contained if isinstance(c, dict) and c.get("id") == cid), None)
                if hit is None:
                    ctx.add(
                        "error", f"{loc}.reference", f"{ref!r} refers to no contained resource", "not-found"
                    )
                    return
                rtype = hit.get("resourceType")
        elif ref.startswith(("urn:uuid:", "urn:oid:")):
            if not re.fullmatch(
                r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"
                r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+",
                ref,
            ):
                ctx.add("error", f"{loc}.reference", f"malformed {ref[:8]} reference {ref!r}", "value")
        else:
            m = _LITERAL_REF.fullmatch(ref)
            if m is None:
                ctx.add(
                    "error",
                    f"{loc}.reference",
                    f"malformed literal reference {ref!r} (expected [base/]Type/id, #id or urn:uuid:)",
                    "value",
                )
                return
            if m.group("type") not in self.defs.resource_types:
                ctx.add(
                    "error", f"{loc}.reference", f"{ref!r}: {m.group('type')} is not a resource type", "value"
                )
                return
            if rtype is not None and rtype != m.group("type"):
                ctx.add("error", f"{loc}.type", f"type {rtype} contradicts the reference {ref!r}", "value")
            rtype = m.group("type")
        if rtype:
            allowed = self._target_types(node, "Reference")
            if allowed and rtype not in allowed and "Resource" not in allowed:
                ctx.add(
                    "error",
                    f"{loc}.reference",
                    f"a {rtype} is not allowed here (allowed: {', '.join(sorted(allowed))})",
                    "structure",
                )

    def _target_types(self, node: Node, code: str) -> set[str]:
        out: set[str] = set()
        for t in node.types:
            if t.get("code") != code:
                continue
            for p in t.get("targetProfile") or []:
                name = p.rsplit("/", 1)[1]
                if p.startswith("http://hl7.org/fhir/StructureDefinition/") and name in self.defs.core_types:
                    out.add(name)
                else:
                    sd = self.defs.sd(p)
                    if sd is not None:
                        out.add(sd.type)
        return out

    def _canonical(self, value: str, node: Node, loc: str, ctx: _Ctx) -> None:
        if value.startswith("#"):
            return
        url = value.split("|", 1)[0]
        if node.path == "Meta.profile":  # reported as "profile cannot be found"
            return
        res = self.defs.resource(url)
        if res is None:
            # an error when the package defines resources of that type under that base (so this
            # one is missing); a warning when the validator was given none of that type
            in_package = any(url.startswith(f"{b}{t}/") for b, t in self.defs.package_types)
            core = (
                url.startswith("http://hl7.org/fhir/")
                and url.split("/")[4:5] != [""]
                and url.count("/") == 5
                and url.split("/")[3] in ("StructureDefinition", "ValueSet", "CodeSystem")
            )
            if in_package or core:
                ctx.add(
                    "error",
                    loc,
                    f"canonical {value} does not resolve (not in the package nor in core)",
                    "not-found",
                )
            else:
                ctx.add("warning", loc, f"canonical {value} cannot be resolved locally", "not-found")
            return
        allowed = self._target_types(node, "canonical")
        rtype = res.get("resourceType")
        if allowed and rtype not in allowed and "Resource" not in allowed:
            ctx.add(
                "error",
                loc,
                f"canonical {value} is a {rtype}; allowed here: {', '.join(sorted(allowed))}",
                "structure",
            )

    # ---------------------------------------------------------------- invariants
    def _invariants(
        self, value: Any, constraints: list[dict[str, Any]], node: Node, loc: str, ctx: _Ctx
    ) -> None:
        for c in constraints:
            key = c.get("key", "")
            if key == "dom-6" and ctx.resource is not ctx.root:
                continue  # contained resources carry no narrative of their own (the container's covers them)
            outcome = self.invariants.check(c, value, node.path, ctx.resource, ctx.root)
            if outcome is True:
                continue
            if outcome is False:
                sev = "error" if c.get("severity") == "error" else "warning"
                ctx.add(
                    sev,
                    loc,
                    f"{c.get('human', 'constraint failed')} ({key}: {c.get('expression')})",
                    "invariant",
                    key,
                )
            elif isinstance(outcome, str):
                ctx.add(
                    "warning", loc, f"invariant {key} could not be evaluated: {outcome}", "not-supported", key
                )


def _descend(node: Node, path: str) -> Node | None:
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


def _follow(value: Any, path: str) -> list[Any]:
    if path == "$this":
        return [value]
    cur = [value]
    for part in path.split("."):
        nxt: list[Any] = []
        for v in cur:
            if isinstance(v, dict) and part in v:
                got = v[part]
                nxt.extend(got if isinstance(got, list) else [got])
        cur = nxt
    return cur


def _short(value: Any) -> str:
    import json

    text = (
        json.dumps(value, sort_keys=True, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    )
    return text if len(text) <= 120 else text[:117] + "..."
