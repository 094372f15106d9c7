"""The patient context ``$apply`` works on, read from a JSON object or a FHIR Bundle.

JSON object (one context)::

    {"id": "ctx-1",                                   # optional: the basis of the output ids
     "patient": {Patient resource} | {"reference": "Patient/p1", "display": "Jane Doe"},
     "conditions": [{Condition resource}, ...],       # the patient's conditions
     "medications": [{MedicationStatement or MedicationRequest resource}, ...],  # current ones
     "priorProcedures": [{Procedure resource with performed[x]}, ...],          # earlier treatments
     "technique": "...",                              # one of the plan's choices (when it has one)
     "sites": ["..."],                                # the plan's body sites: code, display, label
     "date": "2026-12-01",                            # planned date (FHIR date or dateTime)
     "performer": "Practitioner/dr-a" | {"reference": ..., "display": ...},
     "organization": "Organization/hosp" | {"reference": ...}}

Bundle (type ``collection``): one Patient, its Conditions, MedicationStatements or
MedicationRequests, Procedures (prior treatments), and one Parameters resource with ``technique``
(valueCode), ``site`` (valueString or valueCoding, repeated), ``date`` (valueDate or
valueDateTime), ``performer`` and ``organization`` (valueReference), ``contextId`` (valueString,
optional).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from procfhir.apply.errors import ApplyError
from procfhir.apply.knowledge import Site, SiteSet

_ID = r"[A-Za-z0-9\-.]{1,64}"
_ID_RE = re.compile(_ID)  # used with fullmatch: no trailing newline slips through "$"
_REFERENCE_RE = {t: re.compile(rf"(\S*/)?{t}/{_ID}") for t in ("Patient", "Practitioner", "Organization")}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
FIELDS = (
    "id",
    "patient",
    "conditions",
    "medications",
    "priorProcedures",
    "technique",
    "sites",
    "date",
    "performer",
    "organization",
)
_FIELDS = frozenset(FIELDS)
MEDICATION_TYPES = ("MedicationStatement", "MedicationRequest")


@dataclass(frozen=True)
class PatientContext:
    key: str  # the basis of the deterministic output ids
    patient: dict[str, Any]  # the Patient resource (a minimal one when only a reference was given)
    patient_ref: dict[str, Any]
    patient_name: str
    conditions: list[dict[str, Any]]
    medications: list[dict[str, Any]]
    prior_procedures: list[dict[str, Any]]
    technique: str | None
    sites: tuple[Site, ...]  # the plan's body sites, in the order given
    date: str
    performer: dict[str, Any]
    organization: dict[str, Any]

    @property
    def site_labels(self) -> list[str]:
        return [s.label for s in self.sites]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _reference(value: Any, field: str, rtype: str) -> dict[str, Any]:
    if value is None or value == "" or value == {}:
        raise ApplyError(field, f'missing (a {rtype} reference such as "{rtype}/example")')
    if isinstance(value, str):
        value = {"reference": value}
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        raise ApplyError(field, f'expected a {rtype} reference ("{rtype}/id" or {{"reference": ...}})')
    if not _REFERENCE_RE[rtype].fullmatch(value["reference"]):
        raise ApplyError(field, f"{value['reference']!r} is not a reference to a {rtype} ({rtype}/id)")
    out = {"reference": value["reference"].rsplit("/", 2)[-2] + "/" + value["reference"].rsplit("/", 1)[-1]}
    if value.get("display") is not None:
        if not isinstance(value["display"], str):
            raise ApplyError(f"{field}.display", "must be a string")
        out["display"] = value["display"]
    return out


def _human_name(patient: dict[str, Any]) -> str | None:
    for name in patient.get("name") or []:
        if not isinstance(name, dict):
            continue
        if isinstance(name.get("text"), str) and name["text"].strip():
            return name["text"].strip()
        parts = [*[g for g in name.get("given") or [] if isinstance(g, str)], name.get("family") or ""]
        text = " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
        if text:
            return text
    return None


def _patient(value: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
    if value is None or value == {}:
        raise ApplyError("patient", 'missing (a Patient resource or a reference "Patient/id")')
    if isinstance(value, dict) and "resourceType" in value:
        if value["resourceType"] != "Patient":
            raise ApplyError("patient", f"expected a Patient resource, got {value['resourceType']!r}")
        pid = value.get("id")
        if not isinstance(pid, str) or not _ID_RE.fullmatch(pid):
            raise ApplyError("patient.id", "missing or not a FHIR id (the outputs must refer to the patient)")
        name = _human_name(value)
        if not name:
            raise ApplyError("patient.name", "missing (the consent form is rendered with the patient's name)")
        return value, {"reference": f"Patient/{pid}", "display": name}, name
    ref = _reference(value, "patient", "Patient")
    if not ref.get("display"):
        raise ApplyError(
            "patient.display", "missing: with a reference only, give the patient's name as display"
        )
    minimal = {"resourceType": "Patient", "id": ref["reference"].split("/", 1)[1]}
    return minimal, ref, ref["display"]


def _resources(
    value: Any, field: str, types: tuple[str, ...], patient_ref: str, subject: str = "subject"
) -> list[dict[str, Any]]:
    """A list of the patient's own resources of these types."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApplyError(field, f"expected a list of {' or '.join(types)} resources")
    for i, res in enumerate(value):
        if not isinstance(res, dict) or res.get("resourceType") not in types:
            raise ApplyError(f"{field}[{i}]", f"not a {' or '.join(types)} resource")
        ref = res.get(subject)
        target = ref.get("reference") if isinstance(ref, dict) else None
        if target and target.rsplit("/", 2)[-2:] != patient_ref.split("/"):
            raise ApplyError(
                f"{field}[{i}].{subject}", f"refers to {target}, not to the patient {patient_ref}"
            )
    return value


def _prior_procedures(value: Any, patient_ref: str) -> list[dict[str, Any]]:
    """The earlier procedures, each with performedDateTime at date precision (docs/contract.md:
    comparisons with %plannedDate never meet two precisions)."""
    out = []
    for i, proc in enumerate(_resources(value, "priorProcedures", ("Procedure",), patient_ref)):
        when = proc.get("performedDateTime") or (proc.get("performedPeriod") or {}).get("start")
        if not isinstance(when, str):
            raise ApplyError(
                f"priorProcedures[{i}].performed",
                "missing: a prior treatment needs its date (performedDateTime or performedPeriod)",
            )
        _date(when, f"priorProcedures[{i}].performed")
        if proc.get("performedDateTime") != when[:10]:
            proc = {k: v for k, v in proc.items() if k != "performedPeriod"}
            proc["performedDateTime"] = when[:10]
        out.append(proc)
    return out


def _sites(value: Any, sites: SiteSet | None) -> tuple[Site, ...]:
    if sites is None:
        if value:
            raise ApplyError("sites", "the plan names no body sites")
        return ()
    if value is None or value == []:
        if sites.required:
            names = ", ".join(s.label for s in sites.sites)
            raise ApplyError(
                "sites", f"missing: give the body sites to treat (value set {sites.name}: {names})"
            )
        return ()
    if not isinstance(value, list):
        raise ApplyError("sites", "expected a list of body sites (labels, codes or Codings)")
    out: list[Site] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        field = f"sites[{i}]"
        if not isinstance(item, str | dict):
            raise ApplyError(field, "expected a site's label, code or Coding")
        site = sites.find(item)
        if site is None:
            given = f"{item.get('system')}|{item.get('code')}" if isinstance(item, dict) else repr(item)
            names = ", ".join(s.label for s in sites.sites)
            raise ApplyError(
                field, f"{given} is not among the body sites of the plan (value set {sites.name}: {names})"
            )
        if site.label in seen:
            raise ApplyError(field, f"{site.label} is listed twice (also sites[{seen[site.label]}])")
        seen[site.label] = i
        out.append(site)
    return tuple(out)


def _date(value: Any, field: str = "date") -> str:
    if value is None or value == "":
        raise ApplyError(field, "missing (the planned date, e.g. 2026-12-01)")
    if not isinstance(value, str) or not (_DATE.match(value) or _DATETIME.match(value)):
        raise ApplyError(field, f"{value!r} is not a FHIR date (YYYY-MM-DD) or dateTime with time zone")
    try:
        (date.fromisoformat if len(value) == 10 else datetime.fromisoformat)(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApplyError(field, f"{value!r} is not a real date") from None
    return value


def parse_context(obj: Any, techniques: list[str], sites: SiteSet | None) -> PatientContext:
    """Read one context (JSON object or Bundle); raise :class:`ApplyError` naming the field."""
    if not isinstance(obj, dict):
        raise ApplyError("context", "expected a JSON object or a FHIR Bundle")
    if obj.get("resourceType") == "Bundle":
        obj = bundle_to_object(obj)
    elif "resourceType" in obj:
        raise ApplyError(
            "resourceType", f"{obj['resourceType']!r}: expected a Bundle or a plain context object"
        )
    unknown = None if obj.keys() <= _FIELDS else sorted(set(obj) - _FIELDS)
    if unknown:
        raise ApplyError(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    patient, patient_ref, name = _patient(obj.get("patient"))
    pref = patient_ref["reference"]
    conditions = _resources(obj.get("conditions"), "conditions", ("Condition",), pref)
    medications = _resources(obj.get("medications"), "medications", MEDICATION_TYPES, pref)
    prior = _prior_procedures(obj.get("priorProcedures"), pref)
    technique = obj.get("technique")
    if techniques:
        if technique in (None, ""):
            raise ApplyError("technique", f"missing (one of {', '.join(techniques)})")
        if technique not in techniques:
            raise ApplyError("technique", f"unknown technique {technique!r} (one of {', '.join(techniques)})")
    elif technique not in (None, ""):
        raise ApplyError("technique", f"{technique!r}: the plan offers no choice of technique")
    else:
        technique = None
    chosen = _sites(obj.get("sites"), sites)
    when = _date(obj.get("date"))
    performer = _reference(obj.get("performer"), "performer", "Practitioner")
    organization = _reference(obj.get("organization"), "organization", "Organization")
    cid = obj.get("id")
    if cid is not None and (not isinstance(cid, str) or not cid.strip()):
        raise ApplyError("id", "must be a non-empty string")
    key = _digest("id:" + cid) if cid else _digest(json.dumps(obj, sort_keys=True, separators=(",", ":")))
    return PatientContext(
        key=key,
        patient=patient,
        patient_ref=patient_ref,
        patient_name=name,
        conditions=conditions,
        medications=medications,
        prior_procedures=prior,
        technique=technique,
        sites=chosen,
        date=when,
        performer=performer,
        organization=organization,
    )


_PARAMS = {
    "technique": ("technique", ("valueCode", "valueString")),
    "site": ("sites", ("valueString", "valueCoding", "valueCode")),
    "date": ("date", ("valueDate", "valueDateTime")),
    "performer": ("performer", ("valueReference",)),
    "organization": ("organization", ("valueReference",)),
    "contextId": ("id", ("valueString", "valueId")),
}
_ENTRIES = {
    "Condition": "conditions",
    "MedicationStatement": "medications",
    "MedicationRequest": "medications",
    "Procedure": "priorProcedures",
}


def bundle_to_object(bundle: dict[str, Any]) -> dict[str, Any]:
    """A collection Bundle (Patient, Conditions, medications, Procedures, Parameters) as the
    plain context object."""
    if bundle.get("type") != "collection":
        raise ApplyError("Bundle.type", f"{bundle.get('type')!r}: expected a collection Bundle")
    out: dict[str, Any] = {"conditions": []}
    params = None
    for i, entry in enumerate(bundle.get("entry") or []):
        res = entry.get("resource") if isinstance(entry, dict) else None
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if rtype == "Patient":
            if "patient" in out:
                raise ApplyError(f"Bundle.entry[{i}]", "a second Patient (the context is about one patient)")
            out["patient"] = res
        elif rtype in _ENTRIES:
            out.setdefault(_ENTRIES[rtype], []).append(res)
        elif rtype == "Parameters":
            if params is not None:
                raise ApplyError(f"Bundle.entry[{i}]", "a second Parameters resource")
            params = res
        else:
            known = ", ".join(["Patient", *_ENTRIES, "Parameters"])
            raise ApplyError(f"Bundle.entry[{i}]", f"unexpected entry {rtype!r} ({known})")
    for j, p in enumerate((params or {}).get("parameter") or []):
        name = p.get("name") if isinstance(p, dict) else None
        if name not in _PARAMS:
            raise ApplyError(
                f"Parameters.parameter[{j}]", f"unknown parameter {name!r} (known: {', '.join(_PARAMS)})"
            )
        key, value_types = _PARAMS[name]
        values = [p[t] for t in value_types if t in p]
        if len(values) != 1:
            raise ApplyError(name, f"the parameter needs one of {', '.join(value_types)}")
        if key == "sites":
            out.setdefault("sites", []).append(values[0])
        elif key in out:
            raise ApplyError(name, "given twice")
        else:
            out[key] = values[0]
    return out
