"""The plan BUILT from a mapping with the new constructs (tests/fixtures/joint-injection: a
conditional step on medications, a limit per year, a minimum interval, advice for a group, a
text-only step) runs in HAPI's own ``PlanDefinition/$apply`` and selects, patient by patient, the
same actions as our engine (the comparison of tests/test_apply_hapi.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from procfhir.apply import load_plan
from procfhir.apply.engine import Plan
from procfhir.build import build
from tests.test_apply_hapi import FHIR_JSON, KNOWLEDGE, _compare, condition
from tests.test_generic_plans import BASE, _config

pytestmark = pytest.mark.hapi

LOCAL = f"{BASE}/CodeSystem/local"
SCT = "http://snomed.info/sct"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("joint-hapi")
    result = build(_config(tmp, False), tmp / "out", validate=False)
    return tmp / "out", result.resources


@pytest.fixture(scope="module")
def server(hapi_base_url: str, built: tuple[Path, list[dict[str, Any]]]) -> str:
    for resource in built[1]:
        if resource["resourceType"] in KNOWLEDGE:
            url = f"{hapi_base_url}/{resource['resourceType']}/{resource['id']}"
            resp = requests.put(url, data=json.dumps(resource), headers=FHIR_JSON, timeout=120)
            assert resp.status_code in (200, 201), f"{url}: {resp.status_code} {resp.text[:500]}"
    return hapi_base_url


@pytest.fixture(scope="module")
def plan(built: tuple[Path, list[dict[str, Any]]]) -> Plan:
    return load_plan(built[0], "joint-injection")


def ctx(*, meds: tuple[str, ...] = (), prior: tuple[str, ...] = (), diabetes: bool = False) -> dict[str, Any]:
    pid = "gp-" + uuid.uuid4().hex[:12]
    conditions = [condition(pid, 0, {"system": SCT, "code": "239873007"})]
    if diabetes:
        conditions.append(condition(pid, 1, {"system": SCT, "code": "73211009"}))
    return {
        "id": f"ctx-{pid}",
        "patient": {"resourceType": "Patient", "id": pid, "name": [{"text": "Jo Test"}]},
        "conditions": conditions,
        "medications": [
            {
                "resourceType": "MedicationStatement",
                "id": f"{pid}-m{i}",
                "status": "active",
                "medicationCodeableConcept": {"coding": [{"system": LOCAL, "code": m}]},
                "subject": {"reference": f"Patient/{pid}"},
            }
            for i, m in enumerate(meds)
        ],
        "priorProcedures": [
            {
                "resourceType": "Procedure",
                "id": f"{pid}-p{i}",
                "status": "completed",
                "code": {"coding": [{"system": LOCAL, "code": "joint-injection"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "performedDateTime": d,
            }
            for i, d in enumerate(prior)
        ],
        "date": "2026-12-01",
        "performer": "Practitioner/dr-test",
        "organization": "Organization/hosp-test",
    }


CASES = {
    "indication only": ctx(),
    "takes warfarin: the step": ctx(meds=("warfarin",)),
    "takes another medicine": ctx(meds=("paracetamol",)),
    "diabetes: the advice": ctx(diabetes=True),
    "injected 2 months ago: interval": ctx(prior=("2026-10-01",)),
    "three this year: repetitions": ctx(prior=("2026-01-15", "2026-04-01", "2026-07-01")),
    "three, one long ago": ctx(prior=("2025-06-01", "2026-04-01", "2026-07-01")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hapi_applies_the_built_plan_as_ours(server: str, plan: Plan, case: str) -> None:
    _compare(server, plan, CASES[case], case)


def test_the_cases_cover_each_rule(plan: Plan) -> None:
    """Not vacuous: our engine refuses on each limit and adds the step and the advice."""
    from procfhir.apply import Applier, NotApplicable

    applier = Applier(plan)
    seen: dict[str, Any] = {}
    for name, c in CASES.items():
        try:
            r = applier.apply(c)
            seen[name] = sorted(a["id"] for rg in r.of_type("RequestGroup") for a in _all(rg["action"]))
        except NotApplicable as exc:
            seen[name] = [f.name for f in exc.failed]
    assert seen["injected 2 months ago: interval"] == ["Interval"]
    assert seen["three this year: repetitions"] == ["YearlyLimit"]
    assert "joint-injection-stop-blood-thinners" in seen["takes warfarin: the step"]
    assert "joint-injection-stop-blood-thinners" not in seen["takes another medicine"]
    assert "diabetes-advice" in seen["diabetes: the advice"]
    assert "diabetes-advice" not in seen["indication only"]
    assert "joint-injection-scan" in seen["indication only"]  # text only: for every patient


def _all(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for a in actions for x in (a, *_all(a.get("action", [])))]
