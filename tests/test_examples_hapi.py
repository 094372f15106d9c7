"""HAPI FHIR's own ``PlanDefinition/$apply`` selects the same actions as ours on the examples'
plans (lumbar puncture, radiofrequency ablation), for every sample context: conditional steps,
limits and the interval since the last treatment run the same in both engines."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from procfhir.apply import Applier, NotApplicable, load_plan
from procfhir.apply.engine import Plan
from tests.test_apply_hapi import FHIR_JSON, KNOWLEDGE, errors, hapi_apply, options, selected
from tests.test_examples import EXAMPLES, NAMES, PLANS, context

pytestmark = pytest.mark.hapi

# HAPI's $apply hands the CodeableConcepts of %sites to the expressions with no `coding` (probed:
# `%sites.where(coding.exists()).count()` is 0 there, while `%sites.count()` is right), so a limit
# that counts the sites of a group ("No more than 4 joints on each side") passes in HAPI. Ours
# refuses, as the text says. Kept as a strict expected failure: it turns red when HAPI agrees.
# Why (probed on cqf-fhir-cr 4.4.0 with one-condition plans): the FHIRPath-to-CQL translation types
# `%sites` as FHIR.CodeableConcept (`codes`, `display` are compile errors: "Member codes not found
# for type CodeableConcept"), but the parameter values reach the engine converted to CQL
# System.Concept (`%sites.first() is System.Concept` is true, `is CodeableConcept` false), on which
# `coding` is empty. Passing the sites otherwise does not help: without the cpg-parameterDefinition
# extension, or with its type Coding or Element, every site expression fails in HAPI; without
# `text` nothing changes. A fix needs HAPI's side (or expressions valid on both types).
HAPI_SITE_GROUPS = pytest.mark.xfail(
    strict=True, reason="HAPI $apply: %sites CodeableConcepts reach the expression without coding"
)
CASES = [
    pytest.param(name, p.stem, marks=[HAPI_SITE_GROUPS] if p.stem == "five-joints-one-side" else [])
    for name in NAMES
    for p in sorted((EXAMPLES / name / "contexts").glob("*.json"))
]


@pytest.fixture(scope="module")
def example_base(hapi_base_url: str) -> str:
    """The server with the examples' knowledge resources (PUT from examples/NAME/fhir/)."""
    for name in NAMES:
        for path in sorted((EXAMPLES / name / "fhir").glob("*.json")):
            resource = json.loads(path.read_text(encoding="utf-8"))
            if resource.get("resourceType") in KNOWLEDGE:
                url = f"{hapi_base_url}/{resource['resourceType']}/{resource['id']}"
                resp = requests.put(url, data=json.dumps(resource), headers=FHIR_JSON, timeout=120)
                assert resp.status_code in (200, 201), f"{path}: {resp.status_code} {resp.text[:500]}"
    return hapi_base_url


@pytest.fixture(scope="module")
def example_plans() -> dict[str, Plan]:
    return {name: load_plan(EXAMPLES / name / "fhir", PLANS[name]) for name in NAMES}


def ours(plan: Plan, ctx: dict[str, Any]) -> set[str] | None:
    """The action ids our engine selects, over every technique (HAPI leaves the choice of an
    exactly-one group to the user, so it selects what applies under each); None when refused."""
    choices = list(options(plan.plan)) or [ctx.get("technique")]
    selected_ids: set[str] = set()
    for technique in choices:
        try:
            result = Applier(plan).apply(dict(ctx, technique=technique) if technique else ctx)
        except NotApplicable:
            return None
        selected_ids |= {a["id"] for rg in result.of_type("RequestGroup") for a in _walk(rg["action"])}
    return selected_ids


def _walk(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for a in actions for x in (a, *_walk(a.get("action", [])))]


@pytest.mark.parametrize(("name", "file"), CASES)
def test_hapi_selects_the_same_actions_on_the_examples(
    example_base: str, example_plans: dict[str, Plan], name: str, file: str
) -> None:
    plan = example_plans[name]
    ctx = context(name, file)
    care_plan = hapi_apply(example_base, plan, ctx)
    assert not errors(care_plan), errors(care_plan)  # every expression ran in HAPI
    hapi = {a["id"] for a in selected(care_plan)}
    expected = ours(plan, ctx)
    if expected is None:  # refused by a condition of the plan's first group: HAPI selects nothing
        assert hapi == set(), f"{name}/{file}: ours refuses, HAPI selects {sorted(hapi)}"
    else:
        assert hapi == expected & {a["id"] for a in _walk(plan.plan["action"])}, f"{name}/{file}"
