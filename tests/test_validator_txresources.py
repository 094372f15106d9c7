"""ConceptMap and ValueSet rules (validator/txresources.py), and Measure rules (validator/measure.py),
on the R4 examples: the errors are the
examples' real defects (codes that are not in the named code systems, such as 'proposed,waitlist';
versions written into include.system), the same HAPI's $validate reports where it was compared
(docs/validator-comparison.md), and nothing else."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from procfhir import fhircache

RULES = (
    "CONCEPTMAP_GROUP_SOURCE_CODE_INVALID",
    "CONCEPTMAP_GROUP_TARGET_CODE_INVALID",
    "VALUESET_INCLUDE_SYSTEM_VERSION",
)
# errors per example file (outside the Bundles that repeat these resources)
EXPECTED = {
    "ConceptMap-cm-administrative-gender-v3.json": 1,  # UNK is a NullFlavor, not a gender
    "ConceptMap-sc-appointmentstatus.json": 1,
    "ConceptMap-sc-condition-ver-status.json": 2,
    "ConceptMap-sc-contract-publicationstatus.json": 4,
    "ConceptMap-sc-contract-status.json": 4,
    "ConceptMap-sc-diagnostic-report-status.json": 2,
    "ConceptMap-sc-goal-achievement.json": 3,
    "ConceptMap-sc-medication-admin-status.json": 1,
    "ConceptMap-sc-medication-statement-status.json": 1,
    "ConceptMap-sc-medicationdispense-status.json": 2,
    "ConceptMap-sc-observation-status.json": 1,
    "ConceptMap-sc-participationstatus.json": 1,
    "ConceptMap-sc-publication-status.json": 1,
    "ConceptMap-sc-research-study-status.json": 3,
    "ConceptMap-sc-research-subject-status.json": 2,
    "ConceptMap-sc-subscription-status.json": 1,
    "ConceptMap-sc-verificationresult-status.json": 1,
    "ValueSet-nhin-purposeofuse.json": 4,  # a contained ConceptMap
    "ValueSet-v2-2.1-0006.json": 1,
    "ValueSet-v2-2.3.1-0360.json": 1,
    "ValueSet-v2-2.4-0006.json": 1,
    "ValueSet-v2-2.4-0391.json": 1,
    "ValueSet-v2-2.6-0391.json": 1,
    "ValueSet-v2-2.7-0360.json": 1,
}
# findings HAPI 8.8.0's $validate reported at the same place on the compared samples
SEEN_BY_HAPI = {
    ("ConceptMap-sc-appointmentstatus.json", "ConceptMap.group[0].element[1].code"),
    ("ConceptMap-sc-observation-status.json", "ConceptMap.group[0].element[3].code"),
    ("ValueSet-nhin-purposeofuse.json", "ValueSet.contained[0].group[0].element[3].target[0].code"),
    ("ValueSet-v2-2.1-0006.json", "ValueSet.compose.include[0]"),
    ("ValueSet-v2-2.7-0360.json", "ValueSet.compose.include[0]"),
}


def test_r4_examples_conceptmap_and_valueset_rules_find_only_real_defects() -> None:
    from procfhir.validator import Validator

    if not fhircache.is_filled():
        pytest.skip("the FHIR package cache is empty")
    v = Validator()
    counts: Counter[str] = Counter()
    found: set[tuple[str, str]] = set()
    seen = 0
    for path in sorted(fhircache.examples_dir().glob("*.json")):
        if not path.name.startswith(("ConceptMap-", "ValueSet-")):
            continue
        raw = path.read_bytes()
        if b'"ConceptMap"' not in raw and not re.search(rb'"system":\s*"[^"]*\|', raw):
            continue
        seen += 1
        for i in v.validate(json.loads(raw), source=path.name):
            if i.message_id in RULES and i.is_error:
                counts[path.name] += 1
                found.add((path.name, i.location))
    assert seen >= 30
    assert dict(counts) == EXPECTED
    assert found >= SEEN_BY_HAPI


def test_conceptmap_codes_named_by_path(tmp_path: Path) -> None:
    """A ConceptMap inside a Bundle: the codes are judged there too, at the entry's path."""
    from procfhir.validator import Validator

    cm = json.loads(
        (Path(__file__).parent / "fixtures" / "invalid" / "conceptmap-codes-invalid.json").read_text()
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": cm["url"], "resource": cm}],
    }
    issues = [i for i in Validator().validate(bundle) if i.is_error]
    assert {(i.location, i.message_id) for i in issues} == {
        ("Bundle.entry[0].resource.group[0].element[2].code", "CONCEPTMAP_GROUP_SOURCE_CODE_INVALID"),
        (
            "Bundle.entry[0].resource.group[0].element[3].target[0].code",
            "CONCEPTMAP_GROUP_TARGET_CODE_INVALID",
        ),
    }


def _library(name: str, defs: list[str] | None) -> dict[str, Any]:
    lib: dict[str, Any] = {
        "resourceType": "Library",
        "id": name.lower(),
        "url": f"http://example.org/fhir/Library/{name}",
        "name": name,
        "status": "draft",
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}
            ]
        },
        "content": [{"contentType": "text/cql", "data": base64.b64encode(b"library X").decode()}],
    }
    if defs is not None:
        body = "".join(f'<def name="{d}"/>' for d in defs)
        elm = f'<library xmlns="urn:hl7-org:elm:r1"><statements>{body}</statements></library>'
        lib["content"].append(
            {"contentType": "application/elm+xml", "data": base64.b64encode(elm.encode()).decode()}
        )
    return lib


@pytest.mark.parametrize(
    ("libraries", "expression", "want"),
    [
        (["Main"], "Main.Age Group", None),
        (["Main"], "Age Group", None),
        (["Main"], "Main.Sex", "MEASURE_M_CRITERIA_CQL_NOT_FOUND"),
        (["Main"], "Other.Age Group", "MEASURE_M_CRITERIA_CQL_LIB_NOT_FOUND"),
        (["Main", "Second"], "Age Group", "MEASURE_M_CRITERIA_CQL_ONLY_ONE_LIB"),
        (["NoElm"], "Age Group", "MEASURE_M_CRITERIA_CQL_NO_ELM"),
        ([], "Age Group", "MEASURE_M_CRITERIA_CQL_NO_LIB"),
    ],
)
def test_measure_cql_criteria_against_the_library_elm(
    libraries: list[str], expression: str, want: str | None
) -> None:
    from procfhir.validator import Validator

    defs = [_library("Main", ["Age Group"]), _library("Second", ["Age Group"]), _library("NoElm", None)]
    measure = {
        "resourceType": "Measure",
        "id": "m",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>m</p></div>'},
        "status": "draft",
        "library": [f"http://example.org/fhir/Library/{n}" for n in libraries],
        "group": [
            {
                "population": [{"criteria": {"language": "text/cql", "expression": "Initial Population"}}],
                "stratifier": [{"criteria": {"language": "text/cql", "expression": expression}}],
            }
        ],
    }
    if not libraries:
        del measure["library"]
    errors = [
        (i.location, i.message_id) for i in Validator(extra_definitions=defs).validate(measure) if i.is_error
    ]
    assert errors == ([("Measure.group[0].stratifier[0].criteria", want)] if want else [])


def test_r4_example_measures_as_hapi_judges_them() -> None:
    """Every Measure of the R4 examples: the Measure rules' errors are exactly those HAPI 8.8.0's
    $validate reports (CQL stratifiers of measures whose library cannot be found), checked
    against a run of HAPI on the same files."""
    from procfhir.validator import Validator

    if not fhircache.is_filled():
        pytest.skip("the FHIR package cache is empty")
    v = Validator()
    found = set()
    for path in sorted(fhircache.examples_dir().glob("Measure-*.json")):
        for i in v.validate(json.loads(path.read_text()), source=path.name):
            if i.message_id.startswith("MEASURE_") and i.is_error:
                found.add((path.name, i.location, i.message_id))
    hiv_groups = (0, 1, 4, 5, 6, 8, 9, 10, 11, 12)
    want = {
        (
            "Measure-hiv-indicators.json",
            f"Measure.group[{g}].stratifier[0].criteria",
            "MEASURE_M_CRITERIA_CQL_NO_LIB",
        )
        for g in hiv_groups
    } | {
        (
            "Measure-measure-cms146-example.json",
            f"Measure.group[0].stratifier[{s}].criteria",
            "MEASURE_M_CRITERIA_CQL_NO_LIB",
        )
        for s in (0, 1)
    }
    assert found == want
