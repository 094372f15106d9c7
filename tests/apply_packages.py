"""Packages for the ``$apply`` tests, written as FHIR resources the way docs/contract.md says.

- :func:`vertebral_package`: the committed ``fhir/`` resources (as docs/contract.md puts the plan's
  knowledge in FHIR: ``plan-value-set``, ``procedure-profile``, ``code-for-sites``...).
- :func:`generic_package`: a small plan of another kind (made-up codes in a test CodeSystem, not
  clinical content): one technique without a choice, no body sites, a conditional step for
  patients taking a medication, a MedicationRequest, a Task and a CommunicationRequest activity,
  limits on repetitions per period and on the interval since the last treatment, advice for a
  group of patients and a rule left as text.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE = "https://fhir.example.org/procedures"
SD = f"{BASE}/StructureDefinition"
LOCAL = f"{BASE}/CodeSystem/local"
CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"


def read_folder(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("*.json")):
        res = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(res, dict) and res.get("resourceType") not in (None, "Bundle"):
            out.append(res)
    return out


def write_folder(resources: list[dict[str, Any]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for r in resources:
        (folder / f"{r['resourceType']}-{r['id']}.json").write_text(json.dumps(r, indent=2), encoding="utf-8")
    return folder


def write_tgz(resources: list[dict[str, Any]], path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        members = [("package/package.json", {"name": "test.package", "version": "0.1.0"})]
        members += [(f"package/{r['resourceType']}-{r['id']}.json", r) for r in resources]
        for name, obj in members:
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_bundle(resources: list[dict[str, Any]], path: Path) -> Path:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return path


def _ext(name: str, **parts: Any) -> dict[str, Any]:
    return {"url": f"{SD}/{name}", "extension": [{"url": k, **v} for k, v in parts.items()]}


def _value_set_role(role: str, vs: str, **more: dict[str, Any]) -> dict[str, Any]:
    return _ext("plan-value-set", role={"valueCode": role}, valueSet={"valueCanonical": vs}, **more)


def _walk(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for a in actions for x in (a, *_walk(a.get("action", [])))]


def vertebral_package() -> list[dict[str, Any]]:
    """The committed ``fhir/`` knowledge resources (the plan declares its value sets by role)."""
    resources = copy.deepcopy(read_folder(ROOT / "fhir"))
    plan = next(r for r in resources if r["resourceType"] == "PlanDefinition")
    assert any(e["url"] == f"{SD}/plan-value-set" for e in plan.get("extension", []))
    return resources


# -- a plan of another kind ----------------------------------------------------------------------

TEST_SYSTEM = "https://example.org/CodeSystem/apply-test"


def _code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": TEST_SYSTEM, "code": code, "display": display}], "text": display}


def _codes_expr(codes: list[str]) -> str:
    return f"(system = '{TEST_SYSTEM}' and (" + " or ".join(f"code = '{c}'" for c in codes) + "))"


HAS_INDICATION = (
    "%conditions.where(verificationStatus.coding.where(code = 'refuted' or code = 'entered-in-error')"
    f".exists().not()).code.coding.where({_codes_expr(['ind-a'])}).exists()"
)
TAKES_THINNER = (
    "%medications.where(status = 'active' or status = 'intended' or status = 'on-hold')"
    f".medication.coding.where({_codes_expr(['med-thinner'])}).exists()"
)
PRIOR = (
    f"%priorProcedures.where(status = 'completed' and code.coding.where({_codes_expr(['proc-x'])}).exists())"
)
LIMIT_WORDS = "The treatment is given no more than 2 times in one year."
INTERVAL_WORDS = "A new treatment is not given sooner than 3 months after the last one."
STEP_WORDS = "If you take the test medicine, it is stopped before the treatment."
ADVICE_WORDS = "Patients with condition B are seen by their doctor first."
TEXT_ONLY = "in patients for whom the doctor thinks it is safe"


def _condition(
    name: str, description: str, expression: str, limit: dict[str, Any] | None = None
) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "kind": "applicability",
        "expression": {
            "description": description,
            "name": name,
            "language": "text/fhirpath",
            "expression": expression,
        },
    }
    if limit:
        cond["extension"] = [_ext("limit", **limit)]
    return cond


def generic_package() -> list[dict[str, Any]]:
    url = f"{BASE}/PlanDefinition/apply-test"
    ad = f"{BASE}/ActivityDefinition"
    cs = {
        "resourceType": "CodeSystem",
        "id": "apply-test",
        "url": TEST_SYSTEM,
        "status": "draft",
        "content": "complete",
        "concept": [
            {"code": c, "display": d}
            for c, d in [
                ("ind-a", "Condition A"),
                ("cond-b", "Condition B"),
                ("proc-x", "Procedure X"),
                ("med-thinner", "Test medicine"),
                ("stop-med", "Stop the test medicine"),
                ("check-in", "Check-in task"),
                ("comp-1", "Complication one"),
                ("dev-1", "Device one"),
                ("info", "Information leaflet"),
            ]
        ],
    }

    def vs(vid: str, codes: list[str]) -> dict[str, Any]:
        return {
            "resourceType": "ValueSet",
            "id": vid,
            "url": f"{BASE}/ValueSet/{vid}",
            "status": "draft",
            "compose": {"include": [{"system": TEST_SYSTEM, "concept": [{"code": c} for c in codes]}]},
        }

    activities = [
        {
            "resourceType": "ActivityDefinition",
            "id": "proc-x",
            "url": f"{ad}/proc-x",
            "status": "draft",
            "kind": "ServiceRequest",
            "intent": "order",
            "code": _code("proc-x", "Procedure X"),
        },
        {
            "resourceType": "ActivityDefinition",
            "id": "stop-med",
            "url": f"{ad}/stop-med",
            "status": "draft",
            "kind": "MedicationRequest",
            "intent": "order",
            "code": _code("stop-med", "Stop the test medicine"),
            "productCodeableConcept": _code("med-thinner", "Test medicine"),
        },
        {
            "resourceType": "ActivityDefinition",
            "id": "check-in",
            "url": f"{ad}/check-in",
            "status": "draft",
            "kind": "Task",
            "intent": "order",
            "code": _code("check-in", "Check-in task"),
        },
        {
            "resourceType": "ActivityDefinition",
            "id": "info",
            "url": f"{ad}/info",
            "status": "draft",
            "kind": "CommunicationRequest",
            "code": _code("info", "Information leaflet"),
        },
    ]
    profile = {
        "resourceType": "StructureDefinition",
        "id": "apply-test-procedure",
        "url": f"{SD}/apply-test-procedure",
        "name": "ApplyTestProcedure",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Procedure",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Procedure",
        "derivation": "constraint",
        "differential": {
            "element": [
                {"id": "Procedure", "path": "Procedure"},
                {
                    "id": "Procedure.code",
                    "path": "Procedure.code",
                    "min": 1,
                    "binding": {
                        "strength": "extensible",
                        "valueSet": f"{BASE}/ValueSet/apply-test-procedures",
                    },
                },
                {"id": "Procedure.bodySite", "path": "Procedure.bodySite", "max": "0"},
                {
                    "id": "Procedure.complication",
                    "path": "Procedure.complication",
                    "binding": {
                        "strength": "preferred",
                        "valueSet": f"{BASE}/ValueSet/apply-test-complications",
                    },
                },
            ]
        },
    }
    plan = {
        "resourceType": "PlanDefinition",
        "id": "apply-test",
        "extension": [
            _value_set_role("indication", f"{BASE}/ValueSet/apply-test-indications"),
            _value_set_role("procedure", f"{BASE}/ValueSet/apply-test-procedures"),
            _value_set_role("complication", f"{BASE}/ValueSet/apply-test-complications"),
            _value_set_role("material", f"{BASE}/ValueSet/apply-test-materials"),
            {"url": f"{SD}/procedure-profile", "valueCanonical": profile["url"]},
        ],
        "url": url,
        "version": "0.1.0",
        "name": "ApplyTest",
        "title": "Procedure X (test plan)",
        "status": "draft",
        "description": "A plan made up for the tests of $apply.",
        "action": [
            {
                "id": "procedure",
                "title": "Procedure X",
                "condition": [
                    _condition("HasIndication", "The patient has condition A.", HAS_INDICATION),
                    _condition(
                        "RepetitionsPerYear",
                        LIMIT_WORDS,
                        f"{PRIOR}.where(performed > (%plannedDate - 1 year)).count() < 2",
                        {
                            "type": {"valueCode": "repetitions-per-period"},
                            "maximum": {"valueInteger": 2},
                            "period": {
                                "valueDuration": {
                                    "value": 1,
                                    "unit": "a",
                                    "system": "http://unitsofmeasure.org",
                                    "code": "a",
                                }
                            },
                        },
                    ),
                    _condition(
                        "MinInterval",
                        INTERVAL_WORDS,
                        f"{PRIOR}.where(performed > (%plannedDate - 3 months)).exists().not()",
                        {
                            "type": {"valueCode": "min-interval"},
                            "period": {
                                "valueDuration": {
                                    "value": 3,
                                    "unit": "mo",
                                    "system": "http://unitsofmeasure.org",
                                    "code": "mo",
                                }
                            },
                        },
                    ),
                ],
                "selectionBehavior": "all",
                "action": [
                    {
                        "id": "proc-x",
                        "title": "Procedure X",
                        "definitionCanonical": f"{ad}/proc-x",
                        "extension": [
                            _ext(
                                "uses-material",
                                item={"valueCodeableConcept": _code("dev-1", "Device one")},
                                kind={"valueCode": "device"},
                            )
                        ],
                        "action": [
                            {
                                "id": "stop-med",
                                "title": "Stop the test medicine",
                                "description": STEP_WORDS,
                                "definitionCanonical": f"{ad}/stop-med",
                                "condition": [_condition("TakesThinner", STEP_WORDS, TAKES_THINNER)],
                            },
                            {
                                "id": "check-in",
                                "title": "Check-in",
                                "description": "The patient checks in.",
                                "definitionCanonical": f"{ad}/check-in",
                                "extension": [{"url": f"{SD}/not-computable", "valueString": TEXT_ONLY}],
                            },
                            {
                                "id": "info",
                                "title": "Information",
                                "description": "The patient is given the leaflet.",
                                "definitionCanonical": f"{ad}/info",
                            },
                        ],
                    }
                ],
            },
            {
                "id": "advice-b",
                "title": "Advice for condition B",
                "textEquivalent": ADVICE_WORDS,
                "priority": "routine",
                "condition": [
                    _condition(
                        "HasConditionB",
                        ADVICE_WORDS,
                        "%conditions.where(verificationStatus.coding.where(code = 'refuted' or code = "
                        f"'entered-in-error').exists().not()).code.coding.where({_codes_expr(['cond-b'])}).exists()",
                    )
                ],
            },
        ],
    }
    consent_html = (
        "<!DOCTYPE html><html><head><title>Consent to procedure X</title></head><body>"
        "<h1>Consent to procedure X</h1><p>Procedure: <strong>Procedure X</strong></p>"
        "<p>Risks.</p></body></html>"
    )
    consent = {
        "resourceType": "Consent",
        "id": "apply-test-consent",
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml"><h3>Consent to procedure X</h3>'
            "<p>Patient: the patient signing the form</p><p>Procedure: Procedure X</p></div>",
        },
        "status": "draft",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "sourceAttachment": {
            "contentType": "text/html; charset=utf-8",
            "language": "en",
            "title": "Consent to procedure X",
            "data": base64.b64encode(consent_html.encode()).decode(),
        },
        "policy": [{"uri": url}],
        "provision": {"type": "permit", "code": [_code("proc-x", "Procedure X")]},
    }
    value_sets = [
        vs("apply-test-indications", ["ind-a"]),
        vs("apply-test-procedures", ["proc-x"]),
        vs("apply-test-complications", ["comp-1"]),
        vs("apply-test-materials", ["dev-1"]),
    ]
    return [plan, *activities, cs, *value_sets, profile, consent]


def generic_context(**changes: Any) -> dict[str, Any]:
    pid = changes.pop("pid", "gen-patient")
    ctx: dict[str, Any] = {
        "id": f"ctx-{pid}",
        "patient": {"resourceType": "Patient", "id": pid, "name": [{"text": "Sam Test"}]},
        "conditions": [
            {
                "resourceType": "Condition",
                "id": f"{pid}-a",
                "code": {"coding": [{"system": TEST_SYSTEM, "code": "ind-a"}]},
                "subject": {"reference": f"Patient/{pid}"},
            }
        ],
        "date": "2026-12-01",
        "performer": "Practitioner/dr-test",
        "organization": "Organization/hosp-test",
    }
    ctx.update(changes)
    return ctx


def medication(pid: str, code: str = "med-thinner", status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "id": f"{pid}-med-{code}",
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": TEST_SYSTEM, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }


def prior(pid: str, when: str, n: int = 0, code: str = "proc-x") -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": f"{pid}-prior-{n}",
        "status": "completed",
        "code": {"coding": [{"system": TEST_SYSTEM, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "performedDateTime": when,
    }
