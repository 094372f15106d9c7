"""Validation benchmark: the R4 spec's examples package (5,306 files) through ``procfhir validate``,
and our validator side by side with HAPI FHIR's ``$validate`` on the same resources.

    python benchmarks/bench_validate.py                        # ours only
    HAPI_BASE_URL=http://127.0.0.1:8090/fhir python benchmarks/bench_validate.py
    BENCH_HAPI_STRIDE=25 BENCH_WORKERS=2 ...                   # HAPI sample; workers run
    BENCH_BASELINE_SRC=/tmp/old/generators ...                 # an older validator, same run
    BENCH_REPEAT=3 ...                                         # best of 3 of each run

(an older version's code: ``git archive <commit> generators | tar -x -C /tmp/old``; before the
package was named ``procfhir`` (e.g. ffbd3e1, the validator before issue 12), the folder itself
was the package ``generators``: it is run as ``python -m generators.cli`` from its parent)

Prints, with the load average (the machine's cores may be shared: CPU seconds are the steadier
figure, wall seconds include waiting for a core):
- ``procfhir validate <examples>`` in one process: wall, CPU, peak RSS, resources/s; with the
  Python modules (``PROCFHIR_NATIVE=0``) and, when ``procfhir native build`` was run, the compiled
  ones (:mod:`procfhir.native`), and whether their OperationOutcomes are byte-identical;
- the same with ``--workers N``;
- ours and HAPI's $validate on the same sample of the examples (every BENCH_HAPI_STRIDE-th file,
  default 25: ~210 resources; HAPI takes about a second each), as a ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "generators"))

HAPI_STRIDE = int(os.environ.get("BENCH_HAPI_STRIDE", "25"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "1"))  # each run this many times: the best is shown

_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "w = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps([w, u.ru_utime + u.ru_stime, u.ru_maxrss, p.returncode, p.stdout.strip()[-300:]]))\n"
)


def cli_run(
    args: list[str], src: str | None = None, extra_env: dict[str, str] | None = None
) -> tuple[float, float, float, int, str]:
    """(wall s, CPU s, peak RSS MiB, exit code, summary) of one fresh ``procfhir`` process tree
    (``src``: run the code of that ``generators`` folder instead)."""
    cmd = [sys.executable, "-m", "procfhir.cli"]
    env = {**os.environ, **(extra_env or {})}
    if src:
        env["PYTHONPATH"] = src
    if src and not (Path(src) / "procfhir").is_dir() and (Path(src) / "cli.py").is_file():
        # the old layout: the folder is the package (``generators.cli``), importable from its parent
        folder = Path(src).resolve()
        cmd = [sys.executable, "-m", f"{folder.name}.cli"]
        env = {**os.environ, "PYTHONPATH": str(folder.parent)}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd, *args], capture_output=True, text=True, check=True, env=env
    )
    wall, cpu, rss_kib, code, tail = json.loads(out.stdout)
    return wall, cpu, rss_kib / 1024, code, tail.splitlines()[-1] if tail else ""


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def whole_package(examples: Path) -> None:
    from procfhir import native

    baseline = os.environ.get("BENCH_BASELINE_SRC")
    built = native.status().built
    print(f"native build of the walk's modules: {'yes' if built else 'no'} (procfhir native build)")
    python_only = {native.ENV_SWITCH: "0"}
    runs: list[tuple[str, int, str | None, dict[str, str]]] = [
        ("python", 1, None, python_only),
        ("ours", 1, None, {}),
        ("ours", WORKERS, None, {}),
    ]
    if not built:
        runs.pop(0)  # "ours" is the Python modules already
    if baseline:
        runs.insert(0, ("older", 1, baseline, {}))
    figures: dict[tuple[str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (who, workers, src, extra_env) in enumerate(runs):

            def args(r: int, k: int = k, src: str | None = src, workers: int = workers) -> list[str]:
                out = ["validate", str(examples), "-q", "--outcome", f"{tmp}/oo-{k}-{r}.json"]  # a new file
                return out + ([] if src else ["--workers", str(workers)])

            before = load()
            best = min(
                (cli_run(args(r), src, extra_env) for r in range(REPEAT)), key=lambda run: run[1]
            )  # the least CPU: the run least disturbed by other processes
            wall, cpu, rss, code, summary = best
            head = summary.split(" resource", 1)[0]
            n = float(head) if head.isdigit() else 0.0
            print(
                f"{who:6} procfhir validate <examples> --workers {workers}: wall {wall:.1f} s, "
                f"CPU {cpu:.1f} s, peak RSS {rss:.0f} MiB, exit {code}; {n / wall:,.0f} resources/s "
                f"wall, {n / max(cpu, 1e-9):,.0f}/s CPU ({before}; after: {load()})"
            )
            print(f"      {summary}")
            figures[(who, workers)] = (cpu, wall)
        ours = [k for k, run in enumerate(runs) if run[0] != "older"]
        same = len({Path(f"{tmp}/oo-{k}-{r}.json").read_bytes() for k in ours for r in range(REPEAT)}) == 1
        print(f"      our {len(ours)} OperationOutcomes are {'identical' if same else 'NOT identical'}")
    new = figures.get(("ours", 1))
    for other in ("older", "python"):
        old = figures.get((other, 1))
        if old and new:
            print(
                f"ratio {other}/ours in one process: CPU {old[0] / new[0]:.1f}x, "
                f"wall {old[1] / new[1]:.1f}x ({load()})"
            )


def side_by_side(examples: Path, base: str) -> None:
    import requests

    from procfhir.validator import Validator
    from procfhir.validator.hapi_compare import hapi_errors, hapi_validate

    files = [f for f in sorted(examples.glob("*.json")) if f.name != "package.json"][::HAPI_STRIDE]
    # StructureDefinitions left out of both: offline, HAPI waits for a package fetch on each one
    loaded = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    sample = [r for r in loaded if r.get("resourceType") != "StructureDefinition"]
    v = Validator()
    v.validate(sample[0])
    t0, c0 = time.perf_counter(), time.process_time()
    ours_err = sum(any(i.is_error for i in v.validate(r)) for r in sample)
    ours_wall, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
    s = requests.Session()
    hapi_validate(s, base, sample[0])  # warm-up
    t0 = time.perf_counter()
    hapi_err = sum(bool(hapi_errors(hapi_validate(s, base, r))) for r in sample)
    hapi_wall = time.perf_counter() - t0
    n = len(sample)
    print(
        f"same {n} resources (every {HAPI_STRIDE}th example, no StructureDefinition): "
        f"ours {ours_wall:.2f} s wall / {ours_cpu:.2f} s CPU ({n / ours_wall:,.0f}/s), "
        f"{ours_err} with errors; "
        f"HAPI $validate {hapi_wall:.1f} s wall "
        f"({n / hapi_wall:,.1f}/s), {hapi_err} with errors; "
        f"ratio HAPI/ours {hapi_wall / ours_wall:,.0f}x wall "
        f"({load()})"
    )


def main() -> None:
    from procfhir import fhircache

    examples = fhircache.examples_dir()
    print(f"examples: {examples} ({load()})")
    whole_package(examples)
    base = os.environ.get("HAPI_BASE_URL", "").rstrip("/")
    if base:
        side_by_side(examples, base)
    else:
        print("HAPI  skipped (set HAPI_BASE_URL to compare with $validate on the same resources)")


if __name__ == "__main__":
    main()
