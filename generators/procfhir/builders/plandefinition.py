"""The PlanDefinition (clinical protocol) and its ActivityDefinitions."""

from __future__ import annotations

import base64
from typing import Any

from procfhir.builders import expressions as ex
from procfhir.builders.common import (
    FHIRPATH,
    concept,
    jurisdiction,
    meta,
    publisher_fields,
    source_ext,
)
from procfhir.config import Config
from procfhir.model import Advice, Code, Document, Goal, Limit, Step, Technique
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


def _ext(cfg: Config, name: str) -> str:
    return cfg.url("StructureDefinition", name)


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
            "expression": ex.has_condition(all_codes),
        },
    }


def _condition(description: str, name: str, expression: str) -> dict[str, Any]:
    return {
        "kind": "applicability",
        "expression": {
            "description": description,
            "name": name,
            "language": FHIRPATH,
            "expression": expression,
        },
    }


def _not_computable(cfg: Config, words: str) -> dict[str, Any]:
    return {"url": _ext(cfg, "not-computable"), "valueString": words}


def _step_action(cfg: Config, tech: Technique, step: Step) -> dict[str, Any]:
    extension = source_ext(cfg, step.quotes)
    p = step.applies_to
    if p is not None and p.text_only is not None:
        extension.append(_not_computable(cfg, p.text_only))
    action: dict[str, Any] = {
        "extension": extension,
        "id": f"{tech.id}-{step.id}",
        "title": step.title,
        "description": step.text,
    }
    if step.codes:
        action["code"] = [concept(step.codes, step.title)]
    if p is not None and p.computable:
        action["condition"] = [_condition(step.wording, _camel(step.id), ex.patients(p))]
    if step.before is not None:
        action["relatedAction"] = [{"actionId": f"{tech.id}-{step.before}", "relationship": "before-start"}]
    if step.activity is not None:
        action["definitionCanonical"] = cfg.url("ActivityDefinition", step.activity.id)
    return action


def _technique_action(cfg: Config, d: Document, tech: Technique) -> dict[str, Any]:
    plan = d.plan
    goal_ids = [g.id for g in plan.goals if g.techniques is None or tech.id in g.techniques]
    extension = source_ext(cfg, tech.quotes)
    for mat in tech.materials:
        extension.append(
            {
                "url": _ext(cfg, "uses-material"),
                "extension": [
                    {"url": "item", "valueCodeableConcept": concept([mat.code], mat.code.display)},
                    {"url": "kind", "valueCode": mat.kind},
                ],
            }
        )
    quantities = [s.quantity_per_site for s in tech.steps if s.quantity_per_site is not None]
    body = plan.body_sites
    if quantities and body is not None:
        q = quantities[0]
        extension.append(
            {"url": _ext(cfg, "quantity-per-site"), "valueQuantity": {"value": q.value, "unit": q.unit}}
        )
    action: dict[str, Any] = {
        "extension": extension,
        "id": tech.id,
        "title": tech.title,
        "description": tech.text,
        "code": [concept([tech.code] if tech.code else [], tech.title)],
        **({"goalId": goal_ids} if goal_ids else {}),
        "definitionCanonical": cfg.url("ActivityDefinition", tech.activity.id),
        "selectionBehavior": "all",
        "action": [_step_action(cfg, tech, s) for s in tech.steps],
    }
    if quantities and body is not None:
        n, unit, each = quantities[0].value, quantities[0].unit, body.each
        action["dynamicValue"] = [
            {
                "path": "orderDetail.text",
                "expression": {
                    "description": f"{n} {unit} per {each}",
                    "language": FHIRPATH,
                    "expression": (
                        f"'{n} {unit} per {each}: ' + (%sites.count() * {n}).toString() + ' {unit} in all'"
                    ),
                },
            }
        ]
    return action


def _procedure_codes(d: Document) -> list[Code]:
    vs = d.value_set("procedure")
    if vs is not None:
        return list(vs.codes)
    out: list[Code] = []
    for t in d.plan.techniques:
        out += [c for c in t.activity.codes if c not in out]
    return out


def _limit_ext(cfg: Config, limit: Limit) -> dict[str, Any]:
    sub: list[dict[str, Any]] = [{"url": "type", "valueCode": limit.type}]
    if limit.maximum is not None:
        sub.append({"url": "maximum", "valueInteger": limit.maximum})
    if limit.period is not None:
        unit = limit.period.unit
        sub.append(
            {
                "url": "period",
                "valueDuration": {
                    "value": limit.period.value,
                    "unit": unit + ("s" if limit.period.value != 1 else ""),
                    "system": "http://unitsofmeasure.org",
                    "code": ex.UCUM_UNITS[unit],
                },
            }
        )
    return {"url": _ext(cfg, "limit"), "extension": sub}


def _computable(limit: Limit | Advice) -> bool:
    return limit.applies_to is None or limit.applies_to.computable


def _limit_condition(cfg: Config, d: Document, limit: Limit) -> dict[str, Any]:
    cond = _condition(limit.wording, _camel(limit.id), ex.limit_allowed(limit, _procedure_codes(d)))
    return {"extension": source_ext(cfg, limit.quotes) + [_limit_ext(cfg, limit)], **cond}


def _text_only_action(cfg: Config, entry: Limit | Advice, priority: str) -> dict[str, Any]:
    """A rule no expression can test: shown to the clinician for every patient, marked so."""
    assert entry.applies_to is not None and entry.applies_to.text_only is not None
    extension = source_ext(cfg, entry.quotes) + [_not_computable(cfg, entry.applies_to.text_only)]
    if isinstance(entry, Limit):
        extension.append(_limit_ext(cfg, entry))
    return {
        "extension": extension,
        "id": entry.id,
        "title": entry.title,
        "description": entry.text,
        "textEquivalent": entry.wording,
        "priority": priority,
    }


def _limit_warning_action(cfg: Config, limit: Limit) -> dict[str, Any] | None:
    warn = ex.limit_preference(limit)
    if warn is None:
        return None
    warning = limit.warning or limit.wording
    return {
        "extension": source_ext(cfg, limit.quotes),
        "id": f"{limit.id}-preference",
        "title": limit.title,
        "description": limit.text,
        "textEquivalent": warning,
        "priority": "urgent",
        "condition": [_condition(warning, _camel(limit.id) + "Preference", warn)],
    }


def _advice_action(cfg: Config, advice: Advice) -> dict[str, Any]:
    if not _computable(advice):
        return _text_only_action(cfg, advice, "routine")
    return {
        "extension": source_ext(cfg, advice.quotes),
        "id": advice.id,
        "title": advice.title,
        "description": advice.text,
        "textEquivalent": advice.wording,
        "priority": "routine",
        "condition": [_condition(advice.wording, _camel(advice.id), ex.patients(advice.applies_to))],
    }


_ROLES = ("indication", "procedure", "complication", "body-site", "material")


def _plan_extensions(cfg: Config, d: Document) -> list[dict[str, Any]]:
    out = []
    for role in _ROLES:
        vs = d.value_set(role)
        if vs is None:
            continue
        sub: list[dict[str, Any]] = [
            {"url": "role", "valueCode": role},
            {"url": "valueSet", "valueCanonical": cfg.url("ValueSet", vs.id)},
        ]
        body = d.plan.body_sites
        if role == "body-site" and body is not None:
            sub += [
                {"url": "label", "valueString": body.label},
                {"url": "each", "valueString": body.each},
                {"url": "required", "valueBoolean": body.required},
            ]
        out.append({"url": _ext(cfg, "plan-value-set"), "extension": sub})
    out.append({"url": _ext(cfg, "procedure-profile"), "valueCanonical": _ext(cfg, procedure_profile_id(d))})
    return out


def procedure_profile_id(d: Document) -> str:
    """The id of the plan's own Procedure profile."""
    return f"{d.plan.id}-procedure"


def consent_profile_id(d: Document) -> str:
    """The id of the plan's own Consent profile."""
    return f"{d.plan.id}-consent"


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
    computable = [lim for lim in plan.limits if _computable(lim)]
    choice = plan.choice
    group: dict[str, Any] = {
        "extension": source_ext(cfg, choice.quotes if choice else plan.description.quotes),
        "id": choice.id if choice else "procedure",
        "title": choice.title if choice else plan.title,
        "description": choice.text if choice else plan.description.text,
        "goalId": [g.id for g in plan.goals],
        "condition": [_indication_condition(cfg, d)] + [_limit_condition(cfg, d, lim) for lim in computable],
        "groupingBehavior": "logical-group",
        "selectionBehavior": "exactly-one" if len(plan.techniques) > 1 else "all",
        "action": [_technique_action(cfg, d, t) for t in plan.techniques],
    }
    if not group["goalId"]:
        del group["goalId"]
    actions = [group]
    for lim in plan.limits:
        if not _computable(lim):
            actions.append(_text_only_action(cfg, lim, "urgent"))
        elif (warning := _limit_warning_action(cfg, lim)) is not None:
            actions.append(warning)
    actions += [_advice_action(cfg, a) for a in plan.advice]
    res: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "id": plan.id,
        "meta": meta(cfg, "clinical-protocol"),
        "text": _plan_narrative(d, actions),
        "extension": _plan_extensions(cfg, d),
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
    if plan.goals:
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
        by_site = {sc.code: sc for sc in act.codes_by_site}
        for coding, code in zip(cc.get("coding", []), act.codes, strict=True):
            sc = by_site.get(code)
            if sc is None:
                continue
            sub: list[dict[str, Any]] = [{"url": "site", "valueCoding": s.coding()} for s in sc.sites]
            if sc.additional:
                sub.append({"url": "additional", "valueBoolean": True})
            ext = {"url": _ext(cfg, "code-for-sites"), "extension": sub}
            coding_with = {"extension": [ext], **coding}
            coding.clear()
            coding.update(coding_with)
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
