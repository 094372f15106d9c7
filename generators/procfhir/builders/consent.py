"""The treatment Consent template and the consent form the patient reads (HTML)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from html import escape
from typing import Any

from procfhir.builders import expressions as ex
from procfhir.builders.common import FHIRPATH, concept, meta, source_ext
from procfhir.builders.plandefinition import consent_profile_id
from procfhir.config import Config
from procfhir.model import Document
from procfhir.narrative import narrative

SCOPE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "treatment",
            "display": "Treatment",
        }
    ]
}
# LOINC 59284-0 with the display R4 core's consent-category value set gives it (the build verifies it)
CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}]


def disclosed_risks(cfg: Config, d: Document) -> list[dict[str, Any]]:
    url = cfg.url("StructureDefinition", "disclosed-risk")
    out = []
    for risk in d.consent.risks:
        outcome = concept(risk.codes, risk.outcome)
        quotes = list(risk.quotes)  # a modifier's quotes too (its sub-extensions have no room)
        quotes += [q for mod in risk.modifiers for q in mod.quotes if q not in quotes]
        outcome = {"extension": source_ext(cfg, quotes), **outcome}
        ext: list[dict[str, Any]] = [{"url": "outcome", "valueCodeableConcept": outcome}]
        f = risk.frequency
        if f is not None:
            ext.append(
                {"url": "frequency", "valueCodeableConcept": concept([f.code] if f.code else [], f.text)}
            )
        ext.append({"url": "description", "valueString": risk.wording})
        if risk.management is not None:
            ext.append({"url": "management", "valueString": risk.management})
        if f is not None and f.numerator is not None and f.denominator is not None:
            ratio = {"numerator": {"value": f.numerator}, "denominator": {"value": f.denominator}}
            ext.append({"url": "probability", "valueRatio": ratio})
        for mod in risk.modifiers:
            sub: list[dict[str, Any]] = [
                {"url": "text", "valueString": mod.text},
                {"url": "effect", "valueCode": mod.effect},
            ]
            if mod.applies_to is not None and mod.applies_to.computable:
                expression = {
                    "description": mod.text,
                    "language": FHIRPATH,
                    "expression": ex.patients(mod.applies_to),
                }
                sub.append({"url": "patients", "valueExpression": expression})
            ext.append({"url": "modifier", "extension": sub})
        out.append({"url": url, "extension": ext})
    return out


def _procedure_titles(d: Document, technique_ids: Iterable[str]) -> list[str]:
    return [d.plan.technique(t).title for t in technique_ids]


def consent_form_html(
    d: Document,
    technique_ids: list[str] | None = None,
    patient_name: str | None = None,
    sites: list[str] | None = None,
) -> str:
    """The consent form a patient reads, rendered from the same data as the Consent.

    Every value is escaped; the page is self-contained (no scripts, styles or external links).
    """
    consent = d.consent
    techniques = technique_ids or [t.id for t in consent.procedures]
    names = " or ".join(_procedure_titles(d, techniques))
    e = escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        f"<title>{e(consent.title)}</title></head><body>",
        f"<h1>{e(consent.title)}</h1>",
    ]
    if patient_name:
        parts.append(f"<p>Patient: <strong>{e(patient_name)}</strong></p>")
    parts.append(f"<p>Procedure: <strong>{e(names)}</strong></p>")
    if sites and d.plan.body_sites is not None:
        label = d.plan.body_sites.label
        parts.append(f"<p>{e(label)} to be treated: <strong>{e(', '.join(sites))}</strong></p>")
    parts.append(f"<p>{e(d.plan.description.text)}</p>")
    parts.append(f"<h2>{e(consent.heading)}</h2>")
    parts.append('<ol class="risks">')
    for risk in consent.risks:
        freq = risk.frequency.text if risk.frequency else "not stated in the information text"
        parts.append(
            f'<li class="risk" id="risk-{e(risk.id)}"><h3>{e(risk.title)}</h3>'
            f"<p>{e(risk.wording)}</p>"
            f'<p>How often: <span class="frequency">{e(freq)}</span></p>'
        )
        if risk.management is not None:
            parts.append(f"<p>{e(risk.management)}</p>")
        parts.append("</li>")
    parts.append("</ol>")
    parts.append(
        "<p>I have read this information, my questions have been answered, and I agree to the "
        "procedure named above.</p>"
        "<p>Signature of the patient: ______________________ Date: ____________</p>"
        "</body></html>"
    )
    return "".join(parts) + "\n"


def consent_narrative(d: Document, techniques: Iterable[str], patient: str | None = None) -> dict[str, str]:
    consent = d.consent
    return narrative(
        ("h3", consent.title),
        ("p", "Patient: " + (patient or "the patient signing the form")),
        ("p", "Procedure: " + " or ".join(_procedure_titles(d, techniques))),
        ("p", ("b", "Risks disclosed")),
        (
            "ul",
            *[
                (
                    "li",
                    ("b", r.title),
                    f" ({r.frequency.text})" if r.frequency else "",
                    ": " + r.wording,
                )
                for r in consent.risks
            ],
        ),
    )


def build_consent(cfg: Config, d: Document) -> dict[str, Any]:
    consent = d.consent
    html = consent_form_html(d)
    return {
        "resourceType": "Consent",
        "id": consent.id,
        "meta": meta(cfg, consent_profile_id(d)),
        "text": consent_narrative(d, [t.id for t in consent.procedures]),
        "extension": disclosed_risks(cfg, d),
        "status": "draft",
        "scope": SCOPE,
        "category": CATEGORY,
        "patient": {"display": "The patient signing this consent form"},
        "sourceAttachment": {
            "contentType": "text/html; charset=utf-8",
            "language": "en",
            "data": base64.b64encode(html.encode("utf-8")).decode("ascii"),
            "title": consent.title,
        },
        "policy": [{"uri": cfg.consent_policy_uri or cfg.url("PlanDefinition", d.plan.id)}],
        "provision": {
            "type": "permit",
            "code": [concept([t.code] if t.code else [], t.title) for t in consent.procedures],
        },
    }


def consent_profile(cfg: Config, d: Document) -> dict[str, Any]:
    """The differential of the plan's own Consent profile: a treatment consent whose provision
    names the plan's procedures."""
    pid = consent_profile_id(d)
    elements: list[dict[str, Any]] = [{"id": "Consent", "path": "Consent"}]
    vs = d.value_set("procedure")
    if vs is not None:
        elements.append(
            {
                "id": "Consent.provision.code",
                "path": "Consent.provision.code",
                "binding": {
                    "strength": "extensible",
                    "description": f"The procedures of the plan {d.plan.title}",
                    "valueSet": cfg.url("ValueSet", vs.id),
                },
            }
        )
    return {
        "resourceType": "StructureDefinition",
        "id": pid,
        "url": cfg.url("StructureDefinition", pid),
        "name": d.plan.name + "Consent",
        "title": f"{d.plan.title}: treatment consent",
        "status": "draft",
        "description": f"The patient's informed consent to a procedure of the plan {d.plan.title}.",
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": "Consent",
        "baseDefinition": cfg.url("StructureDefinition", "treatment-consent"),
        "derivation": "constraint",
        "differential": {"element": elements},
    }
