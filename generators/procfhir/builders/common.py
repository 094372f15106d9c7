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


def coding_expression(codes_: Iterable[Code]) -> str:
    """FHIRPath criteria matching a Coding against the given codes, grouped by system.

    Written ``code = 'a' or code = 'b'`` (the same as ``code in ('a' | 'b')`` in FHIRPath) so that
    HAPI's clinical reasoning ``$apply`` evaluates it too: it translates FHIRPath to CQL, where
    ``'a' | 'b'`` (union of two strings) and ``code in 'a'`` do not resolve.
    """
    by_system: dict[str, list[str]] = {}
    for c in codes_:
        by_system.setdefault(c.system, []).append(c.code)
    parts = []
    for system, values in by_system.items():
        alternatives = " or ".join("code = '" + v.replace("'", "\\'") + "'" for v in values)
        if len(values) > 1:
            alternatives = f"({alternatives})"
        parts.append(f"(system = '{system}' and {alternatives})")
    return " or ".join(parts)


def has_condition_expression(codes_: Iterable[Code]) -> str:
    """FHIRPath: one of the patient's Conditions (``%conditions``), not refuted, has a code."""
    return (
        "%conditions.where(verificationStatus.coding.where(code = 'refuted' or "
        "code = 'entered-in-error').exists().not()).code.coding.where("
        + coding_expression(codes_)
        + ").exists()"
    )
