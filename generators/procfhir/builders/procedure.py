"""Procedure examples (and the Patient they are about)."""

from __future__ import annotations

from typing import Any

from procfhir.builders.common import concept, meta, source_ext
from procfhir.config import Config
from procfhir.model import Document, Examples
from procfhir.narrative import narrative, table


def build_patient(examples: Examples) -> dict[str, Any]:
    p = examples.patient
    return {
        "resourceType": "Patient",
        "id": p.id,
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]},
        "text": narrative(("p", f"Example patient {p.given} {p.family} (not a real person).")),
        "name": [{"family": p.family, "given": [p.given]}],
    }


def procedure_narrative(proc: dict[str, Any]) -> dict[str, str]:
    def text(cc: dict[str, Any]) -> str:
        return cc.get("text") or "; ".join(c.get("display", c["code"]) for c in cc.get("coding", []))

    rows: list[list[Any]] = [
        ["Status", proc["status"]],
        ["Procedure", text(proc["code"])],
        ["Patient", proc["subject"].get("display", proc["subject"].get("reference", ""))],
    ]
    if "performedDateTime" in proc:
        rows.append(["Performed", proc["performedDateTime"]])
    if proc.get("bodySite"):
        rows.append(["Vertebral levels", ", ".join(text(b) for b in proc["bodySite"])])
    if proc.get("reasonCode"):
        rows.append(["Reason", ", ".join(text(r) for r in proc["reasonCode"])])
    if proc.get("usedCode"):
        rows.append(["Used", ", ".join(text(u) for u in proc["usedCode"])])
    if proc.get("complication"):
        rows.append(["Complications", ", ".join(text(c) for c in proc["complication"])])
    return narrative(table(["Item", "Value"], rows))


def build_procedures(cfg: Config, d: Document) -> list[dict[str, Any]]:
    examples = d.examples
    if examples is None:
        return []
    patient = examples.patient
    out = []
    for ex in examples.procedures:
        ind = ex.reason
        reason = concept(ind.codes, ind.text)
        proc: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": ex.id,
            "meta": meta(cfg, "vertebral-augmentation-procedure"),
            "instantiatesCanonical": [cfg.url("PlanDefinition", d.plan.id)],
            "status": ex.status,
            "code": concept(ex.codes, ex.technique.title),
            "subject": {
                "reference": f"Patient/{patient.id}",
                "display": f"{patient.given} {patient.family}",
            },
            "performedDateTime": ex.performed,
            "reasonCode": [{"extension": source_ext(cfg, ind.quotes), **reason}],
            "bodySite": [concept([c], c.display) for c in ex.sites],
        }
        if ex.complications:
            proc["complication"] = [concept([c], c.display) for c in ex.complications]
        if ex.used:
            proc["usedCode"] = [concept([c], c.display) for c in ex.used]
        proc["text"] = procedure_narrative(proc)
        out.append(_ordered(proc))
    return out


_ORDER = [
    "resourceType",
    "id",
    "meta",
    "text",
    "extension",
    "instantiatesCanonical",
    "basedOn",
    "status",
    "code",
    "subject",
    "performedDateTime",
    "performedPeriod",
    "performer",
    "reasonCode",
    "bodySite",
    "complication",
    "usedCode",
]


def _ordered(res: dict[str, Any]) -> dict[str, Any]:
    return {k: res[k] for k in _ORDER if k in res} | {k: v for k, v in res.items() if k not in _ORDER}
