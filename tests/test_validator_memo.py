"""The validator's memos: a canonical resource (``Validator.resource``) or an ElementDefinition
(``Validator.instance``) met again with the same content gets the findings of its first
validation, moved to its new location. The findings are those of validating it again, whatever
the order and the place (alone, in a Bundle, twice in one Bundle); a resource whose findings
depend on its Bundle, or an element whose findings depend on its resource, is not kept."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from procfhir import fhircache
from tests.profiles import profile as make_profile

PATIENT_URN = "urn:uuid:7f0c2a1e-0d5e-4f7a-9a51-2d3c6b1e0a01"
BASE = "http://example.org/fhir"


def _resources() -> dict[str, dict[str, Any]]:
    profile = make_profile(
        f"{BASE}/StructureDefinition/p",
        [
            {"id": "Patient.gender", "path": "Patient.gender", "min": 1, "max": "0"},  # eld-2
            {"id": "Patient.nope", "path": "Patient.nope", "min": 1},  # not in the base
        ],
    )
    value_set = {
        "resourceType": "ValueSet",
        "url": f"{BASE}/ValueSet/v",
        "status": "bogus",  # not in the required value set
        "compose": {"include": [{"system": "http://loinc.org", "concept": [{"code": " x"}]}]},
    }
    # its subject is a Patient in the Bundle (a Group is asked for): a finding only there
    plan = {
        "resourceType": "PlanDefinition",
        "url": f"{BASE}/PlanDefinition/d",
        "status": "draft",
        "subjectReference": {"reference": PATIENT_URN},
        "action": [{"title": "x", "timingDuration": {"value": -1, "unit": "d"}}],
    }
    return {"profile": profile, "value_set": value_set, "plan": plan}


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    entries = [{"fullUrl": PATIENT_URN, "resource": {"resourceType": "Patient", "gender": "other"}}]
    for i, r in enumerate(resources):
        entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": r})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _found(issues: list[Any]) -> list[tuple[str, ...]]:
    return [(i.severity, i.location, i.message, i.code, i.key, i.source, i.message_id) for i in issues]


@pytest.mark.parametrize("bundle_first", [True, False])
def test_memo_gives_the_findings_of_validating_again(bundle_first: bool) -> None:
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    from procfhir.validator.engine import Validator

    res = _resources()
    alone = [(name, copy.deepcopy(r)) for name, r in res.items()]
    in_bundle = [copy.deepcopy(r) for r in res.values()] + [copy.deepcopy(res["value_set"])]
    together = ("bundle", _bundle(in_bundle))
    inputs = [together, *alone] if bundle_first else [*alone, together]
    inputs += [("again", copy.deepcopy(together[1]))]
    memo, plain = Validator(), Validator()
    plain.memo_max = 0
    for name, value in inputs:
        got = memo.validate(copy.deepcopy(value), source=name)
        want = plain.validate(copy.deepcopy(value), source=name)
        assert _found(got) == _found(want), name
        if name == "bundle":
            found = {(i.location, i.message_id) for i in got}
            # the findings inside the canonical resources, and the one only their place gives
            assert ("Bundle.entry[3].resource.subjectReference.reference", "REF_WRONG_TARGET") in found
            assert ("Bundle.entry[2].resource.status", "TX_NOT_IN_VALUESET") in found
            assert ("Bundle.entry[4].resource.status", "TX_NOT_IN_VALUESET") in found
    assert plain.resource_memo == {}
    kept = memo.resource_memo
    assert memo._memo_key(res["value_set"], None) in kept  # replayed (twice in a Bundle, alone)
    assert memo._memo_key(res["profile"], None) in kept
    assert memo._memo_key(res["plan"], None) not in kept  # its findings depend on its Bundle
    assert memo._memo_key(res["value_set"], "http://example.org/other") not in kept
    changed = copy.deepcopy(res["value_set"])
    changed["status"] = "draft"
    assert memo._memo_key(changed, None) not in kept
    assert not [i for i in memo.validate(changed) if i.location == "ValueSet.status"]


def _profile(name: str, contained: bool) -> dict[str, Any]:
    """A profile whose differential repeats the others' elements: one with a finding (eld-2),
    one whose extension refers to a contained resource (found in one profile, not the other)."""
    element = {"id": "Patient.gender", "path": "Patient.gender", "min": 1, "max": "0"}
    referring = {
        "id": "Patient.birthDate",
        "path": "Patient.birthDate",
        "extension": [
            {"url": "http://example.org/fhir/StructureDefinition/x", "valueReference": {"reference": "#c1"}}
        ],
    }
    sd = make_profile(f"{BASE}/StructureDefinition/{name}", [element, referring])
    if contained:
        sd["contained"] = [{"resourceType": "Basic", "id": "c1", "code": {"text": "x"}}]
    return sd


@pytest.mark.parametrize("order", [("a", "b", "c"), ("c", "b", "a"), ("b", "a", "c")])
def test_memo_of_element_definitions(order: tuple[str, ...]) -> None:
    """Equal ElementDefinitions in different profiles: the findings of validating each again,
    at each one's location; one whose extension refers to a contained resource is not kept."""
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    from procfhir.validator.engine import Validator

    profiles = {"a": _profile("a", contained=True), "b": _profile("b", contained=False)}
    profiles["c"] = _bundle([copy.deepcopy(profiles["b"]), copy.deepcopy(profiles["a"])])
    memo, plain = Validator(), Validator()
    plain.memo_max = 0
    seen: dict[str, set[tuple[str, str]]] = {}
    for name in order:
        got = memo.validate(copy.deepcopy(profiles[name]), source=name)
        want = plain.validate(copy.deepcopy(profiles[name]), source=name)
        assert _found(got) == _found(want), name
        seen[name] = {(i.location, i.message_id) for i in got}
    assert plain.value_memo == {} and memo.value_memo
    ref = ".differential.element[1].extension[0].valueReference.reference"
    assert ("StructureDefinition" + ref, "REF_CONTAINED_MISSING") in seen["b"]
    assert ("StructureDefinition" + ref, "REF_CONTAINED_MISSING") not in seen["a"]
    assert ("Bundle.entry[1].resource" + ref, "REF_CONTAINED_MISSING") in seen["c"]
    assert ("Bundle.entry[2].resource" + ref, "REF_CONTAINED_MISSING") not in seen["c"]
    for where in ("StructureDefinition", "Bundle.entry[1].resource", "Bundle.entry[2].resource"):
        assert (f"{where}.differential.element[0]", "INVARIANT_FAILED") in seen["a"] | seen["b"] | seen["c"]


def test_memo_of_extensions_and_codings_by_place() -> None:
    """The same extension on a Patient (its context) and on an Observation (not its context),
    the same Coding under two bindings: each finding as without the memo, at its place."""
    if not fhircache.is_filled():
        pytest.skip("FHIR package cache not filled")
    from procfhir.validator.engine import Validator

    ext_url = f"{BASE}/StructureDefinition/e"
    extension_sd = make_profile(
        ext_url,
        [
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": ext_url},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "type": [{"code": "string"}]},
        ],
        base="Extension",
        kind="complex-type",
        context=[{"type": "element", "expression": "Patient"}],
    )
    ext = {"url": ext_url, "valueString": "x"}
    coding = {"system": "http://hl7.org/fhir/administrative-gender", "code": "male"}
    inputs = [
        {"resourceType": "Patient", "extension": [ext], "maritalStatus": {"coding": [coding]}},
        {"resourceType": "Observation", "status": "final", "code": {"coding": [coding]}, "extension": [ext]},
        {"resourceType": "Patient", "extension": [ext, ext], "maritalStatus": {"coding": [coding]}},
    ]
    memo, plain = Validator(extra_definitions=[extension_sd]), Validator(extra_definitions=[extension_sd])
    plain.memo_max = 0
    found: list[set[tuple[str, str]]] = []
    for value in inputs:
        got = memo.validate(copy.deepcopy(value))
        assert _found(got) == _found(plain.validate(copy.deepcopy(value))), value
        found.append({(i.location, i.message_id) for i in got})
    assert ("Observation.extension[0]", "EXT_CONTEXT") in found[1]
    assert not any(mid == "EXT_CONTEXT" for _, mid in found[0] | found[2])
    # the gender code is not a marital status (extensible binding), and is a fine Observation code
    assert ("Patient.maritalStatus", "TX_NOT_IN_VALUESET") in found[0] & found[2]
    assert not any(loc.startswith("Observation.code") for loc, _ in found[1])
    assert memo.value_memo
