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
# (see the test below); anything else is a false error. (Consent-consent-example-pkb's external
# image is allowed by R4's narrative rules: an error only under our package's --strict policy.)
SPEC_EXAMPLE_FINDINGS = {
    ("ActivityDefinition-blood-tubes-supply.json", "ActivityDefinition.text.div", "txt-2"),
    ("ActivityDefinition-heart-valve-replacement.json", "ActivityDefinition.text.div", "txt-2"),
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
    from procfhir.build import package_profiles
    from procfhir.config import load_config

    return package_profiles(load_config())


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


def _cli_outcome(args: list[str], tmp: Path) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Run ``procfhir validate`` (in-process CLI) and group its OperationOutcome's issues by file."""
    from procfhir.cli import main

    out = tmp / f"outcome-{len(list(tmp.iterdir()))}.json"
    res = CliRunner().invoke(main, ["validate", *args, "--outcome", str(out)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    by_file: dict[str, list[dict[str, Any]]] = {}
    for issue in json.loads(out.read_text())["issue"]:
        loc = (issue.get("location") or [""])[0]
        src = loc.split(": ", 1)[0] if ": " in loc else ""
        by_file.setdefault(Path(src).stem, []).append(issue)
    return res.exit_code, by_file


def message_id(issue: dict[str, Any]) -> str:
    from procfhir.validator.issues import MESSAGE_ID_EXT

    return next((e["valueString"] for e in issue.get("extension", []) if e["url"] == MESSAGE_ID_EXT), "")


@pytest.fixture(scope="module")
def fixture_outcomes(
    core_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[dict[str, Any]]]:
    """Every known-invalid fixture through the CLI, with the package's definitions (``--strict``
    for the fixtures of our package's own policy)."""
    tmp = tmp_path_factory.mktemp("fixtures")
    package = Path(__file__).parent.parent / "fhir"
    defs = ["-d", str(package), "-d", str(Path(__file__).parent / "fixtures" / "definitions")]
    strict = sorted(n for n, e in EXPECTED.items() if isinstance(e, dict) and e.get("strict"))
    lenient = sorted(n for n in EXPECTED if n not in strict)
    out: dict[str, list[dict[str, Any]]] = {}
    for names, extra in ((lenient, []), (strict, ["--strict"])):
        code, by_file = _cli_outcome([*(str(FIXTURES / f"{n}.json") for n in names), *defs, *extra], tmp)
        assert code == 1
        out.update(by_file)
    return out


def _expected(name: str) -> list[dict[str, str]]:
    e = EXPECTED[name]
    return e["issues"] if isinstance(e, dict) else e


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_fixture_is_caught_at_its_location(fixture_outcomes, name: str) -> None:
    """Each fixture, fed through the CLI, gets the expected rule (by message id) at its location,
    and no other error."""
    issues = fixture_outcomes.get(name, [])
    for exp in _expected(name):
        hits = [
            i
            for i in issues
            if i["severity"] == exp["severity"]
            and i["expression"] == [exp["location"]]
            and message_id(i) == exp["id"]
            and exp.get("key", "") in (i.get("details") or {}).get("text", "")
        ]
        assert hits, f"{name}: expected {exp}, got:\n" + "\n".join(map(str, issues))
    expected_locations = {e["location"] for e in _expected(name)}
    stray = [
        i
        for i in issues
        if i["severity"] in ("error", "fatal") and (i.get("expression") or [""])[0] not in expected_locations
    ]
    assert not stray, f"{name}: unexpected errors: {stray}"


def test_every_check_category_has_a_fixture() -> None:
    categories = {n.split("-", 1)[0] for n in EXPECTED}
    assert all(all(e.get("id") for e in _expected(n)) for n in EXPECTED)
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
        "quantity",
        "conceptmap",
        "valueset",
        "measure",
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
    """The spec's own PlanDefinition, ActivityDefinition, Consent and Procedure examples: the only
    errors are real defects the HL7 validator reports too: two empty narratives, and relative
    canonicals ('Library/x', TYPE_SPECIFIC_CHECKS_CANONICAL_ABSOLUTE in HAPI)."""
    from procfhir.validator import Validator

    examples = fhircache.examples_dir()
    v = Validator()
    found = set()
    relative = 0
    count = 0
    for rtype in ("PlanDefinition", "ActivityDefinition", "Consent", "Procedure"):
        for path in sorted(examples.glob(f"{rtype}-*.json")):
            count += 1
            for i in _errors(v.validate(json.loads(path.read_text()))):
                if i.message_id == "CANONICAL_NOT_ABSOLUTE":
                    assert ":" not in i.message.split("'")[1]
                    relative += 1
                    continue
                found.add((path.name, i.location, i.key or i.message))
    assert count >= 50
    assert found == SPEC_EXAMPLE_FINDINGS
    assert relative >= 30


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
    """Every kind of bad input becomes an issue (by message id) on the file concerned; the run
    goes on with the others; exit 1 (errors found) since some inputs could be validated."""
    from procfhir.validator import messages as M

    deep: Any = {"resourceType": "Basic", "code": {"text": "x"}, "extension": []}
    cur = deep["extension"]
    for _ in range(400):  # extensions nested deeper than any real content
        nxt: dict[str, Any] = {"url": "http://example.org/x", "extension": []}
        cur.append(nxt)
        cur = nxt["extension"]
    cases = {
        _write(tmp_path, "broken.json", '{"resourceType": "Patient", '): ("fatal", M.JSON_INVALID),
        _write(tmp_path, "binary.json", b"\xff\xfe\x00"): ("fatal", M.JSON_NOT_UTF8),
        _write(tmp_path, "array.json", "[1, 2]"): ("error", M.RESOURCE_NOT_OBJECT),
        _write(tmp_path, "null.json", "null"): ("error", M.RESOURCE_NOT_OBJECT),
        _write(tmp_path, "nofhir.json", '{"name": "x"}'): ("error", M.RESOURCE_NO_TYPE),
        _write(tmp_path, "unknown.json", '{"resourceType": "Patients"}'): ("error", M.RESOURCE_UNKNOWN_TYPE),
        _write(tmp_path, "nan.json", '{"resourceType": "Observation", "valueDecimal": NaN}'): (
            "fatal",
            M.JSON_NAN,
        ),
        _write(tmp_path, "dup.json", '{"resourceType": "Patient", "active": true, "active": false}'): (
            "error",
            M.JSON_DUPLICATE_KEY,
        ),
        _write(tmp_path, "deep.json", json.dumps(deep)): ("error", M.TOO_DEEP),
        _write(tmp_path, "deepjson.json", "[" * 100000 + "]" * 100000): ("fatal", M.JSON_TOO_DEEP),
        _write(
            tmp_path,
            "profile.json",
            json.dumps(
                {
                    "resourceType": "Patient",
                    "meta": {"profile": ["http://example.test/StructureDefinition/nowhere"]},
                }
            ),
        ): ("warning", M.PROFILE_NOT_FOUND),
        _write(tmp_path, "bad.tgz", b"not a tarball"): ("fatal", M.TARBALL_UNREADABLE),
        _write(tmp_path, "p.xml", "<Patient/>"): ("error", M.INPUT_XML_INVALID),  # no FHIR namespace
        _write(tmp_path, "dtd.xml", "<!DOCTYPE x [<!ENTITY a 'b'>]><Patient xmlns='http://hl7.org/fhir'/>"): (
            "error",
            M.INPUT_XML_INVALID,
        ),
        _write(tmp_path, "broken.xml", "<Patient xmlns='http://hl7.org/fhir'>"): (
            "error",
            M.INPUT_XML_INVALID,
        ),
        str(tmp_path / "missing.json"): ("fatal", M.INPUT_NOT_FOUND),
    }
    code, by_file = _cli_outcome(list(cases), tmp_path)
    assert code == 1
    for path, (severity, mid) in cases.items():
        got = by_file.get(Path(path).stem, [])
        assert any(i["severity"] == severity and message_id(i) == mid for i in got), (path, got)


def test_a_profile_that_cannot_be_snapshotted_is_an_issue_not_a_crash(
    core_cache: Path, tmp_path: Path
) -> None:
    from procfhir.validator import messages as M
    from tests.profiles import profile

    url = "http://example.test/StructureDefinition/broken"
    broken = profile(url, [{"id": "Patient.nothing.here", "path": "Patient.nothing.here"}], id="broken")
    patient = {"resourceType": "Patient", "meta": {"profile": [broken["url"]]}}
    defs = _write(tmp_path, "broken-profile.json", json.dumps(broken))
    code, by_file = _cli_outcome(
        [_write(tmp_path, "patient.json", json.dumps(patient)), "-d", defs], tmp_path
    )
    assert code == 1
    got = by_file["patient"]
    assert [message_id(i) for i in got if i["severity"] == "error"] == [M.PROFILE_UNUSABLE]
    assert got[0]["expression"] == ["Patient.meta.profile"]


def test_exit_code_2_when_nothing_can_run(tmp_path: Path) -> None:
    from procfhir.cli import main

    out = tmp_path / "o.json"
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.json"), "--outcome", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert json.loads(out.read_text())["issue"][0]["severity"] == "fatal"
    empty = tmp_path / "empty-core"
    empty.mkdir()
    from procfhir.validator.run import run

    result = run([str(tmp_path / "o.json")], core_dir=empty)  # no core definitions at all
    assert result.could_not_run and result.issues[0].message_id == "DEFINITIONS_UNAVAILABLE"


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
    assert res.exit_code == 2 and "no such file" in res.output and "Traceback" not in res.output


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
    from procfhir.build import package_profiles
    from procfhir.config import load_config

    again = package_profiles(load_config())
    assert json.dumps(again, sort_keys=True) == json.dumps(profiles, sort_keys=True)
    ids = {p["id"] for p in profiles}
    assert ids == {
        "vertebral-augmentation-procedure",  # the plan's own two, generated from its model
        "vertebral-augmentation-consent",
        "treatment-consent",
        "clinical-protocol",
        "procedure-activity",
        "source-text",
        "disclosed-risk",
        "plan-value-set",
        "procedure-profile",
        "limit",
        "not-computable",
        "quantity-per-site",
        "code-for-sites",
        "uses-material",
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


def test_profile_differential_out_of_base_order_is_accepted_with_a_warning(
    validator, profiles: list[dict[str, Any]]
) -> None:
    """The HL7 snapshot generator applies differential elements out of the base's order by id;
    so does ours, with a warning when validating the StructureDefinition."""
    sd = json.loads(json.dumps(next(p for p in profiles if p["id"] == "clinical-protocol")))
    assert not _errors(validator.validate(sd))
    els = sd["differential"]["element"]
    i = next(n for n, e in enumerate(els) if e["id"] == "PlanDefinition.date")
    els[i], els[i + 1] = els[i + 1], els[i]  # publisher before date
    issues = validator.validate(sd)
    assert not _errors(issues)
    order = [i for i in issues if i.message_id == "SD_DIFFERENTIAL_ORDER"]
    assert [(i.severity, i.location) for i in order] == [("warning", "StructureDefinition.differential")]
    # the findings are remembered by what the snapshot generator reads: the same content again
    # (another copy, in a Bundle) gets the same issues; any other content its own
    again = json.loads(json.dumps(sd))
    assert [(i.severity, i.location, i.message) for i in validator.validate(again)] == [
        (i.severity, i.location, i.message) for i in issues
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": sd["url"], "resource": again}],
    }
    in_bundle = [i for i in validator.validate(bundle) if i.message_id == "SD_DIFFERENTIAL_ORDER"]
    assert [i.location for i in in_bundle] == ["Bundle.entry[0].resource.differential"]
    broken = json.loads(json.dumps(sd))
    broken["differential"]["element"].append(
        {"id": "PlanDefinition.noSuchElement", "path": "PlanDefinition.noSuchElement"}
    )
    assert [i.message_id for i in _errors(validator.validate(broken))] == ["SD_DIFFERENTIAL"]
    assert not _errors(validator.validate(again))


def test_reference_leniency_and_strict_policy(core_cache: Path, tmp_path: Path) -> None:
    """As the HL7 validator: R4 narratives may show external images, references may be absolute
    URLs or urn:uuid:, a non-breaking space is no whitespace in string patterns (Java's \\s), an
    unknown extension is a warning; ``--strict`` (our package's policy) makes the first and the
    last errors."""
    patient = {
        "resourceType": "Patient",
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml"><img src="http://example.org/x.png"/>'
            '<span style="background: url(data:image/png;base64,AAAA)">x</span></div>',
        },
        "identifier": [{"system": "http://example.org/a\u00a0b", "value": "1"}],
        "generalPractitioner": [
            {"reference": "https://other.example.net/fhir/Practitioner/7"},
            {"reference": "urn:uuid:3d9a6f2e-5b7c-4f1a-9e2d-8c4b1a7f6e50"},
            {"reference": "https://registry.example.net/people?id=7"},
        ],
        "extension": [{"url": "http://unknown.test/StructureDefinition/x", "valueString": "y"}],
    }
    path = _write(tmp_path, "lenient.json", json.dumps(patient))
    code, by_file = _cli_outcome([path], tmp_path)
    assert code == 0, by_file
    assert {message_id(i) for i in by_file["lenient"] if i["severity"] == "warning"} >= {"EXT_UNKNOWN"}
    code, by_file = _cli_outcome([path, "--strict"], tmp_path)
    assert code == 1
    errors = {(message_id(i), i["expression"][0]) for i in by_file["lenient"] if i["severity"] == "error"}
    assert errors == {("NARRATIVE_POLICY", "Patient.text.div"), ("EXT_UNKNOWN", "Patient.extension[0]")}


def test_definitions_among_large_inputs_are_found(
    core_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the first pass's memory budget, a profile among the inputs still applies (its file
    is found by the url scan) and the inputs are validated one at a time."""
    from procfhir.validator import run as run_module

    monkeypatch.setattr(run_module, "KEEP_BYTES", 0)
    defs = Path(__file__).parent / "fixtures" / "definitions" / "StructureDefinition-limits-patient.json"
    (tmp_path / "a-patient.json").write_text((FIXTURES / "profile-value-limits.json").read_text())
    (tmp_path / "b-profile.json").write_text(defs.read_text())
    for workers in (1, 2):
        result = run_module.run([str(tmp_path)], workers=workers)
        ids = {i.message_id for i in result.issues if i.is_error}
        assert ids == {"DT_MAX_LENGTH", "DT_MAX_VALUE"}, result.issues
        assert result.resources == 2


def test_folder_files_in_path_order(tmp_path: Path) -> None:
    """folder_files sorts by parts (faster than Path comparisons): the same order as sorted()
    of the Paths, subfolders and names with '-', '.', ' ' and capitals included (a definition met
    later wins, so the order is part of the outcome)."""
    from procfhir.validator.inputs import folder_files

    names = ["a.json", "a-b.json", "a/b.json", "a/b/c.json", "A.json", "a b.json", "a0/x.json", "ab/c.json"]
    names += ["a/b-c.json", "a/b/c-d.json", "é.json", "package.json", ".hidden.json", "a/.h/x.json"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    got = folder_files(tmp_path)
    want = [
        f
        for f in sorted(tmp_path.rglob("*"))
        if f.is_file() and f.name != "package.json" and not f.name.startswith(".")
    ]
    assert got == want and len(got) == 12
