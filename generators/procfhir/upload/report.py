"""What an upload did: per-resource results, server OperationOutcome issues, a summary table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("create", "update", "unchanged")


@dataclass
class Issue:
    """One OperationOutcome issue (or a finding of our own), tied to a resource when known."""

    severity: str
    message: str
    resource: str = ""  # Type/id, or "" for the request as a whole
    location: str = ""  # FHIRPath expression or location from the server
    code: str = ""
    source: str = "server"  # server | verify | validate | transport

    def line(self) -> str:
        where = self.resource or "(request)"
        loc = f" at {self.location}" if self.location else ""
        code = f" [{self.code}]" if self.code else ""
        return f"{self.severity.upper():11} {where}{loc}: {self.message}{code}"


def issues_from_outcome(outcome: Any, resource: str = "", source: str = "server") -> list[Issue]:
    """The issues of an OperationOutcome (anything else gives one issue saying so)."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return []
    out = []
    for iss in outcome.get("issue") or []:
        if not isinstance(iss, dict):
            continue
        locs = iss.get("expression") or iss.get("location") or []
        message = iss.get("diagnostics") or (iss.get("details") or {}).get("text") or "(no message)"
        out.append(
            Issue(
                severity=str(iss.get("severity", "error")),
                message=str(message).strip(),
                resource=resource,
                location=", ".join(str(x) for x in locs),
                code=str(iss.get("code", "")),
                source=source,
            )
        )
    return out


@dataclass
class ResourceResult:
    key: str  # Type/id as in the input
    action: str  # create | update | unchanged (from the plan)
    status: str = "planned"  # planned | written | unchanged | failed | not sent
    http_status: int | None = None
    version: str | None = None  # server version after the upload
    changes: list[str] = field(default_factory=list)  # paths that differed before the upload
    note: str = ""


@dataclass
class UploadReport:
    mode: str
    dry_run: bool
    results: list[ResourceResult] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    lost_responses: int = 0
    elapsed: float = 0.0
    verified: bool = False
    validated: bool = False
    fatal: str = ""  # a failure that stopped the upload

    @property
    def failed(self) -> list[ResourceResult]:
        return [r for r in self.results if r.status in ("failed", "not sent")]

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ("error", "fatal")]

    @property
    def ok(self) -> bool:
        return not self.fatal and not self.failed and not self.errors

    def count(self, action: str) -> int:
        return sum(1 for r in self.results if r.action == action)

    def summary_table(self) -> str:
        """A plain-text table: per resource type, how many were created/updated/unchanged/failed."""
        rows: dict[str, Counter[str]] = {}
        for r in self.results:
            c = rows.setdefault(r.key.split("/", 1)[0], Counter())
            c[r.action] += 1
            if r.status in ("failed", "not sent"):
                c["failed"] += 1
        header = ["resource type", "create", "update", "unchanged", "failed"]
        body = [[t, *(str(c[a]) for a in (*ACTIONS, "failed"))] for t, c in sorted(rows.items())]
        total: Counter[str] = Counter()
        for c in rows.values():
            total.update(c)
        body.append(["total", *(str(total[a]) for a in (*ACTIONS, "failed"))])
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

        def fmt(row: list[str]) -> str:
            return "  ".join(
                cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
            )

        lines = [fmt(header), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in body[:-1]]
        lines += ["  ".join("-" * w for w in widths), fmt(body[-1])]
        rate = f", {len(self.results) / self.elapsed:.1f} resources/s" if self.elapsed > 0 else ""
        state = "dry run, nothing written" if self.dry_run else f"mode {self.mode}"
        lines.append(
            f"{state}; {self.requests} requests, {self.retries} retries, "
            f"{self.lost_responses} lost responses; {self.elapsed:.2f} s{rate}"
        )
        if self.verified:
            lines.append(
                "verify: "
                + (
                    "every resource read back matches"
                    if not any(i.source == "verify" for i in self.issues)
                    else "MISMATCHES (see above)"
                )
            )
        if self.validated:
            n = sum(1 for i in self.errors if i.source == "validate")
            lines.append(f"validate: {n} error(s) from $validate")
        if self.fatal:
            lines.append(f"FAILED: {self.fatal}")
        return "\n".join(lines)
