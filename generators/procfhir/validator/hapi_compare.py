"""Compare our findings with HAPI FHIR's ``$validate`` (the HL7 validator inside a real server):
used by the agreement test and the benchmark. Talks to a HAPI base URL given by the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONFORMANCE = ("StructureDefinition", "ValueSet", "CodeSystem")


def install_definitions(session: Any, base_url: str, resources: list[dict[str, Any]]) -> int:
    """PUT the package's conformance resources (profiles, extensions, ValueSets, CodeSystems) so
    that HAPI's validator can resolve meta.profile and bindings. Returns how many."""
    count = 0
    for r in resources:
        if r.get("resourceType") not in CONFORMANCE:
            continue
        resp = session.put(
            f"{base_url}/{r['resourceType']}/{r['id']}",
            json=r,
            headers={"Content-Type": "application/fhir+json"},
            timeout=120,
        )
        if resp.status_code >= 300:
            raise RuntimeError(
                f"HAPI refused {r['resourceType']}/{r['id']}: {resp.status_code} {resp.text[:400]}"
            )
        count += 1
    return count


def hapi_validate(
    session: Any, base_url: str, resource: dict[str, Any], timeout: float = 120
) -> list[dict[str, Any]]:
    """The issues of HAPI's ``POST [base]/[type]/$validate`` for one resource."""
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    url = f"{base_url}/{rtype}/$validate" if isinstance(rtype, str) else f"{base_url}/$validate"
    resp = session.post(
        url,
        json=resource,
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
        timeout=timeout,
    )
    try:
        body = resp.json()
    except ValueError:
        return [{"severity": "fatal", "diagnostics": f"HTTP {resp.status_code}: {resp.text[:300]}"}]
    if body.get("resourceType") != "OperationOutcome":
        return [{"severity": "fatal", "diagnostics": f"HTTP {resp.status_code}: not an OperationOutcome"}]
    return list(body.get("issue") or [])


def hapi_errors(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in issues if i.get("severity") in ("error", "fatal")]


def hapi_location(issue: dict[str, Any]) -> str:
    locs = issue.get("expression") or issue.get("location") or [""]
    return str(locs[0])


@dataclass
class Agreement:
    name: str
    ours: list[str]
    hapi: list[str]

    @property
    def verdict(self) -> str:
        if bool(self.ours) == bool(self.hapi):
            return "same errors" if self.ours else "both valid"
        return "ours only" if self.ours else "HAPI only"


def agreement_table(rows: list[Agreement]) -> str:
    lines = ["| fixture | verdict | ours (first error) | HAPI (first error) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.verdict} | {(r.ours or ['-'])[0][:90]} | {(r.hapi or ['-'])[0][:90]} |"
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    lines.append("")
    lines.append(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
