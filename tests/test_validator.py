"""The offline validator: known-invalid fixtures, the R4 spec's own examples, bad input, the CLI,
and the package built from our sources."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from procfhir import fhircache

FIXTURES = Path(__file__).parent / "fixtures" / "invalid"
EXPECTED: dict[str, list[dict[str, str]]] = json.loads((FIXTURES / "expected.json").read_text())
IN_CI = os.environ.get("CI", "").lower() == "true"
BASE = "https://fhir.example.org/procedures"

# Errors the validator reports on the spec's own examples, each a real defect of the example
# (see the test below); anything else is a false error.
SPEC_EXAMPLE_FINDINGS = {
    ("ActivityDefinition-blood-tubes-supply.json", "ActivityDefinition.text.div", "txt-2"),
    ("ActivityDefinition-heart-valve-replacement.json", "ActivityDefinition.text.div", "txt-2"),
    ("Consent-consent-example-pkb.json", "Consent.text.div", "txt-1"),
}


@pytest.fixture(scope="session")
def core_cache() -> Path:
    """The R4 core package in the FHIR package cache, filled from the npm registry if needed."""
    if not fhircache.is_filled():
        try:
            fhircache.fill()
        except fhircache.CacheError as exc:
            if IN_CI:
                pytest.fail(f"CI=true but the FHIR package cache cannot be filled: {exc}", pytrace=False)
            pytest.skip(f"FHIR package cache empty and the npm registry is unreachable: {exc}")
    return fhircache.core_dir()


@pytest.fixture(scope="session")
def profiles(core_cache: Path) -> list[dict[str, Any]]:
    from procfhir.config import load_config
    from procfhir.profiles import load_profiles

    return load_profiles(load_config())


@pytest.fixture(scope="session")
def validator(profiles: list[dict[str, Any]]):
    from procfhir.validator import Validator

    # a PlanDefinition of the package, so that a canonical to a missing one is known to be missing
    plan = {
        "resourceType": "PlanDefinition",
        "id": "other",
        "url": f"{BASE}/PlanDefinition/other",
        "status": "draft",
    }
    return Validator(extra_definitions=[*profiles, plan])


def _errors(issues) -> list:
    return [i for i in issues if i.severity in ("error", "fatal")]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_fixture_is_caught_at_its_location(validator, name: str) -> None:
    resource = json.loads((FIXTURES / f"{name}.json").read_text())
    issues = validator.validate(resource)
    for exp in EXPECTED[name]:
        hits = [
            i
            for i in issues
            if i.severity == exp["severity"]
            and i.location == exp["location"]
            and exp["message"] in f"{i.message} [{i.key}]"
        ]
        assert hits, f"{name}: expected {exp}, got:\n" + "\n".join(map(str, issues))
    # nothing else is wrong with the fixture: no error elsewhere
    expected_locations = {e["location"] for e in EXPECTED[name]}
    stray = [i for i in _errors(issues) if i.location not in expected_locations]
    assert not stray, f"{name}: unexpected errors: {stray}"


def test_every_check_category_has_a_fixture() -> None:
    categories = {n.split("-", 1)[0] for n in EXPECTED}
    assert categories >= {
        "structure",
        "binding",
        "code",
        "profile",
        "slicing",
        "invariant",
        "extension",
        "reference",
        "narrative",
    }


def test_fixture_base_resources_are_valid(validator) -> None:
    """The fixtures' unbroken base forms validate without error (so each fixture tests one defect)."""
    proc = json.loads((FIXTURES / "binding-required.json").read_text())
    proc["status"] = "completed"
    assert not _errors(validator.validate(proc))
    consent = json.loads((FIXTURES / "profile-pattern.json").read_text())
    consent["scope"]["coding"][0]["code"] = "treatment"
    assert not _errors(validator.validate(consent))


def test_spec_examples_validate_against_core_without_false_errors(core_cache: Path) -> None:
    from procfhir.validator import Validator

    examples = fhircache.examples_dir()
    v = Validator()
    found = set()
    count = 0
    for rtype in ("PlanDefinition", "ActivityDefinition", "Consent", "Procedure"):
        for path in sorted(examples.glob(f"{rtype}-*.json")):
            count += 1
            for i in _errors(v.validate(json.loads(path.read_text()))):
                found.add((path.name, i.location, i.key or i.message))
    assert count >= 50
    assert found == SPEC_EXAMPLE_FINDINGS


def test_output_operation_outcome_is_valid_fhir(validator) -> None:
    from procfhir.validator import to_operation_outcome

    resource = json.loads((FIXTURES / "reference-malformed.json").read_text())
    outcome = to_operation_outcome(validator.validate(resource))
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(i["expression"] == ["Procedure.subject.reference"] for i in outcome["issue"])
    assert not _errors(validator.validate(outcome))


def _write(tmp: Path, name: str, data: bytes | str) -> str:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


def test_bad_input_is_an_outcome_not_a_traceback(core_cache: Path, tmp_path: Path) -> None:
    from procfhir.validator.run import validate_paths

    cases = {
        _write(tmp_path, "broken.json", '{"resourceType": "Patient", '): "not valid JSON",
        _write(tmp_path, "binary.json", b"\xff\xfe\x00"): "not UTF-8",
        _write(tmp_path, "array.json", "[1, 2]"): "expected a FHIR resource",
        _write(tmp_path, "nofhir.json", '{"name": "x"}'): "no resourceType",
        _write(tmp_path, "unknown.json", '{"resourceType": "Patients"}'): "unknown resourceType 'Patients'",
        _write(
            tmp_path,
            "profile.json",
            json.dumps(
                {
                    "resourceType": "Patient",
                    "meta": {"profile": ["http://example.test/StructureDefinition/nowhere"]},
                }
            ),
        ): "cannot be found",
        _write(tmp_path, "bad.tgz", b"not a tarball"): "not a readable package tarball",
        str(tmp_path / "missing.json"): "no such file",
    }
    issues, _ = validate_paths(list(cases))
    for path, fragment in cases.items():
        assert any(i.source == path and i.is_error and fragment in i.message for i in issues), (path, issues)


def test_cli_exit_codes_and_outcome_file(core_cache: Path, tmp_path: Path) -> None:
    from procfhir.cli import main

    runner = CliRunner()
    good = fhircache.examples_dir() / "Procedure-example.json"
    res = runner.invoke(main, ["validate", str(good)])
    assert res.exit_code == 0, res.output
    assert "0 error(s)" in res.output
    out = tmp_path / "outcome.json"
    res = runner.invoke(main, ["validate", str(FIXTURES / "binding-required.json"), "--outcome", str(out)])
    assert res.exit_code == 1
    assert "Procedure.status" in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    outcome = json.loads(out.read_text())
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(i["severity"] == "error" and i["expression"] == ["Procedure.status"] for i in outcome["issue"])
    res = runner.invoke(main, ["validate", str(tmp_path / "nope.json")])
    assert res.exit_code == 1 and "no such file" in res.output and "Traceback" not in res.output


def test_bundle_and_package_tarball_inputs(core_cache: Path, tmp_path: Path) -> None:
    from procfhir.validator.run import validate_paths

    a = json.loads((FIXTURES / "binding-required.json").read_text())
    b = json.loads((FIXTURES / "reference-malformed.json").read_text())
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": a}, {"resource": b}]}
    issues, n = validate_paths([_write(tmp_path, "bundle.json", json.dumps(bundle))])
    locs = {i.location for i in _errors(issues)}
    assert n == 1
    assert {"Bundle.entry[0].resource.status", "Bundle.entry[1].resource.subject.reference"} <= locs
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, res in (
            ("package/Procedure-a.json", a),
            ("package/Procedure-b.json", b),
            ("package/package.json", {"name": "x.y", "version": "1.0.0"}),
        ):
            data = json.dumps(res).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    issues, n = validate_paths([_write(tmp_path, "p.tgz", buf.getvalue())])
    assert n == 2
    assert {(i.source.split(":")[-1], i.location) for i in _errors(issues)} >= {
        ("package/Procedure-a.json", "Procedure.status"),
        ("package/Procedure-b.json", "Procedure.subject.reference"),
    }


def test_snapshots_are_generated_and_deterministic(profiles: list[dict[str, Any]]) -> None:
    from procfhir.config import load_config
    from procfhir.profiles import load_profiles

    again = load_profiles(load_config())
    assert json.dumps(again, sort_keys=True) == json.dumps(profiles, sort_keys=True)
    ids = {p["id"] for p in profiles}
    assert ids == {
        "vertebral-augmentation-procedure",
        "treatment-consent",
        "clinical-protocol",
        "procedure-activity",
        "source-text",
        "disclosed-risk",
    }
    consent = next(p for p in profiles if p["id"] == "treatment-consent")
    els = {e["id"]: e for e in consent["snapshot"]["element"]}
    assert els["Consent.source[x].title"]["min"] == 1
    assert els["Consent.category:consentDocument"]["patternCodeableConcept"]["coding"][0]["code"] == "59284-0"
    assert els["Consent.extension:disclosedRisk"]["type"][0]["profile"] == [
        f"{BASE}/StructureDefinition/disclosed-risk"
    ]
    for p in profiles:
        assert "{base}" not in json.dumps(p)
        assert p["url"] == f"{BASE}/StructureDefinition/{p['id']}"


def test_generated_package_validates_against_its_profiles(core_cache: Path) -> None:
    """Every resource the build generates conforms to the profile it declares (no errors)."""
    from procfhir.build import build
    from procfhir.validator import Validator

    result = build(write=False, validate=False)
    resources = result.resources
    v = Validator(extra_definitions=[r for r in resources if "url" in r])
    declared = 0
    for r in resources:
        issues = v.validate(r)
        assert not _errors(issues), f"{r['resourceType']}/{r['id']}: {_errors(issues)}"
        declared += bool((r.get("meta") or {}).get("profile"))
    types = {r["resourceType"] for r in resources}
    assert {"PlanDefinition", "ActivityDefinition", "Consent", "Procedure", "StructureDefinition"} <= types
    assert declared >= 8
    # and breaking a generated Procedure is caught by its profile
    proc = json.loads(json.dumps(next(r for r in resources if r["resourceType"] == "Procedure")))
    proc.pop("bodySite")
    assert any(
        i.location == "Procedure.bodySite" or i.location == "Procedure" for i in _errors(v.validate(proc))
    )


def test_profile_differential_out_of_base_order_is_an_error(
    validator, profiles: list[dict[str, Any]]
) -> None:
    """HL7 snapshot generators (HAPI's too) reject a differential that does not follow the base's
    element order; so does ours, when validating a StructureDefinition."""
    sd = json.loads(json.dumps(next(p for p in profiles if p["id"] == "clinical-protocol")))
    assert not _errors(validator.validate(sd))
    els = sd["differential"]["element"]
    i = next(n for n, e in enumerate(els) if e["id"] == "PlanDefinition.date")
    els[i], els[i + 1] = els[i + 1], els[i]  # publisher before date
    errs = _errors(validator.validate(sd))
    assert [e.location for e in errs] == ["StructureDefinition.differential"]
    assert "PlanDefinition.date" in errs[0].message and "order" in errs[0].message
