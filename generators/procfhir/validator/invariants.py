"""FHIRPath invariants (``ElementDefinition.constraint``), compiled once with fhirpathpy.

A few core invariants are not evaluated by fhirpathpy; each is listed here with the reason and
what the validator does instead (nothing is skipped silently):
"""

from __future__ import annotations

import json
import re
from typing import Any

from procfhir import fhirpath_cache
from procfhir.validator.fastpath import Unsupported, compile_invariant

# key -> how it is handled instead of fhirpathpy
NATIVE: dict[str, str] = {
    "ele-1": "checked natively (an element has a value or children); it sits on every element, and "
    "evaluating it through fhirpathpy on each would dominate the run time",
    "dom-3": "checked natively: its expression casts descendants() to canonical/uri/url, which "
    "fhirpathpy cannot do on untyped JSON (every contained resource must be referenced by "
    "'#id' from elsewhere in the resource, or refer to it with '#')",
    "ext-1": "checked natively (an extension has either a value or sub-extensions, not both)",
    "ref-1": "checked natively (a '#id' reference names a resource contained in the container), with a "
    "clearer message at the reference itself",
    "txt-1": "htmlChecks() is a FHIR-specific function fhirpathpy does not implement: the native "
    "XHTML checker (generators.validator.xhtml) applies the narrative rules instead",
    "txt-2": "htmlChecks() (non-whitespace content): checked by the native XHTML checker",
}
# expressions fhirpathpy cannot evaluate correctly, by key: reason (reported, not evaluated)
UNSUPPORTED: dict[str, str] = {}  # none left: each one fhirpathpy could not do is in NATIVE


_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_IDENT = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)(?!\s*\()")
_FOCUS_WIDE = re.compile(
    r"[%$]|\b(children|descendants|hasValue|repeat|resolve|conformsTo|memberOf|"
    r"htmlChecks|getValue|extension)\s*\("
)
_KEYWORDS = frozenset(
    {"and", "or", "xor", "implies", "in", "contains", "is", "as", "div", "mod", "true", "false", "not"}
)


def _touches_key(key: str, names: frozenset[str]) -> bool:
    """Whether a JSON property is a child named in names (or its choice variant or _extension).
    Conservative: a property whose name starts like a named choice element counts as touched."""
    k = key[1:] if key[:1] == "_" else key
    if k in names:
        return True
    m = _CHOICE_BASE.match(k)
    return m is not None and m.group(1) in names


_CHOICE_BASE = re.compile(r"([a-z][a-z0-9]*)[A-Z]")


_MISSING = object()
_MEMO_MAX_CONTENT = 20000
_MEMO_MAX_ENTRIES = 200000


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath hasValue(): a single primitive with a value (missing from fhirpathpy)."""
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict | list)]


_OPTIONS: dict[str, Any] = {
    "userInvocationTable": {"hasValue": {"fn": _has_value, "arity": {0: []}}},
    "traceFn": lambda *_args: None,  # trace() in core invariants must not print
}


class Prepared:
    """A constraint ready for the walk: its key, and ``guard``, the names of the children it reads
    when its verdict on an element holding none of them is known to be "holds" (most of core's
    invariants are ``x.empty() or ...`` / ``x.exists() implies ...``), else None."""

    __slots__ = ("constraint", "key", "guard", "fast", "reads_resource")

    def __init__(self, constraint: dict[str, Any], guard: frozenset[str] | None, fast: Any = None) -> None:
        self.constraint = constraint
        self.key: str = constraint.get("key", "")
        self.guard = guard
        self.fast = fast  # the compiled closure (fastpath), when there is one and no native check
        # whether its verdict may depend on more than the element: the resource (%resource,
        # %rootResource, any other %variable), or what resolve() finds (strings left out:
        # eld-19's pattern holds a %)
        expression = constraint.get("expression")
        code = _STRING.sub("''", expression) if isinstance(expression, str) else ""
        self.reads_resource = "%" in code or "resolve" in code


# key names of an object -> every name a FHIRPath step can reach it by (see touched_names)
_TOUCHED: dict[tuple[str, ...], frozenset[str]] = {}


def touched_names(value: dict[str, Any]) -> frozenset[str]:
    """The child names a compiled expression reads on ``value`` with a non-empty result or an
    exception: each key, without the ``_`` of a primitive's twin, and each of its prefixes ended
    by a capital (``valueString`` is read by ``value``, a choice element). Cached by key names."""
    keys = tuple(value)
    got = _TOUCHED.get(keys)
    if got is None:
        names: set[str] = set()
        for k in keys:
            k = k[1:] if k[:1] == "_" else k
            names.add(k)
            names.update(k[:i] for i in range(1, len(k)) if k[i].isupper())
        got = frozenset(names)
        if len(_TOUCHED) < 100_000:
            _TOUCHED[keys] = got
    return got


class Invariants:
    def __init__(self) -> None:
        self._compiled: dict[str, Any] = {}
        self._errors: dict[str, str] = {}
        self._model: Any = None
        self._name_cache: dict[str, frozenset[str] | None] = {}
        self._memo: dict[tuple[str, str, str], Any] = {}
        self._node_cls: Any = None
        self._fast: dict[str, Any] = {}  # expression -> compiled closure, or None (fhirpathpy only)
        self.fast_runs = 0
        self.slow_runs = 0

    def _compile(self, expression: str) -> Any:
        fn = self._compiled.get(expression)
        if fn is None and expression not in self._errors:
            from fhirpathpy import apply_parsed_path
            from fhirpathpy.engine.nodes import ResourceNode
            from fhirpathpy.engine.util import set_paths
            from fhirpathpy.models import models

            if self._model is None:
                self._model = models["r4"]
                self._node_cls = ResourceNode
            try:
                tree = fhirpath_cache.parse(expression)  # parse trees kept between processes
                fn = set_paths(apply_parsed_path, parsedPath=tree, model=self._model, options=_OPTIONS)
            except Exception as exc:  # noqa: BLE001 - any parser failure is reported
                self._errors[expression] = f"fhirpathpy cannot parse it: {exc}"
                return None
            self._compiled[expression] = fn
        return fn

    def prepare(self, constraint: dict[str, Any]) -> Prepared:
        """``constraint`` with its guard: when the expression reads only named children of the
        element (no ``%``, ``$this``, children()...), the compiled form's value depends on those
        children alone, so on an element holding none of them it is its value on ``{}``: when
        that is "holds", the guard lets the walk skip it."""
        key = constraint.get("key", "")
        expression = constraint.get("expression")
        guard = None
        fast: Any = None
        if key not in NATIVE and key not in UNSUPPORTED and isinstance(expression, str) and expression:
            fn = self._compile(expression)
            if fn is not None:
                fast = self._fast.get(expression, _MISSING)
                if fast is _MISSING:
                    fast = self._fast[expression] = _fast_compile(fn)
            names = self._names(expression)
            if fast is not None and names is not None and not any(n[:1].isupper() for n in names):
                try:
                    empty = fast([{}], {})
                except Exception:  # noqa: BLE001 - Unsupported or a defect: no guard
                    empty = None
                if empty == [] or empty == [True]:
                    guard = names
        return Prepared(constraint, guard, fast)

    def skipped(self, constraint: dict[str, Any]) -> bool:
        """Whether :meth:`check` returns None for ``constraint`` whatever the value."""
        key = constraint.get("key", "")
        if key in NATIVE or key in UNSUPPORTED:
            return key != "ext-1"
        return not constraint.get("expression")

    def check(
        self,
        constraint: dict[str, Any],
        value: Any,
        path: str,
        resource: dict[str, Any],
        root: dict[str, Any] | None = None,
    ) -> Any:
        """True (holds), False (violated), a string (cannot be evaluated: why) or None (skipped)."""
        key = constraint.get("key", "")
        if key in NATIVE or key in UNSUPPORTED:
            if key == "ext-1" and isinstance(value, dict):
                return ("extension" in value) != any(k.startswith("value") for k in value)
            return None
        expression = constraint.get("expression")
        if not expression:
            return None
        fn = self._compile(expression)
        if fn is None:
            return self._errors[expression]
        fast = self._fast.get(expression, _MISSING)
        if fast is _MISSING:
            fast = self._fast[expression] = _fast_compile(fn)
        if fast is not None:
            try:
                result = fast([value], {"resource": resource, "rootResource": root or resource})
            except Unsupported:
                result = None
            if result is not None:
                if result == [] or result == [True]:
                    self.fast_runs += 1
                    return True
                if result == [False]:
                    self.fast_runs += 1
                    return False
        self.slow_runs += 1
        names = self._names(expression)
        if names is None or not isinstance(value, dict):
            return self._run(fn, value, path, resource, root)
        # The expression reads only the named children of the element, so its value depends on
        # those children (and the element's type) alone: evaluate once per distinct content.
        touched = {k: v for k, v in value.items() if _touches_key(k, names)}
        if not touched:
            memo: tuple[str, str, str] = (expression, path, "")
            if memo not in self._memo:
                self._memo[memo] = self._run(fn, {}, path, resource, root)
            return self._memo[memo]
        content = json.dumps(touched, sort_keys=True, separators=(",", ":"))
        if len(content) > _MEMO_MAX_CONTENT:
            return self._run(fn, value, path, resource, root)
        memo = (expression, path, content)
        hit = self._memo.get(memo, _MISSING)
        if hit is _MISSING:
            if len(self._memo) > _MEMO_MAX_ENTRIES:
                self._memo.clear()
            hit = self._memo[memo] = self._run(fn, value, path, resource, root)
        return hit

    def _names(self, expression: str) -> frozenset[str] | None:
        """Identifiers an expression can read, or None when it may read more than named children
        (environment variables, $this, children(), descendants(), hasValue() on the focus...)."""
        if expression in self._name_cache:
            return self._name_cache[expression]
        names: frozenset[str] | None = None
        text = _STRING.sub("''", expression)
        if not _FOCUS_WIDE.search(text):
            idents = {m.group(1) or m.group(2) for m in _IDENT.finditer(text)}
            names = frozenset(i for i in idents if i not in _KEYWORDS)
        self._name_cache[expression] = names
        return names

    def _run(
        self, fn: Any, value: Any, path: str, resource: dict[str, Any], root: dict[str, Any] | None
    ) -> Any:
        try:
            focus = self._node_cls.create_node(value, path)
            result = fn(focus, {"resource": resource, "rootResource": root or resource})
        except Exception as exc:  # noqa: BLE001 - fhirpathpy raises many types; report them
            return f"fhirpathpy failed: {type(exc).__name__}: {str(exc)[:160]}"
        if result == [] or result == [True]:
            return True
        if result == [False]:
            return False
        return f"the expression returned {result!r}, not a boolean"


def _fast_compile(fn: Any) -> Any:
    """The fast path's closure for a compiled fhirpathpy expression, or None."""
    tree = getattr(fn, "parsedPath", None)
    if not isinstance(tree, dict):
        return None
    try:
        return compile_invariant(tree)
    except Unsupported:
        return None
    except Exception:  # noqa: BLE001 - an unexpected tree: fhirpathpy evaluates it
        return None


def unsupported_report() -> list[tuple[str, str]]:
    """The invariants not evaluated through fhirpathpy, with the reason (for notes and --explain)."""
    return sorted({**NATIVE, **UNSUPPORTED}.items())
