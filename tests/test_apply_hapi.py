"""HAPI's ``PlanDefinition/$apply`` (cqf-fhir-cr-hapi 4.4.0, the REAL server of ``hapi/``) selects
the same actions of our plan as our Python engine (:mod:`procfhir.apply`), patient by patient.

How HAPI gets our contract's variables (found in cqf-fhir-cr 4.4.0's sources): the ``parameters``
input (a Parameters resource) is copied into the evaluation parameters, each entry becoming a CQL
parameter of the same name, so an entry named ``%conditions`` is the FHIRPath variable
``%conditions``. ``text/fhirpath`` conditions are translated to CQL. Several entries of a name make
a list; ONE entry is a single value (``%conditions.count()`` then does not resolve) unless the
entry carries the ``cpg-parameterDefinition`` extension with ``max = "*"``; an entry with only that
extension is an empty list. ``%subject`` is the ``subject`` read from the server or from the
``data`` Bundle; ``data`` is not itself a variable. A condition whose evaluation fails counts as
false (its error goes into an OperationOutcome contained in the CarePlan).

``$apply`` leaves the choice in an ``exactly-one`` group to the user: HAPI returns both techniques;
our engine takes the context's technique. So HAPI's selection = ours + the other technique's branch.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from procfhir.apply import NotApplicable, apply, load_plan

pytestmark = pytest.mark.hapi

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "apply" / "context-kyphoplasty.json"
FHIR_JSON = {"Content-Type": "application/fhir+json", "Cache-Control": "no-cache"}
PARAMETER_DEFINITION = "http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-parameterDefinition"
SCT = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOCAL = "https://fhir.example.org/procedures/CodeSystem/local"
FRACTURE = {"system": SCT, "code": "42942008"}
COPD = {"system": SCT, "code": "13645005"}
PLAN = json.loads((ROOT / "fhir" / "PlanDefinition-vertebral-augmentation.json").read_text(encoding="utf-8"))


def _walk(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for a in actions for x in (a, *_walk(a.get("action", [])))]


PLAN_IDS = {a["id"] for a in _walk(PLAN["action"])}
OPTIONS = {  # technique id -> ids of its branch (the options of the plan's exactly-one group)
    o["id"]: {x["id"] for x in _walk([o])}
    for g in _walk(PLAN["action"])
    if g.get("selectionBehavior") == "exactly-one"
    for o in g["action"]
}


@pytest.fixture(scope="module")
def base(hapi_base_url: str) -> str:
    """The server with the package's plan and its ActivityDefinitions (PUT from fhir/)."""
    for path in sorted((ROOT / "fhir").glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        if resource.get("resourceType") in ("CodeSystem", "ValueSet", "ActivityDefinition", "PlanDefinition"):
            url = f"{hapi_base_url}/{resource['resourceType']}/{resource['id']}"
            resp = requests.put(url, data=json.dumps(resource), headers=FHIR_JSON, timeout=120)
            assert resp.status_code in (200, 201), f"{path.name}: {resp.status_code} {resp.text[:500]}"
    return hapi_base_url


def condition(pid: str, n: int, coding: dict[str, str], status: str = "confirmed") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"{pid}-c{n}",
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": status}
            ]
        },
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient/{pid}"},
    }


def context(technique: str, levels: list[str], *codings: dict[str, str], status: str = "confirmed") -> dict:
    """The fixture context for a new patient id, with these conditions, technique and levels."""
    ctx = json.loads(FIXTURE.read_text(encoding="utf-8"))
    pid = "h7-" + uuid.uuid4().hex[:12]
    ctx["patient"]["id"] = pid
    ctx["conditions"] = [condition(pid, i, c, status) for i, c in enumerate(codings)]
    return dict(ctx, technique=technique, levels=levels)


def as_list(name: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameters entries that HAPI reads as one list variable, however many (even none)."""
    ext = [
        {
            "url": PARAMETER_DEFINITION,
            "valueParameterDefinition": {
                "name": name,
                "use": "in",
                "min": 0,
                "max": "*",
                "type": "Condition" if name == "%conditions" else "CodeableConcept",
            },
        }
    ]
    return [dict(e, name=name, extension=ext) for e in entries] or [{"name": name, "extension": ext}]


def hapi_apply(base: str, ctx: dict[str, Any], parameters: list[dict[str, Any]] | None = None) -> dict:
    """POST PlanDefinition/$apply for the patient of ``ctx``, with our engine's own ``%conditions``
    and ``%levels`` (the values :meth:`Plan.environment` gives our expressions) unless given."""
    plan = load_plan()
    env = plan.environment(plan.parse(ctx))
    if parameters is None:
        parameters = as_list("%conditions", [{"resource": c} for c in env["conditions"]]) + as_list(
            "%levels", [{"valueCodeableConcept": lv} for lv in env["levels"]]
        )
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subject", "valueString": f"Patient/{ctx['patient']['id']}"},
            {"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": parameters}},
            {
                "name": "data",
                "resource": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": ctx["patient"]}],
                },
            },
        ],
    }
    resp = requests.post(
        f"{base}/PlanDefinition/{PLAN['id']}/$apply", data=json.dumps(body), headers=FHIR_JSON, timeout=120
    )
    assert resp.status_code == 200, resp.text[:1000]
    care_plan = resp.json()
    assert care_plan["resourceType"] == "CarePlan"
    return care_plan


def contained(care_plan: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [c for c in care_plan.get("contained", []) if c["resourceType"] == rtype]


def selected(care_plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The RequestGroup's actions, all levels, in document order."""
    return [a for rg in contained(care_plan, "RequestGroup") for a in _walk(rg.get("action", []))]


def errors(care_plan: dict[str, Any]) -> list[str]:
    return [i.get("diagnostics", "") for oo in contained(care_plan, "OperationOutcome") for i in oo["issue"]]


CASES = {
    "fracture, kyphoplasty, 2 levels": context("kyphoplasty", ["T12", "L1"], FRACTURE),
    "fracture, vertebroplasty, 1 level": context("vertebroplasty", ["L1"], FRACTURE),
    "myeloma (ICD-10), vertebroplasty, 3 levels": context(
        "vertebroplasty", ["T11", "T12", "L1"], {"system": ICD10, "code": "C90.00"}
    ),
    "hemangioma (local code), kyphoplasty, 1 level": context(
        "kyphoplasty", ["L2"], {"system": LOCAL, "code": "vertebral-hemangioma"}
    ),
    "no indication (hypertension)": context("kyphoplasty", ["L1"], {"system": SCT, "code": "38341003"}),
    "no conditions": context("vertebroplasty", ["L1"]),
    "refuted fracture": context("vertebroplasty", ["L1"], FRACTURE, status="refuted"),
    "COPD, 1 level": context("vertebroplasty", ["L1"], FRACTURE, COPD),
    "COPD, 2 levels": context("kyphoplasty", ["T12", "L1"], FRACTURE, COPD),
    "COPD (ICD-10), 2 levels, vertebroplasty": context(
        "vertebroplasty", ["L1", "L2"], FRACTURE, {"system": ICD10, "code": "J44.9"}
    ),
    "COPD, 3 levels": context("kyphoplasty", ["T11", "T12", "L1"], FRACTURE, COPD),
    "COPD without indication, 2 levels": context("kyphoplasty", ["T12", "L1"], COPD),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hapi_selects_the_same_actions_as_ours(base: str, case: str) -> None:
    ctx = CASES[case]
    care_plan = hapi_apply(base, ctx)
    assert not errors(care_plan), errors(care_plan)  # every condition evaluated (none failed to false)
    hapi_actions = selected(care_plan)
    hapi = {a["id"] for a in hapi_actions}
    assert hapi <= PLAN_IDS
    try:
        result = apply(ctx)
    except NotApplicable as exc:
        # Ours applies nothing; HAPI selects exactly the actions whose conditions our engine found
        # true (the lung-disease preference note, which does not depend on the indication).
        failed = {c.action for c in exc.checked if not c.result}
        true_actions = {c.action for c in exc.checked if c.result} - failed
        assert "technique" not in hapi
        assert hapi == true_actions, (case, exc.message)
        return
    ours = {a["id"] for rg in result.of_type("RequestGroup") for a in _walk(rg["action"])} & PLAN_IDS
    other = set().union(*(ids for tech, ids in OPTIONS.items() if tech != ctx["technique"]))
    assert hapi == ours | other, case
    assert not ours & other
    group = next(a for a in hapi_actions if a["id"] == "technique")
    assert group["selectionBehavior"] == "exactly-one"  # HAPI leaves the choice to the user
    assert [a["id"] for a in group["action"]] == list(OPTIONS)
    assert ("lung-disease-level-limit-preference" in hapi) == bool(result.warnings)


def test_the_cases_cover_each_outcome() -> None:
    """The cases above are not vacuous: each outcome of our engine occurs."""
    outcomes = set()
    for ctx in CASES.values():
        try:
            outcomes.add(("applies", ctx["technique"], bool(apply(ctx).warnings)))
        except NotApplicable as exc:
            outcomes.add(("refused", tuple(sorted(c.name for c in exc.failed)), None))
    assert outcomes == {
        ("applies", "kyphoplasty", False),
        ("applies", "vertebroplasty", False),
        ("applies", "kyphoplasty", True),
        ("applies", "vertebroplasty", True),
        ("refused", ("HasIndication",), None),
        ("refused", ("LungDiseaseLevelLimit",), None),
    }


def test_how_hapi_reads_the_variables(base: str) -> None:
    """Without the list metadata, one level is a single value: ``%levels.count()`` does not resolve,
    the plan's conditions fail and nothing is selected, though our engine applies the plan. Without
    a ``%conditions`` entry the variable is unknown."""
    ctx = CASES["fracture, vertebroplasty, 1 level"]
    assert apply(ctx).of_type("RequestGroup")
    plan = load_plan()
    env = plan.environment(plan.parse(ctx))
    plain = [{"name": "%conditions", "resource": c} for c in env["conditions"]] + [
        {"name": "%levels", "valueCodeableConcept": lv} for lv in env["levels"]
    ]
    care_plan = hapi_apply(base, ctx, plain)
    assert selected(care_plan) == []
    problems = errors(care_plan)
    assert any("operator Count with signature (System.Concept)" in e for e in problems), problems
    care_plan = hapi_apply(base, ctx, plain[1:])
    assert selected(care_plan) == []
    problems = errors(care_plan)
    assert any("Could not resolve identifier %conditions" in e for e in problems), problems
