"""The project's own CodeSystem (local codes awaiting review) and the ValueSets."""

from __future__ import annotations

from typing import Any

from procfhir.builders.common import codes, jurisdiction, publisher_fields, source_ext
from procfhir.config import Config
from procfhir.mapping import Code, Mapping
from procfhir.narrative import narrative, table

SHAREABLE_CS = "http://hl7.org/fhir/StructureDefinition/shareablecodesystem"
SHAREABLE_VS = "http://hl7.org/fhir/StructureDefinition/shareablevalueset"


def build_codesystem(cfg: Config, mappings: list[Mapping]) -> dict[str, Any]:
    """One CodeSystem for every document's local codes (a code defined twice must agree)."""
    concepts: dict[str, dict[str, Any]] = {}
    for m in mappings:
        for key, c in m.data["local_codes"].items():
            entry: dict[str, Any] = {"code": key, "display": c["display"], "definition": c["definition"]}
            if "quotes" in c:
                entry = {"extension": source_ext(cfg, m.traces(c)), **entry}
            concepts.setdefault(key, entry)
    ordered = [concepts[k] for k in sorted(concepts)]
    return {
        "resourceType": "CodeSystem",
        "id": "local",
        "meta": {"profile": [SHAREABLE_CS]},
        "text": narrative(
            ("p", "Local codes for concepts with no confirmed standard code, awaiting terminology review."),
            table(
                ["Code", "Display", "Definition"],
                [[c["code"], c["display"], c["definition"]] for c in ordered],
            ),
        ),
        "url": cfg.local_system,
        "version": cfg.version,
        "name": "LocalProcedureConcepts",
        "title": "Local procedure concepts (awaiting terminology review)",
        "status": cfg.status,
        "experimental": False,
        **publisher_fields(cfg),
        "description": (
            "Concepts of the procedure information texts for which no standard code has been "
            "confirmed in a trustworthy published source. Each is listed in the build's "
            "terminology report for review."
        ),
        **jurisdiction(cfg),
        "caseSensitive": True,
        "content": "complete",
        "count": len(ordered),
        "concept": ordered,
    }


def _value_set_codes(m: Mapping, vs: dict[str, Any]) -> list[Code]:
    if "codes" in vs:
        return codes(m, vs["codes"])
    src = vs["from"]
    plan = m.data["plan"]
    keys: list[str] = []
    if src == "indications":
        keys = [k for i in plan["indications"] for k in i["codes"]]
    elif src == "risks":
        keys = [k for r in m.data["consent"]["risks"] for k in r["codes"]]
    elif src == "techniques":
        for t in plan["techniques"]:
            act = next(a for a in m.data["activities"] if a["id"] == t["activity"])
            keys += act["codes"]
    seen: list[str] = []
    for k in keys:
        if k not in seen:
            seen.append(k)
    return codes(m, seen)


def build_value_sets(cfg: Config, m: Mapping) -> list[dict[str, Any]]:
    out = []
    for vs in m.data["value_sets"]:
        vs_codes = _value_set_codes(m, vs)
        include: dict[str, list[Code]] = {}
        for c in vs_codes:
            include.setdefault(c.system, []).append(c)
        out.append(
            {
                "resourceType": "ValueSet",
                "id": vs["id"],
                "meta": {"profile": [SHAREABLE_VS]},
                "text": narrative(
                    ("p", vs["title"]),
                    table(["System", "Code", "Display"], [[c.system, c.code, c.display] for c in vs_codes]),
                ),
                "url": cfg.url("ValueSet", vs["id"]),
                "version": cfg.version,
                "name": vs["name"],
                "title": vs["title"],
                "status": cfg.status,
                "experimental": False,
                **publisher_fields(cfg),
                "description": f"{vs['title']}, from the mapping of {m.data['document']['title']}.",
                **jurisdiction(cfg),
                "compose": {
                    "include": [
                        {
                            "system": system,
                            **({"version": cfg.version} if system == cfg.local_system else {}),
                            "concept": [{"code": c.code, "display": c.display} for c in cs],
                        }
                        for system, cs in include.items()
                    ]
                },
            }
        )
    return out
