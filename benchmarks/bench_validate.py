"""Validation benchmark: our offline validator vs HAPI FHIR's $validate, on the same resources.

    python benchmarks/bench_validate.py                      # ours only
    HAPI_BASE_URL=http://127.0.0.1:8090/fhir python benchmarks/bench_validate.py

Prints: throughput (resources/s) on the package and on 10,000 generated Procedures (HAPI: on
a sample of them, BENCH_HAPI_SAMPLE, default 300, since it is ~100x slower), error counts
from both (same findings?), and the cold process time of ``procfhir validate <package folder>``.
The package is a fresh build in a temp folder (what ``procfhir build`` writes to fhir/).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_PROCEDURES = int(os.environ.get("BENCH_PROCEDURES", "10000"))
HAPI_SAMPLE = int(os.environ.get("BENCH_HAPI_SAMPLE", "300"))
COLD_RUNS = int(os.environ.get("BENCH_COLD_RUNS", "5"))


def package_dir(tmp: Path) -> Path:
    """A fresh build of the package (the same content as fhir/, with the current profiles)."""
    from procfhir.build import build

    out = tmp / "fhir"
    build(out_dir=out)
    return out


def load_package(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "resourceType" in data and data["resourceType"] != "Bundle":
            out.append(data)
    return out


LEVELS = [
    ("66794005", "L1 vertebra"),
    ("14293000", "L2 vertebra"),
    ("36470004", "L3 vertebra"),
    ("11994002", "L4 vertebra"),
    ("49668003", "L5 vertebra"),
    ("23215003", "T12 vertebra"),
]


def generated_procedures(template: dict, n: int) -> list[dict]:
    """n distinct Procedures from the package's example (dates, levels, status vary)."""
    out = []
    for i in range(n):
        p = copy.deepcopy(template)
        p["id"] = f"bench-{i:05d}"
        day = 1 + i % 28
        p["performedDateTime"] = f"2026-{1 + i % 12:02d}-{day:02d}T{8 + i % 10:02d}:{i % 60:02d}:00Z"
        code, display = LEVELS[i % len(LEVELS)]
        p["bodySite"] = [
            {
                "coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}],
                "text": display,
            }
        ]
        out.append(p)
    return out


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} resources/s ({n} in {seconds:.2f} s)"


def ours(resources: list[dict], definitions: list[dict]) -> tuple[float, int]:
    from procfhir.validator import Validator

    v = Validator(extra_definitions=definitions)
    v.validate(resources[0])  # definitions loaded lazily: count them in, but once
    t0 = time.perf_counter()
    errors = 0
    for r in resources:
        errors += sum(1 for i in v.validate(r) if i.severity in ("error", "fatal"))
    return time.perf_counter() - t0, errors


def hapi(base: str, resources: list[dict]) -> tuple[float, int]:
    import requests

    from procfhir.validator.hapi_compare import hapi_errors, hapi_validate

    s = requests.Session()
    hapi_validate(s, base, resources[0])  # warm-up (HAPI loads and caches definitions)
    t0 = time.perf_counter()
    errors = 0
    for r in resources:
        errors += len(hapi_errors(hapi_validate(s, base, r)))
    return time.perf_counter() - t0, errors


def cold(folder: Path) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of a fresh ``procfhir validate`` process; CPU time is what the
    process itself costs, wall time also counts waiting for a busy machine's cores."""
    import resource

    exe = Path(sys.executable).parent / "procfhir"
    cmd = (
        [str(exe), "validate", str(folder), "-q"]
        if exe.exists()
        else [sys.executable, "-m", "procfhir.cli", "validate", str(folder), "-q"]
    )
    out = []
    for _ in range(COLD_RUNS):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append((wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)))
        if proc.returncode != 0:
            print(f"  (validate exited {proc.returncode}: {proc.stdout.strip().splitlines()[-1:]})")
    return out


def main() -> None:
    base = os.environ.get("HAPI_BASE_URL", "").rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        folder = package_dir(Path(tmp))
        package = load_package(folder)
        defs = [r for r in package if "url" in r]
        template = next(r for r in package if r["resourceType"] == "Procedure")
        procs = generated_procedures(template, N_PROCEDURES)
        print(f"package: {folder} ({len(package)} resources)")

        rounds = max(1, 2000 // len(package))
        seconds, errs = ours(package * rounds, defs)
        print(f"ours  package:           {rate(len(package) * rounds, seconds)}; errors {errs}")
        seconds_p, errs_p = ours(procs, defs)
        ours_proc_rate = len(procs) / seconds_p
        print(f"ours  {len(procs)} Procedures: {rate(len(procs), seconds_p)}; errors {errs_p}")
        sample = procs[:HAPI_SAMPLE]
        s_sample, e_sample = ours(sample, defs)

        if base:
            import requests

            from procfhir.validator.hapi_compare import install_definitions

            n = install_definitions(requests.Session(), base, package)
            print(f"HAPI  {base}: installed {n} conformance resources")
            h_seconds, h_errs = hapi(base, package)
            print(f"HAPI  package:           {rate(len(package), h_seconds)}; errors {h_errs}")
            h_sec_p, h_errs_p = hapi(base, sample)
            hapi_rate = len(sample) / h_sec_p
            print(
                f"HAPI  {len(sample)} Procedures:   {rate(len(sample), h_sec_p)}; errors {h_errs_p} "
                f"(ours on the same {len(sample)}: {e_sample} errors, {len(sample) / s_sample:,.0f}/s)"
            )
            print(
                f"ratio ours/HAPI on Procedures: {ours_proc_rate / hapi_rate:,.1f}x; package: "
                f"{(len(package) * rounds / seconds) / (len(package) / h_seconds):,.1f}x"
            )
        else:
            print("HAPI  skipped (set HAPI_BASE_URL to compare with $validate)")

        runs = cold(folder)
        walls = [w for w, _ in runs]
        cpus = [c for _, c in runs]
        print(
            f"cold  procfhir validate <package>/ ({len(package)} files + bundle.json): wall median "
            f"{statistics.median(walls):.2f} s (min {min(walls):.2f}), "
            f"CPU median {statistics.median(cpus):.2f} s "
            f"(min {min(cpus):.2f}) over {len(runs)} runs; load average {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
