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

# Every sample context, including a limit that counts the sites of a group ("No more than 4 joints
# on each side"): HAPI reads the sites' codes because they are passed as Codings declared
# `System.Code` (docs/contract.md, "PlanDefinition expressions").
CASES = [(name, p.stem) for name in NAMES for p in sorted((EXAMPLES / name / "contexts").glob("*.json"))]


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
