"""The package's profiles and extensions: hand-written differentials in ``profiles/`` made into
publishable StructureDefinitions (``{base}`` substituted, metadata from the configuration,
snapshots generated against the R4 core snapshots, a generated narrative)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from procfhir.errors import BuildError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
PLACEHOLDER = "{base}"


def read_differentials(canonical: str, folder: Path = PROFILES_DIR) -> list[dict[str, Any]]:
    """The differential StructureDefinitions of ``folder``, ``{base}`` replaced by canonical."""
    out = []
    files = sorted(folder.glob("*.json"))
    if not files:
        raise BuildError(f"{folder}: no profile (StructureDefinition JSON) found")
    for path in files:
        text = path.read_text(encoding="utf-8").replace(PLACEHOLDER, canonical)
        try:
            sd = json.loads(text)
        except ValueError as exc:
            raise BuildError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(sd, dict) or sd.get("resourceType") != "StructureDefinition":
            raise BuildError(f"{path}: not a StructureDefinition")
        if "differential" not in sd:
            raise BuildError(f"{path}: no differential")
        sd.pop("snapshot", None)
        out.append(sd)
    return out


def _narrative(sd: dict[str, Any]) -> dict[str, str]:
    rows = []
    for ed in sd["differential"]["element"]:
        parts = []
        if "min" in ed or "max" in ed:
            parts.append(f"{ed.get('min', '')}..{ed.get('max', '')}")
        if "type" in ed:
            parts.append(
                " | ".join(
                    t["code"] + "".join(f"({p})" for p in t.get("profile", []) + t.get("targetProfile", []))
                    for t in ed["type"]
                )
            )
        if "binding" in ed:
            parts.append(f"{ed['binding']['strength']} binding to {ed['binding'].get('valueSet', '')}")
        for k, v in ed.items():
            if k.startswith(("fixed", "pattern")):
                parts.append(f"{k} {json.dumps(v, sort_keys=True)}")
        for c in ed.get("constraint", []):
            parts.append(f"{c['key']}: {c['human']}")
        if "slicing" in ed:
            parts.append(
                "sliced by " + ", ".join(f"{d['type']}:{d['path']}" for d in ed["slicing"]["discriminator"])
            )
        rows.append(f"<tr><td>{html.escape(ed['id'])}</td><td>{html.escape('; '.join(parts))}</td></tr>")
    div = (
        f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(sd["title"])} '
        f"({html.escape(sd['type'])}): {html.escape(sd['description'])}</p>"
        f"<table><tr><th>Element</th><th>Constraint</th></tr>{''.join(rows)}</table></div>"
    )
    return {"status": "generated", "div": div}


def build_profiles(
    canonical: str,
    version: str,
    publisher: str,
    date: str,
    status: str = "draft",
    folder: Path = PROFILES_DIR,
    generated: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Publishable StructureDefinitions (with snapshots), sorted by id: the differentials of
    ``folder`` and the ``generated`` ones (each plan's own profiles, made from its model)."""
    from procfhir.validator.definitions import Definitions, DefinitionsError
    from procfhir.validator.snapshot import SnapshotError, generate_snapshot

    diffs = read_differentials(canonical, folder) + list(generated or [])
    out = []
    try:
        defs = Definitions(diffs)
        for sd in diffs:
            full: dict[str, Any] = {"resourceType": "StructureDefinition", "id": sd["id"]}
            full["meta"] = {"profile": ["http://hl7.org/fhir/StructureDefinition/StructureDefinition"]}
            full["text"] = _narrative(sd)
            for key, value in sd.items():
                if key not in ("resourceType", "id", "meta", "text"):
                    full[key] = value
            full["version"] = version
            full["status"] = status
            full["experimental"] = False  # like the package's other resources: not for testing only
            full["date"] = date
            full["publisher"] = publisher
            ordered = {k: full[k] for k in _ORDER if k in full} | {
                k: v for k, v in full.items() if k not in _ORDER
            }
            out.append(generate_snapshot(ordered, defs))
    except (SnapshotError, DefinitionsError) as exc:
        raise BuildError(f"profiles: {exc}") from None
    return sorted(out, key=lambda s: s["id"])


_ORDER = [
    "resourceType",
    "id",
    "meta",
    "text",
    "url",
    "version",
    "name",
    "title",
    "status",
    "experimental",
    "date",
    "publisher",
    "description",
    "fhirVersion",
    "kind",
    "abstract",
    "context",
    "type",
    "baseDefinition",
    "derivation",
    "differential",
]


def load_profiles(config: Any = None, generated: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The package's StructureDefinitions for a configuration (``procfhir.config.load_config()``),
    with the ``generated`` differentials of its plans."""
    if config is None:
        from procfhir.config import load_config

        config = load_config()
    return build_profiles(
        config.canonical,
        config.version,
        config.publisher,
        config.date,
        getattr(config, "status", "draft") or "draft",
        generated=generated,
    )
