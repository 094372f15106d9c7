"""Batch ``$apply``: NDJSON contexts in, Bulk Data NDJSON out, streaming with flat memory.

The input is read line by line; each context's resources are serialized only once the whole
context succeeded, so a failed context writes nothing. Output (in ``out_dir``):

- ``{ResourceType}.ndjson``: one resource per line (the FHIR Bulk Data format, one file per type);
- ``OperationOutcome.ndjson``: one OperationOutcome per failed context, naming its line;
- ``summary.json``: counts.

Everything is written in a temporary folder beside ``out_dir`` and renamed at the end. With
``workers > 1`` chunks of lines are applied in worker processes, at most ``2 * workers`` chunks
in flight, and written in input order.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from procfhir.apply.errors import ApplyError, KnowledgeError, NotApplicable
from procfhir.safeout import check_folder, staged_folder
from procfhir.strictio import OVERLONG_LINE, StrictInputError, bounded_lines, loads_json

MAX_LINE_BYTES = 64 * 1024 * 1024  # one context (NDJSON line)

CHUNK = 256


@dataclass
class BatchReport:
    contexts: int = 0
    applied: int = 0
    failed: int = 0
    warnings: int = 0
    resources: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "contexts": self.contexts,
            "applied": self.applied,
            "failed": self.failed,
            "warnings": self.warnings,
            "resources": dict(sorted(self.resources.items())),
        }


def failure_outcome(line: int, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, NotApplicable):
        code = "business-rule"
    elif isinstance(exc, ApplyError):
        code = "invalid"
    else:
        code = "processing"
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": f"line {line}: {exc}"}
    if isinstance(exc, ApplyError) and exc.field and not isinstance(exc, NotApplicable):
        issue["location"] = [exc.field]
    return {"resourceType": "OperationOutcome", "id": f"line-{line}", "issue": [issue]}


_APPLIER: Any = None
_APPLIER_ARGS: tuple[Any, ...] = (None, None, True)


def _applier() -> Any:
    global _APPLIER
    if _APPLIER is None:
        from procfhir.apply import Applier
        from procfhir.apply.engine import load_plan

        package, plan, memo = _APPLIER_ARGS
        _APPLIER = Applier(load_plan(package, plan, memo=memo))
    return _APPLIER


def _init_worker(args: tuple[Any, ...]) -> None:
    global _APPLIER_ARGS, _APPLIER
    _APPLIER_ARGS = args
    _APPLIER = None


def apply_lines(chunk: list[tuple[int, bytes]]) -> list[tuple[int, list[tuple[str, str]], int, str | None]]:
    """Apply each (line number, line): (line, [(type, json)], warning count, failure json or None)."""
    applier = _applier()
    out: list[tuple[int, list[tuple[str, str]], int, str | None]] = []
    for lineno, raw in chunk:
        try:
            if raw == OVERLONG_LINE:
                raise ApplyError("context", f"the line is longer than {MAX_LINE_BYTES:,} bytes")
            try:
                obj = loads_json(raw, "")
            except StrictInputError as exc:
                raise ApplyError("context", exc.problem) from None
            result = applier.apply(obj)
        except (ApplyError, KnowledgeError) as exc:
            out.append((lineno, [], 0, json.dumps(failure_outcome(lineno, exc), ensure_ascii=False)))
            continue
        lines = [(r["resourceType"], orjson.dumps(r).decode("utf-8")) for r in result.resources]
        out.append((lineno, lines, len(result.warnings), None))
    return out


def _chunks(lines: Iterable[bytes], size: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        chunk.append((lineno, raw))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Writer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, IO[str]] = {}
        self.report = BatchReport()

    def _file(self, rtype: str) -> IO[str]:
        f = self.files.get(rtype)
        if f is None:
            f = self.files[rtype] = open(self.folder / f"{rtype}.ndjson", "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        return f

    def write(self, results: list[tuple[int, list[tuple[str, str]], int, str | None]]) -> None:
        rep = self.report
        for _lineno, lines, warnings, failure in results:
            rep.contexts += 1
            if failure is not None:
                rep.failed += 1
                self._file("OperationOutcome").write(failure + "\n")
                continue
            rep.applied += 1
            rep.warnings += warnings
            for rtype, text in lines:
                self._file(rtype).write(text + "\n")
                rep.resources[rtype] = rep.resources.get(rtype, 0) + 1

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def apply_batch(
    in_path: str | Path,
    out_dir: str | Path,
    *,
    package: str | Path | None = None,
    plan: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    memo: bool = True,
) -> BatchReport:
    """Apply every context of an NDJSON file; failed contexts go to OperationOutcome.ndjson."""
    global _APPLIER_ARGS, _APPLIER
    in_path, out_dir = Path(in_path), Path(out_dir)
    if not in_path.is_file():
        raise ApplyError("input", f"{in_path}: no such file")
    hint = "use --overwrite to replace it"
    check_folder(out_dir, replace=overwrite, hint=hint)  # never over a folder we did not write
    args = (package, plan, memo)
    if args != _APPLIER_ARGS:
        _APPLIER_ARGS, _APPLIER = args, None
    _applier()  # load the plan before any output: a broken package fails here, nothing written
    with staged_folder(out_dir, replace=overwrite, hint=hint) as tmp:
        writer = _Writer(tmp)
        try:
            with open(in_path, "rb") as src:
                if workers <= 1:
                    for chunk in _chunks(bounded_lines(src, MAX_LINE_BYTES), CHUNK):
                        writer.write(apply_lines(chunk))
                else:
                    _run_parallel(src, writer, workers, args)
        finally:
            writer.close()
        (tmp / "summary.json").write_text(
            json.dumps(writer.report.as_dict(), indent=2) + "\n", encoding="utf-8"
        )
    return writer.report


def _run_parallel(src: IO[bytes], writer: _Writer, workers: int, args: tuple[Any, ...]) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork") if hasattr(os, "fork") else None
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(args,)) as pool:
        pending: deque[Future[Any]] = deque()
        for chunk in _chunks(bounded_lines(src, MAX_LINE_BYTES), CHUNK):
            pending.append(pool.submit(apply_lines, chunk))
            if len(pending) >= 2 * workers:
                writer.write(pending.popleft().result())
        while pending:
            writer.write(pending.popleft().result())
