"""The treatment Consent template and the consent form the patient reads (HTML)."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from procfhir.builders.common import codes, concept, meta, source_ext
from procfhir.config import Config
from procfhir.mapping import Mapping
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
CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Consent Document"}]}]


def risk_sentences(m: Mapping, risk: dict[str, Any]) -> str:
    """The text's own wording of a risk: its quoted sentences, in text order, headings left out."""
    ids = []
    for t in m.traces(risk):
        seg = m.source.segment(t.sentence)
        if seg.kind == "sentence" and seg.id not in ids:
            ids.append(seg.id)
    ids.sort(key=lambda sid: int(sid[1:]))
    return " ".join(m.source.segment(s).text for s in ids)


def disclosed_risks(cfg: Config, m: Mapping) -> list[dict[str, Any]]:
    url = cfg.url("StructureDefinition", "disclosed-risk")
    out = []
    for risk in m.data["consent"]["risks"]:
        outcome = concept(codes(m, risk["codes"]), risk["outcome"])
        outcome = {"extension": source_ext(cfg, m.traces(risk)), **outcome}
        ext: list[dict[str, Any]] = [{"url": "outcome", "valueCodeableConcept": outcome}]
        if "frequency" in risk:
            f = risk["frequency"]
            ext.append({"url": "frequency", "valueCodeableConcept": concept([m.code(f["code"])], f["text"])})
        ext.append({"url": "description", "valueString": risk_sentences(m, risk)})
        if "management" in risk:
            ext.append({"url": "management", "valueString": risk["management"]})
        out.append({"url": url, "extension": ext})
    return out


def _procedure_titles(m: Mapping, technique_ids: list[str]) -> list[str]:
    techs = {t["id"]: t for t in m.data["plan"]["techniques"]}
    return [techs[t]["title"] for t in technique_ids]


def consent_form_html(
    m: Mapping,
    technique_ids: list[str] | None = None,
    patient_name: str | None = None,
    levels: list[str] | None = None,
) -> str:
    """The consent form a patient reads, rendered from the same data as the Consent.

    Every value is escaped; the page is self-contained (no scripts, styles or external links).
    """
    consent = m.data["consent"]
    techniques = technique_ids or consent["procedures"]
    names = " or ".join(_procedure_titles(m, techniques))
    e = escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        f"<title>{e(consent['title'])}</title></head><body>",
        f"<h1>{e(consent['title'])}</h1>",
    ]
    if patient_name:
        parts.append(f"<p>Patient: <strong>{e(patient_name)}</strong></p>")
    parts.append(f"<p>Procedure: <strong>{e(names)}</strong></p>")
    if levels:
        parts.append(f"<p>Vertebral level(s) to be treated: <strong>{e(', '.join(levels))}</strong></p>")
    plan = m.data["plan"]
    parts.append(f"<p>{e(plan['description']['text'])}</p>")
    parts.append(f"<h2>{e(m.source.segment(m.traces(consent)[0].sentence).text)}</h2>")
    parts.append('<ol class="risks">')
    for risk in consent["risks"]:
        freq = risk.get("frequency", {}).get("text", "not stated in the information text")
        parts.append(
            f'<li class="risk" id="risk-{e(risk["id"])}"><h3>{e(risk["title"])}</h3>'
            f"<p>{e(risk_sentences(m, risk))}</p>"
            f'<p>How often: <span class="frequency">{e(freq)}</span></p>'
        )
        if "management" in risk:
            parts.append(f"<p>{e(risk['management'])}</p>")
        parts.append("</li>")
    parts.append("</ol>")
    parts.append(
        "<p>I have read this information, my questions have been answered, and I agree to the "
        "procedure named above.</p>"
        "<p>Signature of the patient: ______________________ Date: ____________</p>"
        "</body></html>"
    )
    return "".join(parts) + "\n"


def consent_narrative(m: Mapping, techniques: list[str], patient: str | None = None) -> dict[str, str]:
    consent = m.data["consent"]
    return narrative(
        ("h3", consent["title"]),
        ("p", "Patient: " + (patient or "the patient signing the form")),
        ("p", "Procedure: " + " or ".join(_procedure_titles(m, techniques))),
        ("p", ("b", "Risks disclosed")),
        (
            "ul",
            *[
                (
                    "li",
                    ("b", r["title"]),
                    f" ({r['frequency']['text']})" if "frequency" in r else "",
                    ": " + risk_sentences(m, r),
                )
                for r in consent["risks"]
            ],
        ),
    )


def build_consent(cfg: Config, m: Mapping) -> dict[str, Any]:
    consent = m.data["consent"]
    techs = {t["id"]: t for t in m.data["plan"]["techniques"]}
    html = consent_form_html(m)
    return {
        "resourceType": "Consent",
        "id": consent["id"],
        "meta": meta(cfg, "treatment-consent"),
        "text": consent_narrative(m, consent["procedures"]),
        "extension": disclosed_risks(cfg, m),
        "status": "draft",
        "scope": SCOPE,
        "category": CATEGORY,
        "patient": {"display": "The patient signing this consent form"},
        "sourceAttachment": {
            "contentType": "text/html; charset=utf-8",
            "language": "en",
            "data": base64.b64encode(html.encode("utf-8")).decode("ascii"),
            "title": consent["title"],
        },
        "policy": [{"uri": cfg.consent_policy_uri or cfg.url("PlanDefinition", m.data["plan"]["id"])}],
        "provision": {
            "type": "permit",
            "code": [
                concept(codes(m, [p]) if p in m.codes else [], techs[p]["title"])
                for p in consent["procedures"]
            ],
        },
    }
