"""Benchmark: upload throughput of 5,000 resources to the local HAPI FHIR server.

Usage: python benchmarks/bench_upload.py [--resources 5000] [--sizes 100,500,1000]
       (HAPI_BASE_URL=http://127.0.0.1:8080/fhir to use a running server; else one is started)

In one run, each configuration uploads its own fresh copy of the same data (per-patient
Procedures, one Patient per ten resources; ids unique per configuration, so every upload is a
real create):
- the uploader (``Uploader.upload``: plan reads + sends) with one PUT per resource;
- the uploader with transactions of each batch size;
- the same transaction bundles, built beforehand, POSTed directly with requests (no planning,
  no checks): the best rate the server reaches.
Both with 1 and 2 bundles in flight at once (--workers; the uploader's --workers rule: a bundle
never goes while one it refers to is in flight).
The server is warmed up first (--warmup resources, not counted). Each transaction
configuration runs --rounds times, alternating with the direct posts (the database grows as the
benchmark goes); one PUT per resource runs first and last; the best run counts.
Prints resources/s per configuration.
Targets: batched >= 10x one PUT per resource, and the
best batched upload >= 80 % of the best direct-post rate.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procfhir.upload import Uploader  # noqa: E402


def make_data(tag: str, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    p = 0
    while len(out) < n:
        pid = f"{tag}-p{p}"
        out.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "name": [{"family": "Bench", "given": [str(p)]}],
                "gender": "female",
                "birthDate": "1950-01-01",
            }
        )
        for k in range(9):
            if len(out) >= n:
                break
            out.append(
                {
                    "resourceType": "Procedure",
                    "id": f"{tag}-p{p}-{k}",
                    "status": "completed",
                    "subject": {"reference": f"Patient/{pid}"},
                    "code": {
                        "coding": [{"system": "http://snomed.info/sct", "code": "392236004"}],
                        "text": "Operative procedure on spinal structure",
                    },
                    "performedDateTime": f"2026-01-{1 + k:02d}",
                }
            )
        p += 1
    return out


def bundles(base: str, resources: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    out = []
    for i in range(0, len(resources), size):
        chunk = resources[i : i + size]
        out.append(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                        "resource": r,
                        "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                    }
                    for r in chunk
                ],
            }
        )
    return out


def run_uploader(base: str, n: int, mode: str, size: int | None, workers: int = 1) -> float:
    data = make_data(f"b{uuid.uuid4().hex[:8]}", n)
    start = time.perf_counter()
    report = Uploader(base).upload(data, mode=mode, batch_size=size, workers=workers)
    elapsed = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"upload failed ({mode} {size}):\n{report.summary_table()}")
    return n / elapsed


def run_direct(base: str, n: int, size: int, workers: int = 1) -> float:
    """POST prebuilt transaction bundles; with ``workers`` > 1, up to that many at once, a bundle
    waiting while one in flight holds a resource it refers to (the uploader's own rule)."""
    data = make_data(f"d{uuid.uuid4().hex[:8]}", n)
    prepared = bundles(base, data, size)
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    bodies = [json.dumps(b, separators=(",", ":")).encode() for b in prepared]
    keys = [{f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in b["entry"]} for b in prepared]
    needs = [
        {e["resource"]["subject"]["reference"] for e in b["entry"] if "subject" in e["resource"]}
        for b in prepared
    ]
    sessions: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()
    for _ in range(workers):
        sessions.put(requests.Session())

    def post(body: bytes) -> None:
        session = sessions.get()
        try:
            resp = session.post(base, data=body, headers=headers, timeout=600)
        finally:
            sessions.put(session)
        if resp.status_code != 200:
            raise SystemExit(f"direct post failed: HTTP {resp.status_code} {resp.text[:300]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        in_flight: list[tuple[Future[None], set[str]]] = []
        for body, own, need in zip(bodies, keys, needs, strict=True):
            while in_flight and (len(in_flight) >= workers or any(need & k for _, k in in_flight)):
                wait([f for f, _ in in_flight], return_when=FIRST_COMPLETED)
                for f, _ in in_flight:
                    if f.done():
                        f.result()
                in_flight = [(f, k) for f, k in in_flight if not f.done()]
            in_flight.append((pool.submit(post, body), own))
        for f, _ in in_flight:
            f.result()
    return n / (time.perf_counter() - start)


def start_server() -> tuple[str, Any]:
    from procfhir.hapi_server import HapiServer, free_port  # the HAPI test server (hapi/)

    server = HapiServer(free_port()).start()
    print(f"started HAPI in {server.startup_seconds:.1f} s", flush=True)
    return server.base_url, server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resources", type=int, default=5000)
    ap.add_argument("--sizes", default="100,500,1000")
    ap.add_argument("--workers", default="1,2,3", help="bundles in flight at once (uploader and direct)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=20000,
        help="resources posted before measuring (HAPI's JIT keeps speeding up for ~20,000)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="runs per configuration (best counts)")
    ap.add_argument(
        "--put-resources",
        type=int,
        default=None,
        help="resources for the one-PUT-per-resource run (default: --resources)",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    base = os.environ.get("HAPI_BASE_URL")
    server = None
    if not base:
        base, server = start_server()
    base = base.rstrip("/")
    n = args.resources
    try:
        print(f"server {base}; {n} resources per configuration (Patients + Procedures)", flush=True)
        # Warm-up (JIT, caches), not counted: a cold HAPI runs everything slower, and whatever
        # ran first would look worst.
        run_uploader(base, 500, "put", None)
        run_uploader(base, 500, "transaction", 250)
        if args.warmup:
            run_direct(base, args.warmup, 500, 2)
        rows: list[tuple[str, float]] = []
        n_put = args.put_resources or n
        # One PUT per resource: measured first and again last (the server warmest, its database
        # biggest); the best counts, as for the batched configurations.
        rate_put = run_uploader(base, n_put, "put", None)
        best_up = best_direct = 0.0
        for workers in worker_counts:
            for size in sizes:
                # Alternate the two (the database grows as we go), best of --rounds each.
                up = direct = 0.0
                for r in range(args.rounds):
                    if r % 2 == 0:
                        up = max(up, run_uploader(base, n, "transaction", size, workers))
                        direct = max(direct, run_direct(base, n, size, workers))
                    else:
                        direct = max(direct, run_direct(base, n, size, workers))
                        up = max(up, run_uploader(base, n, "transaction", size, workers))
                w = f", {workers} at once" if workers > 1 else ""
                rows.append((f"uploader, transactions of {size}{w}", up))
                rows.append((f"direct POST of prebuilt transactions of {size}{w}", direct))
                best_up, best_direct = max(best_up, up), max(best_direct, direct)
                print(
                    f"  size {size}, workers {workers}: uploader {up:.0f}/s, direct {direct:.0f}/s",
                    flush=True,
                )
        rate_put = max(rate_put, run_uploader(base, n_put, "put", None))
        rows.insert(0, (f"uploader, one PUT per resource ({n_put})", rate_put))
        width = max(len(r[0]) for r in rows)
        print(f"\n{'configuration'.ljust(width)}  resources/s")
        for name, rate in rows:
            print(f"{name.ljust(width)}  {rate:10.1f}")
        print(f"\nbatched (best) / one PUT per resource: {best_up / rate_put:.1f}x (target >= 10x)")
        print(f"batched (best) / direct POST (best):   {100 * best_up / best_direct:.0f} % (target >= 80 %)")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
