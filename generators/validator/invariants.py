"""FHIRPath invariants (``ElementDefinition.constraint``), compiled once with fhirpathpy.

A few core invariants are not evaluated by fhirpathpy; each is listed here with the reason and
what the validator does instead (nothing is skipped silently):
"""

from __future__ import annotations

from typing import Any

# key -> how it is handled instead of fhirpathpy
NATIVE: dict[str, str] = {
    "ele-1": "checked natively (an element has a value or children); it sits on every element, and "
    "evaluating it through fhirpathpy on each would dominate the run time",
    "ext-1": "checked natively (an extension has either a value or sub-extensions, not both)",
    "ref-1": "checked natively (a '#id' reference names a resource contained in the container), with a "
    "clearer message at the reference itself",
    "txt-1": "htmlChecks() is a FHIR-specific function fhirpathpy does not implement: the native "
    "XHTML checker (generators.validator.xhtml) applies the narrative rules instead",
    "txt-2": "htmlChecks() (non-whitespace content): checked by the native XHTML checker",
}
# expressions fhirpathpy cannot evaluate correctly, by key: reason (reported, not evaluated)
UNSUPPORTED: dict[str, str] = {
    "dom-3": "needs descendants().as(canonical|uri|url) type casts on untyped JSON, which fhirpathpy "
    "cannot do; the validator checks contained references natively instead "
    "(a '#id' reference must name a contained resource)",
}


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath hasValue(): a single primitive with a value (missing from fhirpathpy)."""
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict | list)]


_OPTIONS: dict[str, Any] = {
    "userInvocationTable": {"hasValue": {"fn": _has_value, "arity": {0: []}}},
    "traceFn": lambda *_args: None,  # trace() in core invariants must not print
}


class Invariants:
    def __init__(self) -> None:
        self._compiled: dict[str, Any] = {}
        self._errors: dict[str, str] = {}
        self._model: Any = None
        self._node_cls: Any = None

    def _compile(self, expression: str) -> Any:
        fn = self._compiled.get(expression)
        if fn is None and expression not in self._errors:
            from fhirpathpy import compile as fp_compile
            from fhirpathpy.engine.nodes import ResourceNode
            from fhirpathpy.models import models

            if self._model is None:
                self._model = models["r4"]
                self._node_cls = ResourceNode
            try:
                fn = fp_compile(expression, self._model, _OPTIONS)
            except Exception as exc:  # noqa: BLE001 - any parser failure is reported
                self._errors[expression] = f"fhirpathpy cannot parse it: {exc}"
                return None
            self._compiled[expression] = fn
        return fn

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


def unsupported_report() -> list[tuple[str, str]]:
    """The invariants not evaluated through fhirpathpy, with the reason (for notes and --explain)."""
    return sorted({**NATIVE, **UNSUPPORTED}.items())
