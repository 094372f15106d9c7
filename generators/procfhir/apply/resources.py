"""The resources ``$apply`` gives for one patient: CarePlan, RequestGroup, one request per action
the plan selects (of the kind its ActivityDefinition names: ServiceRequest, MedicationRequest,
Task, CommunicationRequest...; a CommunicationRequest for each note), the proposed Consent (from
the package's Consent template) and the Procedure in preparation.

Every id derives from the context's key, so applying the same context twice gives the same ids.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape
from typing import Any

from procfhir.apply.context import PatientContext
from procfhir.apply.engine import Outcome, Plan, Selected, set_path
from procfhir.apply.errors import KnowledgeError
from procfhir.narrative import narrative, ordered_procedure, procedure_narrative

_ID_CHARS = re.compile(r"[A-Za-z0-9\-.]+")  # what a FHIR id may hold (used with fullmatch)
_NAME = "\x00patient-name\x00"
_SITES = "\x00sites\x00"
# the element each kind of request names its subject, code, date, requester and performer with
_SUBJECT = {"Task": "for", "Appointment": None, "SupplyRequest": None}
_CODE = {
    "MedicationRequest": "medicationCodeableConcept",
    "DeviceRequest": "codeCodeableConcept",
    "SupplyRequest": "itemCodeableConcept",
    "CommunicationRequest": None,
    "Appointment": "serviceType",
}
_WHEN = {"Task": None, "MedicationRequest": None, "Appointment": None}
_PERFORMER = {
    "ServiceRequest": ("performer", True),
    "MedicationRequest": ("performer", False),
    "DeviceRequest": ("performer", False),
    "Task": ("owner", False),
    "CommunicationRequest": ("recipient", True),
}
_INSTANTIATES = frozenset({"ServiceRequest", "MedicationRequest", "DeviceRequest", "Task"})
_PREFIX = {
    "ServiceRequest": "sr",
    "MedicationRequest": "mr",
    "Task": "task",
    "CommunicationRequest": "cr",
    "DeviceRequest": "dr",
    "SupplyRequest": "supr",
    "Appointment": "appt",
}


def _ids(ctx_key: str) -> dict[str, str]:
    return {k: f"{k}-{ctx_key}" for k in ("careplan", "requestgroup", "consent", "procedure")}


def _request_id(prefix: str, ctx_key: str, action_id: str) -> str:
    """``{prefix}-{context key}-{action id}``; an action id that would make it no FHIR id (too long,
    or characters other than letters, digits, ``-`` and ``.``, as another tool's plan may use) is
    replaced by its hash, so the output id stays valid and deterministic."""
    rid = f"{prefix}-{ctx_key}-{action_id}"
    if len(rid) > 64 or _ID_CHARS.fullmatch(action_id) is None:  # ctx_key: a hash (or a placeholder)
        rid = f"{prefix}-{ctx_key}-{hashlib.sha256(action_id.encode()).hexdigest()[:16]}"
    return rid


def _codings(cc: Any) -> set[tuple[str, str]]:
    ccs = cc if isinstance(cc, list) else [cc]
    return {(c.get("system", ""), c.get("code", "")) for x in ccs if x for c in x.get("coding") or []}


class ConsentForm:
    """The patient's consent, from the package's Consent template: its form (sourceAttachment)
    and narrative name the patient, the chosen procedure and the body sites to treat."""

    def __init__(self, plan: Plan) -> None:
        k = plan.k
        t = k.consent_template
        assert t is not None
        self.template = t
        self.plan = plan
        where = f"Consent/{t.get('id')}"
        attachment = t.get("sourceAttachment") or {}
        if not attachment.get("data"):
            raise KnowledgeError(f"{where}: the template has no form (sourceAttachment.data)")
        self.title = attachment.get("title") or t.get("id", "")
        self.language = attachment.get("language")
        self.html = base64.b64decode(attachment["data"]).decode("utf-8")
        self.div = (t.get("text") or {}).get("div", "")
        self.provisions = list((t.get("provision") or {}).get("code") or [])
        self.all_titles = " or ".join(p.get("text", "") for p in self.provisions)
        self.sites_label = k.sites.label if k.sites else None
        line = f"<p>Procedure: <strong>{escape(self.all_titles)}</strong></p>"
        self.split = self.html.find(line)
        if self.split < 0:
            raise KnowledgeError(f"{where}: the form has no line {line!r} naming the procedures")
        self.after = self.split + len(line)
        self._forms: dict[str | None, tuple[str, str, dict[str, Any]]] = {}

    def provision(self, technique: str | None) -> dict[str, Any]:
        if technique is None:
            if len(self.provisions) != 1:
                raise KnowledgeError("the consent template names several procedures, the plan none")
            return self.provisions[0]
        codes = self.plan.action_codings(technique)
        found = [p for p in self.provisions if _codings(p) & codes]
        if not found:  # a provision named only in words: the technique's title
            action = self.plan.by_id[technique]
            names = {action.raw.get("title"), *(c.get("text") for c in action.raw.get("code") or [])}
            found = [p for p in self.provisions if p.get("text") in names - {None}]
        if len(found) != 1:
            raise KnowledgeError(f"the consent template has no provision for {technique}")
        return found[0]

    def _template(self, technique: str | None) -> tuple[str, str, dict[str, Any]]:
        tpl = self._forms.get(technique)
        if tpl is None:
            code = self.provision(technique)
            title = code.get("text", "")
            parts = [
                self.html[: self.split],
                f"<p>Patient: <strong>{_NAME}</strong></p>",
                f"<p>Procedure: <strong>{escape(title)}</strong></p>",
            ]
            if self.sites_label:
                label = f"{self.sites_label} to be treated"
                parts.append(f"<p>{escape(label)}: <strong>{_SITES}</strong></p>")
            parts.append(self.html[self.after :])
            div = re.sub(r"<p>Patient: [^<]*</p>", f"<p>Patient: {_NAME}</p>", self.div, count=1)
            div = div.replace(
                f"<p>Procedure: {escape(self.all_titles, quote=False)}</p>",
                f"<p>Procedure: {escape(title, quote=False)}</p>",
                1,
            )
            tpl = self._forms[technique] = ("".join(parts), div, code)
        return tpl

    def texts(self, technique: str | None, name: str, sites: list[str]) -> tuple[str, str, dict[str, Any]]:
        form, div, code = self._template(technique)
        form = form.replace(_NAME, escape(name)).replace(_SITES, escape(", ".join(sites)))
        return form, div.replace(_NAME, escape(name, quote=False)), code

    def build(self, ctx: PatientContext, rid: str) -> dict[str, Any]:
        t = self.template
        html, div, code = self.texts(ctx.technique, ctx.patient_name, ctx.site_labels)
        out: dict[str, Any] = {"resourceType": "Consent", "id": rid}
        profiles = (t.get("meta") or {}).get("profile")
        if profiles:  # not the template's versionId, lastUpdated, source (a server's)
            out["meta"] = {"profile": profiles}
        out["text"] = {"status": "generated", "div": div}
        if "extension" in t:
            out["extension"] = t["extension"]
        out["status"] = "proposed"
        out["scope"] = t["scope"]
        out["category"] = t["category"]
        out["patient"] = ctx.patient_ref
        out["dateTime"] = ctx.date
        out["performer"] = [ctx.performer]
        out["organization"] = [ctx.organization]
        attachment: dict[str, Any] = {"contentType": "text/html"}  # the consent profile fixes it
        if self.language:
            attachment["language"] = self.language
        attachment["data"] = base64.b64encode(html.encode("utf-8")).decode("ascii")
        attachment["title"] = f"{self.title}: {ctx.patient_name}"
        out["sourceAttachment"] = attachment
        if "policy" in t:
            out["policy"] = t["policy"]
        out["provision"] = {**t.get("provision", {}), "code": [code]}
        return out


class Builder:
    """Builds the output resources of an :class:`Outcome` (the plan's compiled knowledge reused)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        k = plan.k
        self.procedure_meta = (
            {"profile": [k.procedure_profile["url"]]} if k.procedure_profile is not None else None
        )
        self.consent = ConsentForm(plan) if k.consent_template is not None else None
        self.sites_label = plan.sites_label
        self.region_url = k.extension_url("code-for-sites")
        self.not_computable_url = k.extension_url("not-computable")
        self._codes: dict[str, tuple[list[tuple[dict[str, Any], str, frozenset[tuple[str, str]]]], bool]] = {}
        for a in plan.by_id.values():  # a code chosen by the first site covers every site
            if a.activity is not None:
                self._code_parts(a.activity.get("code") or {}, f"ActivityDefinition/{a.activity.get('id')}")

    def _code_parts(
        self, code: dict[str, Any], where: str
    ) -> tuple[list[tuple[dict[str, Any], str, frozenset[tuple[str, str]]]], bool]:
        """The codings of a code, each with its use: ``always``, ``region`` (with its sites) or
        ``additional`` (``code-for-sites``, docs/contract.md); and whether any is not ``always``."""
        key = where
        parts = self._codes.get(key)
        if parts is not None:
            return parts
        out: list[tuple[dict[str, Any], str, frozenset[tuple[str, str]]]] = []
        for c in code.get("coding") or []:
            exts = [e for e in c.get("extension") or [] if e.get("url") == self.region_url]
            if not exts:
                out.append((c, "always", frozenset()))
                continue
            clean = {k: v for k, v in c.items() if k != "extension"}
            others = [e for e in c.get("extension") or [] if e.get("url") != self.region_url]
            if others:
                clean = {"extension": others, **clean}
            subs = [x for e in exts for x in e.get("extension") or []]
            if any(x.get("url") == "additional" and x.get("valueBoolean") for x in subs):
                out.append((clean, "additional", frozenset()))
            else:
                sites = frozenset(
                    (x["valueCoding"].get("system", ""), x["valueCoding"].get("code", ""))
                    for x in subs
                    if x.get("url") == "site" and isinstance(x.get("valueCoding"), dict)
                )
                out.append((clean, "region", sites))
        regional = any(use != "always" for _, use, _ in out)
        if regional and self.plan.sites is not None:
            covered = set().union(*(s for _, use, s in out if use == "region"))
            missing = [
                x.label
                for x in self.plan.sites.sites
                if (x.coding["system"], x.coding["code"]) not in covered
            ]
            if missing and any(use == "region" for _, use, _ in out):
                raise KnowledgeError(
                    f"{where}: no code by body region covers the site(s) {', '.join(missing)}"
                )
        self._codes[key] = (out, regional)
        return self._codes[key]

    def code_for(self, code: dict[str, Any], where: str, ctx: PatientContext) -> dict[str, Any]:
        """The code with the codings for the patient's sites: the region coding of the first site,
        the add-on coding when there are several sites, and every other coding."""
        parts, regional = self._code_parts(code, where)
        if not regional:
            return code
        first = (ctx.sites[0].coding["system"], ctx.sites[0].coding["code"]) if ctx.sites else None
        codings = [
            c
            for c, use, sites in parts
            if use == "always"
            or (use == "region" and first in sites)
            or (use == "additional" and len(ctx.sites) > 1)
        ]
        return {**code, "coding": codings}

    def request(self, s: Selected, ctx: PatientContext, subject: dict[str, Any]) -> dict[str, Any]:
        a = s.action
        raw = a.raw
        ad = a.activity
        kind = ad.get("kind", "ServiceRequest") if ad is not None else "ServiceRequest"
        if ad is not None:
            code = ad.get("code") or {"text": ad.get("title", a.id)}
            if ad.get("code"):
                code = self.code_for(code, f"ActivityDefinition/{ad.get('id')}", ctx)
            title = ad.get("title") or raw.get("title") or a.id
        else:
            code = (raw.get("code") or [{"text": raw.get("title", a.id)}])[0]
            title = raw.get("title") or a.id
        is_procedure = a.id == self.plan.procedure_action(ctx.technique)
        req: dict[str, Any] = {"resourceType": kind, "id": _request_id(_PREFIX[kind], ctx.key, a.id)}
        text: list[Any] = [("p", ("b", title), ": ", raw.get("description", ""))]
        if ad is not None and kind in _INSTANTIATES:
            req["instantiatesCanonical"] = ad["url"] if kind == "Task" else [ad["url"]]  # Task: 0..1
        req["status"] = "proposed" if kind == "Appointment" else "draft"
        if kind == "Task":
            req["intent"] = ad.get("intent", "order") if ad is not None else "order"
        elif kind not in ("CommunicationRequest", "SupplyRequest", "Appointment"):
            req["intent"] = (ad or {}).get("intent", "order")
        priority = raw.get("priority") or (ad or {}).get("priority")
        if priority and kind != "Appointment":
            req["priority"] = priority
        code_field = _CODE.get(kind, "code")
        if code_field == "serviceType":
            req[code_field] = [code]
        elif code_field is not None:
            req[code_field] = code
        if kind == "MedicationRequest" and ad is not None and ad.get("dosage"):
            req["dosageInstruction"] = ad["dosage"]
        if kind == "SupplyRequest":
            req["quantity"] = (ad or {}).get("quantity") or {"value": 1}
        if kind == "Task" and raw.get("description"):
            req["description"] = raw["description"]
        if kind == "CommunicationRequest":
            req["payload"] = [{"contentString": raw.get("description") or title}]
        for dv, values in s.values:
            set_path(req, dv, values)
        subject_field = _SUBJECT.get(kind, "subject")
        if subject_field is not None:
            req[subject_field] = subject
        if kind == "Appointment":  # proposed: no start yet (app-3)
            req["participant"] = [
                {"actor": subject, "status": "needs-action"},
                {"actor": ctx.performer, "status": "needs-action"},
            ]
        when_field = _WHEN.get(kind, "occurrenceDateTime")
        if when_field is not None:
            req[when_field] = ctx.date
        elif kind == "Task":
            req["executionPeriod"] = {"start": ctx.date}
        if kind == "Task" or kind != "Appointment":
            req["requester"] = ctx.performer
        if kind in _PERFORMER:
            element, repeats = _PERFORMER[kind]
            req[element] = [ctx.performer] if repeats else ctx.performer
        if is_procedure and ctx.sites and kind == "ServiceRequest":
            req["bodySite"] = [{"coding": [site.coding], "text": site.label} for site in ctx.sites]
            text.append(("p", f"{self.sites_label}: " + ", ".join(ctx.site_labels)))
        note = self.not_computable(raw)
        if note:
            req["note"] = [*req.get("note", []), {"text": note}]
            text.append(("p", ("b", "Check: "), note))
        for od in req.get("orderDetail", []):
            if od.get("text"):
                text.append(("p", od["text"]))
        req["text"] = narrative(*text)
        return req

    def not_computable(self, raw: dict[str, Any]) -> str | None:
        """The words of a rule of the action that no expression tests (to put before the clinician)."""
        words = [
            e["valueString"]
            for e in raw.get("extension") or []
            if e.get("url") == self.not_computable_url and isinstance(e.get("valueString"), str)
        ]
        return " ".join(words) or None

    def communication(self, s: Selected, ctx: PatientContext, subject: dict[str, Any]) -> dict[str, Any]:
        raw = s.action.raw
        return {
            "resourceType": "CommunicationRequest",
            "id": _request_id("cr", ctx.key, s.action.id),
            "text": narrative(("p", ("b", raw.get("title", "")), ": ", raw["textEquivalent"])),
            "status": "draft",
            "priority": raw.get("priority", "routine"),
            "subject": subject,
            "payload": [{"contentString": raw["textEquivalent"]}],
            "occurrenceDateTime": ctx.date,
            "requester": ctx.performer,
            "recipient": [ctx.performer],
        }

    def build(self, out: Outcome) -> list[dict[str, Any]]:
        ctx = out.context
        ids = _ids(ctx.key)
        subject = ctx.patient_ref
        requests: list[dict[str, Any]] = []
        procedure_request: dict[str, Any] | None = None
        procedure_action = self.plan.procedure_action(ctx.technique)
        selected_ids: set[str] = set()
        _ids_of(out.selected, selected_ids)

        def rg_action(s: Selected) -> dict[str, Any]:
            nonlocal procedure_request
            raw = s.action.raw
            act: dict[str, Any] = {"id": s.action.id}
            for k in _RG_KEYS:
                if k in raw:
                    act[k] = raw[k]
            note = self.not_computable(raw)
            if note and "textEquivalent" not in act:
                act["textEquivalent"] = note
            related = [r for r in raw.get("relatedAction", []) if r.get("actionId") in selected_ids]
            if related:
                act["relatedAction"] = related
            resource = None
            if s.action.activity is not None or (not s.children and "textEquivalent" not in raw):
                resource = self.request(s, ctx, subject)
                requests.append(resource)
                if s.action.id == procedure_action:
                    procedure_request = resource
            elif not s.children:
                resource = self.communication(s, ctx, subject)
                requests.append(resource)
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
        plan = self.plan.plan
        warnings = [w.text for w in out.warnings]
        about = [x for x in (ctx.technique, ", ".join(ctx.site_labels)) if x]
        rg: dict[str, Any] = {
            "resourceType": "RequestGroup",
            "id": ids["requestgroup"],
            "text": narrative(
                (
                    "p",
                    ("b", plan.get("title", plan["id"])),
                    f" for {ctx.patient_name}: {' '.join(about) + ', ' if about else ''}planned {ctx.date}",
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
        result = [careplan, rg, *requests]
        if self.consent is not None:
            result.append(self.consent.build(ctx, ids["consent"]))
        if procedure_request is not None:
            result.append(self.procedure(ctx, ids["procedure"], procedure_request))
        return result

    def procedure(self, ctx: PatientContext, rid: str, request: dict[str, Any]) -> dict[str, Any]:
        proc: dict[str, Any] = {"resourceType": "Procedure", "id": rid}
        if self.procedure_meta is not None:
            proc["meta"] = self.procedure_meta
        proc["instantiatesCanonical"] = [self.plan.canonical]
        proc["basedOn"] = [{"reference": f"{request['resourceType']}/{request['id']}"}]
        proc["status"] = "preparation"
        proc["code"] = request.get("code") or {"text": request["text"]}
        proc["subject"] = ctx.patient_ref
        proc["performer"] = [{"actor": ctx.performer, "onBehalfOf": ctx.organization}]
        if request.get("bodySite"):
            proc["bodySite"] = request["bodySite"]
        proc["text"] = procedure_narrative(proc, self.sites_label)
        return ordered_procedure(proc)


_RG_KEYS = (
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
)


def _ids_of(selected: list[Selected], out: set[str]) -> None:
    for s in selected:
        out.add(s.action.id)
        _ids_of(s.children, out)
