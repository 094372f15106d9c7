"""Our validator and HAPI FHIR's ``$validate`` (the HL7 validator inside a real server) on the same
resources: the R4 spec's examples package and our own package, compared per resource (verdict:
errors or not) and per issue (errors at the same location), with a table of the remaining
disagreements grouped by rule (message id) and their causes.

    python benchmarks/compare_validators.py [--stride 10] [--out compare.md] [--json compare.json]
    python benchmarks/compare_validators.py --files A.json B.json --no-package   # chosen files
    HAPI_BASE_URL=http://127.0.0.1:8090/fhir python benchmarks/compare_validators.py

Without HAPI_BASE_URL it starts the project's HAPI server (``hapi/``) on a free port of
127.0.0.1 and stops it at the end. HAPI takes about a second per resource here, so the examples
are sampled: every ``--stride``-th file (``--stride 1``: all 5,300; about 1.5 h on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "generators"))

# Remaining differences with their cause, by (side with the error, rule id). Measured against
# HAPI FHIR 8.8.0 on the R4 examples (see the note of issue 12).
CAUSES: dict[tuple[str, str], str] = {
    ("hapi", "VALIDATION_VAL_PROFILE_UNKNOWN_NOT_POLICY"): "HAPI's server is set not to fetch unknown "
    "profiles and makes an unresolvable meta.profile an error (here a US SDC profile, not in core); ours "
    "follows the HL7 validator's default, a warning (--strict: an error)",
    ("hapi", "Terminology_PassThrough_TX_Message"): "HAPI's terminology service on a code ours cannot "
    "judge offline (its code system is not in core, THO or the package); UCUM units and THO code "
    "systems are checked by ours since",
    ("hapi", "IG_HL7_STANDARDS_STATUS_REQUIRED"): "HL7-publishing rules for HL7's own IGs: not implemented",
    ("hapi", "IG_HL7_WG_REQUIRED"): "HL7-publishing rules for HL7's own IGs: not implemented",
    ("hapi", "?"): "HAPI failed internally on the resource (HAPI-0389 ... HAPI-0650: it tried to fetch "
    "a value set from the network)",
    ("hapi", "VALIDATION_HL7_PUBLISHER_MISMATCH"): "HL7-publishing rule (work group vs publisher): "
    "not implemented",
    ("ours", "CARD_MIN"): "HAPI reports the same missing element on its parent (matched when at the parent)",
}


HAPI_TIMEOUT = float(os.environ.get("COMPARE_HAPI_TIMEOUT", "600"))
_FAILED = "HAPI did not answer: "


@dataclass
class Row:
    name: str
    ours: list[tuple[str, str, str]] = field(default_factory=list)  # (location, id, message) of errors
    hapi: list[tuple[str, str, str]] = field(default_factory=list)
    ours_seconds: float = 0.0
    hapi_seconds: float = 0.0
    hapi_failed: str = ""  # HAPI gave no OperationOutcome (timeout, HTTP error): not compared

    @property
    def same_verdict(self) -> bool:
        return bool(self.ours) == bool(self.hapi)


_COMMENT = re.compile(r"/\*.*?\*/")
_OFTYPE = re.compile(r"\.ofType\(\w+\)")


def _norm(loc: str, choices: frozenset[str]) -> str:
    loc = _OFTYPE.sub("", _COMMENT.sub("", loc))
    parts = []
    for part in loc.split("."):
        name, _, idx = part.partition("[")
        m = re.match(r"^([a-z][A-Za-z0-9]*?)[A-Z]", name)
        if m and m.group(1) in choices:
            name = m.group(1)
        parts.append(name + ("[" + idx if idx else ""))
    return ".".join(parts)


def _hapi_id(issue: dict[str, Any]) -> str:
    for e in issue.get("extension") or []:
        if e.get("url", "").endswith("operationoutcome-message-id"):
            return str(e.get("valueString", ""))
    for c in (issue.get("details") or {}).get("coding") or []:
        if c.get("system") == "http://hl7.org/fhir/java-core-messageId":
            return str(c.get("code", ""))
    return ""


def compare(
    resources: list[tuple[str, dict[str, Any]]],
    base: str,
    validator: Any,
    threads: int = 2,
) -> list[Row]:
    import requests

    from procfhir.validator.fastpath import _choice_names
    from procfhir.validator.hapi_compare import hapi_location, hapi_validate

    choices = _choice_names()
    rows: list[Row] = []
    for name, res in resources:
        row = Row(name)
        t0 = time.perf_counter()
        issues = validator.validate(res)
        row.ours_seconds = time.perf_counter() - t0
        row.ours = [(_norm(i.location, choices), i.message_id, i.message) for i in issues if i.is_error]
        rows.append(row)
    local: dict[int, Any] = {}

    def ask(i: int) -> tuple[int, list[dict[str, Any]], float]:
        s = local.setdefault(os.getpid() * 1000 + i % threads, requests.Session())
        t0 = time.perf_counter()
        try:
            got = hapi_validate(s, base, resources[i][1], timeout=HAPI_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a HAPI failure is reported, not fatal to the run
            got = [{"severity": "fatal", "diagnostics": f"{_FAILED}{type(exc).__name__}: {exc}"}]
        return i, got, time.perf_counter() - t0

    with ThreadPoolExecutor(threads) as pool:
        for done, (i, got, seconds) in enumerate(pool.map(ask, range(len(resources))), 1):
            rows[i].hapi_seconds = seconds
            if got and str(got[0].get("diagnostics", "")).startswith((_FAILED, "HTTP ")):
                rows[i].hapi_failed = str(got[0]["diagnostics"])[:200]
                continue
            rows[i].hapi = [
                (_norm(hapi_location(h), choices), _hapi_id(h), str(h.get("diagnostics", "")))
                for h in got
                if h.get("severity") in ("error", "fatal")
            ]
            if done % 50 == 0:
                print(f"  HAPI: {done}/{len(resources)}", file=sys.stderr, flush=True)
    return rows


def unmatched(rows: list[Row]) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
    """Errors of one side with no error of the other side at the same location, by (side, id)."""
    out: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for r in rows:
        theirs = {loc for loc, _, _ in r.hapi}
        mine = {loc for loc, _, _ in r.ours}
        for loc, mid, msg in r.ours:
            if not _near(loc, theirs):
                out[("ours", mid or "?")].append((r.name, loc, msg))
        for loc, mid, msg in r.hapi:
            if not _near(loc, mine):
                out[("hapi", mid or "?")].append((r.name, loc, msg))
    return out


def _near(loc: str, others: set[str]) -> bool:
    """The same location, or its parent or child (HAPI reports a missing element on its parent)."""
    return any(
        loc == o or loc.startswith((o + ".", o + "[")) or o.startswith((loc + ".", loc + "[")) for o in others
    )


def report(title: str, all_rows: list[Row]) -> str:
    failed = [r for r in all_rows if r.hapi_failed]
    rows = [r for r in all_rows if not r.hapi_failed]
    n = len(rows)
    same = sum(r.same_verdict for r in rows)
    both_err = sum(bool(r.ours) and bool(r.hapi) for r in rows)
    ours_only = sum(bool(r.ours) and not r.hapi for r in rows)
    hapi_only = sum(bool(r.hapi) and not r.ours for r in rows)
    ours_t = sum(r.ours_seconds for r in rows)
    hapi_t = sum(r.hapi_seconds for r in rows)
    lines = [
        f"## {title}",
        "",
        f"{n} resources; same verdict on {same} ({100 * same / max(n, 1):.1f} %): "
        f"both with errors {both_err}, both without {same - both_err}; "
        f"errors from ours only {ours_only}, from HAPI only {hapi_only}.",
        f"Time: ours {ours_t:.1f} s ({n / max(ours_t, 1e-9):,.0f}/s), HAPI $validate {hapi_t:.1f} s "
        f"({n / max(hapi_t, 1e-9):,.1f}/s); ratio {hapi_t / max(ours_t, 1e-9):,.0f}x; "
        f"load average {os.getloadavg()[0]:.1f}.",
        "",
        f"Not compared (HAPI gave no OperationOutcome): {len(failed)}"
        + "".join(f"\n- {r.name}: {r.hapi_failed}" for r in failed),
        "",
        "Resources with a different verdict:",
        "",
        "| resource | errors from | first error (id, location, message) |",
        "|---|---|---|",
    ]
    for r in rows:
        if r.same_verdict:
            continue
        side, errs = ("ours", r.ours) if r.ours else ("HAPI", r.hapi)
        loc, mid, msg = errs[0]
        lines.append(f"| {r.name} | {side} | {mid} `{loc}` {msg[:110].replace('|', '/')} |")
    lines += [
        "",
        "Errors at a location where the other validator reports none, by rule:",
        "",
        "| side | rule id | errors | resources | example | cause |",
        "|---|---|---|---|---|---|",
    ]
    groups = unmatched(rows)
    for (side, mid), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        res = len({name for name, _, _ in items})
        name, loc, msg = items[0]
        cause = CAUSES.get((side, mid), "")
        example = f"{name} `{loc}`: {msg[:100]}".replace("|", "/")
        lines.append(f"| {side} | {mid} | {len(items)} | {res} | {example} | {cause} |")
    return "\n".join(lines)


def examples(stride: int, offset: int = 0) -> list[tuple[str, dict[str, Any]]]:
    from procfhir import fhircache

    files = [f for f in sorted(fhircache.examples_dir().glob("*.json")) if f.name not in ("package.json",)]
    return [(f.name, json.loads(f.read_text(encoding="utf-8"))) for f in files[offset::stride]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stride", type=int, default=10, help="every n-th example (1: all)")
    ap.add_argument("--offset", type=int, default=0, help="start at this file (another sample)")
    ap.add_argument("--threads", type=int, default=2, help="requests in flight to HAPI")
    ap.add_argument(
        "--files",
        nargs="+",
        default=None,
        help="compare these resource files (e.g. those a rule change gives errors) instead of a sample",
    )
    ap.add_argument("--out", default=None, help="write the Markdown report here too")
    ap.add_argument("--json", dest="json_out", default=None, help="write per-resource rows (JSON)")
    ap.add_argument("--no-package", action="store_true", help="skip our own package")
    ap.add_argument(
        "--skip-type",
        action="append",
        default=[],
        help="leave out resources of this type (HAPI fetches packages from packages.fhir.org for each "
        "StructureDefinition and, offline, waits for every fetch to time out)",
    )
    args = ap.parse_args()

    from procfhir.validator import Validator

    base = os.environ.get("HAPI_BASE_URL", "").rstrip("/")
    server = None
    if not base:
        from procfhir.hapi_server import HapiServer, free_port

        server = HapiServer(free_port())
        server.start(timeout=600)
        base = server.base_url
    try:
        sections = []
        if args.files:
            chosen = [(Path(f).name, json.loads(Path(f).read_text(encoding="utf-8"))) for f in args.files]
        else:
            chosen = examples(args.stride, args.offset)
        sample = [(n, r) for n, r in chosen if r.get("resourceType") not in args.skip_type]
        print(f"resources: {len(sample)}", file=sys.stderr)
        rows = compare(sample, base, Validator(), args.threads)
        skipped = f"; left out: {', '.join(args.skip_type)}" if args.skip_type else ""
        if args.files:
            title = f"Given files ({len(sample)}{skipped})"
        else:
            title = f"R4 examples package (every {args.stride}th of 5,306 files from #{args.offset}{skipped})"
        sections.append(report(title, rows))
        all_rows = {"examples": rows}
        if not args.no_package:
            import requests

            from procfhir.build import build
            from procfhir.validator.hapi_compare import install_definitions

            package = [r for r in build(write=False, validate=False).resources]
            install_definitions(requests.Session(), base, package)
            mine = Validator(extra_definitions=[r for r in package if "url" in r])
            named = [
                (f"{r['resourceType']}/{r['id']}", r)
                for r in package
                if r["resourceType"] != "ImplementationGuide"
            ]
            prow = compare(named, base, mine, args.threads)
            sections.append(
                report("Our package (built; HAPI given its profiles, value sets, code systems)", prow)
            )
            all_rows["package"] = prow
        text = "\n\n".join(sections)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        if args.json_out:
            Path(args.json_out).write_text(
                json.dumps({k: [r.__dict__ for r in v] for k, v in all_rows.items()}, indent=1) + "\n",
                encoding="utf-8",
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
