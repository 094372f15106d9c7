"""Any procedure, not only the first: a synthetic second procedure (tests/fixtures/joint-injection)
with no body sites, one technique, a conditional step, limits per period and since the last
treatment, advice for a group of patients, a risk with a number and a modifier, and a rule that
stays text only. It builds and validates alone and beside vertebroplasty, and its expressions
select exactly the patients the text speaks of (evaluated with fhirpathpy, the R4 model)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
import yaml
from fhirpathpy.models import models

from procfhir.build import BuildResult, build
from procfhir.config import PROJECT_ROOT
from tests.buildutil import copy_inputs

FIXTURE = Path(__file__).parent / "fixtures" / "joint-injection"
BASE = "https://fhir.example.org/procedures"


def _config(tmp: Path, with_first: bool) -> Path:
    cfg_path = copy_inputs(tmp)
    for f in FIXTURE.iterdir():
        shutil.copy(f, tmp / "source" / f.name)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["documents"] = (cfg["documents"] if with_first else []) + ["source/joint-injection.yaml"]
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    tmp = tmp_path_factory.mktemp("joint")
    return build(_config(tmp, False), tmp / "out", validate=True)


def _res(result: BuildResult, rtype: str, rid: str) -> dict[str, Any]:
    return next(r for r in result.resources if r["resourceType"] == rtype and r["id"] == rid)


def _ext(node: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in node.get("extension", []) if e["url"] == f"{BASE}/StructureDefinition/{name}"]


def test_a_procedure_without_body_sites_builds_and_validates_alone(alone: BuildResult) -> None:
    errors = [i for _, i in alone.validation if i.severity in ("error", "fatal")]
    assert errors == []
    proc = _res(alone, "Procedure", "example-joint-injection")
    assert "bodySite" not in proc
    assert proc["meta"]["profile"] == [f"{BASE}/StructureDefinition/joint-injection-procedure"]
    profile = _res(alone, "StructureDefinition", "joint-injection-procedure")
    body = next(e for e in profile["differential"]["element"] if e["id"] == "Procedure.bodySite")
    assert body["max"] == "0"
    code = next(e for e in profile["differential"]["element"] if e["id"] == "Procedure.code")
    assert code["binding"]["valueSet"] == f"{BASE}/ValueSet/joint-injection-procedures"
    # no profile of another procedure in the package
    ids = {r["id"] for r in alone.resources if r["resourceType"] == "StructureDefinition"}
    assert "vertebral-augmentation-procedure" not in ids
    plan = _res(alone, "PlanDefinition", "joint-injection")
    roles = [e["extension"][0]["valueCode"] for e in _ext(plan, "plan-value-set")]
    assert roles == ["indication", "procedure", "complication"]  # no body-site role
    group = plan["action"][0]
    assert group["id"] == "procedure" and group["selectionBehavior"] == "all"
    consent = _res(alone, "Consent", "joint-injection-consent")
    form = __import__("base64").b64decode(consent["sourceAttachment"]["data"]).decode()
    assert "to be treated" not in form


def test_several_procedures_build_and_validate_together(tmp_path: Path) -> None:
    result = build(_config(tmp_path, True), tmp_path / "out", validate=True)
    assert [i for _, i in result.validation if i.severity in ("error", "fatal")] == []
    plans = sorted(r["id"] for r in result.resources if r["resourceType"] == "PlanDefinition")
    assert plans == ["joint-injection", "vertebral-augmentation"]
    for pid in ("joint-injection-procedure", "vertebral-augmentation-procedure"):
        _res(result, "StructureDefinition", pid)
    assert (PROJECT_ROOT / "source").exists()


def _eval(expression: str, **env: Any) -> bool:
    full = {"patient": {"resourceType": "Patient"}, "conditions": [], "sites": [], "medications": []}
    full |= {"priorProcedures": [], "plannedDate": "2026-12-01"} | env
    out = fhirpathpy.evaluate({}, expression, full, model=models["r4"])
    assert out in ([True], [False]), (expression, out)
    return out == [True]


def _med(code: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": f"{BASE}/CodeSystem/local", "code": code}]},
    }


def _prior(date: str, code: str = "joint-injection", status: str = "completed") -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "status": status,
        "code": {"coding": [{"system": f"{BASE}/CodeSystem/local", "code": code}]},
        "performedDateTime": date,
    }


def test_conditional_step_applies_exactly_to_the_patients_it_concerns(alone: BuildResult) -> None:
    plan = _res(alone, "PlanDefinition", "joint-injection")
    steps = {a["id"]: a for a in plan["action"][0]["action"][0]["action"]}
    stop = steps["joint-injection-stop-blood-thinners"]
    (cond,) = stop["condition"]
    assert cond["expression"]["description"] == (
        "If you take blood thinners, they will be stopped before the injection."
    )
    expr = cond["expression"]["expression"]
    assert _eval(expr, medications=[_med("warfarin")])
    assert _eval(expr, medications=[_med("apixaban", "on-hold")])
    assert not _eval(expr, medications=[_med("warfarin", "stopped")])
    assert not _eval(expr, medications=[_med("paracetamol")])
    assert not _eval(expr)
    # the rule no expression can test: no condition, marked, words kept
    scan = steps["joint-injection-scan"]
    assert "condition" not in scan
    (marker,) = _ext(scan, "not-computable")
    assert marker["valueString"] == "patients who may have an infection of the joint"
    # and the review page shows it to the reviewer
    page = alone.files["review.html"].decode()
    assert 'data-kind="not-computable"' in page and "patients who may have an infection of the joint" in page


def test_limits_refuse_exactly_outside_them(alone: BuildResult) -> None:
    plan = _res(alone, "PlanDefinition", "joint-injection")
    conds = {c["expression"]["name"]: c for c in plan["action"][0]["condition"]}
    yearly = conds["YearlyLimit"]
    assert yearly["expression"]["description"] == (
        "The injection may be repeated, but no more than 3 times in one year."
    )
    (lim,) = _ext(yearly, "limit")
    assert {e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in lim["extension"]} == {
        "type": "repetitions-per-period",
        "maximum": 3,
        "period": {"value": 1, "unit": "year", "system": "http://unitsofmeasure.org", "code": "a"},
    }
    expr = yearly["expression"]["expression"]
    two = [_prior("2026-03-01"), _prior("2026-06-01")]
    assert _eval(expr, priorProcedures=two)
    assert not _eval(expr, priorProcedures=[*two, _prior("2026-08-01")])
    assert _eval(expr, priorProcedures=[*two, _prior("2025-11-30")])  # more than a year ago
    assert _eval(expr, priorProcedures=[*two, _prior("2026-08-01", status="not-done")])
    assert _eval(expr, priorProcedures=[*two, _prior("2026-08-01", code="other")])
    interval = conds["Interval"]["expression"]["expression"]
    assert _eval(interval)
    assert not _eval(interval, priorProcedures=[_prior("2026-10-01")])  # two months ago
    assert _eval(interval, priorProcedures=[_prior("2026-09-01")])  # three months ago
    assert _eval(interval, priorProcedures=[_prior("2026-08-01")])


def test_advice_and_risk_modifier_concern_their_patients(alone: BuildResult) -> None:
    plan = _res(alone, "PlanDefinition", "joint-injection")
    advice = next(a for a in plan["action"] if a["id"] == "diabetes-advice")
    assert advice["textEquivalent"].startswith("Patients with diabetes should check")
    expr = advice["condition"][0]["expression"]["expression"]
    diabetes = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "73211009"}]},
    }
    assert _eval(expr, conditions=[diabetes])
    assert not _eval(expr)
    consent = _res(alone, "Consent", "joint-injection-consent")
    (risk,) = consent["extension"]
    subs = {e["url"]: e for e in risk["extension"]}
    assert subs["frequency"]["valueCodeableConcept"] == {"text": "about 1 in 100"}
    assert subs["probability"]["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 100}}
    modifier = {e["url"]: e for e in subs["modifier"]["extension"]}
    assert modifier["effect"]["valueCode"] == "higher"
    patients = modifier["patients"]["valueExpression"]["expression"]
    assert _eval(patients, medications=[_med("warfarin")]) and not _eval(patients)


def test_a_limit_on_sites_needs_body_sites_and_a_value_set_needs_codes(tmp_path: Path) -> None:
    from procfhir.errors import BuildError

    cfg = _config(tmp_path, False)
    mapping = tmp_path / "source" / "joint-injection.yaml"
    data = yaml.safe_load(mapping.read_text())
    data["plan"]["limits"].append(
        {
            "id": "per-session",
            "title": "Joints per session",
            "text": "No more than 3 injections.",
            "type": "sites-per-session",
            "maximum": 3,
            "quotes": ["The injection may be repeated, but no more than 3 times in one year."],
        }
    )
    data["value_sets"].append(
        {"id": "joint-materials", "name": "JointMaterials", "title": "M", "from": "materials"}
    )
    mapping.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out", validate=False, write=False)
    text = "\n".join(err.value.problems)
    assert "limit per-session: a sites-per-session limit needs the plan's body_sites" in text
    assert "value set joint-materials: it holds no code" in text
    assert len(err.value.problems) == 2, err.value.problems
