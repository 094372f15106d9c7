"""Slices discriminated on ``item.resolve()`` (validator/resolve.py), through the CLI: the
reference is resolved within the resource (contained) or its Bundle (fullUrl, urn:uuid, Type/id),
typed from a literal reference when it cannot be resolved, and what cannot be decided offline is
information, not an error of its own."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_validator import _cli_outcome, message_id

DEFS = Path(__file__).parent / "fixtures" / "definitions"
INVALID = Path(__file__).parent / "fixtures" / "invalid"
PATIENT_UUID = "urn:uuid:9d3c1f5e-2b7a-4c1e-8f3a-1a2b3c4d5e6f"


def _list(profile: str, refs: list[str], contained: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "List",
        "id": "l1",
        "meta": {"profile": [f"http://example.test/StructureDefinition/{profile}"]},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>list</p></div>'},
        "status": "current",
        "mode": "snapshot",
        "entry": [{"item": {"reference": r}} for r in refs],
    }
    if contained:
        res["contained"] = contained
    return res


def _bundle(lst: dict[str, Any], patient_url: str, family: str = "Lee") -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "p9", "name": [{"family": family}]}
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "http://example.org/fhir/List/l1", "resource": lst},
            {"fullUrl": patient_url, "resource": patient},
        ],
    }


def _run(tmp_path: Path, name: str, resource: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(resource))
    code, by_file = _cli_outcome([str(path), "-d", str(DEFS)], tmp_path)
    return code, by_file.get(name, [])


CONTAINED_PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Lee"}]}


@pytest.mark.parametrize(
    ("name", "resource"),
    [
        ("type-contained", _list("resolve-type-list", ["#p1"], [CONTAINED_PATIENT])),
        ("type-literal", _list("resolve-type-list", ["Patient/123", "Observation/9"])),
        ("type-bundle-uuid", _bundle(_list("resolve-type-list", [PATIENT_UUID]), PATIENT_UUID)),
        (
            "type-bundle-relative",
            _bundle(_list("resolve-type-list", ["Patient/p9"]), "http://example.org/fhir/Patient/p9"),
        ),
        ("profile-contained", _list("resolve-profile-list", ["#p1"], [CONTAINED_PATIENT])),
        ("profile-bundle-uuid", _bundle(_list("resolve-profile-list", [PATIENT_UUID]), PATIENT_UUID)),
    ],
)
def test_resolved_references_match_their_slice(tmp_path: Path, name: str, resource: dict[str, Any]) -> None:
    code, issues = _run(tmp_path, name, resource)
    assert code == 0, issues
    assert not [i for i in issues if message_id(i) in ("SLICE_MIN", "SLICE_RESOLVE_UNRESOLVED")]


def test_nonconforming_resolved_resource_matches_no_profile_slice(tmp_path: Path) -> None:
    bundle = _bundle(_list("resolve-profile-list", [PATIENT_UUID]), PATIENT_UUID, family="Longfamilyname")
    code, issues = _run(tmp_path, "profile-bundle-bad", bundle)
    assert code == 1
    errors = {(i["expression"][0], message_id(i)) for i in issues if i["severity"] == "error"}
    assert errors == {("Bundle.entry[0].resource.entry", "SLICE_MIN")}


def test_unresolvable_reference_is_information(tmp_path: Path) -> None:
    """Nothing names a type: the slice cannot be decided (information); a profile slice on a
    reference to a server cannot be checked offline (information)."""
    lst = _list("resolve-type-list", ["Patient/1", "http://example.org/other/thing"])
    code, issues = _run(tmp_path, "type-unresolved", lst)
    assert code == 0
    info = [i for i in issues if message_id(i) == "SLICE_RESOLVE_UNRESOLVED"]
    assert [(i["severity"], i["expression"][0]) for i in info] == [("information", "List.entry[1]")]
    prof = copy.deepcopy(_list("resolve-profile-list", ["Patient/1"]))
    code, issues = _run(tmp_path, "profile-unresolved", prof)
    assert code == 1  # the slice's minimum is not met by what can be checked
    assert {(i["severity"], message_id(i)) for i in issues if message_id(i).startswith("SLICE")} == {
        ("information", "SLICE_RESOLVE_UNRESOLVED"),
        ("error", "SLICE_MIN"),
    }


def test_r4_lipidprofile_results_matched_through_resolve() -> None:
    """R4's lipidprofile slices DiagnosticReport.result on ``resolve().code`` (fixed codes of the
    target profiles, a required binding for LDL): the R4 example Bundle-lipids, its report given
    that profile, has each result in its slice; the only error left is the report's own code,
    which differs from the profile's fixed one (a real mismatch)."""
    from procfhir import fhircache
    from procfhir.validator import Validator

    if not fhircache.is_filled():
        pytest.skip("the FHIR package cache is empty")
    bundle = json.loads((fhircache.examples_dir() / "Bundle-lipids.json").read_text())
    report = bundle["entry"][0]["resource"]
    assert report["resourceType"] == "DiagnosticReport" and len(report["result"]) == 4
    report["meta"] = {"profile": ["http://hl7.org/fhir/StructureDefinition/lipidprofile"]}
    errors = [(i.location, i.message_id) for i in Validator().validate(bundle) if i.is_error]
    assert errors == [("Bundle.entry[0].resource.code", "FIXED_MISMATCH")]
