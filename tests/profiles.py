"""Small profiles for the validator's tests: a StructureDefinition constraining a core type
with a differential only (its snapshot is made by the validator)."""

from __future__ import annotations

from typing import Any


def profile(url: str, elements: list[dict[str, Any]], base: str = "Patient", **more: Any) -> dict[str, Any]:
    """A profile of core's ``base`` at ``url`` whose differential is ``elements`` (ids and paths
    as written); ``more``: further properties (``contained``, ``context``, a ``kind``...)."""
    sd: dict[str, Any] = {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": url.rsplit("/", 1)[-1].capitalize() or "P",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": base,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{base}",
        "derivation": "constraint",
        "differential": {"element": elements},
    }
    sd.update(more)
    return sd
