"""PlanDefinition $apply in Python: each rule, the outputs' validity, the completion, the CLI."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from procfhir.apply import Applier, ApplyError, NotApplicable, apply, complete_procedure, load_plan
from procfhir.apply.engine import Plan
from procfhir.apply.knowledge import load_knowledge
from procfhir.apply.resources import Builder
from procfhir.apply.samples import sample_contexts
from procfhir.builders.consent import consent_form_html, consent_narrative
from procfhir.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "apply"
SCT = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
COPD = {"system": SCT, "code": "13645005"}


def context(**changes) -> dict:
    ctx = json.loads((FIXTURES / "context-kyphoplasty.json").read_text(encoding="utf-8"))
    ctx.update(changes)
    return ctx


def condition(cid: str, coding: dict, status: str = "confirmed") -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": status}
            ]
        },
        "code": {"coding": [coding]},
        "subject": {"reference": "Patient/example-apply-patient"},
    }


def with_copd(ctx: dict) -> dict:
    ctx["conditions"] = ctx["conditions"] + [condition("example-apply-copd", COPD)]
    return ctx


@pytest.fixture(scope="module")
def validator():
    from procfhir.build import build
    from procfhir.validator import Validator

    return Validator(extra_definitions=build(write=False, validate=False).resources)


def assert_valid(validator, resources: list[dict]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    problems = []
    for r in resources:
        get_fhir_model_class(r["resourceType"]).model_validate(r)  # R4B structure parse
        for issue in validator.validate(r):
            if issue.severity in ("error", "fatal"):
                problems.append(f"{r['resourceType']}/{r['id']}: {issue.location}: {issue.message}")
    assert not problems, "\n".join(problems[:20])


def by_type(resources: list[dict], rtype: str) -> list[dict]:
    return [r for r in resources if r["resourceType"] == rtype]


def test_kyphoplasty_two_levels(validator):
    result = apply(context())
    res = result.resources
    assert [r["resourceType"] for r in res][:2] == ["CarePlan", "RequestGroup"]
    plan_url = "https://fhir.example.org/procedures/PlanDefinition/vertebral-augmentation"
    careplan, rg = res[0], res[1]
    assert careplan["instantiatesCanonical"] == [plan_url] and careplan["status"] == "draft"
    assert careplan["activity"][0]["reference"]["reference"] == f"RequestGroup/{rg['id']}"
    # the RequestGroup mirrors the selected actions: the chosen technique only, with its steps
    technique = rg["action"][0]
    assert technique["id"] == "technique" and technique["selectionBehavior"] == "exactly-one"
    assert [a["id"] for a in technique["action"]] == ["kyphoplasty"]
    steps = technique["action"][0]["action"]
    assert [s["id"] for s in steps] == [
        "kyphoplasty-order", "kyphoplasty-antibiotic-prophylaxis", "kyphoplasty-sedation",
        "kyphoplasty-needle-placement", "kyphoplasty-balloon-inflation", "kyphoplasty-cement-injection",
        "kyphoplasty-complication-observation",
    ]  # fmt: skip
    assert steps[1]["relatedAction"] == [
        {"actionId": "kyphoplasty-needle-placement", "relationship": "before-start"}
    ]
    srs = {r["id"]: r for r in by_type(res, "ServiceRequest")}
    for s in steps:
        assert s["resource"]["reference"].removeprefix("ServiceRequest/") in srs
    assert len(rg["action"]) == 1  # no lung disease: no warning action
    assert result.warnings == []
    proc_sr = srs[steps[0]["resource"]["reference"].split("/")[1]]
    assert proc_sr["instantiatesCanonical"] == [
        "https://fhir.example.org/procedures/ActivityDefinition/kyphoplasty"
    ]
    assert proc_sr["status"] == "draft" and proc_sr["intent"] == "order"
    assert proc_sr["occurrenceDateTime"] == "2026-12-01"
    assert proc_sr["orderDetail"] == [{"text": "2 needle(s) per treated level: 4 needle(s) in all"}]
    assert [b["coding"][0]["code"] for b in proc_sr["bodySite"]] == ["23215003", "66794005"]  # T12, L1
    cpt = [c["code"] for c in proc_sr["code"]["coding"] if c["system"] == CPT]
    assert cpt == ["22513"]  # first level T12: thoracic
    antibiotic = srs[steps[1]["resource"]["reference"].split("/")[1]]
    assert (
        antibiotic["code"]["coding"][0]["code"] == "antibiotic-prophylaxis" and "bodySite" not in antibiotic
    )
    consent = by_type(res, "Consent")[0]
    assert consent["status"] == "proposed"
    assert consent["patient"]["reference"] == "Patient/example-apply-patient"
    assert consent["performer"] == [
        {"reference": "Practitioner/example-apply-dr", "display": "Dr A. Example"}
    ]
    assert consent["organization"] == [{"reference": "Organization/example-apply-hospital"}]
    assert consent["dateTime"] == "2026-12-01"
    assert [c["coding"][0]["code"] for c in consent["provision"]["code"]] == ["kyphoplasty"]
    template = load_plan().k.consent_template
    assert consent["extension"] == template["extension"] and len(consent["extension"]) >= 5
    html = base64.b64decode(consent["sourceAttachment"]["data"]).decode()
    assert "Jane O&#x27;Brien" in html and "Kyphoplasty" in html and "T12, L1" in html
    proc = by_type(res, "Procedure")[0]
    assert proc["status"] == "preparation" and proc["instantiatesCanonical"] == [plan_url]
    assert proc["basedOn"] == [{"reference": f"ServiceRequest/{proc_sr['id']}"}]
    assert proc["bodySite"] == proc_sr["bodySite"] and proc["code"] == proc_sr["code"]
    assert proc["meta"]["profile"][0].endswith("/StructureDefinition/vertebral-augmentation-procedure")
    assert_valid(validator, res)


def test_vertebroplasty_lumbar_one_needle():
    res = apply(context(technique="vertebroplasty", levels=["L2", "L3"])).resources
    proc = by_type(res, "Procedure")[0]
    assert [c["code"] for c in proc["code"]["coding"] if c["system"] == CPT] == ["22511"]  # lumbosacral
    sr = next(r for r in by_type(res, "ServiceRequest") if r.get("bodySite"))
    assert sr["orderDetail"] == [{"text": "1 needle(s) per treated level: 2 needle(s) in all"}]


def test_no_indication_says_which_conditions_were_checked():
    osteoporosis = condition("example-apply-osteoporosis", {"system": SCT, "code": "64859006"})
    refuted = condition("example-apply-refuted", {"system": SCT, "code": "42942008"}, status="refuted")
    for conditions in ([], [osteoporosis], [refuted]):
        with pytest.raises(NotApplicable) as err:
            apply(context(conditions=conditions))
        msg = str(err.value)
        assert "does not apply" in msg and "not met: HasIndication" in msg
        assert "Conditions checked" in msg and "The patient has one of the indications" in msg
        assert [c.name for c in err.value.failed] == ["HasIndication"]


def test_lung_disease_level_limit_and_preference(validator):
    with pytest.raises(NotApplicable) as err:
        apply(with_copd(context(levels=["T12", "L1", "L2"])))
    assert [c.name for c in err.value.failed] == ["LungDiseaseLevelLimit"]
    assert "no more than 2 levels" in str(err.value)
    two = apply(with_copd(context()))
    assert two.warnings == ["Severe lung disease such as COPD: one level at a time is preferred."]
    rg = two.resources[1]
    warning = next(a for a in rg["action"] if a["id"] == "lung-disease-level-limit-preference")
    assert warning["textEquivalent"] == two.warnings[0]
    comm = by_type(two.resources, "CommunicationRequest")[0]
    assert warning["resource"]["reference"] == f"CommunicationRequest/{comm['id']}"
    assert comm["payload"][0]["contentString"] == two.warnings[0] and comm["priority"] == "urgent"
    assert_valid(validator, two.resources)
    one = apply(with_copd(context(levels=["L1"])))
    assert one.warnings == [] and not by_type(one.resources, "CommunicationRequest")
    # three levels without lung disease are fine
    assert apply(context(levels=["T12", "L1", "L2"])).warnings == []


def test_rules_come_from_the_plans_expressions():
    k = load_knowledge()
    k = dataclasses.replace(k, plan=copy.deepcopy(k.plan))
    limit = k.plan["action"][0]["condition"][1]["expression"]
    assert limit["expression"].endswith("<= 2")
    limit["expression"] = limit["expression"][: -len("<= 2")] + "<= 3"
    applier = Applier(Plan(k))
    assert applier.apply(with_copd(context(levels=["T12", "L1", "L2"]))).resources
    with pytest.raises(NotApplicable):
        apply(with_copd(context(levels=["T12", "L1", "L2"])))


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"levels": ["X1"]}, "levels[0]", "not a vertebral level"),
        ({"levels": ["T13"]}, "levels[0]", "there is no T13"),
        ({"levels": ["T4"]}, "levels[0]", "not among the levels this plan treats"),
        ({"levels": ["L1", "l1"]}, "levels[1]", "listed twice"),
        ({"levels": []}, "levels", "missing"),
        ({"technique": "cementoplasty"}, "technique", "unknown technique 'cementoplasty'"),
        ({"technique": None}, "technique", "missing"),
        ({"patient": None}, "patient", "missing"),
        ({"patient": {"reference": "Patient/x"}}, "patient.display", "name"),
        ({"patient": {"resourceType": "Patient", "id": "x"}}, "patient.name", "missing"),
        ({"date": "2026-02-30"}, "date", "not a real date"),
        ({"date": "tomorrow"}, "date", "not a FHIR date"),
        ({"performer": "Organization/x"}, "performer", "not a reference to a Practitioner"),
        ({"organization": None}, "organization", "missing"),
        ({"colour": "blue"}, "colour", "unknown field"),
    ],
)
def test_bad_input_names_the_field(changes, field, words):
    with pytest.raises(ApplyError) as err:
        apply(context(**changes))
    assert err.value.field == field
    assert words in str(err.value)


def test_condition_of_another_patient_is_refused():
    other = condition("example-apply-other", {"system": SCT, "code": "42942008"})
    other["subject"] = {"reference": "Patient/someone-else"}
    with pytest.raises(ApplyError) as err:
        apply(context(conditions=[other]))
    assert err.value.field == "conditions[0].subject"


def test_bundle_input_gives_the_same_resources():
    bundle = json.loads((FIXTURES / "context-kyphoplasty-bundle.json").read_text(encoding="utf-8"))
    assert apply(bundle).resources == apply(context()).resources


def test_ids_are_deterministic():
    a, b = apply(context()).resources, apply(context()).resources
    assert a == b
    other = apply(context(id="example-context-2")).resources
    assert {r["id"] for r in a}.isdisjoint(r["id"] for r in other)
    anonymous = context()
    del anonymous["id"]
    assert apply(anonymous).resources == apply(copy.deepcopy(anonymous)).resources
    assert len({r["id"] for r in a}) == len(a)


def test_compiled_and_memo_give_the_same_results_as_plain_fhirpathpy():
    k = load_knowledge()
    plain = Applier(Plan(k, memo=False, compiled=False))
    memo = Applier(Plan(k, memo=True, compiled=False))
    fast = Applier(Plan(k))
    outcomes = []
    for ctx in sample_contexts(400, seed=11, bad_every=7):
        results = []
        for applier in (plain, memo, fast):
            try:
                r = applier.apply(ctx)
                results.append((r.resources, r.warnings, r.checks))
            except ApplyError as exc:
                results.append(str(exc))
        assert results[0] == results[1] == results[2]
        outcomes.append(isinstance(results[0], str))
    assert memo.plan.evaluator.hits > 0 and any(outcomes) and not all(outcomes)
    # every expression of the plan is compiled, and no sample input fell back to fhirpathpy
    assert all(x.fast is not None for x in fast.plan.expressions)
    assert fast.plan.evaluator.compiled > 1000 and fast.plan.evaluator.fallbacks == 0


def test_consent_texts_equal_a_direct_rendering():
    builder = Builder(load_plan())
    m = builder.m
    for name, levels in [("Jane O'Brien", ["T12", "L1"]), ('<b>Zoë & "Co"</b>', ["L5"])]:
        form, div = builder._consent_texts("vertebroplasty", name, levels)
        assert form == consent_form_html(m, ["vertebroplasty"], name, levels)
        assert div == consent_narrative(m, ["vertebroplasty"], name)["div"]


def test_complete_procedure_meets_us_core(validator):
    import fhirpathpy

    planned = apply(context()).procedure
    done = complete_procedure(
        planned, "2026-12-01T10:30:00+01:00", "PMMA bone cement, 4 mL", ["cement-leakage", "59282003"]
    )
    assert planned["status"] == "preparation"  # not modified
    assert done["status"] == "completed" and done["performedDateTime"] == "2026-12-01T10:30:00+01:00"
    assert done["usedCode"][0]["coding"][0]["code"] == "bone-cement"
    assert done["usedCode"][0]["text"] == "PMMA bone cement, 4 mL"
    assert [c["coding"][0]["code"] for c in done["complication"]] == ["cement-leakage", "59282003"]
    # US Core Procedure: status, code, subject required; us-core-7 performed when completed
    for element in ("status", "code", "subject"):
        assert done.get(element)
    assert fhirpathpy.evaluate(
        done, "(status='completed' or status='in-progress') implies performed.exists()"
    )
    assert_valid(validator, [done])
    period = complete_procedure(planned, ("2026-12-01T10:00:00+01:00", "2026-12-01T10:40:00+01:00"))
    assert period["performedPeriod"]["end"] == "2026-12-01T10:40:00+01:00"
    assert period["outcome"] == {"text": "No complication observed"} and "complication" not in period
    assert_valid(validator, [period])
    with pytest.raises(ApplyError, match="complications\\[0\\]"):
        complete_procedure(planned, "2026-12-01T10:30:00+01:00", complications=["headache"])
    with pytest.raises(ApplyError, match="performed"):
        complete_procedure(planned, "2026-12-01")
    with pytest.raises(ApplyError, match="procedure.status"):
        complete_procedure(done, "2026-12-01T10:30:00+01:00")


def test_cli_single_context(tmp_path):
    runner = CliRunner()
    out = tmp_path / "bundle.json"
    r = runner.invoke(main, ["apply", str(FIXTURES / "context-kyphoplasty.json"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    bundle = json.loads(out.read_text())
    assert [e["resource"] for e in bundle["entry"]] == apply(context()).resources
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(context(levels=["L1", "L1"])))
    out2 = tmp_path / "nothing.json"
    r = runner.invoke(main, ["apply", str(bad), "--out", str(out2)])
    assert r.exit_code == 1 and "levels[1]: L1 is listed twice" in r.output and "Traceback" not in r.output
    assert not out2.exists() and sorted(tmp_path.iterdir()) == sorted([out, bad])  # nothing written
    r = runner.invoke(main, ["apply", str(tmp_path / "missing.json")])
    assert r.exit_code == 1 and "no such file" in r.output


def test_batch_of_1000_validates_and_reports_failures(tmp_path, validator):
    src = tmp_path / "contexts.ndjson"
    with open(src, "w", encoding="utf-8") as f:
        for i, ctx in enumerate(sample_contexts(1000, seed=3, bad_every=50)):
            f.write(json.dumps(ctx) + "\n")
            if i == 10:
                f.write("{not json\n")  # line 12
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["apply", "--batch", str(src), "--out", str(out)])
    assert r.exit_code == 1, r.output  # some contexts failed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["contexts"] == 1001 and summary["failed"] == 21 and summary["applied"] == 980
    failures = [json.loads(line) for line in (out / "OperationOutcome.ndjson").read_text().splitlines()]
    assert len(failures) == 21
    diagnostics = [f["issue"][0]["diagnostics"] for f in failures]
    assert diagnostics[0].startswith("line 12: context: not valid JSON")
    assert any("line 51: plan: the plan vertebral-augmentation does not apply" in d for d in diagnostics)
    kinds = " ".join(diagnostics)
    for words in (
        "HasIndication",
        "LungDiseaseLevelLimit",
        "no L7",
        "listed twice",
        "unknown technique",
        "patient",
    ):
        assert words in kinds
    resources = []
    for path in sorted(out.glob("*.ndjson")):
        if path.name != "OperationOutcome.ndjson":
            lines = path.read_text(encoding="utf-8").splitlines()
            assert all(json.loads(line)["resourceType"] == path.stem for line in lines)
            resources += [json.loads(line) for line in lines]
    assert len(by_type(resources, "Procedure")) == 980 == summary["resources"]["Procedure"]
    assert_valid(validator, resources)
    # a second run refuses to overwrite, with --overwrite gives identical files
    r = CliRunner().invoke(main, ["apply", "--batch", str(src), "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = CliRunner().invoke(
        main, ["apply", "--batch", str(src), "--out", str(out), "--overwrite", "--workers", "2"]
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_package_dir_gives_the_same_plan(tmp_path):
    from procfhir.build import build

    build(out_dir=tmp_path / "pkg", validate=False)
    from_pkg = Applier(load_plan(tmp_path / "pkg")).apply(context())
    assert from_pkg.resources == apply(context()).resources
