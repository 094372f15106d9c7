"""Rule families: the checks on one value at one element, each a function of one signature::

    rule(validator, value, node, tcode, loc, ctx, host) -> None

``node`` is the element definition, ``tcode`` the value's type, ``loc`` its location, ``host``
the element definition holding it (for extensions' context). :func:`table_for` lists the rules
of a type (as the HL7 validator's per-type checks); resource-level rules (``RESOURCE_RULES``)
take ``(validator, resource, loc, ctx, contained)``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from procfhir.jsonwalk import strings
from procfhir.validator import measure, txresources
from procfhir.validator import messages as M
from procfhir.validator.definitions import Node
from procfhir.validator.fastpath import Unsupported
from procfhir.validator.invariants import Prepared, touched_names
from procfhir.validator.quantity import QUANTITY_TYPES, UCUM, quantity_code, ucum_coding
from procfhir.validator.terminology import Matcher
from procfhir.validator.xhtml import check_div

if TYPE_CHECKING:
    from procfhir.validator.engine import Ctx, Validator

Rule = Callable[["Validator", Any, Node, str, str, "Ctx", "Node | None"], None]
ResourceRule = Callable[["Validator", dict[str, Any], str, "Ctx", bool], None]

_EXT_TYPES = ("Extension",)
_LITERAL_REF = re.compile(
    r"(?:(?P<base>(?:https?|urn):\S+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-\.]+)"
    r"(?:/_history/[A-Za-z0-9\-\.]+)?"
)
_URN = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|"
    r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+"
)
_ABSOLUTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:\S+$")
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
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*:")  # an absolute URL's scheme
_LAST_INDEX = re.compile(r"\[\d+\]$")
_CHOICE_HEAD = re.compile(r"^([a-z][A-Za-z0-9]*?)[A-Z]")  # value in valueQuantity
# patterns (compiled with re.ASCII: \s is [ \t\n\r\f\v]) that a non-empty value fully matches
# exactly when it holds none of these characters (tests/test_validator_robust.py checks it)
_FORBIDDEN_ONLY = {
    "[ \\r\\n\\t\\S]+": "\x0b\x0c",  # string, markdown: form feed and vertical tab
    "\\S*": " \t\n\r\x0b\x0c",  # uri, url, canonical: any whitespace
}
_JAVA_WS = "".join(chr(c) for c in range(0x21))  # Java's trim(): a non-breaking space is no whitespace


def _short(value: Any) -> str:
    text = (
        json.dumps(value, sort_keys=True, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    )
    return text if len(text) <= 120 else text[:117] + "..."


def _jtype(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def pattern_match(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(pattern_match(v, value.get(k)) for k, v in pattern.items())
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return False
        return all(any(pattern_match(p, v) for v in value) for p in pattern)
    return bool(pattern == value)


# ==================================================================== primitives
def primitive_value(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    """The JSON type, lexical form and range of a primitive value."""
    if tcode == "boolean":
        if not isinstance(value, bool):
            ctx.add(
                "error",
                loc,
                f"boolean expected, found {_jtype(value)} {_short(value)}",
                "structure",
                mid=M.DT_JSON_TYPE,
            )
        return
    if tcode in _INT_TYPES:
        if not isinstance(value, int) or isinstance(value, bool):
            msg = f"{tcode} must be a JSON integer, found {_jtype(value)} {_short(value)}"
            ctx.add("error", loc, msg, "structure", mid=M.DT_JSON_TYPE)
            return
        lo, hi = _INT_TYPES[tcode]
        if not lo <= value <= hi:
            ctx.add(
                "error", loc, f"{tcode} {value} is out of range [{lo}, {hi}]", "value", mid=M.DT_INTEGER_RANGE
            )
        return
    if tcode == "decimal":
        if not isinstance(value, int | float) or isinstance(value, bool):
            msg = f"decimal must be a JSON number, found {_jtype(value)} {_short(value)}"
            ctx.add("error", loc, msg, "structure", mid=M.DT_JSON_TYPE)
        return
    if tcode in _STRING_JSON or tcode not in v.defs.core_types:
        if not isinstance(value, str):
            msg = f"{tcode} must be a JSON string, found {_jtype(value)} {_short(value)}"
            ctx.add("error", loc, msg, "structure", mid=M.DT_JSON_TYPE)
            return
        if tcode == "xhtml":
            return
        stripped = value.strip(_JAVA_WS)
        if value == "" or (stripped == "" and tcode != "string"):
            ctx.add("error", loc, f"{tcode} must not be empty", "value", mid=M.DT_EMPTY)
            return
        rx = _regex_for(v, tcode)
        if value != stripped and tcode not in ("string", "markdown"):
            ctx.add(
                "error",
                loc,
                f"{tcode} {value!r} has leading or trailing whitespace",
                "value",
                mid=M.DT_WHITESPACE,
            )
        elif rx is not None and not rx.fullmatch(value):
            ctx.add("error", loc, f"{value!r} is not a valid {tcode}", "value", mid=M.DT_REGEX)
        elif tcode in ("date", "dateTime", "instant") and len(value) >= 10:
            try:
                _dt.date(int(value[:4]), int(value[5:7]), int(value[8:10]))
            except ValueError:
                msg = f"{value!r} is not a valid {tcode}: no such calendar date"
                ctx.add("error", loc, msg, "value", mid=M.DT_DATE_INVALID)


def primitive_rule(v: Validator, tcode: str) -> Rule:
    """:func:`primitive_value` for values of type ``tcode``, with what depends on the type
    alone decided once (the walk's plans use it: two million primitives on a package)."""
    if tcode == "xhtml" or not (tcode in _STRING_JSON or tcode not in v.defs.core_types):
        return primitive_value
    rx = _regex_for(v, tcode)
    # R4's string, markdown and uri patterns forbid a few characters and nothing else: ``in``
    # tests instead of a scan of the whole value by the regex engine (descriptions are long)
    forbidden = _FORBIDDEN_ONLY.get(rx.pattern) if rx is not None else None
    keeps_space = tcode in ("string", "markdown")
    may_blank = tcode == "string"
    dated = tcode in ("date", "dateTime", "instant")

    def string_value(
        v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
    ) -> None:
        if type(value) is not str:
            primitive_value(v, value, node, tcode, loc, ctx, host)  # reports the JSON type
            return
        stripped = value.strip(_JAVA_WS)
        if value == "" or (stripped == "" and not may_blank):
            ctx.add("error", loc, f"{tcode} must not be empty", "value", mid=M.DT_EMPTY)
        elif value != stripped and not keeps_space:
            msg = f"{tcode} {value!r} has leading or trailing whitespace"
            ctx.add("error", loc, msg, "value", mid=M.DT_WHITESPACE)
        elif forbidden is not None:  # (string, markdown, uri...: no date check follows)
            if any(c in value for c in forbidden):
                ctx.add("error", loc, f"{value!r} is not a valid {tcode}", "value", mid=M.DT_REGEX)
        elif rx is not None and not rx.fullmatch(value):
            ctx.add("error", loc, f"{value!r} is not a valid {tcode}", "value", mid=M.DT_REGEX)
        elif dated and len(value) >= 10:
            try:
                _dt.date(int(value[:4]), int(value[5:7]), int(value[8:10]))
            except ValueError:
                msg = f"{value!r} is not a valid {tcode}: no such calendar date"
                ctx.add("error", loc, msg, "value", mid=M.DT_DATE_INVALID)

    return string_value


# R4's base64Binary pattern, and the same language with possessive repeats: the original keeps a
# backtracking mark per 4 characters (about 160 MiB for a 1 MB attachment); this one none.
# Each group is 4 characters of the class then all the whitespace after them, so giving back
# never helps a full match: both accept the same strings (tests/test_validator_robust.py).
_BASE64_R4 = r"(\s*([0-9a-zA-Z\+/=]){4}\s*)+"
_BASE64_POSSESSIVE = r"\s*+(?:[0-9a-zA-Z+/=]{4}\s*+)++"


def _regex_for(v: Validator, tcode: str) -> re.Pattern[str] | None:
    if tcode not in v.regex:
        sd = v.defs.type_sd(tcode)
        rx = sd.regex if sd is not None else None
        if rx == _BASE64_R4:
            rx = _BASE64_POSSESSIVE
        try:  # ASCII: \s and \d mean what they mean in Java's regular expressions
            v.regex[tcode] = re.compile(rx, re.ASCII) if rx else None
        except re.error:
            v.regex[tcode] = None
    return v.regex[tcode]


def value_limits(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    """maxLength, minValue[x] and maxValue[x] of the element."""
    if node.max_length is not None and isinstance(value, str) and len(value) > node.max_length:
        msg = f"value is {len(value)} characters long; at most {node.max_length} are allowed"
        ctx.add("error", loc, msg, "value", mid=M.DT_MAX_LENGTH)
    for limit, mid, below in (
        (node.min_value, M.DT_MIN_VALUE, True),
        (node.max_value, M.DT_MAX_VALUE, False),
    ):
        if limit is None:
            continue
        key, bound = limit
        got = value.get("value") if tcode == "Quantity" and isinstance(value, dict) else value
        if isinstance(bound, dict):
            bound = bound.get("value")
        if isinstance(got, bool) or isinstance(bound, bool):
            continue
        if isinstance(got, int | float) and isinstance(bound, int | float):
            bad = got < bound if below else got > bound
        elif (
            isinstance(got, str)
            and isinstance(bound, str)
            and tcode in ("date", "dateTime", "instant", "time")
        ):
            n = min(len(got), len(bound))
            bad = got[:n] < bound[:n] if below else got[:n] > bound[:n]
        else:
            continue
        if bad:
            word = "less" if below else "greater"
            ctx.add(
                "error", loc, f"value {_short(got)} is {word} than {key} {_short(bound)}", "value", mid=mid
            )


# ==================================================================== any element
def element_not_empty(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    """ele-1, natively: an element has a value or children."""
    if not value or set(value) == {"id"}:
        ctx.add(
            "error",
            loc,
            "an element must have a value or children (ele-1)",
            "invariant",
            "ele-1",
            M.ELEMENT_EMPTY,
        )


def fixed_and_pattern(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    if node.fixed is not None:
        key, want = node.fixed
        if value != want:
            msg = f"value must be exactly {_short(want)} ({key}), found {_short(value)}"
            ctx.add("error", loc, msg, "value", mid=M.FIXED_MISMATCH)
    if node.pattern is not None:
        key, want = node.pattern
        if not pattern_match(want, value):
            msg = f"value must match the pattern {_short(want)} ({key}), found {_short(value)}"
            ctx.add("error", loc, msg, "value", mid=M.PATTERN_MISMATCH)


def children_and_invariants(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    """A complex value's children (from this definition or its type's), then its invariants
    (both worked out once per element and type: :mod:`procfhir.validator.plan`)."""
    from procfhir.validator.structure import children

    plan = node.plans.get(tcode) or v.planner.plan(node, tcode)
    if plan.parent is None:
        ctx.add("error", loc, f"type {tcode} is unknown", "structure", mid=M.TYPE_UNKNOWN)
        return
    children(v, value, plan.parent, loc, ctx, plan.is_root)
    if plan.constraints:
        invariants(v, value, plan.constraints, node, loc, ctx)


def primitive_invariants(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    plan = node.plans.get(tcode) or v.planner.plan(node, tcode)
    if plan.constraints:
        invariants(v, value, plan.constraints, node, loc, ctx)


def effective_constraints(v: Validator, node: Node, type_root: Node | None) -> list[dict[str, Any]]:
    """The invariants at ``node`` (its own, then its type's root's not overridden by key) that
    can give an outcome: those :meth:`Invariants.check` skips without evaluating (native keys
    checked elsewhere, no expression) are left out."""
    constraints = node.constraints
    if type_root is not None and type_root is not node and type_root.constraints:
        have = {c.get("key") for c in constraints}
        constraints = constraints + [c for c in type_root.constraints if c.get("key") not in have]
    return [c for c in constraints if not v.invariants.skipped(c)]


def invariants(
    v: Validator, value: Any, constraints: tuple[Prepared, ...], node: Node, loc: str, ctx: Ctx
) -> None:
    touched: frozenset[str] | None = None
    env: dict[str, Any] | None = None
    for p in constraints:
        key = p.key
        if key == "dom-6":
            ctx.looked_at_resource()
            if ctx.resource is not ctx.root:
                continue  # contained resources carry no narrative of their own (the container's covers them)
        if p.guard is not None and type(value) is dict:
            if touched is None:
                touched = touched_names(value)
            if p.guard.isdisjoint(touched):
                continue  # none of the children it reads: it holds (Invariants.prepare)
        if p.reads_resource:
            ctx.looked_at_resource()
        c = p.constraint
        if p.fast is not None:  # Invariants.check's fast path, without its look-ups
            if env is None:
                env = {"resource": ctx.resource, "rootResource": ctx.root or ctx.resource}
            try:
                result = p.fast([value], env)
            except Unsupported:
                result = None
            if result == [] or result == [True]:
                continue
            outcome = (
                False
                if result == [False]
                else v.invariants.check(c, value, node.path, ctx.resource, ctx.root)
            )
        else:
            outcome = v.invariants.check(c, value, node.path, ctx.resource, ctx.root)
        if outcome is True or outcome is None:
            continue
        if outcome is False:
            sev = "error" if c.get("severity") == "error" else "warning"
            msg = f"{c.get('human', 'constraint failed')} ({key}: {c.get('expression')})"
            ctx.add(sev, loc, msg, "invariant", key, M.INVARIANT_FAILED)
        elif isinstance(outcome, str):
            msg = f"invariant {key} could not be evaluated: {outcome}"
            ctx.add("warning", loc, msg, "not-supported", key, M.INVARIANT_NOT_EVALUATED)


# ==================================================================== terminology
def binding(v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None) -> None:
    """The element's binding, on every bindable type (code, Coding, CodeableConcept, Quantity,
    string, uri)."""
    b = node.binding
    if not b:
        return
    strength = b.get("strength")
    vs_url = b.get("valueSet")
    severity = _SEVERITY_BY_STRENGTH.get(strength or "")
    if severity is None or not isinstance(vs_url, str):
        return
    exp = v.terminology.expand(vs_url)
    if tcode == "Quantity":
        if not isinstance(value, dict) or "code" not in value:
            return  # a Quantity without a coded unit: nothing to check
        value = {"system": value.get("system"), "code": value.get("code")}
        tcode = "Coding"
    if exp.grammar:
        if value in ("xml", "json", "ttl"):
            return  # the short forms R4 allows for formats (CapabilityStatement.format, TestScript)
        _grammar_binding(value, tcode, exp.grammar, severity, strength or "", vs_url, loc, ctx)
        return
    if not exp.expandable:
        if strength in ("required", "extensible"):
            msg = (
                f"{strength} binding to {vs_url} not checked: "
                f"the value set cannot be expanded locally ({exp.reason})"
            )
            ctx.add("information", loc, msg, "not-supported", mid=M.TX_NOT_CHECKED)
        return
    codes = exp.codes or frozenset()
    if tcode in ("code", "string", "uri"):
        if not isinstance(value, str) or value.startswith("http://hl7.org/fhirpath/System."):
            return  # FHIRPath system types (ElementDefinition.type.code of id/url elements)
        if value not in _codes_only(v, vs_url, codes):
            msg = f"code {value!r} is not in the {strength} value set {vs_url}"
            ctx.add(severity, loc, msg, "code-invalid", mid=M.TX_NOT_IN_VALUESET)
        return
    codings = [value] if tcode == "Coding" else _coding_list(value)
    codings = [c for c in codings if isinstance(c, dict)]
    if not codings:
        if strength == "required" and not (isinstance(value, dict) and value.get("text")):
            msg = f"no code given: a code from the required value set {vs_url} is needed"
            ctx.add("error", loc, msg, "code-invalid", mid=M.TX_NO_CODE)
        return
    if any((c.get("system"), c.get("code")) in codes for c in codings if _hashable(c)):
        return
    shown = ", ".join(f"{c.get('system')}#{c.get('code')}" for c in codings)
    msg = f"none of the codes ({shown}) is in the {strength} value set {vs_url}"
    ctx.add(severity, loc, msg, "code-invalid", mid=M.TX_NOT_IN_VALUESET)


def _coding_list(value: Any) -> list[Any]:
    got = value.get("coding") if isinstance(value, dict) else None
    return got if isinstance(got, list) else []


def _hashable(coding: dict[str, Any]) -> bool:
    return all(isinstance(coding.get(k), str | None) for k in ("system", "code"))


def _codes_only(v: Validator, vs_url: str, codes: frozenset[tuple[str, str]]) -> frozenset[str]:
    """The codes of an expansion without their systems (for code elements), computed once."""
    got = v.code_sets.get(vs_url)
    if got is None:
        got = v.code_sets[vs_url] = frozenset(c for _, c in codes)
    return got


def _grammar_binding(
    value: Any,
    tcode: str,
    grammar: dict[str, Matcher],
    severity: str,
    strength: str,
    vs_url: str,
    loc: str,
    ctx: Ctx,
) -> None:
    if tcode in ("code", "string", "uri"):
        if isinstance(value, str) and not any(rx.fullmatch(value) for rx in grammar.values()):
            msg = f"{value!r} is not a valid code of {', '.join(grammar)} ({strength} binding to {vs_url})"
            ctx.add(severity, loc, msg, "code-invalid", mid=M.TX_GRAMMAR)
        return
    codings = [value] if tcode == "Coding" else _coding_list(value)
    for c in codings:
        ok = isinstance(c, dict) and c.get("system") in grammar and isinstance(c.get("code"), str)
        if ok and grammar[c["system"]].fullmatch(c["code"]):
            return
    if codings or strength == "required":
        msg = f"no valid code of {', '.join(grammar)} ({strength} binding to {vs_url})"
        ctx.add(severity, loc, msg, "code-invalid", mid=M.TX_GRAMMAR)


def codings_known(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    """Each Coding: a sane system, and a code (and display) of the code system when it is known."""
    if tcode == "Coding":
        _coding(v, value, loc, ctx)
    elif isinstance(value.get("coding"), list):
        for i, c in enumerate(value["coding"]):
            if isinstance(c, dict):
                _coding(v, c, f"{loc}.coding[{i}]", ctx)


def _coding(v: Validator, coding: dict[str, Any], loc: str, ctx: Ctx) -> None:
    system, code = coding.get("system"), coding.get("code")
    if not isinstance(system, str):
        return
    if ":" not in system:  # the reference warns (a local system may be meant)
        msg = f"coding system {system!r} is not an absolute URI"
        ctx.add("warning", f"{loc}.system", msg, "code-invalid", mid=M.CODING_SYSTEM_INVALID)
        return
    if not isinstance(code, str):
        return
    if system == UCUM:
        ucum_coding(code, loc, ctx)
        return
    cs = v.terminology.code_system(system)
    if cs is None:
        target = v.defs.resource(system) if "/ValueSet/" in system else None
        if target is not None and target.get("resourceType") == "ValueSet":
            msg = f"coding system {system} is a value set, not a code system"
            ctx.add("error", f"{loc}.system", msg, "code-invalid", mid=M.CODING_SYSTEM_INVALID)
            return
    if cs is None or not cs.complete:
        # SNOMED CT, LOINC, ICD-10...: the displays the installed terminology content gives
        issue = v.terminology.display_issue(system, code, coding.get("display"))
        if issue:
            ctx.add("warning", f"{loc}.display", issue, "code-invalid", mid=M.TX_DISPLAY)
        return
    if code not in cs.codes:
        if cs.case_sensitive or code.lower() not in {c.lower() for c in cs.codes}:
            msg = f"unknown code {code!r} in code system {system}"
            ctx.add("error", f"{loc}.code", msg, "code-invalid", mid=M.TX_UNKNOWN_CODE)
        return
    display = coding.get("display")
    want = cs.codes.get(code)
    if isinstance(display, str) and want and display.strip().lower() != want.strip().lower():
        msg = f"display {display!r} differs from the code system's {want!r} for {system}#{code}"
        ctx.add("warning", f"{loc}.display", msg, "code-invalid", mid=M.TX_DISPLAY)


# ==================================================================== references
def reference(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    ref = value.get("reference")
    if not isinstance(ref, str):
        return
    rtype = value.get("type") if isinstance(value.get("type"), str) else None
    if ref.startswith("#"):
        cid = ref[1:]
        if cid:
            ctx.looked_at_resource()
            contained = ctx.root.get("contained")
            contained = contained if isinstance(contained, list) else []
            hit = next((c for c in contained if isinstance(c, dict) and c.get("id") == cid), None)
            if hit is None:
                msg = f"{ref!r} refers to no contained resource"
                ctx.add("error", f"{loc}.reference", msg, "not-found", mid=M.REF_CONTAINED_MISSING)
                return
            rtype = hit.get("resourceType") if isinstance(hit.get("resourceType"), str) else None
    elif ref.startswith(("urn:uuid:", "urn:oid:")):
        if not _URN.fullmatch(ref):
            msg = f"malformed {ref[:8]} reference {ref!r}"
            ctx.add("error", f"{loc}.reference", msg, "value", mid=M.REF_MALFORMED)
        rtype = _bundle_target_type(ctx, ref) or rtype
    else:
        m = _LITERAL_REF.fullmatch(ref)
        if m is None:
            if _SCHEME.match(ref):
                return  # an absolute URL that is not a RESTful one: allowed, not resolved
            msg = f"malformed literal reference {ref!r} (expected [base/]Type/id, #id or urn:uuid:)"
            ctx.add("error", f"{loc}.reference", msg, "value", mid=M.REF_MALFORMED)
            return
        if m.group("type") not in v.defs.resource_types:
            if m.group("base"):
                return  # an absolute URL whose path happens to look like Type/id
            msg = f"{ref!r}: {m.group('type')} is not a resource type"
            ctx.add("error", f"{loc}.reference", msg, "value", mid=M.REF_NOT_A_TYPE)
            return
        if rtype is not None and rtype != m.group("type"):
            msg = f"type {rtype} contradicts the reference {ref!r}"
            ctx.add("error", f"{loc}.type", msg, "value", mid=M.REF_TYPE_MISMATCH)
        rtype = m.group("type")
    if rtype:
        allowed = target_types(v, node, "Reference")
        if allowed and rtype not in allowed and "Resource" not in allowed:
            msg = f"a {rtype} is not allowed here (allowed: {', '.join(sorted(allowed))})"
            ctx.add("error", f"{loc}.reference", msg, "structure", mid=M.REF_WRONG_TARGET)


def _bundle_target_type(ctx: Ctx, ref: str) -> str | None:
    ctx.looked_outside()  # (alone, the resource has no Bundle to look in: also a finding of its place)
    if ctx.bundle is None:
        return None
    for e in ctx.bundle.get("entry") or []:
        if isinstance(e, dict) and e.get("fullUrl") == ref and isinstance(e.get("resource"), dict):
            t = e["resource"].get("resourceType")
            return t if isinstance(t, str) else None
    return None


def target_types(v: Validator, node: Node, code: str) -> set[str]:
    out: set[str] = set()
    for t in node.types:
        if t.get("code") != code:
            continue
        for p in t.get("targetProfile") or []:
            if not isinstance(p, str):
                continue
            name = p.rsplit("/", 1)[-1]
            if p.startswith("http://hl7.org/fhir/StructureDefinition/") and name in v.defs.core_types:
                out.add(name)
            else:
                sd = v.defs.sd(p)
                if sd is not None:
                    out.add(sd.type)
    return out


def canonical(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    if not isinstance(value, str) or value.startswith("#"):
        return
    if not _ABSOLUTE.match(value):
        msg = f"canonical {value!r} must be an absolute URL (or a #fragment)"
        ctx.add("error", loc, msg, "value", mid=M.CANONICAL_NOT_ABSOLUTE)
        return
    url = value.split("|", 1)[0]
    if node.path == "Meta.profile":  # reported as "profile cannot be found"
        return
    res = v.defs.resource(url)
    if res is None:
        # the reference resolves canonicals it knows and warns about the others; in strict mode
        # (our package), a canonical under the package's base naming no package resource is an error
        in_package = any(url.startswith(f"{b}{t}/") for b, t in v.defs.package_types)
        if v.strict and in_package:
            msg = f"canonical {value} does not resolve (not in the package nor in core)"
            ctx.add("error", loc, msg, "not-found", mid=M.CANONICAL_UNRESOLVED)
        else:
            msg = f"canonical {value} cannot be resolved locally"
            ctx.add("warning", loc, msg, "not-found", mid=M.CANONICAL_UNRESOLVED)
        return
    allowed = target_types(v, node, "canonical")
    rtype = res.get("resourceType")
    if allowed and rtype not in allowed and "Resource" not in allowed:
        msg = f"canonical {value} is a {rtype}; allowed here: {', '.join(sorted(allowed))}"
        ctx.add("error", loc, msg, "structure", mid=M.CANONICAL_WRONG_TYPE)


# ==================================================================== data types
def narrative(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    div = value.get("div")
    if not isinstance(div, str):
        return
    for msg, code in check_div(div, strict=v.strict):
        if code == "link":
            ctx.add("error", f"{loc}.div", msg, "invalid", mid=M.NARRATIVE_LINK)
        elif code == "invariant":
            ctx.add("error", f"{loc}.div", msg, code, "txt-2", M.NARRATIVE_EMPTY)
        elif code == "policy":
            ctx.add("error", f"{loc}.div", msg, "security", "txt-1", M.NARRATIVE_POLICY)
        else:
            ctx.add("error", f"{loc}.div", msg, code, "txt-1", M.NARRATIVE_INVALID)


def attachment(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    """Attachment.size and .hash agree with .data (when data is given)."""
    data = value.get("data")
    if not isinstance(data, str):
        return
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return  # reported by the base64Binary rule
    size = value.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and size != len(raw):
        msg = f"size {size} differs from the {len(raw)} bytes of data"
        ctx.add("error", f"{loc}.size", msg, "value", mid=M.ATTACHMENT_SIZE)
    digest = value.get("hash")
    if isinstance(digest, str):
        want = base64.b64encode(hashlib.sha1(raw).digest()).decode()  # noqa: S324 - FHIR's hash is SHA-1
        if digest != want:
            msg = f"hash {digest} is not the SHA-1 of the data ({want})"
            ctx.add("error", f"{loc}.hash", msg, "value", mid=M.ATTACHMENT_HASH)


def extension_context(
    v: Validator, value: Any, node: Node, tcode: str, loc: str, ctx: Ctx, host: Node | None
) -> None:
    """An extension's context, checked against the base element path of the instance (as the
    reference does), or the host's type."""
    sd = node.sd
    if sd.type != "Extension" or node is not sd.root or host is None or host.sd.type == "Extension":
        return
    contexts = sd.resource.get("context") or []
    if not contexts:
        return
    holder = loc.rsplit(".", 1)[0] if "." in loc else loc
    if holder.endswith(("modifierExtension", "extension")):
        holder = holder.rsplit(".", 1)[0]
    inst_path = ctx.element_path(_LAST_INDEX.sub("", holder))
    paths = {inst_path, host.path}
    if "." in inst_path:  # a choice element: valueQuantity is value[x]
        head, last = inst_path.rsplit(".", 1)
        m = _CHOICE_HEAD.match(last)
        if m:
            paths.add(f"{head}.{m.group(1)}[x]")
            paths.add(f"{head}.{m.group(1)}")
    host_types = set(host.type_codes()) | {host.sd.type if host is host.sd.root else ""}
    is_resource = host is host.sd.root and host.sd.kind == "resource"
    for c in contexts:
        if not isinstance(c, dict):
            continue
        expr = c.get("expression", "")
        if c.get("type") != "element":
            return  # fhirpath/extension contexts: not judged
        if expr in ("Element", "Base") or expr in paths or expr in host_types:
            return
        if any(expr.startswith(p + ".") or p.startswith(expr + ".") for p in paths):
            return  # core itself puts e.g. regex (context ElementDefinition) on ElementDefinition.type
        if is_resource and expr in ("Resource", "DomainResource"):
            return
        if expr.split(".", 1)[0] in ("BackboneElement",) and not is_resource:
            return
    allowed = ", ".join(str(c.get("expression", "")) for c in contexts if isinstance(c, dict))
    msg = f"extension {sd.url} is not allowed on {inst_path} (its context: {allowed})"
    # the spec's own resources use core extensions outside their stated context; the reference
    # lets that pass: a warning for core extensions (an error in strict mode and for others)
    sev = "warning" if v.defs.is_core(sd.url) and not v.strict else "error"
    ctx.add(sev, loc, msg, "extension", mid=M.EXT_CONTEXT)


# ==================================================================== resource-level rules
def contained_referenced(v: Validator, res: dict[str, Any], loc: str, ctx: Ctx, contained: bool) -> None:
    """dom-3, natively: every contained resource is referenced ('#id') from elsewhere in the
    resource, or itself refers to its container ('#')."""
    if contained or not isinstance(res.get("contained"), list):
        return
    items = res["contained"]
    outside: set[str] = set()
    for s in strings({k: val for k, val in res.items() if k != "contained"}):
        if s.startswith("#"):
            outside.add(s)
    own = [{s for s in strings(c) if s.startswith("#")} for c in items]
    for i, c in enumerate(items):
        if not isinstance(c, dict):
            continue
        elsewhere = set(outside)
        for j, o in enumerate(own):
            if j != i:
                elsewhere |= o
        if f"#{c.get('id')}" not in elsewhere and "#" not in own[i]:
            msg = (
                f"contained resource {c.get('id')!r} is not referenced "
                "from elsewhere in the resource and does not refer to it (dom-3)"
            )
            ctx.add("error", f"{loc}.contained[{i}]", msg, "invariant", "dom-3", M.CONTAINED_UNREFERENCED)


def differential(v: Validator, sd: dict[str, Any], loc: str, ctx: Ctx, contained: bool) -> None:
    """A profile's differential must apply to its base; elements out of the base's order are
    applied all the same (as the HL7 snapshot generator does) and reported as a warning."""
    diff = sd.get("differential")
    if sd.get("derivation") != "constraint" or not isinstance(diff, dict):
        return
    if not isinstance(diff.get("element"), list):
        return
    for sev, msg in _differential_findings(v, sd):
        mid = M.SD_DIFFERENTIAL if sev == "error" else M.SD_DIFFERENTIAL_ORDER
        ctx.add(sev, f"{loc}.differential", msg, "structure", mid=mid)


def _differential_findings(v: Validator, sd: dict[str, Any]) -> list[tuple[str, str]]:
    """(severity, message) of applying ``sd``'s differential to its base: worked out once per
    content of what the snapshot generator reads (and generation of the definitions)."""
    from procfhir.validator.snapshot import SNAPSHOT_INPUTS, SnapshotError, generate_snapshot

    try:
        content = json.dumps([sd.get(k) for k in SNAPSHOT_INPUTS], sort_keys=True, separators=(",", ":"))
        digest = hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=20).digest()
    except (TypeError, ValueError, RecursionError):
        digest = None
    memo_key = (v.defs.generation, digest) if digest is not None else None
    if memo_key is not None:
        hit = v.differential_memo.get(memo_key)
        if hit is not None:
            return hit
    out: list[tuple[str, str]] = []
    order: list[str] = []
    try:
        generate_snapshot(sd, v.defs, order, check_only=True)
    except SnapshotError as exc:
        out.append(("error", f"the differential cannot be applied to its base: {exc}"))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as malformed:
        out.append(("error", f"the differential is malformed: {malformed!r}"))  # not ``exc``: procfhir.native
    out.extend(("warning", problem) for problem in order)
    if memo_key is not None and len(v.differential_memo) < 2000:
        v.differential_memo[memo_key] = out
    return out


def bundle(v: Validator, res: dict[str, Any], loc: str, ctx: Ctx, contained: bool) -> None:
    """Bundle rules beyond its invariants: fullUrl absolute and consistent with the resource's id,
    no duplicate entries, references between entries of a document or message resolving."""
    entries = res.get("entry")
    if not isinstance(entries, list):
        return
    btype = res.get("type")
    full_urls: dict[str, int] = {}
    seen_ids: dict[tuple[str, str], int] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            continue
        eloc = f"{loc}.entry[{i}]"
        r = e.get("resource")
        fu = e.get("fullUrl")
        rtype = r.get("resourceType") if isinstance(r, dict) else None
        rid = r.get("id") if isinstance(r, dict) else None
        if fu is None and isinstance(r, dict) and btype in ("document", "message", "collection", "searchset"):
            msg = "except in transactions and batches, an entry needs a fullUrl (the resource's identity)"
            ctx.add("error", eloc, msg, "required", mid=M.BUNDLE_FULLURL_MISSING)
        if isinstance(fu, str):
            if not _ABSOLUTE.match(fu):
                msg = f"fullUrl {fu!r} is not an absolute URL"
                ctx.add("error", f"{eloc}.fullUrl", msg, "value", mid=M.BUNDLE_FULLURL_INVALID)
            elif (
                isinstance(rtype, str)
                and isinstance(rid, str)
                and not fu.startswith("urn:")
                and not _names_resource(fu, rtype, rid)
            ):
                msg = f"fullUrl {fu} does not match the resource's type and id {rtype}/{rid}"
                ctx.add("error", f"{eloc}.fullUrl", msg, "value", mid=M.BUNDLE_FULLURL_MISMATCH)
            if btype not in ("history",) and fu in full_urls:
                version = ((r or {}).get("meta") or {}).get("versionId") if isinstance(r, dict) else None
                if version is None:
                    msg = f"fullUrl {fu} is also the fullUrl of entry[{full_urls[fu]}]"
                    ctx.add("error", f"{eloc}.fullUrl", msg, "value", mid=M.BUNDLE_DUPLICATE_ENTRY)
            full_urls.setdefault(fu, i)
        elif (
            isinstance(rtype, str)
            and isinstance(rid, str)
            and btype not in ("history", "transaction", "batch")
        ):
            key = (rtype, rid)
            if key in seen_ids:
                msg = f"{rtype}/{rid} is also entry[{seen_ids[key]}]"
                ctx.add("error", f"{eloc}.resource", msg, "value", mid=M.BUNDLE_DUPLICATE_ENTRY)
            seen_ids.setdefault(key, i)
    if btype in ("document", "message"):
        _bundle_references(res, entries, loc, ctx)


def _names_resource(full_url: str, rtype: str, rid: str) -> bool:
    """Whether ``full_url`` ends with ``/rtype/rid`` (or ``/rtype/rid/_history/version``): the
    regular expression ``/rtype/rid(/_history/[^/]+)?$``, without compiling one per entry."""
    tail = f"/{rtype}/{rid}"
    ends = (full_url, full_url[:-1]) if full_url.endswith("\n") else (full_url,)  # $ before a final \n
    for s in ends:
        if s.endswith(tail):
            return True
        i = s.rfind("/_history/")
        if i >= 0 and s[:i].endswith(tail) and len(s) > i + 10 and "/" not in s[i + 10 :]:
            return True
    return False


def _bundle_references(res: dict[str, Any], entries: list[Any], loc: str, ctx: Ctx) -> None:
    known: set[str] = set()
    for e in entries:
        if not isinstance(e, dict):
            continue
        fu = e.get("fullUrl")
        r = e.get("resource")
        if isinstance(fu, str):
            known.add(fu)
        if isinstance(r, dict) and isinstance(r.get("resourceType"), str) and isinstance(r.get("id"), str):
            known.add(f"{r['resourceType']}/{r['id']}")
    for i, e in enumerate(entries):
        r = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(r, dict):
            continue
        fu = e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else ""
        base = fu.rsplit("/", 2)[0] + "/" if "/" in fu and not fu.startswith("urn:") else ""
        for path, ref in _references(r, f"{loc}.entry[{i}].resource"):
            if ref.startswith("#") or not (ref.startswith("urn:") or _LITERAL_REF.fullmatch(ref)):
                continue
            if ref in known or (base and base + ref in known):
                continue
            if "://" in ref and not ref.startswith(base or "\0"):
                continue  # an absolute reference to a server: not expected to be in the bundle
            msg = f"{ref} is not an entry of this {res.get('type')} bundle"
            # a urn: names nothing outside the bundle; Type/id may still resolve on a server
            sev = "error" if ref.startswith("urn:") else "warning"
            ctx.add(sev, path, msg, "not-found", mid=M.BUNDLE_REF_NOT_FOUND)


def _references(value: Any, loc: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [(loc, value)]
    while stack:
        at, cur = stack.pop()
        if isinstance(cur, dict):
            ref = cur.get("reference")
            if isinstance(ref, str):
                out.append((f"{at}.reference", ref))
            for k, val in cur.items():
                if k != "contained":
                    stack.append((f"{at}.{k}", val))
        elif isinstance(cur, list):
            stack.extend((f"{at}[{i}]", item) for i, item in enumerate(cur))
    out.sort()
    return out


# ==================================================================== the tables
_ANY_COMPLEX: tuple[Rule, ...] = (element_not_empty, fixed_and_pattern, binding, children_and_invariants)
_BY_TYPE: dict[str, tuple[Rule, ...]] = {
    "Coding": (codings_known,),
    "CodeableConcept": (codings_known,),
    "Reference": (reference,),
    "Narrative": (narrative,),
    "Extension": (extension_context,),
    "Attachment": (attachment,),
    "Quantity": (value_limits, quantity_code),
    **{t: (quantity_code,) for t in QUANTITY_TYPES if t != "Quantity"},
}
_PRIMITIVE: tuple[Rule, ...] = (
    primitive_value,
    value_limits,
    fixed_and_pattern,
    binding,
    primitive_invariants,
)
_PRIMITIVE_BY_TYPE: dict[str, tuple[Rule, ...]] = {"canonical": (canonical,)}
_BINDABLE = {"code", "Coding", "CodeableConcept", "Quantity", "string", "uri"}


def _binding_inert(node: Node) -> bool:
    b = node.binding
    if not b:
        return True
    return _SEVERITY_BY_STRENGTH.get(b.get("strength") or "") is None or not isinstance(
        b.get("valueSet"), str
    )


# rule -> when it cannot report anything at an element whatever the value (left out of its plan)
INERT: dict[Rule, Callable[[Node], bool]] = {
    value_limits: lambda n: n.max_length is None and n.min_value is None and n.max_value is None,
    fixed_and_pattern: lambda n: n.fixed is None and n.pattern is None,
    binding: _binding_inert,
}


def table_for(tcode: str, primitive: bool) -> tuple[Rule, ...]:
    """The rules for a value of type ``tcode``, in order."""
    if primitive:
        base = _PRIMITIVE if tcode in _BINDABLE else tuple(r for r in _PRIMITIVE if r is not binding)
        return base + _PRIMITIVE_BY_TYPE.get(tcode, ())
    base = _ANY_COMPLEX if tcode in _BINDABLE else tuple(r for r in _ANY_COMPLEX if r is not binding)
    return base + _BY_TYPE.get(tcode, ())


RESOURCE_RULES: dict[str, tuple[ResourceRule, ...]] = {
    "Bundle": (bundle,),
    "StructureDefinition": (differential,),
    "ConceptMap": (txresources.concept_map,),
    "ValueSet": (txresources.value_set,),
    "Measure": (measure.measure,),
}
RESOURCE_RULES_ALL: tuple[ResourceRule, ...] = (contained_referenced,)
