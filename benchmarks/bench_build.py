"""Benchmark: the whole build as a cold process (``procfhir build``), as a user runs it.

Usage: python benchmarks/bench_build.py [--runs 10]
Prints min / median / max wall time of ``python -m procfhir.cli build --out <tmp>`` and the
slowest imports of one run (python -X importtime). Target: under 1 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(out: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "procfhir.cli", "build", "--out", str(out), *extra],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def slowest_imports(out: Path, top: int = 8) -> list[tuple[int, str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "procfhir.cli", "build", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line.split("|")
            try:
                rows.append((int(parts[1]), parts[2].rstrip()))
            except ValueError:
                continue
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fhir"
        for label, extra in (("build + validate", []), ("build, no validation", ["--no-validate"])):
            times = [run_once(out, extra) for _ in range(args.runs)]
            print(
                f"{label:24s} runs={args.runs} min={min(times):.3f}s "
                f"median={statistics.median(times):.3f}s max={max(times):.3f}s"
            )
        print("slowest imports (cumulative microseconds):")
        for us, name in slowest_imports(out):
            print(f"  {us:>8d}  {name}")


if __name__ == "__main__":
    main()
