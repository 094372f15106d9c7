"""PlanDefinition $apply in Python: each rule, the outputs' validity, the completion, the CLI."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from procfhir.apply import Applier, ApplyError, KnowledgeError, NotApplicable, complete_procedure, load_plan
from procfhir.apply.engine import Plan
from procfhir.apply.knowledge import load_knowledge
from procfhir.apply.resources import Builder
from procfhir.cli import main
from tests import apply_packages as pk
from tests.apply_samples import sample_contexts

FIXTURES = Path(__file__).parent / "fixtures" / "apply"
SCT = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
COPD = {"system": SCT, "code": "13645005"}
PLAN_URL = "https://fhir.example.org/procedures/PlanDefinition/vertebral-augmentation"
TEST_PLAN_URL = "https://fhir.example.org/procedures/PlanDefinition/apply-test"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The vertebroplasty package as FHIR resources with the plan's declarations (a folder)."""
    return pk.write_folder(pk.vertebral_package(), tmp_path_factory.mktemp("vertebral") / "fhir")


@pytest.fixture(scope="module")
def va(package) -> Applier:
    return Applier(load_plan(package))


@pytest.fixture(scope="module")
def generic_dir(tmp_path_factory) -> Path:
    return pk.write_folder(pk.generic_package(), tmp_path_factory.mktemp("generic") / "fhir")


@pytest.fixture(scope="module")
def gen(generic_dir) -> Applier:
    return Applier(load_plan(generic_dir))


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


@pytest.fixture(scope="module")
def gen_validator():
    from procfhir.build import build
    from procfhir.validator import Validator

    return Validator(extra_definitions=build(write=False, validate=False).resources + pk.generic_package())


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


def test_kyphoplasty_two_levels(va, validator):
    result = va.apply(context())
    res = result.resources
    assert [r["resourceType"] for r in res][:2] == ["CarePlan", "RequestGroup"]
    careplan, rg = res[0], res[1]
    assert careplan["instantiatesCanonical"] == [PLAN_URL] and careplan["status"] == "draft"
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
    # codes by body region: the first level's (T12: thoracic), the add-on for the second level
    cpt = [c for c in proc_sr["code"]["coding"] if c["system"] == CPT]
    assert [c["code"] for c in cpt] == ["22513", "22515"] and not any("extension" in c for c in cpt)
    antibiotic = srs[steps[1]["resource"]["reference"].split("/")[1]]
    assert antibiotic["code"]["coding"][0]["code"] == "422181004" and "bodySite" not in antibiotic
    consent = by_type(res, "Consent")[0]
    assert consent["status"] == "proposed"
    assert consent["patient"]["reference"] == "Patient/example-apply-patient"
    assert consent["performer"] == [
        {"reference": "Practitioner/example-apply-dr", "display": "Dr A. Example"}
    ]
    assert consent["organization"] == [{"reference": "Organization/example-apply-hospital"}]
    assert consent["dateTime"] == "2026-12-01"
    assert [c["coding"][0]["code"] for c in consent["provision"]["code"]] == ["kyphoplasty"]
    template = va.plan.k.consent_template
    assert consent["extension"] == template["extension"] and len(consent["extension"]) >= 5
    html = base64.b64decode(consent["sourceAttachment"]["data"]).decode()
    assert "Jane O&#x27;Brien" in html and "<strong>Kyphoplasty</strong>" in html
    assert "<p>Vertebral level(s) to be treated: <strong>T12, L1</strong></p>" in html
    proc = by_type(res, "Procedure")[0]
    assert proc["status"] == "preparation" and proc["instantiatesCanonical"] == [PLAN_URL]
    assert proc["basedOn"] == [{"reference": f"ServiceRequest/{proc_sr['id']}"}]
    assert proc["bodySite"] == proc_sr["bodySite"] and proc["code"] == proc_sr["code"]
    assert proc["meta"]["profile"][0].endswith("/StructureDefinition/vertebral-augmentation-procedure")
    assert_valid(validator, res)


def test_codes_by_region_follow_the_first_site(va):
    def cpt(technique: str, sites: list[str]) -> list[str]:
        proc = va.apply(context(technique=technique, sites=sites)).procedure
        return [c["code"] for c in proc["code"]["coding"] if c["system"] == CPT]

    assert cpt("vertebroplasty", ["L2", "L3"]) == ["22511", "22512"]  # lumbosacral + each additional
    assert cpt("vertebroplasty", ["T11"]) == ["22510"]
    assert cpt("kyphoplasty", ["L5"]) == ["22514"]
    sr = next(
        r
        for r in va.apply(context(technique="vertebroplasty", sites=["L2", "L3"])).resources
        if r.get("bodySite")
    )
    assert sr["orderDetail"] == [{"text": "1 needle(s) per treated level: 2 needle(s) in all"}]


def test_no_indication_says_which_conditions_were_checked(va):
    osteoporosis = condition("example-apply-osteoporosis", {"system": SCT, "code": "64859006"})
    refuted = condition("example-apply-refuted", {"system": SCT, "code": "42942008"}, status="refuted")
    for conditions in ([], [osteoporosis], [refuted]):
        with pytest.raises(NotApplicable) as err:
            va.apply(context(conditions=conditions))
        msg = str(err.value)
        assert (
            "does not apply" in msg
            and "not met: HasIndication (The patient has one of the indications" in msg
        )
        assert "Conditions checked" in msg
        assert [c.name for c in err.value.failed] == ["HasIndication"]


def test_lung_disease_level_limit_and_preference(va, validator):
    with pytest.raises(NotApplicable) as err:
        va.apply(with_copd(context(sites=["T12", "L1", "L2"])))
    assert [c.name for c in err.value.failed] == ["LungDiseaseLevelLimit"]
    words = err.value.failed[0].description  # the text's own words are the refusal
    assert "no more than 2 levels" in words.lower() and f"LungDiseaseLevelLimit ({words.rstrip('.')})" in str(
        err.value
    )
    two = va.apply(with_copd(context()))
    assert two.warnings == ["Severe lung disease such as COPD: one level at a time is preferred."]
    rg = two.resources[1]
    warning = next(a for a in rg["action"] if a["id"] == "lung-disease-level-limit-preference")
    assert warning["textEquivalent"] == two.warnings[0]
    comm = by_type(two.resources, "CommunicationRequest")[0]
    assert warning["resource"]["reference"] == f"CommunicationRequest/{comm['id']}"
    assert comm["payload"][0]["contentString"] == two.warnings[0] and comm["priority"] == "urgent"
    assert_valid(validator, two.resources)
    one = va.apply(with_copd(context(sites=["L1"])))
    assert one.warnings == [] and not by_type(one.resources, "CommunicationRequest")
    # three levels without lung disease are fine
    assert va.apply(context(sites=["T12", "L1", "L2"])).warnings == []


def test_rules_come_from_the_plans_expressions(va):
    k = va.plan.k
    k = dataclasses.replace(k, plan=copy.deepcopy(k.plan))
    limit = k.plan["action"][0]["condition"][1]["expression"]
    assert limit["expression"].endswith("<= 2")
    limit["expression"] = limit["expression"][: -len("<= 2")] + "<= 3"
    assert Applier(Plan(k)).apply(with_copd(context(sites=["T12", "L1", "L2"]))).resources
    with pytest.raises(NotApplicable):
        va.apply(with_copd(context(sites=["T12", "L1", "L2"])))


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"sites": ["X1"]}, "sites[0]", "'X1' is not among the body sites of the plan"),
        ({"sites": ["T4"]}, "sites[0]", "value set vertebral-levels: T11, T12, L1"),
        ({"sites": [{"system": SCT, "code": "1"}]}, "sites[0]", "http://snomed.info/sct|1 is not among"),
        ({"sites": ["L1", "l1"]}, "sites[1]", "listed twice"),
        ({"sites": []}, "sites", "missing"),
        ({"sites": "L1"}, "sites", "expected a list"),
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
        ({"medications": [{"resourceType": "Condition"}]}, "medications[0]", "not a MedicationStatement"),
        ({"priorProcedures": [{"resourceType": "Procedure", "status": "completed"}]},
         "priorProcedures[0].performed", "needs its date"),
    ],
)  # fmt: skip
def test_bad_input_names_the_field(va, changes, field, words):
    with pytest.raises(ApplyError) as err:
        va.apply(context(**changes))
    assert err.value.field == field
    assert words in str(err.value)


def test_sites_by_code_display_or_coding(va):
    base = va.apply(context()).resources
    for sites in (
        ["23215003", "66794005"],
        ["T12 vertebra", "l1"],
        [{"system": SCT, "code": "23215003"}, "L1"],
    ):
        assert va.apply(context(sites=sites)).resources == base


def test_condition_of_another_patient_is_refused(va):
    other = condition("example-apply-other", {"system": SCT, "code": "42942008"})
    other["subject"] = {"reference": "Patient/someone-else"}
    with pytest.raises(ApplyError) as err:
        va.apply(context(conditions=[other]))
    assert err.value.field == "conditions[0].subject"


def test_bundle_input_gives_the_same_resources(va):
    bundle = json.loads((FIXTURES / "context-kyphoplasty-bundle.json").read_text(encoding="utf-8"))
    assert va.apply(bundle).resources == va.apply(context()).resources


def test_ids_are_deterministic(va):
    a, b = va.apply(context()).resources, va.apply(context()).resources
    assert a == b
    other = va.apply(context(id="example-context-2")).resources
    assert {r["id"] for r in a}.isdisjoint(r["id"] for r in other)
    anonymous = context()
    del anonymous["id"]
    assert va.apply(anonymous).resources == va.apply(copy.deepcopy(anonymous)).resources
    assert len({r["id"] for r in a}) == len(a)


FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
ODD_CONTEXT_IDS = [
    "x" * 10_000,
    "../x",
    "a/b",
    "has space",
    "tab\there",
    "ctx-1\n",
    "é",
    "$expunge",
    "a" * 65,
]


def test_any_context_id_gives_valid_fhir_ids_derived_deterministically(package, tmp_path):
    """A context id is never copied into an output id: ids are a hash of it, so a 10,000-character
    id or one with path characters still gives valid FHIR ids, the same on every run."""
    seen: dict[str, set[str]] = {}
    src = tmp_path / "contexts.ndjson"
    src.write_text("".join(json.dumps(context(id=cid)) + "\n" for cid in ODD_CONTEXT_IDS), encoding="utf-8")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["apply", "--package", str(package), "--batch", str(src), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert not (out / "OperationOutcome.ndjson").exists()
    for path in sorted(out.glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            res = json.loads(line)
            assert FHIR_ID.fullmatch(res["id"]), res["id"]
            for ref in re.findall(r'"reference": ?"([^"]+)"', line):
                assert FHIR_ID.fullmatch(ref.rsplit("/", 1)[-1]), ref
            seen.setdefault(res["resourceType"], set()).add(res["id"])
    assert len(seen["CarePlan"]) == len(ODD_CONTEXT_IDS)  # one distinct set of ids per context id
    r = CliRunner().invoke(main, ["apply", "--package", str(package), str(_write(tmp_path, "../x"))])
    assert r.exit_code == 0, r.output
    assert {x["resource"]["id"] for x in json.loads(r.output)["entry"]} <= set().union(*seen.values())


def _write(tmp_path: Path, cid: str) -> Path:
    p = tmp_path / "one.json"
    p.write_text(json.dumps(context(id=cid)), encoding="utf-8")
    return p


def test_request_ids_stay_valid_for_any_action_id():
    from procfhir.apply.resources import _request_id

    key = "0123456789abcdef"
    assert _request_id("sr", key, "needle-placement") == f"sr-{key}-needle-placement"  # unchanged
    for action_id in ("step one", "../x", "a/b", "x" * 100, "é"):
        rid = _request_id("sr", key, action_id)
        assert FHIR_ID.fullmatch(rid) and rid == _request_id("sr", key, action_id)
    assert _request_id("sr", key, "a/b") != _request_id("sr", key, "a b")


def test_compiled_and_memo_give_the_same_results_as_plain_fhirpathpy(va):
    k = va.plan.k
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
    # (with the memo, only the first patient of each relevant set of facts is evaluated)
    assert fast.plan.evaluator.compiled > 500 and fast.plan.evaluator.fallbacks == 0


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("%sites.count() > 1", {"sites": {"resourceType"}}),
        ("%sites.count() + %sites.code.count()", {"sites": {"resourceType", "code"}}),
        ("%sites.where(code = 'x').count() <= 4", {"sites": {"resourceType", "code", "where"}}),
        ("%sites.exists(code = 'x')", {"sites": {"resourceType", "code", "exists"}}),
        ("%sites.code", {"sites": None}),  # the items are the result
        ("%sites.first().code = 'x'", {"sites": None}),
        ("%sites.where($this.code = 'x').count()", {"sites": None}),
        ("(%sites | %conditions).count()", {"sites": None, "conditions": None}),
        ("%conditions.where(code = %sites.code).exists()", {"conditions": None, "sites": None}),
        ("%patient.birthDate < %plannedDate", {"patient": None, "plannedDate": None}),
    ],
)
def test_memo_keys_keep_what_an_expression_reads_of_each_variable(expression, expected):
    """A variable whose items only reach count(), exists() or empty() (through navigation and
    where) is projected onto the names read on the way; anything else keeps every name."""
    from procfhir.apply.expressions import Expression

    x = Expression(expression)
    assert {v: (None if n == x.names else set(n)) for v, n in x.variable_names.items()} == expected


def test_json_lines_from_templates_equal_the_resources(va, gen):
    """The batch's JSON lines (templates filled per patient) are orjson.dumps of apply()'s."""
    import orjson

    names = ["Jane O'Brien", 'Zoë <b>&</b> "Q"', "A%(K)s %s", "x" * 7, "李"]
    contexts = list(sample_contexts(300, seed=21, bad_every=9))
    contexts += [
        pk.generic_context(pid=f"g{i}", medications=[pk.medication(f"g{i}")] * (i % 2)) for i in range(6)
    ]
    checked = 0
    for i, ctx in enumerate(contexts):
        applier = gen if ctx["id"].startswith("ctx-g") else va
        if "patient" in ctx:
            ctx["patient"]["name"] = [{"text": names[i % len(names)]}]
        if i % 4 == 0:
            ctx["performer"] = {"reference": "Practitioner/p-1", "display": 'Dr "%" Ünal'}
        try:
            expected = [(r["resourceType"], orjson.dumps(r)) for r in applier.apply(ctx).resources]
        except ApplyError as exc:
            with pytest.raises(ApplyError, match=re.escape(str(exc))):
                applier.apply_json(ctx)
            continue
        assert applier.apply_json(ctx)[0] == expected
        checked += 1
    assert checked > 250 and va.json.hits > va.json.misses > 0


def test_consent_texts_equal_the_builders_rendering(va):
    """The patient's form, made from the Consent template alone, is the form the build renders."""
    from procfhir.build import load_mappings
    from procfhir.builders.consent import consent_form_html, consent_narrative
    from procfhir.config import load_config

    m = load_mappings(load_config())[0]
    consent = Builder(va.plan).consent
    assert consent is not None
    for name, sites in [("Jane O'Brien", ["T12", "L1"]), ('<b>Zoë & "Co"</b>', ["L5"])]:
        form, div, _ = consent.texts("vertebroplasty", name, sites)
        assert form == consent_form_html(m, ["vertebroplasty"], name, sites)
        assert div == consent_narrative(m, ["vertebroplasty"], name)["div"]


def test_complete_procedure_meets_us_core(va, validator):
    import fhirpathpy

    planned = va.apply(context()).procedure
    done = complete_procedure(
        planned, "2026-12-01T10:30:00+01:00", ["PMMA bone cement, 4 mL", "kyphoplasty-balloon"],
        ["cement-leakage", "59282003"], plan=va.plan,
    )  # fmt: skip
    assert planned["status"] == "preparation"  # not modified
    assert done["status"] == "completed" and done["performedDateTime"] == "2026-12-01T10:30:00+01:00"
    # kyphoplasty uses two materials (uses-material: bone cement, the balloon device): words stay
    # words, a code of them is coded as the plan has it; nothing built in
    assert done["usedCode"][0] == {"text": "PMMA bone cement, 4 mL"}
    assert done["usedCode"][1] == va.plan.materials["kyphoplasty"][1]
    assert [c["coding"][0]["code"] for c in done["complication"]] == ["cement-leakage", "59282003"]
    # US Core Procedure: status, code, subject required; us-core-7 performed when completed
    for element in ("status", "code", "subject"):
        assert done.get(element)
    assert fhirpathpy.evaluate(
        done, "(status='completed' or status='in-progress') implies performed.exists()"
    )
    assert_valid(validator, [done])
    period = complete_procedure(
        planned, ("2026-12-01T10:00:00+01:00", "2026-12-01T10:40:00+01:00"), plan=va.plan
    )
    assert period["performedPeriod"]["end"] == "2026-12-01T10:40:00+01:00"
    assert period["outcome"] == {"text": "No complication observed"} and "complication" not in period
    assert_valid(validator, [period])
    with pytest.raises(
        ApplyError, match="complications\\[0\\]: 'headache' is not in the plan's complications"
    ):
        complete_procedure(planned, "2026-12-01T10:30:00+01:00", complications=["headache"], plan=va.plan)
    with pytest.raises(ApplyError, match="performed"):
        complete_procedure(planned, "2026-12-01", plan=va.plan)
    with pytest.raises(ApplyError, match="procedure.status"):
        complete_procedure(done, "2026-12-01T10:30:00+01:00", plan=va.plan)


def test_cli_single_context(package, tmp_path):
    runner = CliRunner()
    out = tmp_path / "bundle.json"
    fixture = str(FIXTURES / "context-kyphoplasty.json")
    r = runner.invoke(main, ["apply", "--package", str(package), fixture, "--out", str(out)])
    assert r.exit_code == 0, r.output
    bundle = json.loads(out.read_text())
    assert [e["resource"] for e in bundle["entry"]] == Applier(load_plan(package)).apply(context()).resources
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(context(sites=["L1", "L1"])))
    out2 = tmp_path / "nothing.json"
    r = runner.invoke(main, ["apply", "--package", str(package), str(bad), "--out", str(out2)])
    assert r.exit_code == 1 and "sites[1]: L1 is listed twice" in r.output and "Traceback" not in r.output
    assert not out2.exists() and sorted(tmp_path.iterdir()) == sorted([out, bad])  # nothing written
    r = runner.invoke(main, ["apply", "--package", str(package), str(tmp_path / "missing.json")])
    assert r.exit_code == 1 and "no such file" in r.output


def test_batch_of_1000_validates_and_reports_failures(package, tmp_path, validator):
    src = tmp_path / "contexts.ndjson"
    with open(src, "w", encoding="utf-8") as f:
        for i, ctx in enumerate(sample_contexts(1000, seed=3, bad_every=50)):
            f.write(json.dumps(ctx) + "\n")
            if i == 10:
                f.write("{not json\n")  # line 12
    out = tmp_path / "out"
    args = ["apply", "--package", str(package), "--batch", str(src), "--out", str(out)]
    r = CliRunner().invoke(main, args)
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
        "'L7' is not among the body sites",
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
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = CliRunner().invoke(main, [*args, "--overwrite", "--workers", "2"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_worker_failing_stops_the_batch_and_writes_nothing(package, tmp_path, monkeypatch):
    """Fault injection (a bug no input produces): a worker raising mid-batch stops the others
    waiting for their turn to write; the error comes out and no output folder is left."""
    from procfhir.apply import batch

    src = tmp_path / "contexts.ndjson"
    with open(src, "w", encoding="utf-8") as f:
        for ctx in sample_contexts(3 * batch.CHUNK, seed=5):
            f.write(json.dumps(ctx) + "\n")
    original = Applier.apply_json

    def faulty(self, context):
        if context.get("id") == "ctx-0000300":
            raise RuntimeError("injected fault")
        return original(self, context)

    monkeypatch.setattr(Applier, "apply_json", faulty)  # inherited by the forked workers
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected fault"):
        batch.apply_batch(src, out, package=package, workers=2)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["contexts.ndjson"]


def test_pieces_of_any_size_hold_every_line_once(monkeypatch):
    """Cut into pieces of any size, the input gives back each of its lines once, with its number
    (blank, CRLF, overlong, a last line without newline, lines longer than a piece)."""
    import io

    from procfhir.apply import batch
    from procfhir.strictio import bounded_lines

    monkeypatch.setattr(batch, "MAX_LINE_BYTES", 20)
    data = b"a\n\nbb\nccc\r\n" + b"x" * 50 + b"\n \n" + b"y" * 19 + b"\n\n\nzz"
    expected = [(n, raw) for n, raw in enumerate(bounded_lines(io.BytesIO(data), 20), 1) if raw.strip()]
    assert len(expected) == 6
    f = io.BytesIO(data)
    for size in range(1, len(data) + 3):
        got, base = [], 0
        for k in range(-(-len(data) // size)):
            lines, n = batch.piece_lines(f, k, size, len(data))
            got += [(base + rel, raw) for rel, raw in lines]
            base += n
        assert got == expected, size


def test_workers_cut_the_input_into_pieces_without_changing_the_output(package, tmp_path, monkeypatch):
    """With several workers each reads its own pieces of the input (offset, length, first line
    number): blank lines, CRLF, a last line without newline, an overlong line (longer than a
    piece, too) and bad JSON give the same files, byte for byte, and the same line numbers as one
    worker."""
    from procfhir.apply import batch

    monkeypatch.setattr(batch, "PIECE_BYTES", 3000)  # many pieces, most ending mid-line
    monkeypatch.setattr(batch, "MAX_LINE_BYTES", 20_000)
    lines = [json.dumps(ctx).encode() for ctx in sample_contexts(60, seed=11, bad_every=9)]
    lines[4] += b"\r"
    lines[7:7] = [b"", b"   ", b"{not json"]  # lines 8-10
    lines[20:20] = [b'{"id": "' + b"x" * 25_000 + b'"}']  # line 21: overlong
    src = tmp_path / "contexts.ndjson"
    src.write_bytes(b"\n".join(lines))  # no newline after the last line
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        report = batch.apply_batch(src, out, package=package, workers=workers)
        assert report.contexts == len(lines) - 2
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    failures = [json.loads(x) for x in outputs[0]["OperationOutcome.ndjson"].splitlines()]
    diagnostics = [f["issue"][0]["diagnostics"] for f in failures]
    assert diagnostics[0].startswith("line 10: context: not valid JSON")
    assert any(d.startswith("line 21: context: the line is longer than 20,000 bytes") for d in diagnostics)
    assert len(outputs[0]["Procedure.ndjson"].splitlines()) == report.applied


# -- the package as FHIR: folder, .tgz, Bundle; plan selection ------------------------------------


def _outputs(package: Path | str, plan: str | None, contexts: list[dict]) -> list:
    applier = Applier(load_plan(package, plan))
    return [applier.apply(c).resources for c in contexts]


def test_folder_tgz_and_bundle_give_the_same_output(tmp_path):
    resources = pk.vertebral_package() + pk.generic_package()
    folder = pk.write_folder(resources, tmp_path / "folder")
    tgz = pk.write_tgz(resources, tmp_path / "package.tgz")
    bundle = pk.write_bundle(resources, tmp_path / "bundle.json")
    vertebral = [context(), with_copd(context(technique="vertebroplasty", sites=["L1"]))]
    generic = [pk.generic_context(), pk.generic_context(pid="p2", medications=[pk.medication("p2")])]
    for plan, contexts in ((PLAN_URL, vertebral), (TEST_PLAN_URL, generic)):
        expected = _outputs(folder, plan, contexts)
        assert _outputs(tgz, plan, contexts) == expected
        assert _outputs(bundle, plan, contexts) == expected
        assert _outputs(bundle, plan + "|0.1.0", contexts) == expected


def test_package_readers_are_strict_and_bounded(package, tmp_path, monkeypatch):
    """--package reads folders, .tgz and Bundles like every other input: strict JSON, a size limit
    per file and member (checked on the tar header, before reading) and on the inflated package."""
    import gzip
    import io
    import tarfile

    from procfhir.apply import knowledge

    resources = pk.vertebral_package()
    good = pk.write_tgz(resources, tmp_path / "good.tgz")
    assert knowledge.read_resources(good).plans == knowledge.read_resources(package).plans
    huge = tarfile.TarInfo("package/PlanDefinition-huge.json")
    huge.size = 4 * 1024**3  # announced 4 GiB, never sent: refused on the header alone
    (tmp_path / "huge.tgz").write_bytes(gzip.compress(huge.tobuf()))
    with pytest.raises(KnowledgeError, match="4,294,967,296 bytes, more than 268,435,456 accepted"):
        knowledge.read_resources(tmp_path / "huge.tgz")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for i in range(3):  # 3 x 1 MiB of spaces, a few KiB compressed
            info = tarfile.TarInfo(f"package/blob-{i}.bin")
            info.size = 1024 * 1024
            tar.addfile(info, io.BytesIO(b" " * info.size))
    (tmp_path / "bomb.tgz").write_bytes(gzip.compress(raw.getvalue()))
    assert (tmp_path / "bomb.tgz").stat().st_size < 64 * 1024
    monkeypatch.setattr(knowledge, "MAX_PACKAGE_BYTES", 2 * 1024 * 1024)
    with pytest.raises(KnowledgeError, match="unpacks to more than 2,097,152 bytes"):
        knowledge.read_resources(tmp_path / "bomb.tgz")
    folder = pk.write_folder(resources, tmp_path / "folder")
    plan_file = next(folder.glob("PlanDefinition-*.json"))
    text = plan_file.read_text(encoding="utf-8")
    for bad, words in (
        (text.replace('"status":', '"status": "draft", "status":', 1), "appears twice"),
        (text.replace('"status":', '"x": NaN, "status":', 1), "NaN"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
    ):
        plan_file.write_text(bad, encoding="utf-8")
        with pytest.raises(KnowledgeError, match=words):
            knowledge.read_resources(folder)
        bundle = tmp_path / "bundle.json"
        bundle.write_text(bad.replace('"resourceType": "PlanDefinition"', '"resourceType": "Bundle"', 1))
        with pytest.raises(KnowledgeError, match=words):
            knowledge.read_resources(bundle)
        r = CliRunner().invoke(
            main, ["apply", "--package", str(folder), str(FIXTURES / "context-kyphoplasty.json")]
        )
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output


def _nested(depth: int, indent: bool) -> bytes:
    import orjson

    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0)


@pytest.mark.parametrize(
    "data",
    [
        b'{\n  "a": 1,\n  "a": 2\n}',  # what orjson would write, but for the duplicate key
        b'{"a":1,"a":2}',
        b'{\n  "a": "\\ud800"\n}',  # a lone surrogate, escaped
        b'{\n  "a": 18446744073709551615\n}',  # orjson reads 64 bits unsigned; not strict JSON
        b'{\n  "a": 9223372036854775808\n}',
        b'{\n  "a": 1e-400\n}',
        b'{\n  "a": 1.0E400\n}',
        b'{\n  "a": NaN\n}',
        b'\xef\xbb\xbf{\n  "a": 1\n}',
        _nested(64, True),
        _nested(65, True),
        _nested(64, False),
        _nested(65, False),
        (FIXTURES / "context-kyphoplasty.json").read_bytes(),
    ],
)
def test_the_fast_json_reader_is_as_strict_as_the_strict_one(data):
    """Package files written by orjson or json.dumps(indent=2) are read by orjson when it writes
    them back byte for byte; anything the strict reader refuses is refused the same way."""
    from procfhir.strictio import StrictInputError, loads_canonical_json, loads_json

    def outcome(fn):
        try:
            return fn(data, "f.json")
        except StrictInputError as exc:
            return str(exc)

    assert outcome(loads_canonical_json) == outcome(loads_json)
    if b"\n" not in data:  # a context line of a batch
        from procfhir.apply.batch import parse_line

        assert outcome(lambda d, _where: parse_line(d)) == outcome(lambda d, _where: loads_json(d, ""))


def test_package_from_a_server_is_read_strictly_and_bounded(monkeypatch):
    """A server's answers are read like files: strict JSON, and a size limit after gzip inflation
    (a loopback server sends what HAPI never would: NaN, duplicate keys, a gzip bomb)."""
    import gzip
    import http.server
    import threading

    from procfhir.apply import knowledge, server

    bomb = gzip.compress(b" " * (8 * 1024 * 1024))  # 8 MiB of spaces in a few KiB
    answers = {
        "/nan": (b'{"resourceType": "Bundle", "type": "searchset", "total": NaN}', {}),
        "/dup": (b'{"resourceType": "Bundle", "type": "searchset", "type": "batch"}', {}),
        "/bomb": (bomb, {"Content-Encoding": "gzip"}),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, headers = answers[self.path.split("/PlanDefinition")[0]]
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(server, "MAX_ANSWER_BYTES", 1024 * 1024)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        for path, words in (("/nan", "NaN"), ("/dup", "appears twice"), ("/bomb", "larger than 1,048,576")):
            with pytest.raises(KnowledgeError, match=words):
                knowledge.read_resources(base + path, PLAN_URL)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_committed_package_files_agree():
    """fhir/ as a folder, as its NPM package and as its Bundle: one plan, the same output."""
    fhir = Path(__file__).resolve().parent.parent / "fhir"
    tgz = next(fhir.glob("*.tgz"))
    expected = _outputs(fhir, None, [context()])
    assert _outputs(tgz, None, [context()]) == expected
    assert _outputs(fhir / "bundle.json", None, [context()]) == expected


def test_plan_selection_errors_are_clear(tmp_path):
    both = pk.write_folder(pk.vertebral_package() + pk.generic_package(), tmp_path / "both")
    with pytest.raises(KnowledgeError) as err:
        load_knowledge(both)
    msg = str(err.value)
    assert "2 PlanDefinitions; choose one with --plan URL" in msg
    assert f"{PLAN_URL}|0.1.0 (Vertebroplasty and kyphoplasty)" in msg and TEST_PLAN_URL in msg
    with pytest.raises(KnowledgeError, match="no PlanDefinition https://example.org/x \\(available: "):
        load_knowledge(both, "https://example.org/x")
    with pytest.raises(KnowledgeError, match="no PlanDefinition .*\\|9.9.9"):
        load_knowledge(both, PLAN_URL + "|9.9.9")
    assert load_knowledge(both, "apply-test").plan["url"] == TEST_PLAN_URL  # by id too
    runner = CliRunner()
    ctx = tmp_path / "ctx.json"
    ctx.write_text(json.dumps(context()))
    r = runner.invoke(main, ["apply", "--package", str(both), str(ctx)])
    assert r.exit_code == 2 and "choose one with --plan URL" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["apply", "--package", str(both), "--plan", PLAN_URL, str(ctx)])
    assert r.exit_code == 0, r.output
    for bad, words in (
        (tmp_path / "none", "no such package"),
        (tmp_path / "ctx.json", "expected a FHIR Bundle"),
    ):
        r = runner.invoke(main, ["apply", "--package", str(bad), str(ctx)])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output
    broken = pk.vertebral_package()
    next(r for r in broken if r["resourceType"] == "PlanDefinition")["action"][0]["action"][0][
        "definitionCanonical"
    ] = "https://example.org/ActivityDefinition/missing"
    with pytest.raises(
        KnowledgeError, match="definitionCanonical https://example.org/ActivityDefinition/missing"
    ):
        load_knowledge(pk.write_folder(broken, tmp_path / "broken"))


# -- a plan of another kind: every rule of the contract -------------------------------------------


def _kinds(result) -> list[str]:
    return [r["resourceType"] for r in result.resources]


def test_conditional_step_appears_exactly_for_the_patients_it_concerns(gen):
    def has_step(**changes) -> bool:
        result = gen.apply(pk.generic_context(**changes))
        step = [r for r in result.resources if r["resourceType"] == "MedicationRequest"]
        ids = {a["id"] for rg in result.of_type("RequestGroup") for a in _walk(rg["action"])}
        assert bool(step) == ("stop-med" in ids)
        return bool(step)

    assert not has_step()
    assert has_step(medications=[pk.medication("gen-patient")])
    assert has_step(medications=[pk.medication("gen-patient", status="on-hold")])
    assert not has_step(medications=[pk.medication("gen-patient", status="stopped")])
    assert not has_step(medications=[pk.medication("gen-patient", code="other")])
    mr = gen.apply(pk.generic_context(medications=[pk.medication("gen-patient")])).of_type(
        "MedicationRequest"
    )[0]
    assert mr["medicationCodeableConcept"]["coding"][0]["code"] == "stop-med"
    assert mr["instantiatesCanonical"] == ["https://fhir.example.org/procedures/ActivityDefinition/stop-med"]


def _walk(actions: list[dict]) -> list[dict]:
    return [x for a in actions for x in (a, *_walk(a.get("action", [])))]


@pytest.mark.parametrize(
    ("dates", "refused"),
    [
        ([], None),
        (["2025-11-30"], None),  # more than a year and 3 months ago
        (["2026-09-15"], "MinInterval"),  # less than 3 months before 2026-12-01
        (["2026-09-02T10:00:00+02:00"], "MinInterval"),  # a dateTime is cut to its date
        (["2026-09-01"], None),  # 3 months exactly: fine
        (["2026-01-10", "2026-06-01"], "RepetitionsPerYear"),  # 2 in the last year: a third is refused
        (["2025-11-01", "2026-06-01"], None),  # one of them more than a year ago
    ],
)
def test_limits_are_refused_with_the_texts_words(gen, dates, refused):
    prior = [pk.prior("gen-patient", d, i) for i, d in enumerate(dates)]
    ctx = pk.generic_context(priorProcedures=prior)
    if refused is None:
        assert gen.apply(ctx).procedure["status"] == "preparation"
        return
    with pytest.raises(NotApplicable) as err:
        gen.apply(ctx)
    assert [c.name for c in err.value.failed] == [refused]
    words = pk.LIMIT_WORDS if refused == "RepetitionsPerYear" else pk.INTERVAL_WORDS
    assert words.rstrip(".") in str(err.value)
    # treatments of another procedure do not count
    other = [pk.prior("gen-patient", d, i, code="ind-a") for i, d in enumerate(dates)]
    assert gen.apply(pk.generic_context(priorProcedures=other)).procedure


def test_every_activity_kind_is_instantiated_and_valid(gen, gen_validator):
    result = gen.apply(pk.generic_context(medications=[pk.medication("gen-patient")]))
    kinds = _kinds(result)
    assert kinds == [
        "CarePlan", "RequestGroup", "ServiceRequest", "MedicationRequest", "Task",
        "CommunicationRequest", "Consent", "Procedure",
    ]  # fmt: skip
    task = result.of_type("Task")[0]
    assert task["for"] == result.procedure["subject"] and task["executionPeriod"] == {"start": "2026-12-01"}
    # a rule no expression can test is put before the clinician
    assert task["note"] == [{"text": pk.TEXT_ONLY}]
    rg_task = next(a for a in _walk(result.of_type("RequestGroup")[0]["action"]) if a["id"] == "check-in")
    assert rg_task["textEquivalent"] == pk.TEXT_ONLY
    proc = result.procedure
    assert proc["meta"] == {
        "profile": ["https://fhir.example.org/procedures/StructureDefinition/apply-test-procedure"]
    }
    assert "bodySite" not in proc and proc["code"]["coding"][0]["code"] == "proc-x"
    consent = result.of_type("Consent")[0]
    html = base64.b64decode(consent["sourceAttachment"]["data"]).decode()
    assert "<p>Patient: <strong>Sam Test</strong></p>" in html and "to be treated" not in html
    assert_valid(gen_validator, result.resources)
    done = complete_procedure(proc, "2026-12-01T10:00:00Z", "one device", ["comp-1"], plan=gen.plan)
    assert done["usedCode"] == [
        {
            "coding": [{"system": pk.TEST_SYSTEM, "code": "dev-1", "display": "Device one"}],
            "text": "one device",
        }
    ]
    with pytest.raises(
        ApplyError, match="value set https://fhir.example.org/procedures/ValueSet/apply-test-complications"
    ):
        complete_procedure(proc, "2026-12-01T10:00:00Z", complications=["cement-leakage"], plan=gen.plan)


def test_advice_for_a_group_of_patients(gen):
    cond_b = {
        "resourceType": "Condition",
        "id": "b",
        "code": {"coding": [{"system": pk.TEST_SYSTEM, "code": "cond-b"}]},
    }
    ctx = pk.generic_context()
    assert gen.apply(ctx).warnings == []
    with_b = gen.apply(pk.generic_context(conditions=[*ctx["conditions"], cond_b]))
    assert with_b.warnings == [pk.ADVICE_WORDS]
    assert [c["payload"][0]["contentString"] for c in with_b.of_type("CommunicationRequest")][
        -1
    ] == pk.ADVICE_WORDS


def test_consent_template_named_in_words_only(tmp_path):
    """A template whose provision names the procedure in words (no coding) is still the plan's."""
    resources = pk.generic_package()
    consent = next(r for r in resources if r["resourceType"] == "Consent")
    consent["provision"]["code"] = [{"text": "Procedure X"}]
    other = copy.deepcopy(consent)
    other["id"], other["provision"]["code"] = "another-consent", [{"text": "Something else"}]
    applier = Applier(load_plan(pk.write_folder([*resources, other], tmp_path / "pkg")))
    out = applier.apply(pk.generic_context()).of_type("Consent")[0]
    assert out["provision"]["code"] == [{"text": "Procedure X"}]
    assert base64.b64decode(out["sourceAttachment"]["data"]).decode().count("Sam Test") == 1


def test_a_plan_without_choice_or_sites(gen):
    with pytest.raises(ApplyError, match="technique: 'x': the plan offers no choice"):
        gen.apply(pk.generic_context(technique="x"))
    with pytest.raises(ApplyError, match="sites: the plan names no body sites"):
        gen.apply(pk.generic_context(sites=["T12"]))
    with pytest.raises(NotApplicable, match="HasIndication"):
        gen.apply(pk.generic_context(conditions=[]))


def test_dynamic_value_paths_from_the_core_definitions_agree_with_the_models(tmp_path):
    """The R4 core StructureDefinitions (read when installed) and fhir.resources' models give the
    same steps (and repetitions) for the paths of every kind $apply instantiates."""
    from procfhir.apply.engine import KINDS, _path_steps_core, _path_steps_models
    from procfhir.fhircache import core_dir

    if not (core_dir() / "StructureDefinition-ServiceRequest.json").is_file():
        pytest.skip("the R4 core package is not installed (procfhir fhir-cache fill)")
    paths = ["note.text", "note", "text.div", "identifier.value", "extension.url", "meta.tag.code"]
    more = {
        "ServiceRequest": ["orderDetail.text", "bodySite.coding.code", "quantityQuantity.value"],
        "MedicationRequest": ["dosageInstruction.text", "dispenseRequest.validityPeriod.start"],
        "Task": ["executionPeriod.start", "input.type.text", "restriction.repetitions"],
        "CommunicationRequest": ["payload.contentString", "reasonCode.text"],
        "Appointment": ["participant.status", "serviceType.text"],
        "SupplyRequest": ["quantity.value"],
        "DeviceRequest": ["codeCodeableConcept.text", "parameter.code.text"],
    }

    def steps(fn, kind: str, path: str):
        try:
            return fn(kind, path, "t")
        except KnowledgeError:
            return "no such element"

    found = 0
    for kind in sorted(KINDS):
        for path in paths + more.get(kind, []):
            core = steps(lambda k, p, w: _path_steps_core(core_dir(), k, p, w), kind, path)
            assert core == steps(_path_steps_models, kind, path), (kind, path)
            found += core != "no such element"
    assert found > 40
    for bad in ("orderDetail.nothing", "nothing", "subject.reference.x"):
        with pytest.raises(KnowledgeError):
            _path_steps_core(core_dir(), "ServiceRequest", bad, "t")


def test_apply_reads_fhir_only():
    """$apply imports nothing from the build stages and names no procedure in its code."""
    import re
    import subprocess
    import sys

    code = (
        "import sys, procfhir.apply, procfhir.apply.batch, procfhir.apply.server, procfhir.commands.apply;"
        "bad = [m for m in sys.modules if m.startswith(('procfhir.builders', 'procfhir.mapping', "
        "'procfhir.model', 'procfhir.build', 'procfhir.config', 'procfhir.trace', 'procfhir.review'))];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    folder = Path(__file__).resolve().parent.parent / "generators" / "procfhir" / "apply"
    words = re.compile(r"vertebr|kyphopl|copd|cement|lung", re.IGNORECASE)
    found = [
        f"{p.name}:{i}"
        for p in folder.glob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if words.search(line)
    ]
    assert found == []
