"""The patient context ``$apply`` works on, read from a JSON object or a FHIR Bundle.

JSON object (one context)::

    {"id": "ctx-1",                                   # optional: the basis of the output ids
     "patient": {Patient resource} | {"reference": "Patient/p1", "display": "Jane Doe"},
     "conditions": [{Condition resource}, ...],
     "technique": "kyphoplasty",                      # a choice of the plan
     "levels": ["T12", "L1"],                         # labels of the package's vertebral levels
     "date": "2026-12-01",                            # planned date (FHIR date or dateTime)
     "performer": "Practitioner/dr-a" | {"reference": ..., "display": ...},
     "organization": "Organization/hosp" | {"reference": ...}}

Bundle (type ``collection``): one Patient, the Conditions, and one Parameters resource with
``technique`` (valueCode), ``level`` (valueString, repeated), ``date`` (valueDate or
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

_ID = r"[A-Za-z0-9\-.]{1,64}"
_LEVEL = re.compile(r"^([CTLS])(\d{1,2})$")
_REAL_LEVELS = {"C": 7, "T": 12, "L": 5, "S": 5}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
FIELDS = ("id", "patient", "conditions", "technique", "levels", "date", "performer", "organization")


@dataclass(frozen=True)
class PatientContext:
    key: str  # the basis of the deterministic output ids
    patient: dict[str, Any]  # the Patient resource (a minimal one when only a reference was given)
    patient_ref: dict[str, Any]
    patient_name: str
    conditions: list[dict[str, Any]]
    technique: str
    levels: list[dict[str, str]]  # codings from the levels value set, in the order given
    level_labels: list[str]
    date: str
    performer: dict[str, Any]
    organization: dict[str, Any]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _reference(value: Any, field: str, rtype: str) -> dict[str, Any]:
    if value is None or value == "" or value == {}:
        raise ApplyError(field, f'missing (a {rtype} reference such as "{rtype}/example")')
    if isinstance(value, str):
        value = {"reference": value}
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        raise ApplyError(field, f'expected a {rtype} reference ("{rtype}/id" or {{"reference": ...}})')
    if not re.match(rf"^(\S*/)?{rtype}/{_ID}$", value["reference"]):
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
        if not isinstance(pid, str) or not re.match(rf"^{_ID}$", pid):
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


def _conditions(value: Any, patient_ref: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApplyError("conditions", "expected a list of Condition resources")
    for i, cond in enumerate(value):
        if not isinstance(cond, dict) or cond.get("resourceType") != "Condition":
            raise ApplyError(f"conditions[{i}]", "not a Condition resource")
        subject = cond.get("subject", {}).get("reference") if isinstance(cond.get("subject"), dict) else None
        if subject and subject.rsplit("/", 2)[-2:] != patient_ref.split("/"):
            raise ApplyError(
                f"conditions[{i}].subject", f"refers to {subject}, not to the patient {patient_ref}"
            )
    return value


def _levels(value: Any, by_label: dict[str, dict[str, str]]) -> tuple[list[dict[str, str]], list[str]]:
    if not isinstance(value, list) or not value:
        raise ApplyError("levels", 'missing: give the vertebral levels to treat, e.g. ["T12", "L1"]')
    codings, labels, seen = [], [], {}
    for i, item in enumerate(value):
        field = f"levels[{i}]"
        if isinstance(item, dict):  # a Coding
            match = [
                lbl
                for lbl, c in by_label.items()
                if c["system"] == item.get("system") and c["code"] == item.get("code")
            ]
            if not match:
                raise ApplyError(
                    field, f"{item.get('system')}|{item.get('code')} is not in the package's vertebral levels"
                )
            label = match[0]
        elif isinstance(item, str):
            m = _LEVEL.match(item.strip().upper())
            if not m:
                raise ApplyError(
                    field, f"{item!r} is not a vertebral level (expected a label such as T12 or L1)"
                )
            label = f"{m.group(1)}{int(m.group(2))}"
            if not 1 <= int(m.group(2)) <= _REAL_LEVELS[m.group(1)]:
                raise ApplyError(field, f"{item!r} is not a vertebral level (there is no {label})")
            if label not in by_label:
                raise ApplyError(
                    field,
                    f"{label} is not among the levels this plan treats (value set vertebral-levels: "
                    f"{', '.join(by_label)})",
                )
        else:
            raise ApplyError(field, 'expected a level label such as "T12"')
        if label in seen:
            raise ApplyError(field, f"{label} is listed twice (also levels[{seen[label]}])")
        seen[label] = i
        codings.append(by_label[label])
        labels.append(label)
    return codings, labels


def _date(value: Any) -> str:
    if value is None or value == "":
        raise ApplyError("date", "missing (the planned date, e.g. 2026-12-01)")
    if not isinstance(value, str) or not (_DATE.match(value) or _DATETIME.match(value)):
        raise ApplyError("date", f"{value!r} is not a FHIR date (YYYY-MM-DD) or dateTime with time zone")
    try:
        (date.fromisoformat if len(value) == 10 else datetime.fromisoformat)(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApplyError("date", f"{value!r} is not a real date") from None
    return value


def level_index(level_codings: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """Label ("T12") -> coding, from the value set displays ("T12 vertebra")."""
    out = {}
    for c in level_codings:
        label = c["display"].split(" ", 1)[0].upper()
        if _LEVEL.match(label):
            out[label] = c
    return out


def parse_context(
    obj: Any, techniques: list[str], levels_by_label: dict[str, dict[str, str]]
) -> PatientContext:
    """Read one context (JSON object or Bundle); raise :class:`ApplyError` naming the field."""
    if not isinstance(obj, dict):
        raise ApplyError("context", "expected a JSON object or a FHIR Bundle")
    if obj.get("resourceType") == "Bundle":
        obj = bundle_to_object(obj)
    elif "resourceType" in obj:
        raise ApplyError(
            "resourceType", f"{obj['resourceType']!r}: expected a Bundle or a plain context object"
        )
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise ApplyError(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    patient, patient_ref, name = _patient(obj.get("patient"))
    conditions = _conditions(obj.get("conditions"), patient_ref["reference"])
    technique = obj.get("technique")
    if technique in (None, ""):
        raise ApplyError("technique", f"missing (one of {', '.join(techniques)})")
    if technique not in techniques:
        raise ApplyError("technique", f"unknown technique {technique!r} (one of {', '.join(techniques)})")
    codings, labels = _levels(obj.get("levels"), levels_by_label)
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
        technique=technique,
        levels=codings,
        level_labels=labels,
        date=when,
        performer=performer,
        organization=organization,
    )


_PARAMS = {
    "technique": ("technique", ("valueCode", "valueString")),
    "level": ("levels", ("valueString", "valueCoding")),
    "date": ("date", ("valueDate", "valueDateTime")),
    "performer": ("performer", ("valueReference",)),
    "organization": ("organization", ("valueReference",)),
    "contextId": ("id", ("valueString", "valueId")),
}


def bundle_to_object(bundle: dict[str, Any]) -> dict[str, Any]:
    """A collection Bundle (Patient, Conditions, Parameters) as the plain context object."""
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
        elif rtype == "Condition":
            out["conditions"].append(res)
        elif rtype == "Parameters":
            if params is not None:
                raise ApplyError(f"Bundle.entry[{i}]", "a second Parameters resource")
            params = res
        else:
            raise ApplyError(
                f"Bundle.entry[{i}]", f"unexpected entry {rtype!r} (Patient, Condition, Parameters)"
            )
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
        if key == "levels":
            out.setdefault("levels", []).append(values[0])
        elif key in out:
            raise ApplyError(name, "given twice")
        else:
            out[key] = values[0]
    return out
