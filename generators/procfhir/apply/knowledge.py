"""What ``$apply`` needs from the package: the PlanDefinition, its ActivityDefinitions, the value
sets of levels and complications, the Consent template, and the mapping (for the consent form).

By default the knowledge resources are built in memory from the project's ``package.yaml`` by the
same builders that write ``fhir/``; ``package_dir`` reads them from a built package instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procfhir.apply.errors import KnowledgeError
from procfhir.config import Config, load_config
from procfhir.errors import BuildError
from procfhir.model import Document

_TYPES = ("PlanDefinition", "ActivityDefinition", "ValueSet", "CodeSystem", "Consent")
LEVELS_VALUE_SET = "vertebral-levels"
COMPLICATIONS_VALUE_SET = "vertebral-augmentation-complications"


@dataclass
class Knowledge:
    cfg: Config
    mapping: Document
    plan: dict[str, Any]
    activities: dict[str, dict[str, Any]]  # by canonical url (and url|version)
    value_sets: dict[str, dict[str, Any]]  # by id
    code_systems: dict[str, dict[str, Any]]  # by url
    consent_template: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def value_set_codings(self, vs_id: str) -> list[dict[str, str]]:
        """The codings of an enumerated (compose.include.concept) value set, in order."""
        vs = self.value_sets.get(vs_id)
        if vs is None:
            raise KnowledgeError(f"the package has no ValueSet {vs_id}")
        out = []
        for inc in vs.get("compose", {}).get("include", []):
            for c in inc.get("concept", []):
                out.append(
                    {"system": inc["system"], "code": c["code"], "display": c.get("display", c["code"])}
                )
        return out


def _read_package(package_dir: Path) -> list[dict[str, Any]]:
    if not package_dir.is_dir():
        raise KnowledgeError(f"{package_dir}: not a directory (expected a built package, e.g. fhir/)")
    out = []
    for path in sorted(package_dir.glob("*.json")):
        if path.name.split("-", 1)[0] not in _TYPES:
            continue
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KnowledgeError(f"{path}: cannot read the resource: {exc}") from None
        if isinstance(res, dict) and res.get("resourceType") in _TYPES:
            out.append(res)
    return out


def _build_in_memory(cfg: Config, mappings: list[Document]) -> list[dict[str, Any]]:
    from procfhir.builders.consent import build_consent
    from procfhir.builders.plandefinition import build_activities, build_plan
    from procfhir.builders.terminology import build_codesystem, build_value_sets

    out = [build_codesystem(cfg, mappings)]
    for m in mappings:
        out += build_value_sets(cfg, m)
        out += build_activities(cfg, m)
        out.append(build_plan(cfg, m))
        out.append(build_consent(cfg, m))
    return out


def load_knowledge(
    package_dir: str | Path | None = None,
    config: str | Path | None = None,
    plan_id: str | None = None,
) -> Knowledge:
    """Load the plan and what it refers to; raise :class:`KnowledgeError` naming what is missing."""
    from procfhir.build import load_mappings

    try:
        cfg = load_config(config)
        mappings = load_mappings(cfg)
    except BuildError as exc:
        raise KnowledgeError(str(exc)) from None
    resources = (
        _read_package(Path(package_dir)) if package_dir is not None else _build_in_memory(cfg, mappings)
    )
    plans = [r for r in resources if r["resourceType"] == "PlanDefinition"]
    if plan_id is not None:
        plans = [p for p in plans if p.get("id") == plan_id]
    if not plans:
        where = package_dir or cfg.path
        raise KnowledgeError(f"{where}: no PlanDefinition{' ' + plan_id if plan_id else ''} found")
    if len(plans) > 1:
        ids = ", ".join(sorted(p["id"] for p in plans))
        raise KnowledgeError(f"several PlanDefinitions ({ids}): choose one with plan_id")
    plan = plans[0]
    mapping = next((m for m in mappings if m.plan.id == plan["id"]), None)
    if mapping is None:
        raise KnowledgeError(f"no mapping of {cfg.path} defines the plan {plan['id']}")
    activities: dict[str, dict[str, Any]] = {}
    for r in resources:
        if r["resourceType"] == "ActivityDefinition" and r.get("url"):
            activities[r["url"]] = r
            if r.get("version"):
                activities[f"{r['url']}|{r['version']}"] = r
    consent_id = mapping.consent.id
    consent = next((r for r in resources if r["resourceType"] == "Consent" and r["id"] == consent_id), None)
    if consent is None:
        raise KnowledgeError(f"the package has no Consent template {consent_id}")
    return Knowledge(
        cfg=cfg,
        mapping=mapping,
        plan=plan,
        activities=activities,
        value_sets={r["id"]: r for r in resources if r["resourceType"] == "ValueSet"},
        code_systems={r["url"]: r for r in resources if r["resourceType"] == "CodeSystem" and r.get("url")},
        consent_template=consent,
    )
