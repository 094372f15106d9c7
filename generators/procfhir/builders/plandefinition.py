"""The PlanDefinition (clinical protocol) and its ActivityDefinitions."""

from __future__ import annotations

import base64
from typing import Any

from procfhir.builders.common import (
    FHIRPATH,
    codes,
    concept,
    has_condition_expression,
    jurisdiction,
    meta,
    publisher_fields,
    source_ext,
)
from procfhir.config import Config
from procfhir.mapping import Mapping
from procfhir.narrative import narrative

PLAN_TYPE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/plan-definition-type",
            "code": "clinical-protocol",
            "display": "Clinical Protocol",
        }
    ]
}


def _indication_condition(cfg: Config, m: Mapping) -> dict[str, Any]:
    plan = m.data["plan"]
    all_codes = [c for ind in plan["indications"] for c in codes(m, ind["codes"])]
    traces = [t for ind in plan["indications"] for t in m.traces(ind)]
    names = "; ".join(ind["text"] for ind in plan["indications"])
    return {
        "extension": source_ext(cfg, traces),
        "kind": "applicability",
        "expression": {
            "description": f"The patient has one of the indications: {names}.",
            "name": "HasIndication",
            "language": FHIRPATH,
            "expression": has_condition_expression(all_codes),
        },
    }


def lung_limit_expressions(m: Mapping, limit: dict[str, Any]) -> tuple[str, str]:
    """(refusal condition, preference warning condition) of a level limit."""
    has = has_condition_expression(codes(m, limit["conditions"]))
    allowed = f"{has}.not() or %levels.count() <= {limit['max_levels']}"
    preferred = limit.get("preferred_levels", limit["max_levels"])
    warn = f"{has} and %levels.count() > {preferred}"
    return allowed, warn


def _step_action(cfg: Config, m: Mapping, tech: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    action: dict[str, Any] = {
        "extension": source_ext(cfg, m.traces(step)),
        "id": f"{tech['id']}-{step['id']}",
        "title": step["title"],
        "description": step["text"],
    }
    if step.get("codes"):
        action["code"] = [concept(codes(m, step["codes"]), step["title"])]
    if "before" in step:
        action["relatedAction"] = [
            {"actionId": f"{tech['id']}-{step['before']}", "relationship": "before-start"}
        ]
    if "activity" in step:
        action["definitionCanonical"] = cfg.url("ActivityDefinition", step["activity"])
    return action


def _technique_action(cfg: Config, m: Mapping, tech: dict[str, Any]) -> dict[str, Any]:
    plan = m.data["plan"]
    goal_ids = [g["id"] for g in plan["goals"] if "techniques" not in g or tech["id"] in g["techniques"]]
    action: dict[str, Any] = {
        "extension": source_ext(cfg, m.traces(tech)),
        "id": tech["id"],
        "title": tech["title"],
        "description": tech["text"],
        "code": [concept(codes(m, [tech["id"]]) if tech["id"] in m.codes else [], tech["title"])],
        "goalId": goal_ids,
        "definitionCanonical": cfg.url("ActivityDefinition", tech["activity"]),
        "selectionBehavior": "all",
        "action": [_step_action(cfg, m, tech, s) for s in tech["steps"]],
    }
    needles = [s["needles_per_level"] for s in tech["steps"] if "needles_per_level" in s]
    if needles:
        n = needles[0]
        action["dynamicValue"] = [
            {
                "path": "orderDetail.text",
                "expression": {
                    "description": f"{n} needle(s) per treated level",
                    "language": FHIRPATH,
                    "expression": (
                        f"'{n} needle(s) per treated level: ' + "
                        f"(%levels.count() * {n}).toString() + ' needle(s) in all'"
                    ),
                },
            }
        ]
    return action


def _limit_condition(cfg: Config, m: Mapping, limit: dict[str, Any]) -> dict[str, Any]:
    allowed, _ = lung_limit_expressions(m, limit)
    return {
        "extension": source_ext(cfg, m.traces(limit)),
        "kind": "applicability",
        "expression": {
            "description": limit["text"],
            "name": _camel(limit["id"]),
            "language": FHIRPATH,
            "expression": allowed,
        },
    }


def _limit_warning_action(cfg: Config, m: Mapping, limit: dict[str, Any]) -> dict[str, Any]:
    _, warn = lung_limit_expressions(m, limit)
    return {
        "extension": source_ext(cfg, m.traces(limit)),
        "id": f"{limit['id']}-preference",
        "title": limit["title"],
        "description": limit["text"],
        "textEquivalent": limit.get("warning", limit["text"]),
        "priority": "urgent",
        "condition": [
            {
                "kind": "applicability",
                "expression": {
                    "description": limit.get("warning", limit["text"]),
                    "name": _camel(limit["id"]) + "Preference",
                    "language": FHIRPATH,
                    "expression": warn,
                },
            }
        ],
    }


def _camel(ident: str) -> str:
    return "".join(part.capitalize() for part in ident.split("-"))


def _goal(cfg: Config, m: Mapping, goal: dict[str, Any]) -> dict[str, Any]:
    plan = m.data["plan"]
    inds = {i["id"]: i for i in plan["indications"]}
    out: dict[str, Any] = {
        "id": goal["id"],
        "extension": source_ext(cfg, m.traces(goal)),
        "description": {"text": goal["text"]},
    }
    if goal.get("addresses"):
        out["addresses"] = [concept(codes(m, inds[a]["codes"]), inds[a]["text"]) for a in goal["addresses"]]
    return out


def source_artifact(cfg: Config, m: Mapping) -> dict[str, Any]:
    raw = m.source.raw  # the file as received, byte for byte
    return {
        "extension": source_ext(cfg, m.traces(m.data["document"])),
        "type": "derived-from",
        "label": m.key,
        "display": m.data["document"]["title"],
        "citation": f"{m.data['document']['title']} (patient information text, {m.data['document']['text']})",
        "document": {
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(raw).decode("ascii"),
            "size": len(raw),
            "hash": base64.b64encode(m.source.sha1).decode("ascii"),  # R4 Attachment.hash is SHA-1
            "title": m.data["document"]["text"],
        },
    }


def build_plan(cfg: Config, m: Mapping) -> dict[str, Any]:
    plan = m.data["plan"]
    limits = plan.get("limits", [])
    group: dict[str, Any] = {
        "extension": source_ext(cfg, m.traces(plan["choice"])),
        "id": plan["choice"]["id"],
        "title": plan["choice"]["title"],
        "description": plan["choice"]["text"],
        "goalId": [g["id"] for g in plan["goals"]],
        "condition": [_indication_condition(cfg, m)] + [_limit_condition(cfg, m, lim) for lim in limits],
        "groupingBehavior": "logical-group",
        "selectionBehavior": "exactly-one",
        "action": [_technique_action(cfg, m, t) for t in plan["techniques"]],
    }
    actions = [group] + [_limit_warning_action(cfg, m, lim) for lim in limits]
    res: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "id": plan["id"],
        "meta": meta(cfg, "clinical-protocol"),
        "text": _plan_narrative(m, actions),
        "url": cfg.url("PlanDefinition", plan["id"]),
        "version": cfg.version,
        "name": plan["name"],
        "title": plan["title"],
        "type": PLAN_TYPE,
        "status": cfg.status,
        "experimental": False,
        **publisher_fields(cfg),
        "description": plan["description"]["text"],
        **jurisdiction(cfg),
    }
    if "setting" in plan:
        res["usage"] = plan["setting"]["text"]
        res["_usage"] = {"extension": source_ext(cfg, m.traces(plan["setting"]))}
    res["relatedArtifact"] = [source_artifact(cfg, m)]
    res["goal"] = [_goal(cfg, m, g) for g in plan["goals"]]
    res["action"] = actions
    res["_description"] = {"extension": source_ext(cfg, m.traces(plan["description"]))}
    return res


def _plan_narrative(m: Mapping, actions: list[dict[str, Any]]) -> dict[str, str]:
    plan = m.data["plan"]

    def action_items(acts: list[dict[str, Any]]) -> tuple[Any, ...]:
        items = []
        for a in acts:
            label = a["title"]
            if a.get("selectionBehavior") == "exactly-one":
                label += " (exactly one of)"
            children: list[Any] = [("b", label), ": ", a.get("description", "")]
            for c in a.get("condition", []):
                children.append(("br",))
                children.append(("i", "Applies when: " + c["expression"]["description"]))
            if a.get("action"):
                children.append(action_items(a["action"]))
            items.append(("li", *children))
        return ("ol", *items)

    return narrative(
        ("h3", plan["title"]),
        ("p", plan["description"]["text"]),
        ("p", ("b", "Setting: "), plan["setting"]["text"]) if "setting" in plan else None,
        ("p", ("b", "Indications")),
        ("ul", *[("li", i["text"]) for i in plan["indications"]]),
        ("p", ("b", "Goals")),
        ("ul", *[("li", g["text"]) for g in plan["goals"]]),
        ("p", ("b", "Actions")),
        action_items(actions),
        ("p", "Source: " + m.data["document"]["title"]),
    )


def build_activities(cfg: Config, m: Mapping) -> list[dict[str, Any]]:
    out = []
    for act in m.data["activities"]:
        cc = concept(codes(m, act["codes"]), act["title"])
        out.append(
            {
                "resourceType": "ActivityDefinition",
                "id": act["id"],
                "meta": meta(cfg, "procedure-activity"),
                "text": narrative(
                    ("h3", act["title"]),
                    ("p", act["text"]),
                    ("p", ("b", "Codes: "), "; ".join(f"{c['code']} {c['display']}" for c in cc["coding"])),
                ),
                "extension": source_ext(cfg, m.traces(act)),
                "url": cfg.url("ActivityDefinition", act["id"]),
                "version": cfg.version,
                "name": act["name"],
                "title": act["title"],
                "status": cfg.status,
                "experimental": False,
                **publisher_fields(cfg),
                "description": act["text"],
                **jurisdiction(cfg),
                "relatedArtifact": [
                    {
                        "type": "derived-from",
                        "display": m.data["document"]["title"],
                        "resource": cfg.url("PlanDefinition", m.data["plan"]["id"]),
                    }
                ],
                "kind": act["kind"],
                "code": cc,
                "intent": "order",
                "doNotPerform": False,
            }
        )
    return out
