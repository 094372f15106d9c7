"""The resources ``$apply`` gives for one patient: CarePlan, RequestGroup, ServiceRequests (and a
CommunicationRequest for each warning), the proposed Consent and the Procedure in preparation.

Every id derives from the context's key, so applying the same context twice gives the same ids.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from procfhir.apply.engine import Outcome, Plan, Selected, set_path
from procfhir.apply.errors import KnowledgeError
from procfhir.builders.common import meta
from procfhir.builders.consent import consent_form_html, consent_narrative
from procfhir.builders.procedure import _ordered, procedure_narrative
from procfhir.narrative import narrative

CPT = "http://www.ama-assn.org/go/cpt"
# CPT codes for the first treated vertebral body, and the spine regions each covers (codes.md).
# The add-on codes (22512, 22515: each additional body) are not codes of the whole procedure.
FIRST_LEVEL_CPT: dict[str, frozenset[str]] = {
    "22510": frozenset("CT"),  # vertebroplasty, cervicothoracic
    "22511": frozenset("LS"),  # vertebroplasty, lumbosacral
    "22513": frozenset("T"),  # vertebral augmentation with cavity creation (kyphoplasty), thoracic
    "22514": frozenset("L"),  # idem, lumbar
}


def region_code(code: dict[str, Any], first_level: str) -> dict[str, Any]:
    """The technique's CodeableConcept with, of its CPT codings, only the one fitting the region
    of the first treated level (T12 -> thoracic); other systems' codings are kept."""
    region = first_level[:1]
    codings = [
        c
        for c in code.get("coding", [])
        if c.get("system") != CPT or region in FIRST_LEVEL_CPT.get(c.get("code", ""), frozenset())
    ]
    out = dict(code)
    if codings:
        out["coding"] = codings
    return out


_NAME = "\x00patient-name\x00"
_LEVELS = "\x00levels\x00"


def _ids(ctx_key: str) -> dict[str, str]:
    return {k: f"{k}-{ctx_key}" for k in ("careplan", "requestgroup", "consent", "procedure")}


def _sr_id(ctx_key: str, action_id: str) -> str:
    rid = f"sr-{ctx_key}-{action_id}"
    if len(rid) > 64:
        import hashlib

        rid = f"sr-{ctx_key}-{hashlib.sha256(action_id.encode()).hexdigest()[:16]}"
    return rid


class Builder:
    """Builds the output resources of an :class:`Outcome` (the plan's compiled knowledge reused)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        k = plan.k
        self.cfg = k.cfg
        self.m = k.mapping
        consent = dict(k.consent_template)
        procedures = [t.id for t in self.m.consent.procedures]
        self.provision_codes = dict(zip(procedures, consent["provision"]["code"], strict=True))
        self.consent_template = consent
        self.consent_title = self.m.consent.title
        self.procedure_profile = meta(self.cfg, "vertebral-augmentation-procedure")
        # The consent form and narrative differ between patients only by name, technique and
        # levels: rendered once per technique by the lead's builders with placeholders, which are
        # then replaced by the escaped values (a test checks this equals a direct rendering).
        self._forms: dict[str, tuple[str, str]] = {}

    def _consent_texts(self, technique: str, name: str, levels: list[str]) -> tuple[str, str]:
        tpl = self._forms.get(technique)
        if tpl is None:
            form = consent_form_html(self.m, [technique], _NAME, [_LEVELS])
            div = consent_narrative(self.m, [technique], _NAME)["div"]
            tpl = self._forms[technique] = (form, div)
        form, div = tpl
        form = form.replace(_NAME, escape(name)).replace(_LEVELS, escape(", ".join(levels)))
        return form, div.replace(_NAME, escape(name, quote=False))

    def build(self, out: Outcome) -> list[dict[str, Any]]:
        ctx = out.context
        ids = _ids(ctx.key)
        subject = ctx.patient_ref
        requests: list[dict[str, Any]] = []
        technique_sr: dict[str, Any] | None = None

        def request_for(s: Selected) -> dict[str, Any]:
            nonlocal technique_sr
            a = s.action
            raw = a.raw
            if a.activity is not None:
                ad = a.activity
                code = ad.get("code") or {"text": ad.get("title", a.id)}
                canonical = ad["url"]
                title = ad.get("title") or raw.get("title") or a.id
            else:
                code = (raw.get("code") or [{"text": raw.get("title", a.id)}])[0]
                canonical = None
                title = raw.get("title") or a.id
            is_technique = a.id == ctx.technique
            if is_technique:
                code = region_code(code, ctx.level_labels[0])
            sr: dict[str, Any] = {"resourceType": "ServiceRequest", "id": _sr_id(ctx.key, a.id)}
            text = [("p", ("b", title), ": ", raw.get("description", ""))]
            if canonical:
                sr["instantiatesCanonical"] = [canonical]
            sr["status"] = "draft"
            sr["intent"] = (a.activity or {}).get("intent", "order") if a.activity else "order"
            if raw.get("priority") or (a.activity or {}).get("priority"):
                sr["priority"] = raw.get("priority") or a.activity["priority"]  # type: ignore[index]
            sr["code"] = code
            for dv, values in s.values:
                set_path(sr, dv, values)
            sr["subject"] = subject
            sr["occurrenceDateTime"] = ctx.date
            sr["requester"] = ctx.performer
            sr["performer"] = [ctx.performer]
            if is_technique:
                sr["bodySite"] = [
                    {"coding": [c], "text": lbl} for c, lbl in zip(ctx.levels, ctx.level_labels, strict=True)
                ]
                text.append(("p", "Levels: " + ", ".join(ctx.level_labels)))
                technique_sr = sr
            for od in sr.get("orderDetail", []):
                if od.get("text"):
                    text.append(("p", od["text"]))
            sr["text"] = narrative(*text)
            requests.append(sr)
            return sr

        def communication_for(s: Selected) -> dict[str, Any]:
            raw = s.action.raw
            cr = {
                "resourceType": "CommunicationRequest",
                "id": _sr_id(ctx.key, s.action.id).replace("sr-", "cr-", 1),
                "text": narrative(("p", ("b", raw.get("title", "")), ": ", raw["textEquivalent"])),
                "status": "draft",
                "priority": raw.get("priority", "routine"),
                "subject": subject,
                "payload": [{"contentString": raw["textEquivalent"]}],
                "occurrenceDateTime": ctx.date,
                "requester": ctx.performer,
                "recipient": [ctx.performer],
            }
            requests.append(cr)
            return cr

        selected_ids: set[str] = set()
        _ids_of(out.selected, selected_ids)

        def rg_action(s: Selected) -> dict[str, Any]:
            raw = s.action.raw
            act: dict[str, Any] = {"id": s.action.id}
            for k in (
                "prefix",
                "title",
                "description",
                "textEquivalent",
                "priority",
                "code",
                "documentation",
                "groupingBehavior",
                "selectionBehavior",
                "requiredBehavior",
                "precheckBehavior",
                "cardinalityBehavior",
            ):
                if k in raw:
                    act[k] = raw[k]
            related = [r for r in raw.get("relatedAction", []) if r.get("actionId") in selected_ids]
            if related:
                act["relatedAction"] = related
            resource = None
            if s.action.activity is not None or (not s.children and "textEquivalent" not in raw):
                resource = request_for(s)
            elif not s.children:
                resource = communication_for(s)
            children = [rg_action(c) for c in s.children]
            if resource is not None and children:
                # R4 rqg-1: an action has a resource or sub-actions, not both: the order comes first
                children.insert(
                    0,
                    {
                        "id": f"{s.action.id}-order",
                        "title": raw.get("title", s.action.id),
                        "resource": {"reference": f"{resource['resourceType']}/{resource['id']}"},
                    },
                )
            elif resource is not None:
                act["resource"] = {"reference": f"{resource['resourceType']}/{resource['id']}"}
            if children:
                act["action"] = children
            return act

        actions = [rg_action(s) for s in out.selected]
        if technique_sr is None:
            raise KnowledgeError(f"the chosen action {ctx.technique} has no order to base the Procedure on")
        plan = self.plan.plan
        warnings = [w.text for w in out.warnings]
        rg: dict[str, Any] = {
            "resourceType": "RequestGroup",
            "id": ids["requestgroup"],
            "text": narrative(
                (
                    "p",
                    ("b", plan.get("title", plan["id"])),
                    f" for {ctx.patient_name}: {ctx.technique}, "
                    f"levels {', '.join(ctx.level_labels)}, planned {ctx.date}",
                ),
                *[("p", ("b", "Warning: "), w) for w in warnings],
            ),
            "instantiatesCanonical": [self.plan.canonical],
            "status": "draft",
            "intent": "proposal",
            "subject": subject,
            "author": ctx.performer,
            "action": actions,
        }
        careplan = {
            "resourceType": "CarePlan",
            "id": ids["careplan"],
            "text": narrative(("p", ("b", plan.get("title", plan["id"])), f" for {ctx.patient_name}")),
            "instantiatesCanonical": [self.plan.canonical],
            "status": "draft",
            "intent": "proposal",
            "title": plan.get("title", plan["id"]),
            "subject": subject,
            "period": {"start": ctx.date},
            "author": ctx.performer,
            "activity": [{"reference": {"reference": f"RequestGroup/{rg['id']}"}}],
        }
        return [
            careplan,
            rg,
            *requests,
            self.consent(ctx, ids["consent"]),
            self.procedure(ctx, ids["procedure"], technique_sr),
        ]

    def consent(self, ctx: Any, rid: str) -> dict[str, Any]:
        t = self.consent_template
        html, div = self._consent_texts(ctx.technique, ctx.patient_name, ctx.level_labels)
        code = self.provision_codes.get(ctx.technique)
        if code is None:
            raise KnowledgeError(f"the consent template has no provision for {ctx.technique}")
        out = {
            "resourceType": "Consent",
            "id": rid,
            "meta": t["meta"],
            "text": {"status": "generated", "div": div},
            "extension": t["extension"],
            "status": "proposed",
            "scope": t["scope"],
            "category": t["category"],
            "patient": ctx.patient_ref,
            "dateTime": ctx.date,
            "performer": [ctx.performer],
            "organization": [ctx.organization],
            "sourceAttachment": {
                "contentType": "text/html",  # the treatment-consent profile fixes it
                "language": "en",
                "data": base64.b64encode(html.encode("utf-8")).decode("ascii"),
                "title": f"{self.consent_title}: {ctx.patient_name}",
            },
            "policy": t["policy"],
            "provision": {**t["provision"], "code": [code]},
        }
        return out

    def procedure(self, ctx: Any, rid: str, sr: dict[str, Any]) -> dict[str, Any]:
        proc: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": rid,
            "meta": self.procedure_profile,
            "instantiatesCanonical": [self.plan.canonical],
            "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
            "status": "preparation",
            "code": sr["code"],
            "subject": ctx.patient_ref,
            "performer": [{"actor": ctx.performer, "onBehalfOf": ctx.organization}],
            "bodySite": sr["bodySite"],
        }
        proc["text"] = procedure_narrative(proc)
        return _ordered(proc)


def _ids_of(selected: list[Selected], out: set[str]) -> None:
    for s in selected:
        out.add(s.action.id)
        _ids_of(s.children, out)
