"""The terminology report: every code the package uses, where it was confirmed, and the local
codes awaiting review. A coding whose source is unknown stops the build."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from procfhir.config import Config
from procfhir.errors import BuildError
from procfhir.model import Code, Document

# Codes that come from the configuration rather than from a mapping.
_CONFIG_SOURCES = {"urn:iso:std:iso:3166": "ISO 3166-1 country code (package.yaml jurisdiction)"}


def iter_codings(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "system" in node and "code" in node and isinstance(node.get("code"), str):
            yield path, node
        for key, value in node.items():
            yield from iter_codings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_codings(value, f"{path}[{i}]")


def terminology_report(
    cfg: Config, mappings: list[Document], resources: list[dict[str, Any]]
) -> dict[str, Any]:
    from procfhir.builders.provenance import CODES as PROVENANCE_CODES

    known: dict[tuple[str, str], Code] = {(c.system, c.code): c for c in PROVENANCE_CODES}
    for m in mappings:
        for c in m.codes.values():
            known.setdefault((c.system, c.code), c)
    used: dict[tuple[str, str], dict[str, Any]] = {}
    problems: list[str] = []
    for res in resources:
        if res["resourceType"] in ("StructureDefinition", "ImplementationGuide"):
            continue
        if res["resourceType"] == "ValueSet":  # compose lists codes as {code, display} under system
            for inc in res.get("compose", {}).get("include", []):
                for c in inc.get("concept", []):
                    _use(used, known, inc["system"], c["code"], f"ValueSet/{res['id']}", problems)
            continue
        for path, coding in iter_codings(res, res["resourceType"]):
            if res["resourceType"] == "CodeSystem" and ".concept" in path:
                continue
            _use(
                used, known, coding["system"], coding["code"], f"{res['resourceType']}/{res['id']}", problems
            )
    if problems:
        raise BuildError("codes without a confirmed source are used", sorted(set(problems)))
    rows = sorted(used.values(), key=lambda r: (r["system"], r["code"]))
    return {
        "codes": rows,
        "local_codes_awaiting_review": [r for r in rows if r["local"]],
    }


def _use(
    used: dict[tuple[str, str], dict[str, Any]],
    known: dict[tuple[str, str], Code],
    system: str,
    code: str,
    where: str,
    problems: list[str],
) -> None:
    key = (system, code)
    if key not in used:
        c = known.get(key)
        if c is None and system in _CONFIG_SOURCES:
            used[key] = {
                "system": system,
                "code": code,
                "display": "",
                "source": _CONFIG_SOURCES[system],
                "local": False,
                "used_in": [],
            }
        elif c is None:
            problems.append(f"{where}: code {system}|{code} has no confirmed source in any mapping")
            return
        else:
            used[key] = {
                "system": system,
                "code": code,
                "display": c.display,
                "source": c.source,
                "local": c.local,
                "used_in": [],
            }
    if where not in used[key]["used_in"]:
        used[key]["used_in"].append(where)


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Terminology report",
        "",
        f"{len(report['codes'])} codes used; {len(report['local_codes_awaiting_review'])} local codes "
        "await terminology review.",
        "",
        "## Local codes awaiting review",
        "",
        "| code | display | used in |",
        "|---|---|---|",
    ]
    for r in report["local_codes_awaiting_review"]:
        lines.append(f"| {r['code']} | {r['display']} | {', '.join(r['used_in'])} |")
    lines += [
        "",
        "## Every code used",
        "",
        "| system | code | display | confirmed in | used in |",
        "|---|---|---|---|---|",
    ]
    for r in report["codes"]:
        lines.append(
            f"| {r['system']} | {r['code']} | {r['display']} | {r['source']} | {', '.join(r['used_in'])} |"
        )
    return "\n".join(lines) + "\n"
