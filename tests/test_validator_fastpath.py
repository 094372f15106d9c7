"""The validator's compiled invariants (fastpath) against fhirpathpy, the reference: same verdict
on every invariant evaluation over a sample of the R4 spec's examples, and on constructed cases
of the three-valued logic and collection rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from procfhir import fhircache
from procfhir.validator.fastpath import Unsupported, compile_invariant


def _reference(expression: str, value: Any, resource: dict[str, Any]) -> Any:
    from procfhir.validator.invariants import Invariants

    inv = Invariants()
    fn = inv._compile(expression)
    return inv._run(fn, value, "", resource, resource)


def _fast(expression: str, value: Any, resource: dict[str, Any]) -> Any:
    from fhirpathpy.parser import parse

    fn = compile_invariant(parse(expression))
    got = fn([value], {"resource": resource, "rootResource": resource})
    return True if got in ([], [True]) else False if got == [False] else ("other", got)


CASES = [
    ("a.exists() and b.empty()", {"a": 1}),
    ("a.exists() and b.empty()", {"a": 1, "b": "x"}),
    ("a implies b", {}),
    ("a implies b", {"a": True}),
    ("a implies b", {"a": True, "b": False}),
    ("(a | b).count() = 2", {"a": "x", "b": "x"}),
    ("a.combine(b).isDistinct()", {"a": ["x"], "b": ["x"]}),
    ("x.all(y.startsWith('p'))", {"x": [{"y": "pa"}, {"y": "qa"}]}),
    ("x.where(y = 'a').exists() xor z.exists()", {"x": [{"y": "a"}], "z": 1}),
    ("name.matches('^[A-Z]')", {"name": "abc"}),
    ("empty() or ($this = '*') or (toInteger() >= 0)", "*"),
    ("empty() or ($this = '*') or (toInteger() >= 0)", "3"),
    ("children().where($this = 'q').exists()", {"a": "q"}),
    ("descendants().where($this = 'q').empty()", {"a": {"b": ["q"]}}),
    ("%resource.kind = 'logical' or a.first().b.startsWith(%resource.type & '.')", {"a": [{"b": "T.x"}]}),
    ("iif(a.exists(), b.exists(), true)", {"a": 1}),
    ("x in ('a' | 'b')", {"x": "b"}),
    ("a <= b", {"a": 1, "b": 2}),
    ("a or b", {}),
    ("a or b", {"b": True}),
    ("a or b", {"a": False, "b": False}),
    ("a and b", {"b": False}),
    ("a and b", {"a": True}),
    ("a implies b", {"b": True}),
    ("a implies b", {"b": False}),
    ("a.exists() or b.empty()", {}),
    ("x.where(y.exists()).empty() and x.y.exists().not()", {"x": [{"z": 1}]}),
    ("a.startsWith(b.replaceMatches('\\\\..*', '') & '.')", {"a": "T.x", "b": "T.y.z"}),
    ("a.replaceMatches('([a-z]+)-([0-9]+)', '$2$1') = '12ab'", {"a": "ab-12"}),
    # equality with a string literal (compiled apart), on each kind of value
    ("a = 'x'", {"a": "x"}),
    ("a = 'x'", {"a": "y"}),
    ("a = 'x'", {"a": True}),
    ("a != 'x'", {"a": 1}),
    ("a != 'x'", {"a": "x"}),
    ("a = 'x'", {"a": ["x", "y"]}),
    ("a != 'x'", {"a": ["x", "y"]}),
    ("(a = 'x').empty() and (a != 'x').empty()", {}),
    ("b.a = 'x'", {"b": [{"a": "x"}]}),
    ("b.a = 'x'", {"b": {"a": {"c": 1}}}),
    # and / or on one boolean, on nothing, both sides
    ("a.exists() and (b = 'x')", {"a": 1}),
    ("(b = 'x') or a.empty()", {"a": 1, "b": "y"}),
    ("(b = 'x') and (c = 'y')", {"c": "y"}),
    # string functions with a literal parameter; exists(criterion) and all() on every outcome
    ("a.startsWith('ab') and a.endsWith('cd') and a.contains('bc')", {"a": "abcd"}),
    ("a.startsWith('x') or a.endsWith('x') or a.contains('x')", {"a": "abcd"}),
    ("a.matches('^[a-z]+$')", {"a": "abcd"}),
    ("a.matches('^[a-z]+$')", {"a": "ab cd"}),
    ("a.matches('^[a-z]+$').empty()", {}),
    ("x.exists(y = 'a')", {"x": [{"y": "b"}, {"y": "a"}]}),
    ("x.exists(y = 'a')", {"x": [{"y": "b"}, {"z": "a"}]}),
    ("x.exists(y)", {"x": [{"y": "b"}]}),
    ("x.all(y = 'a')", {"x": [{"y": "a"}, {"y": "a"}]}),
    ("x.all(y = 'a')", {"x": [{"y": "a"}, {}]}),
    ("x.all(y = 'a')", {}),
]


@pytest.mark.parametrize(("expression", "value"), CASES)
def test_constructs_agree_with_fhirpathpy(expression: str, value: Any) -> None:
    resource = {"resourceType": "StructureDefinition", "kind": "resource", "type": "T"}
    try:
        fast = _fast(expression, value, resource)
    except Unsupported:
        pytest.fail(f"{expression} should be compiled for this input")
    assert fast == _reference(expression, value, resource)


def test_outside_the_subset_is_left_to_fhirpathpy() -> None:
    from fhirpathpy.parser import parse

    for expression in ("value.ofType(Quantity).exists()", "a.resolve().exists()", "today() > a"):
        with pytest.raises(Unsupported):
            compile_invariant(parse(expression))
    fn = compile_invariant(parse("value.exists()"))
    with pytest.raises(Unsupported):  # a choice element: fhirpathpy knows its types
        fn([{"valueString": "x"}], {})
    with pytest.raises(Unsupported):  # on several objects too
        fn([{"valueX": 1, "v": 2}, {"value": 1}, {"a": 1, "valueQuantity": {"value": 1}}], {})
    assert fn([{"valuex": 1, "v": 2}, {"values": 1}], {}) == [False]  # no typed name: none there
    with pytest.raises(Unsupported):  # a primitive's twin, on one object as on several
        fn([{"_value": {"id": "x"}}], {})
    with pytest.raises(Unsupported):
        fn([{}, {"_value": {"id": "x"}}], {})
    with pytest.raises(Unsupported):  # an array compared with a string
        compile_invariant(parse("a = 'x'"))([{"a": [["x"]]}], {})
    with pytest.raises(Unsupported):  # a string function on an array of strings
        compile_invariant(parse("a.matches('x')"))([{"a": ["x", "y"]}], {})
    with pytest.raises(Unsupported):  # a regex Python does not take: left to fhirpathpy
        compile_invariant(parse("a.matches('(?<x>a)')"))([{"a": "a"}], {})
    for expression in ("a and b.exists()", "a or b.exists()", "b.exists() and a", "b.empty() or a"):
        with pytest.raises(Unsupported):  # a logical operator on a string
            compile_invariant(parse(expression))([{"a": "s", "b": 1}], {})
    # an operand outside the subset is evaluated (by fhirpathpy) only when the left side does
    # not settle the result: ctm-1 holds on every participant without onBehalfOf
    fn = compile_invariant(parse("a.exists() implies (b.resolve().exists())"))
    assert fn([{}], {}) == [True]
    with pytest.raises(Unsupported):
        fn([{"a": 1, "b": {"reference": "Patient/1"}}], {})


def test_same_verdicts_as_fhirpathpy_on_spec_examples(ran_with_python_modules: bool) -> None:
    """Every invariant the validator evaluates on a sample of the R4 examples: the fast path's
    verdict is fhirpathpy's."""
    if ran_with_python_modules:
        return  # it patches Invariants: run with the Python modules (conftest)
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    from procfhir.validator import Validator
    from procfhir.validator import invariants as inv

    v = Validator()
    mismatches: list[str] = []
    compared = 0
    original = inv.Invariants.check

    def check(self: Any, c: dict[str, Any], value: Any, path: str, resource: Any, root: Any = None) -> Any:
        nonlocal compared
        out = original(self, c, value, path, resource, root)
        expression = c.get("expression")
        fast = self._fast.get(expression)
        if fast:
            try:
                got = fast([value], {"resource": resource, "rootResource": root or resource})
            except Unsupported:
                return out
            mine = True if got in ([], [True]) else False if got == [False] else None
            ref = self._run(self._compile(expression), value, path, resource, root)
            compared += 1
            # where fhirpathpy fails (resolve() is not implemented) in an operand the left side
            # settles, the fast path gives the verdict: only fhirpathpy's own verdicts compare
            if mine is not None and isinstance(ref, bool) and mine != ref:
                mismatches.append(f"{expression}: fast {mine}, fhirpathpy {ref} on {json.dumps(value)[:200]}")
        return out

    original_prepare = inv.Invariants.prepare

    def prepare(self: Any, c: dict[str, Any]) -> Any:
        got = original_prepare(self, c)  # the walk's own call of the closure, through check here
        return inv.Prepared(c, got.guard, None)

    inv.Invariants.check = check  # type: ignore[method-assign,assignment]
    inv.Invariants.prepare = prepare  # type: ignore[method-assign]
    try:
        for path in sorted(fhircache.examples_dir().glob("*.json"))[::40]:
            if path.name != "package.json":
                v.validate(json.loads(path.read_text()))
    finally:
        inv.Invariants.check = original  # type: ignore[method-assign]
        inv.Invariants.prepare = original_prepare  # type: ignore[method-assign]
    assert compared > 1000
    assert not mismatches, "\n".join(mismatches[:20])


def test_guard_skips_only_what_holds() -> None:
    """An invariant reading only named children, that holds on ``{}``, is skipped on elements
    holding none of them (a choice element's typed name and a primitive's twin count as held);
    one that fails on ``{}`` never is."""
    from procfhir.validator.invariants import Invariants, touched_names

    inv = Invariants()
    holds = inv.prepare({"key": "x-1", "expression": "a.empty() or b.exists()"})
    assert holds.guard is not None and {"a", "b"} <= holds.guard
    assert holds.guard.isdisjoint(touched_names({"c": 1, "d": [1]}))
    assert not holds.guard.isdisjoint(touched_names({"_a": {"id": "x"}}))
    choice = inv.prepare({"key": "x-2", "expression": "multipleBirth.exists() implies c.exists()"})
    assert choice.guard is not None
    assert not choice.guard.isdisjoint(touched_names({"multipleBirthInteger": 2}))
    assert inv.prepare({"key": "x-3", "expression": "a.exists()"}).guard is None  # fails on {}
    assert inv.prepare({"key": "x-4", "expression": "%resource.a.empty()"}).guard is None
