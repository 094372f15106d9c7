"""Benchmark: ``procfhir apply --batch`` as a whole process, at 10,000 and 100,000 contexts.

Prints contexts/s (wall time of the process, start-up included) and the peak memory of the
process (ru_maxrss from wait4). Targets (issue 5): >= 2,000 contexts/s; the same peak memory at
both sizes. Usage: ``python benchmarks/bench_apply.py [--sizes 10000,100000] [--workers 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.apply_samples import write_ndjson  # noqa: E402


def run(n: int, workdir: Path, workers: int) -> dict[str, float]:
    src = workdir / f"contexts-{n}.ndjson"
    write_ndjson(src, n, seed=n)
    out = workdir / f"out-{n}"
    cmd = [sys.executable, "-m", "procfhir.cli", "apply", "--batch", str(src), "--out", str(out),
           "--workers", str(workers)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"procfhir apply failed for {n} contexts: {err}")
    summary = json.loads((out / "summary.json").read_text())
    size = sum(p.stat().st_size for p in out.iterdir())
    shutil.rmtree(out)
    src.unlink()
    return {
        "contexts": n,
        "applied": summary["applied"],
        "seconds": round(wall, 2),
        "contexts_per_s": round(n / wall),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "output_mib": round(size / 2**20),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            print(json.dumps(run(n, Path(tmp), args.workers)), flush=True)


if __name__ == "__main__":
    main()
