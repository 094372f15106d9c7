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
false (its error goes into an OperationOutcome contained in the CarePlan). The extension's ``type``
is written verbatim into the CQL parameter declaration, and FHIR values reach the engine converted
to CQL types (a Coding becomes a ``System.Code``, a CodeableConcept a ``System.Concept``), so the
sites, Codings, are declared ``System.Code`` (docs/contract.md).

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

from procfhir.apply import Applier, NotApplicable, load_plan
from procfhir.apply.engine import Plan
from tests import apply_packages as pk

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
VERTEBRAL = pk.vertebral_package()
GENERIC = pk.generic_package()
PLAN = next(r for r in VERTEBRAL if r["resourceType"] == "PlanDefinition")
KNOWLEDGE = (
    "CodeSystem",
    "ValueSet",
    "ActivityDefinition",
    "PlanDefinition",
    "StructureDefinition",
    "Consent",
)
LIST_TYPES = {"conditions": "Condition", "medications": "MedicationStatement", "priorProcedures": "Procedure"}


def _walk(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for a in actions for x in (a, *_walk(a.get("action", [])))]


def plan_ids(plan: dict[str, Any]) -> set[str]:
    return {a["id"] for a in _walk(plan["action"])}


def options(plan: dict[str, Any]) -> dict[str, set[str]]:
    """technique id -> ids of its branch (the options of the plan's exactly-one group)."""
    return {
        o["id"]: {x["id"] for x in _walk([o])}
        for g in _walk(plan["action"])
        if g.get("selectionBehavior") == "exactly-one"
        for o in g["action"]
    }


@pytest.fixture(scope="module")
def base(hapi_base_url: str) -> str:
    """The server with both test packages' knowledge resources (PUT)."""
    for resource in [*VERTEBRAL, *GENERIC]:
        if resource.get("resourceType") in KNOWLEDGE:
            url = f"{hapi_base_url}/{resource['resourceType']}/{resource['id']}"
            resp = requests.put(url, data=json.dumps(resource), headers=FHIR_JSON, timeout=120)
            assert resp.status_code in (200, 201), f"{url}: {resp.status_code} {resp.text[:500]}"
    return hapi_base_url


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, Plan]:
    folder = tmp_path_factory.mktemp("hapi-apply")
    return {
        "vertebral": load_plan(pk.write_folder(VERTEBRAL, folder / "vertebral")),
        "generic": load_plan(pk.write_folder(GENERIC, folder / "generic")),
    }


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


def context(technique: str, sites: list[str], *codings: dict[str, str], status: str = "confirmed") -> dict:
    """The fixture context for a new patient id, with these conditions, technique and sites."""
    ctx = json.loads(FIXTURE.read_text(encoding="utf-8"))
    pid = "h7-" + uuid.uuid4().hex[:12]
    ctx["patient"]["id"] = pid
    ctx["conditions"] = [condition(pid, i, c, status) for i, c in enumerate(codings)]
    return dict(ctx, technique=technique, sites=sites)


def generic(
    *, meds: list[str] = (), prior: list[str] = (), cond_b: bool = False, indication: bool = True
) -> dict:
    pid = "h10-" + uuid.uuid4().hex[:12]
    ctx = pk.generic_context(pid=pid)
    if not indication:
        ctx["conditions"] = []
    if cond_b:
        ctx["conditions"].append(condition(pid, 9, {"system": pk.TEST_SYSTEM, "code": "cond-b"}))
    ctx["medications"] = [pk.medication(pid, code=m) for m in meds]
    ctx["priorProcedures"] = [pk.prior(pid, d, i) for i, d in enumerate(prior)]
    return ctx


def as_list(name: str, rtype: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameters entries that HAPI reads as one list variable, however many (even none)."""
    ext = [
        {
            "url": PARAMETER_DEFINITION,
            "valueParameterDefinition": {"name": name, "use": "in", "min": 0, "max": "*", "type": rtype},
        }
    ]
    return [dict(e, name=name, extension=ext) for e in entries] or [{"name": name, "extension": ext}]


def parameters_for(plan: Plan, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Our engine's own values of the variables the plan's expressions use, as $apply parameters."""
    env = plan.environment(plan.parse(ctx))
    used = sorted({v for x in plan.expressions for v in x.variables})
    out: list[dict[str, Any]] = []
    for name in used:
        value = env[name]
        if name == "plannedDate":
            out.append({"name": "%plannedDate", "valueDate": value})
        elif name in LIST_TYPES:
            out += as_list(f"%{name}", LIST_TYPES[name], [{"resource": r} for r in value])
        elif name != "patient":  # the sites: Codings, read by the CQL engine as System.Code
            out += as_list(f"%{name}", "System.Code", [{"valueCoding": v} for v in value])
    return out


def hapi_apply(
    base: str, plan: Plan, ctx: dict[str, Any], parameters: list[dict[str, Any]] | None = None
) -> dict:
    """POST PlanDefinition/$apply for the patient of ``ctx``, with our engine's variables."""
    if parameters is None:
        parameters = parameters_for(plan, ctx)
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
        f"{base}/PlanDefinition/{plan.plan['id']}/$apply",
        data=json.dumps(body),
        headers=FHIR_JSON,
        timeout=120,
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


GENERIC_CASES = {
    "indication only": generic(),
    "takes the medication: the step": generic(meds=("med-thinner",)),
    "another medication": generic(meds=("other",)),
    "condition B: the advice": generic(cond_b=True),
    "treated 5 months ago": generic(prior=("2026-07-01",)),
    "treated 2 months ago: interval": generic(prior=("2026-10-01",)),
    "treated twice this year: repetitions": generic(prior=("2026-01-15", "2026-06-01")),
    "treated twice, one long ago": generic(prior=("2025-06-01", "2026-06-01")),
    "no indication, condition B": generic(indication=False, cond_b=True),
}


def _compare(base: str, plan: Plan, ctx: dict[str, Any], case: str) -> None:
    care_plan = hapi_apply(base, plan, ctx)
    assert not errors(care_plan), errors(care_plan)  # every condition evaluated (none failed to false)
    hapi_actions = selected(care_plan)
    hapi = {a["id"] for a in hapi_actions}
    ids = plan_ids(plan.plan)
    assert hapi <= ids
    choices = options(plan.plan)
    try:
        result = Applier(plan).apply(ctx)
    except NotApplicable as exc:
        # Ours applies nothing; HAPI selects exactly the actions whose conditions our engine found
        # true (notes that do not depend on the failed conditions).
        failed = {c.action for c in exc.checked if not c.result}
        true_actions = {c.action for c in exc.checked if c.result} - failed
        assert hapi == true_actions, (case, exc.message)
        return
    ours = {a["id"] for rg in result.of_type("RequestGroup") for a in _walk(rg["action"])} & ids
    other = set().union(*(x for tech, x in choices.items() if tech != ctx.get("technique")))
    assert hapi == ours | other, case
    assert not ours & other
    for group in (a for a in hapi_actions if a.get("selectionBehavior") == "exactly-one"):
        assert [a["id"] for a in group["action"]] == list(choices)  # HAPI leaves the choice to the user


@pytest.mark.parametrize("case", list(CASES))
def test_hapi_selects_the_same_actions_as_ours(base: str, plans: dict[str, Plan], case: str) -> None:
    _compare(base, plans["vertebral"], CASES[case], case)


@pytest.mark.parametrize("case", list(GENERIC_CASES))
def test_hapi_selects_the_same_actions_on_a_plan_with_dates_and_medications(
    base: str, plans: dict[str, Plan], case: str
) -> None:
    _compare(base, plans["generic"], GENERIC_CASES[case], case)


def test_the_cases_cover_each_outcome(plans: dict[str, Plan]) -> None:
    """The cases above are not vacuous: each outcome of our engine occurs."""
    outcomes = set()
    for name, cases in (("vertebral", CASES), ("generic", GENERIC_CASES)):
        applier = Applier(plans[name])
        for ctx in cases.values():
            try:
                r = applier.apply(ctx)
                steps = frozenset(x["resourceType"] for x in r.resources)
                outcomes.add(
                    ("applies", ctx.get("technique"), bool(r.warnings), "MedicationRequest" in steps)
                )
            except NotApplicable as exc:
                outcomes.add(("refused", tuple(sorted(c.name for c in exc.failed)), None, None))
    assert outcomes >= {
        ("applies", "kyphoplasty", False, False),
        ("applies", "vertebroplasty", False, False),
        ("applies", "kyphoplasty", True, False),
        ("applies", "vertebroplasty", True, False),
        ("refused", ("HasIndication",), None, None),
        ("refused", ("LungDiseaseLevelLimit",), None, None),
        ("applies", None, False, True),
        ("applies", None, True, False),
        ("refused", ("MinInterval",), None, None),
        ("refused", ("RepetitionsPerYear",), None, None),
    }


def test_how_hapi_reads_the_variables(base: str, plans: dict[str, Plan]) -> None:
    """Without the list metadata, one site is a single value: ``%sites.count()`` does not resolve,
    the plan's conditions fail and nothing is selected, though our engine applies the plan. Without
    a ``%conditions`` entry the variable is unknown."""
    plan = plans["vertebral"]
    ctx = CASES["fracture, vertebroplasty, 1 level"]
    assert Applier(plan).apply(ctx).of_type("RequestGroup")
    env = plan.environment(plan.parse(ctx))
    plain = [{"name": "%conditions", "resource": c} for c in env["conditions"]] + [
        {"name": "%sites", "valueCoding": lv} for lv in env["sites"]
    ]
    care_plan = hapi_apply(base, plan, ctx, plain)
    assert selected(care_plan) == []
    problems = errors(care_plan)
    assert any("operator Count with signature (System.Code)" in e for e in problems), problems
    care_plan = hapi_apply(base, plan, ctx, plain[1:])
    assert selected(care_plan) == []
    problems = errors(care_plan)
    assert any("Could not resolve identifier %conditions" in e for e in problems), problems


def test_knowledge_read_from_the_server(base: str, plans: dict[str, Plan]) -> None:
    """The plan and what it refers to, searched on the server by canonical url, give the same
    output as the package folder."""
    for name, url, ctx in (
        ("vertebral", PLAN["url"], CASES["fracture, kyphoplasty, 2 levels"]),
        (
            "generic",
            GENERIC[0]["url"],
            GENERIC_CASES["takes the medication: the step"],
        ),
    ):
        from_server = Applier(load_plan(base, url)).apply(ctx).resources
        assert from_server == Applier(plans[name]).apply(ctx).resources
