"""ConceptMap and ValueSet rules (validator/txresources.py) on the R4 examples: the errors are the
examples' real defects (codes that are not in the named code systems, such as 'proposed,waitlist';
versions written into include.system), the same HAPI's $validate reports where it was compared
(docs/validator-comparison.md), and nothing else."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

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
