"""End-to-end tests of the build: text + mapping -> package, and its refusals."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
import yaml

from procfhir.build import BuildResult, build
from procfhir.config import PROJECT_ROOT
from procfhir.errors import BuildError
from tests.buildutil import copy_inputs, mapping_path, text_path

FHIR_DIR = PROJECT_ROOT / "fhir"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(out_dir=tmp_path_factory.mktemp("build") / "fhir")


def by_id(result: BuildResult, rtype: str, rid: str) -> dict[str, Any]:
    return next(r for r in result.resources if r["resourceType"] == rtype and r["id"] == rid)


def test_committed_package_equals_fresh_build(built: BuildResult) -> None:
    assert built.out_dir is not None
    fresh = {p.relative_to(built.out_dir): p.read_bytes() for p in built.out_dir.rglob("*") if p.is_file()}
    committed = {p.relative_to(FHIR_DIR): p.read_bytes() for p in FHIR_DIR.rglob("*") if p.is_file()}
    assert sorted(map(str, committed)) == sorted(map(str, fresh)), "fhir/ has other files than a fresh build"
    stale = [str(name) for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"fhir/ is stale, run `procfhir build`: {stale}"


def test_two_builds_are_byte_identical(built: BuildResult, tmp_path: Path) -> None:
    again = build(out_dir=tmp_path / "again")
    assert again.files == built.files


def test_removed_sentence_is_named_with_mapping_line(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    sentence = "Leakage into a vein is common but pulmonary embolus is rare."
    text = text_path(tmp_path).read_text()
    text_path(tmp_path).write_text(text.replace(" " + sentence, ""))
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out")
    mapping_lines = mapping_path(tmp_path).read_text().splitlines()
    problems = [p for p in err.value.problems if "quote not found" in p]
    assert problems, err.value.problems
    for p in problems:  # each names the mapping file and the line of the missing quote
        match = re.match(r"(.+\.yaml):(\d+): .*quote not found.*: '(.*)'$", p)
        assert match, p
        assert match.group(3) in mapping_lines[int(match.group(2)) - 1]
        assert match.group(3) in sentence
    assert not (tmp_path / "out").exists(), "a failed build must not write output"


def test_unmapped_paragraph_is_named_with_text_line(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    added = "Patients should not eat for six hours before the procedure."
    text = text_path(tmp_path).read_text()
    text = text.replace("\n\nIn Vertebroplasty,", f"\n\n{added}\n\nIn Vertebroplasty,")
    text_path(tmp_path).write_text(text)
    line = text.splitlines().index(added) + 1
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out")
    assert any(
        p.startswith(f"{text_path(tmp_path)}:{line}: sentence")
        and added in p
        and "claimed by no mapping entry" in p
        for p in err.value.problems
    ), err.value.problems


def test_a_sentence_marked_non_clinical_builds(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    added = "This leaflet was reviewed by the patient education committee."
    text = text_path(tmp_path).read_text()
    text_path(tmp_path).write_text(
        text.replace("\n\nIn Vertebroplasty,", f"\n\n{added}\n\nIn Vertebroplasty,")
    )
    mapping = (
        mapping_path(tmp_path)
        .read_text()
        .replace("non_clinical: []", f'non_clinical:\n  - quote: "{added}"\n    reason: editorial note')
    )
    mapping_path(tmp_path).write_text(mapping)
    result = build(cfg, tmp_path / "out", validate=False)
    seg = next(s for s in result.trace["documents"][0]["segments"] if s["text"] == added)
    assert seg["non_clinical"] and seg["elements"] == []


def test_mapping_schema_error_names_file_and_line(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    lines = mapping_path(tmp_path).read_text().splitlines(keepends=True)
    i = next(i for i, s in enumerate(lines) if s.lstrip().startswith("sct-hematoma:"))
    lines[i] = lines[i].replace(', source: "SNOMED CT Global Patient Set (hl7.terminology.r4 7.0.1)"', "")
    mapping_path(tmp_path).write_text("".join(lines))
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out")
    assert any(
        f"{mapping_path(tmp_path)}:{i + 1}: codes/sct-hematoma: 'source' is a required property" in p
        for p in err.value.problems
    ), err.value.problems


def test_unknown_code_key_is_refused(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    m = (
        mapping_path(tmp_path)
        .read_text()
        .replace("codes: [sct-osteomyelitis-vertebra]", "codes: [sct-osteomyelitis]")
    )
    mapping_path(tmp_path).write_text(m)
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out")
    assert any("unknown code key 'sct-osteomyelitis'" in p for p in err.value.problems)


EXPECTED_RISKS = {
    "Bleeding": None,
    "Infection": "extremely rare",
    "New Fracture": "rarely occurs",
    "Leakage of Cement": "occurs frequently",
    "Leakage of Cement into Veins": "common",
    "Pulmonary Embolus of cement": "rare",
    "Respiratory Compromise": None,
}


def _sub(ext: dict[str, Any], name: str) -> Any:
    return next((e for e in ext["extension"] if e["url"] == name), None)


def test_consent_lists_the_seven_risks_with_frequencies(built: BuildResult) -> None:
    consent = by_id(built, "Consent", "vertebral-augmentation-consent")
    risk_url = built.config.url("StructureDefinition", "disclosed-risk")
    risks = [e for e in consent["extension"] if e["url"] == risk_url]
    assert len(risks) == 7
    form = base64.b64decode(consent["sourceAttachment"]["data"]).decode()
    text = built.mappings[0].source.text
    found = {}
    for risk in risks:
        outcome = _sub(risk, "outcome")["valueCodeableConcept"]
        freq = _sub(risk, "frequency")
        description = _sub(risk, "description")["valueString"]
        # the text's own wording: whole sentences of the source
        for sentence in re.split(r"(?<=\.) ", description):
            assert sentence in text
        assert description in form.replace("&#x27;", "'")
        found[outcome["text"]] = freq["valueCodeableConcept"]["text"] if freq else None
        if freq:
            assert freq["valueCodeableConcept"]["text"] in description
    titles = re.findall(r"<h3>(.*?)</h3>", form)
    assert {t: None for t in titles}.keys() == EXPECTED_RISKS.keys()
    by_title = dict(zip(titles, found.values(), strict=True))
    assert by_title == EXPECTED_RISKS
    assert consent["scope"]["coding"][0]["code"] == "treatment"
    assert consent["category"][0]["coding"][0]["code"] == "59284-0"
    assert consent["policy"] and consent["provision"]["type"] == "permit"
    # coded where confirmed: bleeding -> hematoma, pulmonary embolus -> pulmonary embolism
    codes = {c["code"] for r in risks for c in _sub(r, "outcome")["valueCodeableConcept"]["coding"]}
    assert {"385494008", "59282003", "203241002", "409623005"} <= codes


def test_plan_offers_exactly_one_of_the_two_techniques(built: BuildResult) -> None:
    plan = by_id(built, "PlanDefinition", "vertebral-augmentation")
    assert re.fullmatch(r"[A-Z]([A-Za-z0-9_]){0,254}", plan["name"])
    for key in ("url", "version", "title", "status", "experimental", "publisher", "description", "date"):
        assert key in plan
    group = next(a for a in plan["action"] if a.get("selectionBehavior") == "exactly-one")
    options = {a["id"]: a for a in group["action"]}
    assert set(options) == {"vertebroplasty", "kyphoplasty"}
    urls = {r.get("url") for r in built.resources}
    for option in options.values():
        assert option["definitionCanonical"] in urls
        steps = {s["id"].split("-", 1)[1] for s in option["action"]}
        assert {
            "antibiotic-prophylaxis",
            "sedation",
            "needle-placement",
            "cement-injection",
            "complication-observation",
        } <= steps
        for step in option["action"]:
            if "definitionCanonical" in step:
                assert step["definitionCanonical"] in urls
    assert any(s["id"] == "kyphoplasty-balloon-inflation" for s in options["kyphoplasty"]["action"])
    assert not any("balloon" in s["id"] for s in options["vertebroplasty"]["action"])
    goal_ids = {g["id"] for g in plan["goal"]}
    assert "height-and-alignment" in options["kyphoplasty"]["goalId"]
    assert "height-and-alignment" not in options["vertebroplasty"]["goalId"]
    assert set(group["goalId"]) == goal_ids


def _condition(
    code: str, system: str = "http://snomed.info/sct", status: str | None = None
) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": system, "code": code}]},
    }
    if status:
        cond["verificationStatus"] = {"coding": [{"code": status}]}
    return cond


def _levels(n: int) -> list[dict[str, Any]]:
    return [{"text": f"L{i + 1}"} for i in range(n)]


def _evaluate(expression: str, conditions: list[dict[str, Any]], levels: int) -> bool:
    env = {"patient": {"resourceType": "Patient"}, "conditions": conditions, "sites": _levels(levels)}
    return fhirpathpy.evaluate({}, expression, env) == [True]


def test_lung_disease_level_limit_is_computable(built: BuildResult) -> None:
    plan = by_id(built, "PlanDefinition", "vertebral-augmentation")
    group = plan["action"][0]
    limit = next(c for c in group["condition"] if c["expression"]["name"] == "LungDiseaseLevelLimit")
    expr = limit["expression"]["expression"]
    assert "No more than 2 levels at one time will be treated" in limit["expression"]["description"]
    fracture = _condition("M80.08XA", "http://hl7.org/fhir/sid/icd-10-cm")
    copd = _condition("13645005")
    assert _evaluate(expr, [fracture], 3) is True  # no lung disease: no limit
    assert _evaluate(expr, [fracture, copd], 3) is False  # COPD: more than 2 levels refused
    assert _evaluate(expr, [fracture, copd], 2) is True
    assert _evaluate(expr, [fracture, _condition("J44.9", "http://hl7.org/fhir/sid/icd-10-cm")], 3) is False
    assert _evaluate(expr, [fracture, _condition("13645005", status="refuted")], 3) is True
    warning = next(a for a in plan["action"] if a["id"] == "lung-disease-level-limit-preference")
    warn = warning["condition"][0]["expression"]["expression"]
    assert _evaluate(warn, [fracture, copd], 2) is True
    assert _evaluate(warn, [fracture, copd], 1) is False
    assert _evaluate(warn, [fracture], 2) is False


def test_indications_are_computable(built: BuildResult) -> None:
    plan = by_id(built, "PlanDefinition", "vertebral-augmentation")
    cond = next(c for c in plan["action"][0]["condition"] if c["expression"]["name"] == "HasIndication")
    expr = cond["expression"]["expression"]
    assert _evaluate(expr, [_condition("240198002")], 1)
    assert _evaluate(expr, [_condition("109989006")], 1)
    assert _evaluate(expr, [_condition("C79.51", "http://hl7.org/fhir/sid/icd-10-cm")], 1)
    assert _evaluate(expr, [_condition("D18.09", "http://hl7.org/fhir/sid/icd-10-cm")], 1)
    assert not _evaluate(expr, [_condition("13645005")], 1)
    assert not _evaluate(expr, [_condition("240198002", status="refuted")], 1)
    assert not _evaluate(expr, [], 1)


def test_every_clinical_element_traces_to_its_sentence(built: BuildResult) -> None:
    doc = built.trace["documents"][0]
    text = doc["text"]
    segments = {s["id"]: s for s in doc["segments"]}
    for seg in segments.values():
        assert seg["elements"] or seg["non_clinical"], f"{seg['id']} produced nothing: {seg['text']}"
        for el in seg["elements"]:
            if len(seg["spans"]) == 1:  # a split heading's quote spans a paragraph break
                assert el["quote"] in seg["text"]
    url = built.config.url("StructureDefinition", "source-text")
    blob = json.dumps(built.resources)
    assert blob.count(url) > 40
    # offsets point at the quote in the text
    for res in built.resources:
        for ext in re.findall(
            r'\{"url": "' + re.escape(url) + r'", "extension": (\[.*?\])\}', json.dumps(res)
        ):
            parts = {
                e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in json.loads(ext)
            }
            seg = segments[parts["sentence"]]
            if len(seg["spans"]) == 1:
                assert text[parts["start"] : parts["end"]] == parts["quote"]


def test_every_resource_parses_with_fhir_resources_r4b(built: BuildResult) -> None:
    import importlib

    for res in built.resources:
        module = importlib.import_module(f"fhir.resources.R4B.{res['resourceType'].lower()}")
        getattr(module, res["resourceType"]).model_validate(res)
        if res["resourceType"] in ("PlanDefinition", "ActivityDefinition"):
            assert "subjectCanonical" not in res  # R4B only, not R4


def test_narratives_are_safe_xhtml(built: BuildResult) -> None:
    import xml.etree.ElementTree as ET

    allowed = {"div", "p", "span", "b", "i", "br", "ul", "ol", "li", "table", "tr", "th", "td", "h3", "a"}
    for res in built.resources:
        if res["resourceType"] == "StructureDefinition":
            continue
        div = res["text"]["div"]
        root = ET.fromstring(div)
        assert root.tag == "{http://www.w3.org/1999/xhtml}div"
        tags = {el.tag.split("}")[1] for el in root.iter()}
        assert tags <= allowed, (res["id"], tags - allowed)
        assert "".join(root.itertext()).strip()


def test_npm_package_layout(built: BuildResult) -> None:
    cfg = built.config
    tgz = built.out_dir / f"{cfg.package_name}-{cfg.version}.tgz"
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
        pkg = json.load(tar.extractfile("package/package.json"))
        index = json.load(tar.extractfile("package/.index.json"))
        ex_index = json.load(tar.extractfile("package/example/.index.json"))
    assert pkg["name"] == cfg.package_name and pkg["version"] == cfg.version
    assert pkg["dependencies"] == {"hl7.fhir.r4.core": "4.0.1"} and pkg["fhirVersions"] == ["4.0.1"]
    listed = {f"package/{f['filename']}" for f in index["files"]} | {
        f"package/example/{f['filename']}" for f in ex_index["files"]
    }
    assert listed | {"package/package.json", "package/.index.json", "package/example/.index.json"} == names
    assert len(listed) == len(built.resources)
    ig = next(r for r in built.resources if r["resourceType"] == "ImplementationGuide")
    assert ig["url"] == f"{cfg.canonical}/ImplementationGuide/{cfg.package_name}"
    bundle = json.loads((built.out_dir / "bundle.json").read_text())
    assert len(bundle["entry"]) == len(built.resources)


def test_terminology_report_lists_codes_and_local_codes(built: BuildResult) -> None:
    report = built.terminology
    local = {r["code"] for r in report["local_codes_awaiting_review"]}
    assert {"vertebroplasty", "kyphoplasty", "bone-cement", "cement-leakage"} <= local
    for row in report["codes"]:
        assert row["source"] and row["used_in"]
    cpt = {r["code"] for r in report["codes"] if r["system"] == "http://www.ama-assn.org/go/cpt"}
    assert cpt == {"22510", "22511", "22512", "22513", "22514", "22515"}
    md = (built.out_dir / "terminology-report.md").read_text()
    assert "Local codes awaiting review" in md and "| kyphoplasty |" in md


def test_republishing_under_another_base_changes_only_the_config(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path, canonical="https://fhir.hospital.example/content")
    result = build(cfg, tmp_path / "out", validate=False)
    blob = json.dumps(result.resources)
    assert "fhir.example.org/procedures" not in blob
    plan = by_id(result, "PlanDefinition", "vertebral-augmentation")
    assert plan["url"] == "https://fhir.hospital.example/content/PlanDefinition/vertebral-augmentation"


def _rename_ids(data: dict[str, Any], prefix: str) -> None:
    """Give a mapping's resources new ids (a stand-in for a second procedure document)."""
    data["document"]["key"] = prefix + data["document"]["key"]
    plan = data["plan"]
    plan["id"] = prefix + plan["id"]
    plan["name"] = "Second" + plan["name"]
    for act in data["activities"]:
        act["id"] = prefix + act["id"]
    for tech in plan["techniques"]:
        tech["activity"] = prefix + tech["activity"]
        for step in tech["steps"]:
            if "activity" in step and not step["activity"].startswith(prefix):
                step["activity"] = prefix + step["activity"]
    data["consent"]["id"] = prefix + data["consent"]["id"]
    for vs in data["value_sets"]:
        vs["id"] = prefix + vs["id"]
    if "body_sites" in plan:
        plan["body_sites"]["value_set"] = prefix + plan["body_sites"]["value_set"]
    data["examples"]["patient"]["id"] = prefix + data["examples"]["patient"]["id"]
    for proc in data["examples"]["procedures"]:
        proc["id"] = prefix + proc["id"]


def test_a_second_document_needs_no_code_change(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path, extra_docs=["source/second.yaml"])
    (tmp_path / "source" / "second.txt").write_text(text_path(tmp_path).read_text())
    data = yaml.safe_load(mapping_path(tmp_path).read_text())
    _rename_ids(data, "second-")
    data["document"]["text"] = "second.txt"
    (tmp_path / "source" / "second.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = build(cfg, tmp_path / "out", validate=False)
    plans = [r["id"] for r in result.resources if r["resourceType"] == "PlanDefinition"]
    assert plans == ["second-vertebral-augmentation", "vertebral-augmentation"]
    assert len({r["resourceType"] + r["id"] for r in result.resources}) == len(result.resources)
    docs = [d["key"] for d in result.trace["documents"]]
    assert docs == ["vertebroplasty-kyphoplasty", "second-vertebroplasty-kyphoplasty"]


def test_cli_builds_and_refuses_with_a_clear_message(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    out = tmp_path / "cli-out"
    ok = subprocess.run(
        [sys.executable, "-m", "procfhir.cli", "build", "--config", str(cfg), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    api = build(cfg, tmp_path / "api-out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "api-out").iterdir()
    }
    text_path(tmp_path).write_text(text_path(tmp_path).read_text().replace("extremely rare", "very rare"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = subprocess.run(
        [sys.executable, "-m", "procfhir.cli", "build", "--config", str(cfg), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 1
    assert "quote not found" in bad.stderr and "extremely rare" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "a failed build changed the output"
    assert api.resources


def test_mapping_schema_is_a_valid_json_schema() -> None:
    import jsonschema

    from procfhir.mapping import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_every_resource_declares_its_profile(built: BuildResult) -> None:
    known = {r["url"] for r in built.resources if r["resourceType"] == "StructureDefinition"}
    for res in built.resources:
        profiles = res.get("meta", {}).get("profile", [])
        assert profiles, f"{res['resourceType']}/{res['id']} declares no profile"
        for url in profiles:
            assert url in known or url.startswith("http://hl7.org/fhir/StructureDefinition/"), url


def test_a_local_code_defined_differently_by_two_documents_fails_naming_both(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path, extra_docs=["source/second.yaml"])
    (tmp_path / "source" / "second.txt").write_text(text_path(tmp_path).read_text())
    data = yaml.safe_load(mapping_path(tmp_path).read_text())
    _rename_ids(data, "second-")
    data["document"]["text"] = "second.txt"
    data["local_codes"]["bone-cement"]["definition"] = "Cement of another kind."
    second = tmp_path / "source" / "second.yaml"
    second.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out", validate=False, write=False)
    (problem,) = err.value.problems
    line = next(i for i, s in enumerate(second.read_text().splitlines(), 1) if s.startswith("  bone-cement:"))
    first_line = next(
        i
        for i, s in enumerate(mapping_path(tmp_path).read_text().splitlines(), 1)
        if s.startswith("  bone-cement:")
    )
    assert f"second.yaml:{line}: code 'bone-cement' is defined differently (definition)" in problem
    assert problem.endswith(f"vertebroplasty-kyphoplasty.yaml:{first_line}")
