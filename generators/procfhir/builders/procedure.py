"""Procedure examples (and the Patient they are about)."""

from __future__ import annotations

from typing import Any

from procfhir.builders.common import concept, meta, source_ext
from procfhir.builders.plandefinition import procedure_profile_id
from procfhir.config import Config
from procfhir.model import Document, Examples
from procfhir.narrative import narrative, ordered_procedure, procedure_narrative


def build_patient(examples: Examples) -> dict[str, Any]:
    p = examples.patient
    return {
        "resourceType": "Patient",
        "id": p.id,
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]},
        "text": narrative(("p", f"Example patient {p.given} {p.family} (not a real person).")),
        "name": [{"family": p.family, "given": [p.given]}],
    }


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
            "meta": meta(cfg, procedure_profile_id(d)),
            "instantiatesCanonical": [cfg.url("PlanDefinition", d.plan.id)],
            "status": ex.status,
            "code": concept(ex.codes, ex.technique.title),
            "subject": {
                "reference": f"Patient/{patient.id}",
                "display": f"{patient.given} {patient.family}",
            },
            "performedDateTime": ex.performed,
            "reasonCode": [{"extension": source_ext(cfg, ind.quotes), **reason}],
        }
        if ex.sites:
            proc["bodySite"] = [concept([c], c.display) for c in ex.sites]
        if ex.complications:
            proc["complication"] = [concept([c], c.display) for c in ex.complications]
        if ex.used:
            proc["usedCode"] = [concept([c], c.display) for c in ex.used]
        proc["text"] = procedure_narrative(
            proc, d.plan.body_sites.label if d.plan.body_sites else "Body sites"
        )
        out.append(ordered_procedure(proc))
    return out


def procedure_profile(cfg: Config, d: Document) -> dict[str, Any]:
    """The differential of the plan's own Procedure profile: bindings to the plan's value sets,
    body sites required (or absent) as the plan's body sites are."""
    plan = d.plan
    pid = procedure_profile_id(d)
    url = cfg.url("StructureDefinition", pid)

    def binding(role: str, strength: str, description: str) -> dict[str, Any]:
        vs = d.value_set(role)
        if vs is None:
            return {}
        return {
            "binding": {
                "strength": strength,
                "description": description,
                "valueSet": cfg.url("ValueSet", vs.id),
            }
        }

    body = plan.body_sites
    if body is not None:
        sites: dict[str, Any] = {
            "id": "Procedure.bodySite",
            "path": "Procedure.bodySite",
            **({"min": 1} if body.required else {}),
            "mustSupport": True,
            **binding("body-site", "required", f"{body.label} treated"),
        }
        on = f" on one or more {body.label.lower()}"
    else:
        sites = {"id": "Procedure.bodySite", "path": "Procedure.bodySite", "max": "0"}
        on = ""
    elements: list[dict[str, Any]] = [
        {
            "id": "Procedure",
            "path": "Procedure",
            "constraint": [
                {
                    "key": "pdp-1",
                    "severity": "error",
                    "human": "Performed SHALL be present if the status is 'completed' or 'in-progress' "
                    "(as US Core us-core-7)",
                    "expression": "performed.exists() or (status != 'completed' and status != 'in-progress')",
                    "source": url,
                }
            ],
        },
        {"id": "Procedure.status", "path": "Procedure.status", "mustSupport": True},
        {
            "id": "Procedure.code",
            "path": "Procedure.code",
            "min": 1,
            "mustSupport": True,
            **binding("procedure", "extensible", f"The procedures of the plan {plan.title}"),
        },
        {
            "id": "Procedure.subject",
            "path": "Procedure.subject",
            "type": [
                {"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"]}
            ],
            "mustSupport": True,
        },
        {"id": "Procedure.performed[x]", "path": "Procedure.performed[x]", "mustSupport": True},
        {
            "id": "Procedure.reasonCode",
            "path": "Procedure.reasonCode",
            **binding("indication", "preferred", f"The indications of the plan {plan.title}"),
        },
        sites,
        {
            "id": "Procedure.complication",
            "path": "Procedure.complication",
            **binding("complication", "preferred", f"The complications of the plan {plan.title}"),
        },
        {
            "id": "Procedure.usedCode",
            "path": "Procedure.usedCode",
            **binding("material", "preferred", f"The materials and devices of the plan {plan.title}"),
        },
    ]
    return {
        "resourceType": "StructureDefinition",
        "id": pid,
        "url": url,
        "name": plan.name + "Procedure",
        "title": f"{plan.title}: procedure",
        "status": "draft",
        "description": (
            f"A procedure of the plan {plan.title}{on}. Follows the US Core Procedure rules: status, "
            "code and subject are required, and performed[x] is present when the procedure is "
            "completed or in progress."
        ),
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": "Procedure",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Procedure",
        "derivation": "constraint",
        "differential": {"element": [e for e in elements if len(e) > 2 or e["id"] == "Procedure"]},
    }
