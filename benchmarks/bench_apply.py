"""Benchmark: ``procfhir apply --batch`` against its floor, as whole processes.

For each size (default 10,000 and 100,000 contexts) it runs, each as a fresh process of the same
interpreter (``sys.executable``), timed from its start to its exit, so that each figure includes
the interpreter's start-up and its imports:

- ``apply 1w`` and ``apply 2w``: ``python -m procfhir.cli apply --batch FILE --out DIR --workers
  N`` with N = 1 and 2: the interpreter, the imports, loading and compiling the plan, reading,
  parsing and checking every context, applying the plan, serializing and writing the NDJSON
  files (in a staging folder renamed at the end) and ``summary.json``;
- ``floor``: the same interpreter running only this file's :func:`floor` (it imports ``orjson``
  and ``pickle``, nothing of ``procfhir``): the same contexts read and parsed (``orjson.loads``
  per line), the same output serialized (``orjson.dumps`` per resource, from a pool of the
  resources $apply gives for the first 256 contexts, reused in turn, so the bytes written per
  context are the same; the pool is unpickled at its start) and written to one NDJSON file per
  type, and ``summary.json``; nothing else.
- with ``--baseline TREE`` (a checkout of another version, e.g. ``git archive main``), ``base 1w``
  and ``base 2w``: the same command with ``TREE/generators`` first on ``PYTHONPATH`` (before and
  after measured in the same run).

The kinds of run are interleaved (each repeat runs them all in turn) so that they meet the same
background load. It prints, per run, wall time, CPU time (user+sys of the process and its workers),
contexts/s, peak memory (ru_maxrss, the largest process) and output size, then, per size, the best
of the repeats and the ratios: ``apply/floor`` (CPU and wall, one worker) and the ``2w/1w``
speed-up (wall). The machine may be shared: the 1-minute load average is printed with each
figure; compare ratios, not absolute times. Targets (issue 10): apply/floor <= 2, 2 workers >=
1.8x one, peak memory flat from 10k to 100k.

Usage: ``python benchmarks/bench_apply.py [--sizes 10000,100000] [--package fhir/] [--repeat 3]
[--baseline TREE]`` (the output is written under ``TMPDIR``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# (the floor process imports only these, then orjson and pickle; the rest is imported in main)

ROOT = Path(__file__).resolve().parent.parent
POOL = 256


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    import subprocess
    import time

    load = _load()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) not in (0,):
        raise SystemExit(f"{' '.join(cmd)} failed: {err}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB; children's max included
        "load_1m": load,
    }


def _size(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1)


def make_pool(src: Path, pool: Path, package: str | None) -> None:
    import json
    import pickle

    from procfhir.apply import Applier, load_plan

    applier = Applier(load_plan(package))
    out: list[list[dict[str, Any]]] = []
    with open(src, "rb") as f:
        for line in f:
            out.append(applier.apply(json.loads(line)).resources)
            if len(out) >= POOL:
                break
    pool.write_bytes(pickle.dumps(out))


def floor(src: str, pool_path: str, out_dir: str) -> None:
    """The floor process: parse each context, serialize and write the same resources."""
    import pickle

    import orjson

    pool = pickle.loads(Path(pool_path).read_bytes())
    out = Path(out_dir)
    out.mkdir()
    files: dict[str, Any] = {}
    n = 0
    with open(src, "rb") as f:
        for line in f:
            orjson.loads(line)
            for r in pool[n % len(pool)]:
                rtype = r["resourceType"]
                fh = files.get(rtype)
                if fh is None:
                    fh = files[rtype] = open(out / f"{rtype}.ndjson", "wb")  # noqa: SIM115
                fh.write(orjson.dumps(r) + b"\n")
            n += 1
    for fh in files.values():
        fh.close()
    (out / "summary.json").write_bytes(orjson.dumps({"contexts": n}, option=orjson.OPT_INDENT_2) + b"\n")


def bench(n: int, work: Path, package: str | None, repeat: int, baseline: Path | None) -> dict[str, Any]:
    import json
    import shutil

    sys.path.insert(0, str(ROOT))
    from tests.apply_samples import write_ndjson

    src = work / f"contexts-{n}.ndjson"
    write_ndjson(src, n, seed=n)
    pool = work / "pool.pickle"
    make_pool(src, pool, package)
    pkg = ["--package", package] if package else []
    apply_cmd = [sys.executable, "-m", "procfhir.cli", "apply", *pkg, "--batch", str(src), "--out"]
    base_env = None
    kinds: list[tuple[str, list[str] | None, dict[str, str] | None]] = [
        ("floor", None, None),
        ("apply 1w", ["--workers", "1"], None),
        ("apply 2w", ["--workers", "2"], None),
    ]
    if baseline is not None:
        path = [str(baseline / "generators"), *filter(None, [os.environ.get("PYTHONPATH")])]
        base_env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        kinds += [("base 1w", ["--workers", "1"], base_env), ("base 2w", ["--workers", "2"], base_env)]
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeat):  # interleaved: each kind of run meets the same background load
        for name, workers, env in kinds:
            out = work / f"out-{n}-{name.replace(' ', '')}"
            if workers is None:
                cmd = [sys.executable, __file__, "--floor", str(src), str(pool), str(out)]
            else:
                cmd = [*apply_cmd, str(out), *workers]
            row: dict[str, Any] = {"contexts": n, "run": name, **_run(cmd, env)}
            row["contexts_per_s"] = round(n / row["wall_s"])
            row["output_mib"] = _size(out)
            print(json.dumps(row), flush=True)
            shutil.rmtree(out)
            old = best.get(name)
            if old is None:
                best[name] = row
            else:  # the best of the repeats, each figure on its own
                for k in ("wall_s", "cpu_s", "peak_rss_mib"):
                    old[k] = min(old[k], row[k]) if k != "peak_rss_mib" else max(old[k], row[k])
    src.unlink()
    ratios: dict[str, Any] = {"contexts": n, "best of": repeat}
    for who in ("apply", "base") if baseline is not None else ("apply",):
        one, two = best[f"{who} 1w"], best[f"{who} 2w"]
        ratios[who] = {
            "1w wall_s": one["wall_s"],
            "2w wall_s": two["wall_s"],
            "floor wall_s": best["floor"]["wall_s"],
            "apply/floor wall": round(one["wall_s"] / best["floor"]["wall_s"], 2),
            "apply/floor cpu": round(one["cpu_s"] / best["floor"]["cpu_s"], 2),
            "2w/1w speed-up (wall)": round(one["wall_s"] / two["wall_s"], 2),
            "2w/1w cpu": round(two["cpu_s"] / one["cpu_s"], 2),
        }
    ratios["peak_rss_mib"] = {k: v["peak_rss_mib"] for k, v in best.items()}
    ratios["load_1m"] = _load()
    print(json.dumps(ratios), flush=True)
    return ratios


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--floor":
        floor(*sys.argv[2:])
        return
    import argparse
    import json
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--package", default=None, help="package for $apply (default: fhir/)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repeats; the best figures")
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a source tree of another version (e.g. git archive main | tar -x -C TREE), run too",
    )
    args = ap.parse_args()
    print(json.dumps({"cpus": os.cpu_count(), "load_1m": _load()}), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            results.append(bench(n, Path(tmp), args.package, args.repeat, args.baseline))
    floor_ok = all(r["apply"]["apply/floor wall"] <= 2 for r in results)
    speed_ok = all(r["apply"]["2w/1w speed-up (wall)"] >= 1.8 for r in results)
    peaks = [max(r["peak_rss_mib"]["apply 1w"], r["peak_rss_mib"]["apply 2w"]) for r in results]
    summary = {
        "targets": {
            "apply/floor <= 2 (wall, 1 worker)": floor_ok,
            "2 workers >= 1.8x one (wall)": speed_ok,
            "peak memory (MiB) per size": peaks,
        }
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
