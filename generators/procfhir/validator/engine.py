"""The validator: walks a resource against StructureDefinition snapshots (core and profiles).

The walk (this module) finds, for every JSON value, its element definition and type; the checks
on a value are rule families (:mod:`procfhir.validator.rules`), each a function of one signature
``rule(validator, value, node, type code, location, context)`` listed in a table per type, in
the way of the HL7 validator's per-type checks and fhir-schema's table of small checks.

No input makes it raise: an unexpected failure inside a rule becomes a ``fatal`` issue
(``INTERNAL_ERROR``) at the element concerned, and the walk goes on with the next element.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

import orjson

from procfhir.validator import messages as M
from procfhir.validator import rules
from procfhir.validator.definitions import CompiledSD, Definitions, DefinitionsError, Node
from procfhir.validator.invariants import Invariants
from procfhir.validator.issues import Issue
from procfhir.validator.plan import PRIMITIVE, RESOURCE, Planner
from procfhir.validator.rules import _jtype
from procfhir.validator.terminology import Terminology

_ID_RE = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
MAX_DEPTH = 120  # JSON nesting levels below a resource; FHIR content stays far below
MEMO_MAX = 50_000  # canonical resources whose findings are kept (see Validator.resource)
MemoKey = tuple[bytes, str, int]  # Validator._memo_key
# complex types whose values' findings are kept too (see Validator.instance): the ones that recur
# in definitions. On the R4 examples: ElementDefinitions (profiles repeat their base's elements:
# 16,700 of 39,800), extensions (30,000 of 37,000), contact details (17,000 of 17,000), codings
MEMO_TYPES = frozenset({"ElementDefinition", "Extension", "ContactDetail", "CodeableConcept", "Coding"})
Found = tuple[str, str, str, str, str, str]  # severity, location after the resource's, message, code, key, id


_INDEX = re.compile(r"\[\d+\]")  # [n] in a location


class Ctx:
    """Per-resource state: the resource being validated, its container and its issues."""

    __slots__ = (
        "resource",
        "root",
        "issues",
        "source",
        "seen",
        "depth",
        "res_loc",
        "bundle",
        "peak",
        "outside",
        "read_resource",
    )

    def __init__(self, resource: dict[str, Any], issues: list[Issue], source: str) -> None:
        self.resource = resource
        self.root = resource  # the container whose contained resources '#id' references name
        self.issues = issues
        self.source = source
        self.seen: set[tuple[str, str, str]] = set()
        self.depth = 0
        self.res_loc = ""  # location of the current resource (its elements' paths start there)
        self.bundle: dict[str, Any] | None = None  # the Bundle the resource is an entry of
        self.peak = 0  # the deepest ``depth`` reached (Validator.resource's memo)
        self.outside = False  # whether a rule looked outside the resource (its Bundle: see looked_outside)
        self.read_resource = False  # whether a rule read the resource (see looked_at_resource)

    def looked_outside(self) -> None:
        """A rule's finding depends on more than the resource (what its Bundle holds): its
        findings cannot be those of the same resource elsewhere (Validator.resource's memo)."""
        self.outside = True

    def looked_at_resource(self) -> None:
        """A rule's finding depends on more than the value it checks (the resource around it:
        %resource, contained resources): not those of the same value elsewhere (the memo of
        values, Validator.instance)."""
        self.read_resource = True

    def add(
        self,
        severity: str,
        location: str,
        message: str,
        code: str = "invalid",
        key: str = "",
        mid: str = "",
    ) -> None:
        sig = (severity, location, message)
        if sig in self.seen:
            return
        self.seen.add(sig)
        self.issues.append(Issue(severity, location, message, code, key, self.source, mid))

    def element_path(self, loc: str) -> str:
        """The element path of a location, from its resource's type (``Patient.name``)."""
        rtype = self.resource.get("resourceType", "")
        rest = loc[len(self.res_loc) :] if loc.startswith(self.res_loc) else loc
        return _INDEX.sub("", f"{rtype}{rest}" if self.res_loc else rest)


class Validator:
    """Validate FHIR R4 resources (JSON dicts) against core and profiles.

    ``extra_definitions``: conformance and knowledge resources beyond core (a package's profiles,
    extensions, ValueSets, CodeSystems, PlanDefinitions...): they resolve canonical references and
    meta.profile. ``core_dir``: the core package folder (default: the FHIR package cache).
    ``strict``: our own package's policy on top of the reference's rules (unknown extensions,
    unresolvable canonicals under the package's base and unresolvable profiles are errors; the
    narrative must not load external images or style resources)."""

    def __init__(
        self,
        extra_definitions: list[dict[str, Any]] | None = None,
        core_dir: Path | None = None,
        unknown_extension_severity: str | None = None,
        strict: bool = False,
    ) -> None:
        self.defs = Definitions(extra_definitions, core_dir, lean=True)
        self.terminology = Terminology(self.defs)
        self.invariants = Invariants()
        self.strict = strict
        self.unknown_extension_severity = unknown_extension_severity or ("error" if strict else "warning")
        self.regex: dict[str, re.Pattern[str] | None] = {}
        # the differential rule's findings by what the snapshot generator reads of a profile
        # (rules.differential): the R4 examples hold each profile twice (alone and in a Bundle)
        self.differential_memo: dict[tuple[int, bytes], list[tuple[str, str]]] = {}
        self.code_sets: dict[str, frozenset[str]] = {}
        # a canonical resource's findings by what they depend on (_memo_key): (the walk's depth
        # below the resource, findings relative to its location); the R4 examples hold most
        # profiles and search parameters twice, alone and in a Bundle
        self.resource_memo: dict[MemoKey, tuple[int, tuple[Found, ...]]] = {}
        self.memo_max = MEMO_MAX  # (0: no memo)
        # values of MEMO_TYPES by the digest of what their findings depend on (_value_key): (depth
        # below the value, findings relative to its location); the nodes and hosts met are held
        # (their ids are in the digests: no other node can take one)
        self.value_memo: dict[bytes, tuple[int, tuple[Found, ...]]] = {}
        self._memo_nodes: set[Node] = set()
        # when known (run: the ``"url"`` values met more than once in its inputs), only canonical
        # resources with one of these urls are kept in resource_memo (the others cannot recur)
        self.repeated_urls: set[str] | None = None
        self.planner = Planner(self)
        if sys.getrecursionlimit() < 6000:
            sys.setrecursionlimit(6000)

    def add_definitions(self, resources: list[dict[str, Any]]) -> None:
        for r in resources:
            self.defs.add(r)

    # ---------------------------------------------------------------- entry point
    def validate(self, resource: Any, profile: str | None = None, source: str = "") -> list[Issue]:
        """All issues for one resource (against core, its meta.profile and ``profile``)."""
        issues: list[Issue] = []
        ctx = Ctx(resource if isinstance(resource, dict) else {}, issues, source)
        self.planner.check()
        try:
            self.resource(resource, "", ctx, profile)
        except DefinitionsError as exc:
            ctx.add("fatal", "", str(exc), "processing", mid=M.DEFINITIONS_UNAVAILABLE)
        except RecursionError:
            ctx.add(
                "fatal",
                ctx.res_loc,
                "the resource is nested too deeply to validate",
                "too-costly",
                mid=M.TOO_DEEP,
            )
        except Exception as failure:  # noqa: BLE001 - never a traceback: the failure is an issue
            # (not ``exc``: one name per except clause type, see procfhir.native)
            ctx.add("fatal", ctx.res_loc, _internal(failure), "exception", mid=M.INTERNAL_ERROR)
        return issues

    def resource(
        self, res: Any, loc: str, ctx: Ctx, profile: str | None = None, contained: bool = False
    ) -> None:
        if not isinstance(res, dict):
            msg = f"expected a FHIR resource (a JSON object), found {_jtype(res)}"
            ctx.add("error", loc, msg, "structure", mid=M.RESOURCE_NOT_OBJECT)
            return
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            ctx.add("error", loc, "not a FHIR resource: no resourceType", "structure", mid=M.RESOURCE_NO_TYPE)
            return
        if rtype not in self.defs.resource_types:
            msg = f"unknown resourceType {rtype!r} (not an R4 resource type)"
            ctx.add("error", loc, msg, "structure", mid=M.RESOURCE_UNKNOWN_TYPE)
            return
        loc = loc or rtype
        key = None if contained or rtype == "Bundle" else self._memo_key(res, profile)
        if key is None:
            self._resource(res, rtype, loc, ctx, profile, contained)
            return
        hit = self.resource_memo.get(key)
        if hit is not None and ctx.depth + hit[0] < MAX_DEPTH:
            _replay(hit[0], hit[1], loc, ctx)
            return
        saved = _memo_begin(ctx)
        done = False
        try:
            self._resource(res, rtype, loc, ctx, profile, False)
            done = True
        finally:
            found = _memo_end(ctx, saved, loc, done, whole_resource=True)
        if found is not None and len(self.resource_memo) < self.memo_max:
            self.resource_memo[key] = found

    def _memo_key(self, res: dict[str, Any], profile: str | None) -> MemoKey | None:
        """For a canonical resource (one with a ``url``), what its findings depend on besides the
        rules that look outside it: its content (the SHA-256 of orjson's dump: equal only for
        equal values, keys in the same order, ints and floats told apart), the profile asked
        for and the definitions (their generation); None for any other resource, and for one
        whose url is not among :attr:`repeated_urls` when they are known."""
        url = res.get("url")
        if not isinstance(url, str) or (self.repeated_urls is not None and url not in self.repeated_urls):
            return None
        try:
            data = orjson.dumps(res)
        except TypeError:  # (orjson.JSONEncodeError) what orjson does not write: no memo
            return None
        return hashlib.sha256(data).digest(), profile or "", self.defs.generation

    def _resource(
        self, res: dict[str, Any], rtype: str, loc: str, ctx: Ctx, profile: str | None, contained: bool
    ) -> None:
        outer, outer_root, outer_loc, outer_bundle = ctx.resource, ctx.root, ctx.res_loc, ctx.bundle
        ctx.resource, ctx.res_loc = res, loc
        if not contained:
            ctx.root = res
        if rtype == "Bundle":
            ctx.bundle = res
        try:
            sds = self._profiles(res, rtype, loc, ctx, profile)
            rid = res.get("id")
            if rid is not None and (not isinstance(rid, str) or not _ID_RE.fullmatch(rid)):
                msg = f"invalid resource id {rid!r} (1-64 of A-Z a-z 0-9 - .)"
                ctx.add("error", f"{loc}.id", msg, "value", mid=M.RESOURCE_ID_INVALID)
            for sd in sds:
                self.instance(res, sd.root, rtype, loc, ctx, host=None)
            for check in rules.RESOURCE_RULES.get(rtype, ()) + rules.RESOURCE_RULES_ALL:
                check(self, res, loc, ctx, contained)
        except (RecursionError, DefinitionsError):
            raise
        except Exception as exc:  # noqa: BLE001 - reported on this resource; the run goes on
            ctx.add("fatal", loc, _internal(exc), "exception", mid=M.INTERNAL_ERROR)
        finally:
            ctx.resource, ctx.root, ctx.res_loc, ctx.bundle = outer, outer_root, outer_loc, outer_bundle

    def _profiles(
        self, res: dict[str, Any], rtype: str, loc: str, ctx: Ctx, profile: str | None
    ) -> list[CompiledSD]:
        """The definitions to check ``res`` against: its meta.profile and ``profile``, or core."""
        profiles: list[str] = []
        meta = res.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("profile"), list):
            profiles = [p for p in meta["profile"] if isinstance(p, str)]
        if profile:
            profiles = [profile] + [p for p in profiles if p != profile]
        sds: list[CompiledSD] = []
        for url in profiles:
            sd = self.defs.sd(url)
            where = f"{loc}.meta.profile" if url != profile else loc
            if sd is None:
                why = self.defs.sd_errors.get(url.split("|", 1)[0])
                if why:
                    msg = f"profile {url} cannot be used: {why}"
                    ctx.add("error", where, msg, "processing", mid=M.PROFILE_UNUSABLE)
                    continue
                # the reference: an unknown meta.profile is a warning; a profile asked for, an error
                sev = "error" if url == profile or self.strict else "warning"
                msg = f"profile {url} cannot be found (not in core nor in the package's definitions)"
                ctx.add(sev, where, msg, "not-found", mid=M.PROFILE_NOT_FOUND)
            elif sd.type != rtype:
                msg = f"profile {url} is for {sd.type}, not {rtype}"
                ctx.add("error", where, msg, "invalid", mid=M.PROFILE_WRONG_TYPE)
            else:
                sds.append(sd)
        if not sds:  # a profile's snapshot contains all of core's rules
            core = self.defs.type_sd(rtype)
            if core is None:
                raise DefinitionsError(f"the core definition of {rtype} cannot be loaded")
            sds = [core]
        return sds

    # ---------------------------------------------------------------- one value at one node
    def instance(self, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None) -> None:
        """Every rule of type ``tcode`` on ``value`` at element ``node`` (those of its plan)."""
        plan = node.plans.get(tcode) or self.planner.plan(node, tcode)
        kind = plan.kind
        if kind == RESOURCE:
            self.resource(value, loc, ctx, contained=node.name == "contained")
            if node.children and isinstance(value, dict):  # a profile's constraints on the resource
                from procfhir.validator.structure import children

                children(self, value, node, loc, ctx, is_root=True)
            return
        if ctx.depth >= MAX_DEPTH:
            msg = f"nested more than {MAX_DEPTH} levels deep: not validated further"
            ctx.add("error", loc, msg, "too-costly", mid=M.TOO_DEEP)
            return
        if kind == PRIMITIVE:  # no rule of a primitive walks further: no depth to count
            for rule in plan.rules:
                rule(self, value, node, tcode, loc, ctx, host)
            return
        if not isinstance(value, dict):
            msg = f"{tcode} must be a JSON object, found {_jtype(value)}"
            ctx.add("error", loc, msg, "structure", mid=M.TYPE_NOT_OBJECT)
            return
        if tcode in MEMO_TYPES and self.memo_max:
            self._memo_value(value, node, tcode, loc, ctx, host)
            return
        ctx.depth += 1
        if ctx.depth > ctx.peak:
            ctx.peak = ctx.depth
        try:
            for rule in plan.rules:
                rule(self, value, node, tcode, loc, ctx, host)
        finally:
            ctx.depth -= 1

    def _memo_value(
        self, value: dict[str, Any], node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
    ) -> None:
        """:meth:`instance` of a complex value of MEMO_TYPES: a value met again with the same
        content, at the same node and host, gets the findings of its first walk, moved to its
        location; kept unless a rule read the resource around it, looked outside it or the
        walk went near MAX_DEPTH (as Validator.resource's memo)."""
        key = self._value_key(value, node, tcode, loc, ctx, host)
        if key is not None:
            hit = self.value_memo.get(key)
            if hit is not None and ctx.depth + hit[0] < MAX_DEPTH:
                _replay(hit[0], hit[1], loc, ctx)
                return
        saved = _memo_begin(ctx) if key is not None else None
        done = False
        ctx.depth += 1
        if ctx.depth > ctx.peak:
            ctx.peak = ctx.depth
        try:
            for rule in (node.plans.get(tcode) or self.planner.plan(node, tcode)).rules:
                rule(self, value, node, tcode, loc, ctx, host)
            done = True
        finally:
            ctx.depth -= 1
            found = _memo_end(ctx, saved, loc, done, whole_resource=False) if saved is not None else None
        if key is not None and found is not None and len(self.value_memo) < self.memo_max:
            self.value_memo[key] = found
            self._memo_nodes.add(node)
            if host is not None:
                self._memo_nodes.add(host)

    def _value_key(
        self, value: dict[str, Any], node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
    ) -> bytes | None:
        """The SHA-256 of what a value's findings depend on besides the rules that read around
        it: its content (as :meth:`_memo_key`), its node and host (held by the memo: ids stay
        theirs), the type, the definitions' generation, and where it sits in its resource (the
        resource's type, its path there without indexes: some findings name it); None when not
        dumpable."""
        if not loc.startswith(ctx.res_loc):
            return None
        try:
            data = orjson.dumps(value)
        except TypeError:  # (orjson.JSONEncodeError) what orjson does not write: no memo
            return None
        rtype = ctx.resource.get("resourceType")
        where = (
            f"\n{id(node)}|{id(host) if host is not None else 0}|{tcode}|{self.defs.generation}|"
            f"{rtype if isinstance(rtype, str) else ''}|{_INDEX.sub('', loc[len(ctx.res_loc) :])}"
        )
        digest = hashlib.sha256(data)  # (a line break never ends a dump: the parts stay apart)
        digest.update(where.encode("utf-8", "surrogatepass"))
        return digest.digest()

    def type_sd(self, node: Node, tcode: str) -> CompiledSD | None:
        for t in node.types:
            if t.get("code") == tcode and t.get("profile"):
                for p in t["profile"]:
                    sd = self.defs.sd(p)
                    if sd is not None:
                        return sd
        if node is node.sd.root:
            return node.sd
        return self.defs.type_sd(tcode)

    def safely(self, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None) -> None:
        """:meth:`instance`, with an unexpected failure reported at ``loc`` (the walk goes on)."""
        try:
            self.instance(value, node, tcode, loc, ctx, host)
        except (RecursionError, DefinitionsError):
            raise
        except Exception as exc:  # noqa: BLE001 - never a traceback: the failure is an issue
            ctx.add("fatal", loc, _internal(exc), "exception", mid=M.INTERNAL_ERROR)


Saved = tuple[set[tuple[str, str, str]], bool, bool, int, int, int]


def _memo_begin(ctx: Ctx) -> Saved:
    """Start recording what a resource or value finds (see :func:`_memo_end`): a set of its
    own for dropping repeated findings, no flags, the depth reached from here."""
    saved = (ctx.seen, ctx.outside, ctx.read_resource, ctx.peak, ctx.depth, len(ctx.issues))
    ctx.seen, ctx.outside, ctx.read_resource, ctx.peak = set(), False, False, ctx.depth
    return saved


def _memo_end(
    ctx: Ctx, saved: Saved, loc: str, done: bool, whole_resource: bool
) -> tuple[int, tuple[Found, ...]] | None:
    """End the recording begun by :func:`_memo_begin`: the findings that the outer set already
    holds are dropped (the same findings as with the outer set throughout: a finding is dropped
    when met before, inside or outside), the flags and depth passed on outwards; (the depth
    below, the findings relative to ``loc``) when they may be kept: done, no rule looked outside
    the resource (nor read the resource, for a value: ``whole_resource`` False), not near
    MAX_DEPTH, every finding at ``loc`` or under it; else None."""
    outer_seen, outer_outside, outer_read, outer_peak, depth, start = saved
    inner_seen, outside, read, peak = ctx.seen, ctx.outside, ctx.read_resource, ctx.peak
    ctx.seen, ctx.outside, ctx.read_resource = outer_seen, outer_outside or outside, outer_read or read
    ctx.peak = max(outer_peak, peak)
    found = ctx.issues[start:]
    if found and not outer_seen.isdisjoint(inner_seen):
        fresh = [i for i in found if (i.severity, i.location, i.message) not in outer_seen]
        ctx.issues[start:] = fresh
    outer_seen |= inner_seen
    if not done or outside or (read and not whole_resource) or peak >= MAX_DEPTH:
        return None
    below = (loc + ".", loc + "[")  # (not a sibling that starts alike: element[1] and element[10])
    if any(i.location != loc and not i.location.startswith(below) for i in found):
        return None
    if not found:
        return peak - depth, _NONE
    n = len(loc)
    return peak - depth, tuple(
        (i.severity, i.location[n:], i.message, i.code, i.key, i.message_id) for i in found
    )


_NONE: tuple[Found, ...] = ()  # (shared: most values find nothing)


def _replay(below: int, found: tuple[Found, ...], loc: str, ctx: Ctx) -> None:
    """Kept findings, at ``loc``; the depth they reached below it passed on (see _memo_end)."""
    for severity, rel, message, code, key, mid in found:
        ctx.add(severity, loc + rel, message, code, key, mid)
    if ctx.depth + below > ctx.peak:
        ctx.peak = ctx.depth + below


def internal_error(exc: BaseException) -> str:
    """The message of an unexpected failure inside a rule (reported where it happened)."""
    return _internal(exc)


def _internal(exc: BaseException) -> str:
    return f"the validator failed on this element ({type(exc).__name__}: {str(exc)[:200]}); please report it"
