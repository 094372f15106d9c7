"""HAPI FHIR test server: cold startup time and the JVM's resident memory.

    python benchmarks/bench_hapi_startup.py [--runs N] [--java-opts "-Xmx3g"]

Each run starts a new JVM on a free loopback port with a fresh in-memory database (the jar is
built first if missing, outside the timing), and prints:
- startup seconds: process launch to the first 200 on GET /fhir/metadata;
- RSS (VmRSS from /proc/<pid>/status) right after startup, after the first $validate of a Patient
  (which loads the R4 core definitions into the validator), and after a second one;
- the first and second $validate's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from procfhir.hapi_server import HapiServer, ensure_jar, free_port  # noqa: E402

PATIENT = {
    "resourceType": "Patient",
    "name": [{"family": "Bench", "given": ["Mark"]}],
    "gender": "female",
    "birthDate": "1950-01-01",
}


def validate(base_url: str) -> float:
    began = time.monotonic()
    resp = requests.post(
        f"{base_url}/Patient/$validate",
        data=json.dumps(PATIENT),
        headers={"Content-Type": "application/fhir+json"},
        timeout=600,
    )
    resp.raise_for_status()
    return time.monotonic() - began


def one_run(java_opts: str | None) -> dict[str, float]:
    server = HapiServer(free_port(), java_opts=java_opts)
    server.start(timeout=600)
    try:
        figures = {
            "startup_s": server.startup_seconds or 0.0,
            "rss_after_start_mib": (server.rss_kib() or 0) / 1024,
        }
        figures["validate1_s"] = validate(server.base_url)
        figures["rss_after_validate1_mib"] = (server.rss_kib() or 0) / 1024
        figures["validate2_s"] = validate(server.base_url)
        figures["rss_after_validate2_mib"] = (server.rss_kib() or 0) / 1024
        return figures
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--java-opts", default=None, help="JVM options (default -Xmx3g)")
    args = parser.parse_args()
    ensure_jar()
    runs = []
    for i in range(args.runs):
        figures = one_run(args.java_opts)
        runs.append(figures)
        print(f"run {i + 1}: " + ", ".join(f"{k}={v:.1f}" for k, v in figures.items()), flush=True)
    if len(runs) > 1:
        print("median: " + ", ".join(f"{k}={statistics.median(r[k] for r in runs):.1f}" for k in runs[0]))


if __name__ == "__main__":
    main()
