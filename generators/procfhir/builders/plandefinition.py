"""The PlanDefinition (clinical protocol) and its ActivityDefinitions."""

from __future__ import annotations

import base64
from typing import Any

from procfhir.builders.common import (
    FHIRPATH,
    concept,
    has_condition_expression,
    jurisdiction,
    meta,
    publisher_fields,
    source_ext,
)
from procfhir.config import Config
from procfhir.model import Document, Goal, Limit, Step, Technique
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


def _indication_condition(cfg: Config, d: Document) -> dict[str, Any]:
    plan = d.plan
    all_codes = [c for ind in plan.indications for c in ind.codes]
    quotes = [q for ind in plan.indications for q in ind.quotes]
    names = "; ".join(ind.text for ind in plan.indications)
    return {
        "extension": source_ext(cfg, quotes),
        "kind": "applicability",
        "expression": {
            "description": f"The patient has one of the indications: {names}.",
            "name": "HasIndication",
            "language": FHIRPATH,
            "expression": has_condition_expression(all_codes),
        },
    }


def site_limit_expressions(limit: Limit) -> tuple[str, str]:
    """(refusal condition, preference warning condition) of a sites-per-session limit."""
    assert limit.applies_to is not None and limit.maximum is not None
    has = has_condition_expression(limit.applies_to.conditions)
    allowed = f"{has}.not() or %levels.count() <= {limit.maximum}"
    preferred = limit.preferred or limit.maximum
    warn = f"{has} and %levels.count() > {preferred}"
    return allowed, warn


def _step_action(cfg: Config, tech: Technique, step: Step) -> dict[str, Any]:
    action: dict[str, Any] = {
        "extension": source_ext(cfg, step.quotes),
        "id": f"{tech.id}-{step.id}",
        "title": step.title,
        "description": step.text,
    }
    if step.codes:
        action["code"] = [concept(step.codes, step.title)]
    if step.before is not None:
        action["relatedAction"] = [{"actionId": f"{tech.id}-{step.before}", "relationship": "before-start"}]
    if step.activity is not None:
        action["definitionCanonical"] = cfg.url("ActivityDefinition", step.activity.id)
    return action


def _technique_action(cfg: Config, d: Document, tech: Technique) -> dict[str, Any]:
    plan = d.plan
    goal_ids = [g.id for g in plan.goals if g.techniques is None or tech.id in g.techniques]
    action: dict[str, Any] = {
        "extension": source_ext(cfg, tech.quotes),
        "id": tech.id,
        "title": tech.title,
        "description": tech.text,
        "code": [concept([tech.code] if tech.code else [], tech.title)],
        "goalId": goal_ids,
        "definitionCanonical": cfg.url("ActivityDefinition", tech.activity.id),
        "selectionBehavior": "all",
        "action": [_step_action(cfg, tech, s) for s in tech.steps],
    }
    quantities = [s.quantity_per_site for s in tech.steps if s.quantity_per_site is not None]
    if quantities and plan.body_sites is not None:
        n, unit, each = quantities[0].value, quantities[0].unit, plan.body_sites.each
        action["dynamicValue"] = [
            {
                "path": "orderDetail.text",
                "expression": {
                    "description": f"{n} {unit} per {each}",
                    "language": FHIRPATH,
                    "expression": (
                        f"'{n} {unit} per {each}: ' + (%levels.count() * {n}).toString() + ' {unit} in all'"
                    ),
                },
            }
        ]
    return action


def _limit_condition(cfg: Config, limit: Limit) -> dict[str, Any]:
    allowed, _ = site_limit_expressions(limit)
    return {
        "extension": source_ext(cfg, limit.quotes),
        "kind": "applicability",
        "expression": {
            "description": limit.text,
            "name": _camel(limit.id),
            "language": FHIRPATH,
            "expression": allowed,
        },
    }


def _limit_warning_action(cfg: Config, limit: Limit) -> dict[str, Any]:
    _, warn = site_limit_expressions(limit)
    warning = limit.warning or limit.text
    return {
        "extension": source_ext(cfg, limit.quotes),
        "id": f"{limit.id}-preference",
        "title": limit.title,
        "description": limit.text,
        "textEquivalent": warning,
        "priority": "urgent",
        "condition": [
            {
                "kind": "applicability",
                "expression": {
                    "description": warning,
                    "name": _camel(limit.id) + "Preference",
                    "language": FHIRPATH,
                    "expression": warn,
                },
            }
        ],
    }


def _camel(ident: str) -> str:
    return "".join(part.capitalize() for part in ident.split("-"))


def _goal(cfg: Config, goal: Goal) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": goal.id,
        "extension": source_ext(cfg, goal.quotes),
        "description": {"text": goal.text},
    }
    if goal.addresses:
        out["addresses"] = [concept(ind.codes, ind.text) for ind in goal.addresses]
    return out


def source_artifact(cfg: Config, d: Document) -> dict[str, Any]:
    raw = d.source.raw  # the file as received, byte for byte
    return {
        "extension": source_ext(cfg, d.quotes),
        "type": "derived-from",
        "label": d.key,
        "display": d.title,
        "citation": f"{d.title} (patient information text, {d.text_file})",
        "document": {
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(raw).decode("ascii"),
            "size": len(raw),
            "hash": base64.b64encode(d.source.sha1).decode("ascii"),  # R4 Attachment.hash is SHA-1
            "title": d.text_file,
        },
    }


def build_plan(cfg: Config, d: Document) -> dict[str, Any]:
    plan = d.plan
    limits = plan.limits
    choice = plan.choice
    group: dict[str, Any] = {
        "extension": source_ext(cfg, choice.quotes if choice else ()),
        "id": choice.id if choice else "procedure",
        "title": choice.title if choice else plan.title,
        "description": choice.text if choice else plan.description.text,
        "goalId": [g.id for g in plan.goals],
        "condition": [_indication_condition(cfg, d)] + [_limit_condition(cfg, lim) for lim in limits],
        "groupingBehavior": "logical-group",
        "selectionBehavior": "exactly-one",
        "action": [_technique_action(cfg, d, t) for t in plan.techniques],
    }
    actions = [group] + [_limit_warning_action(cfg, lim) for lim in limits]
    res: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "id": plan.id,
        "meta": meta(cfg, "clinical-protocol"),
        "text": _plan_narrative(d, actions),
        "url": cfg.url("PlanDefinition", plan.id),
        "version": cfg.version,
        "name": plan.name,
        "title": plan.title,
        "type": PLAN_TYPE,
        "status": cfg.status,
        "experimental": False,
        **publisher_fields(cfg),
        "description": plan.description.text,
        **jurisdiction(cfg),
    }
    if plan.setting is not None:
        res["usage"] = plan.setting.text
        res["_usage"] = {"extension": source_ext(cfg, plan.setting.quotes)}
    res["relatedArtifact"] = [source_artifact(cfg, d)]
    res["goal"] = [_goal(cfg, g) for g in plan.goals]
    res["action"] = actions
    res["_description"] = {"extension": source_ext(cfg, plan.description.quotes)}
    return res


def _plan_narrative(d: Document, actions: list[dict[str, Any]]) -> dict[str, str]:
    plan = d.plan

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
        ("h3", plan.title),
        ("p", plan.description.text),
        ("p", ("b", "Setting: "), plan.setting.text) if plan.setting is not None else None,
        ("p", ("b", "Indications")),
        ("ul", *[("li", i.text) for i in plan.indications]),
        ("p", ("b", "Goals")),
        ("ul", *[("li", g.text) for g in plan.goals]),
        ("p", ("b", "Actions")),
        action_items(actions),
        ("p", "Source: " + d.title),
    )


def build_activities(cfg: Config, d: Document) -> list[dict[str, Any]]:
    out = []
    for act in d.activities:
        cc = concept(act.codes, act.title)
        out.append(
            {
                "resourceType": "ActivityDefinition",
                "id": act.id,
                "meta": meta(cfg, "procedure-activity"),
                "text": narrative(
                    ("h3", act.title),
                    ("p", act.text),
                    ("p", ("b", "Codes: "), "; ".join(f"{c['code']} {c['display']}" for c in cc["coding"])),
                ),
                "extension": source_ext(cfg, act.quotes),
                "url": cfg.url("ActivityDefinition", act.id),
                "version": cfg.version,
                "name": act.name,
                "title": act.title,
                "status": cfg.status,
                "experimental": False,
                **publisher_fields(cfg),
                "description": act.text,
                **jurisdiction(cfg),
                "relatedArtifact": [
                    {
                        "type": "derived-from",
                        "display": d.title,
                        "resource": cfg.url("PlanDefinition", d.plan.id),
                    }
                ],
                "kind": act.kind,
                "code": cc,
                "intent": "order",
                "doNotPerform": False,
            }
        )
    return out
