"""The terminology report: every code the package uses, the installed source (package, version,
exact entry) it was verified against (:mod:`procfhir.terminology.verify`), and the local codes
awaiting review with the reason each has no standard code. A coding whose source is unknown stops
the build."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from procfhir.config import Config
from procfhir.errors import BuildError
from procfhir.model import Code, Document
from procfhir.terminology.verify import CodeCheck

# Codes that come from the configuration rather than from a mapping.
_CONFIG_SOURCES = {
    "urn:iso:std:iso:3166": "ISO 3166-1 country code (package.yaml jurisdiction)",
    "http://unitsofmeasure.org": "UCUM unit of a limit's period (FHIR R4 Duration, docs/contract.md)",
}
# Codes the builders write whatever the procedure (a mapping may also list them, with its source).
_BUILDER_CODES = {
    ("http://terminology.hl7.org/CodeSystem/consentscope", "treatment"): (
        "Treatment",
        "FHIR R4 specification, CodeSystem consentscope (Consent.scope of every treatment consent)",
    ),
    ("http://loinc.org", "59284-0"): (
        "Consent Document",
        "FHIR R4 specification, Consent.category (every treatment consent)",
    ),
    ("http://terminology.hl7.org/CodeSystem/plan-definition-type", "clinical-protocol"): (
        "Clinical Protocol",
        "FHIR R4 specification, CodeSystem plan-definition-type (every plan)",
    ),
}


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
    cfg: Config,
    mappings: list[Document],
    resources: list[dict[str, Any]],
    checks: dict[tuple[str, str], CodeCheck] | None = None,
) -> dict[str, Any]:
    """``checks``: the verification of each code (its status and where it was verified)."""
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
                    where = f"ValueSet/{res['id']}"
                    _use(used, known, inc["system"], c["code"], where, problems, c.get("display"))
            continue
        for path, coding in iter_codings(res, res["resourceType"]):
            if res["resourceType"] == "CodeSystem" and ".concept" in path:
                continue
            where = f"{res['resourceType']}/{res['id']}"
            _use(used, known, coding["system"], coding["code"], where, problems, coding.get("display"))
    if problems:
        raise BuildError("codes without a confirmed source or display are used", sorted(set(problems)))
    rows = sorted(used.values(), key=lambda r: (r["system"], r["code"]))
    for r in rows:
        check = (checks or {}).get((r["system"], r["code"]))
        if check is not None:
            r["verification"] = check.as_dict()
        elif not r["local"]:
            r["verification"] = {"status": "configuration", "note": r["source"]}
    counts: dict[str, int] = {}
    for r in rows:
        status = r.get("verification", {}).get("status", "local" if r["local"] else "unverified")
        counts[status] = counts.get(status, 0) + 1
    return {
        "summary": dict(sorted(counts.items())),
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
    display: Any = None,
) -> None:
    key = (system, code)
    c = known.get(key)
    shown = " ".join(display.split()) if isinstance(display, str) else None
    if c is not None and shown is not None and shown != " ".join(c.display.split()):
        # every coding shows the display its mapping gives (and the build verified)
        problems.append(f"{where}: {system}|{code} shows display {display!r}; the mapping: {c.display!r}")
    if key not in used:
        c = known.get(key)
        if c is None and key in _BUILDER_CODES:
            display, source = _BUILDER_CODES[key]
            used[key] = {
                "system": system,
                "code": code,
                "display": display,
                "source": source,
                "local": False,
                "used_in": [],
            }
        elif c is None and system in _CONFIG_SOURCES:
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
    summary = ", ".join(f"{n} {status}" for status, n in report.get("summary", {}).items())
    lines = [
        "# Terminology report",
        "",
        f"{len(report['codes'])} codes used ({summary}); "
        f"{len(report['local_codes_awaiting_review'])} local codes await terminology review.",
        "",
        "Confirmed: the code and its display verified against the installed terminology content "
        "(`procfhir terminology fill`). Unverifiable: no freely licensed content to verify against.",
        "",
        "## Local codes awaiting review",
        "",
        "| code | display | why no standard code | used in |",
        "|---|---|---|---|",
    ]
    for r in report["local_codes_awaiting_review"]:
        why = r.get("verification", {}).get("note", "")
        lines.append(f"| {r['code']} | {r['display']} | {_cell(why)} | {', '.join(r['used_in'])} |")
    lines += [
        "",
        "## Every code used",
        "",
        "| system | code | display | status | verified against (package version: entry) | used in |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["codes"]:
        v = r.get("verification", {})
        where = f"{v['package']} {v['version']}: {v['entry']}" if v.get("entry") else ""
        if v.get("note") and v.get("status") != "local":
            where = f"{where} ({v['note']})" if where else v["note"]
        lines.append(
            f"| {r['system']} | {r['code']} | {r['display']} | {v.get('status', '')} | {_cell(where)} "
            f"| {', '.join(r['used_in'])} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
