"""Helpers shared by the resource builders."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from procfhir.config import Config
from procfhir.model import Code, Quote

FHIRPATH = "text/fhirpath"


def source_ext(cfg: Config, quotes: Iterable[Quote]) -> list[dict[str, Any]]:
    """One ``source-text`` extension per quote (see docs/contract.md)."""
    url = cfg.url("StructureDefinition", "source-text")
    return [
        {
            "url": url,
            "extension": [
                {"url": "document", "valueString": t.document},
                {"url": "sentence", "valueString": t.sentence},
                {"url": "quote", "valueString": t.text},
                {"url": "start", "valueInteger": t.start},
                {"url": "end", "valueInteger": t.end},
            ],
        }
        for t in quotes
    ]


def concept(codes: Iterable[Code], text: str | None = None) -> dict[str, Any]:
    cc: dict[str, Any] = {}
    codings = [c.coding() for c in codes]
    if codings:
        cc["coding"] = codings
    if text:
        cc["text"] = text
    return cc


def meta(cfg: Config, profile: str) -> dict[str, Any]:
    if not profile.startswith("http"):
        profile = cfg.url("StructureDefinition", profile)
    return {"profile": [profile]}


def shareable(cfg: Config) -> dict[str, Any]:
    """The metadata every knowledge/conformance resource of the package carries."""
    out: dict[str, Any] = {
        "version": cfg.version,
    }
    return out


def publisher_fields(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {"date": cfg.date, "publisher": cfg.publisher}
    if cfg.contact_email:
        out["contact"] = [
            {"name": cfg.publisher, "telecom": [{"system": "email", "value": cfg.contact_email}]}
        ]
    return out


def jurisdiction(cfg: Config) -> dict[str, Any]:
    if not cfg.jurisdiction:
        return {}
    return {"jurisdiction": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": cfg.jurisdiction}]}]}
