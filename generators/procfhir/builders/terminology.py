"""The project's own CodeSystem (local codes awaiting review) and the ValueSets."""

from __future__ import annotations

from typing import Any

from procfhir.builders.common import jurisdiction, publisher_fields, source_ext
from procfhir.config import Config
from procfhir.model import Code, Document, Quote
from procfhir.narrative import narrative, table

SHAREABLE_CS = "http://hl7.org/fhir/StructureDefinition/shareablecodesystem"
SHAREABLE_VS = "http://hl7.org/fhir/StructureDefinition/shareablevalueset"


def build_codesystem(cfg: Config, documents: list[Document]) -> dict[str, Any]:
    """One CodeSystem for every document's local codes (a code defined twice must agree: checked
    by :func:`procfhir.mapping.check_shared_codes`; its quotes are those of every document)."""
    by_code: dict[str, tuple[Code, list[Quote]]] = {}
    for d in documents:
        for c in d.local_codes:
            by_code.setdefault(c.code, (c, []))[1].extend(c.quotes)
    concepts: dict[str, dict[str, Any]] = {}
    for key, (c, quotes) in by_code.items():
        entry: dict[str, Any] = {"code": c.code, "display": c.display, "definition": c.definition}
        concepts[key] = {"extension": source_ext(cfg, quotes), **entry} if quotes else entry
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


def build_value_sets(cfg: Config, d: Document) -> list[dict[str, Any]]:
    out = []
    for vs in d.value_sets:
        vs_codes = vs.codes
        include: dict[str, list[Code]] = {}
        for c in vs_codes:
            include.setdefault(c.system, []).append(c)
        out.append(
            {
                "resourceType": "ValueSet",
                "id": vs.id,
                "meta": {"profile": [SHAREABLE_VS]},
                "text": narrative(
                    ("p", vs.title),
                    table(["System", "Code", "Display"], [[c.system, c.code, c.display] for c in vs_codes]),
                ),
                "url": cfg.url("ValueSet", vs.id),
                "version": cfg.version,
                "name": vs.name,
                "title": vs.title,
                "status": cfg.status,
                "experimental": False,
                **publisher_fields(cfg),
                "description": f"{vs.title}, from the mapping of {d.title}.",
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
