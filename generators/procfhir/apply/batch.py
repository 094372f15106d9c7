"""Batch ``$apply``: NDJSON contexts in, Bulk Data NDJSON out, streaming with flat memory.

The input is read line by line; each context's resources are serialized only once the whole
context succeeded, so a failed context writes nothing. Output (in ``out_dir``):

- ``{ResourceType}.ndjson``: one resource per line (the FHIR Bulk Data format, one file per type);
- ``OperationOutcome.ndjson``: one OperationOutcome per failed context, naming its line;
- ``summary.json``: counts.

Everything is written in a temporary folder beside ``out_dir`` and renamed at the end. With
``workers > 1`` the input is cut into pieces of ``PIECE_BYTES`` (a piece holds the lines that
start in its bytes); worker ``w`` of ``n``, forked once the plan is loaded, reads, parses and
applies pieces ``w``, ``w + n``, ``w + 2n``... itself (finding where its lines start by looking
for the newline before), and appends each piece's output to the files in its turn, after the
piece before it (a turn shared by the workers, which also counts the lines written so far, so
that a failed context's OperationOutcome names its line in the whole input). The parent only
starts the workers and adds up their counts: no line goes through it, and the output is the same,
byte for byte, as with one worker.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from procfhir.apply.errors import ApplyError, KnowledgeError, NotApplicable
from procfhir.safeout import check_folder, staged_folder
from procfhir.strictio import (
    MAX_DEPTH,
    OVERLONG_LINE,
    StrictInputError,
    bounded_lines,
    loads_json,
)

MAX_LINE_BYTES = 64 * 1024 * 1024  # one context (NDJSON line)

CHUNK = 256  # contexts applied together (one worker)
PIECE_BYTES = 256 * 1024  # input read, applied and written together by a worker (several workers)
SCAN_BYTES = 64 * 1024  # read at a time when looking for the start of a line
WRITE_BUFFER = 1 << 20  # output files (without os.writev): the lines of a chunk go through this
IOV_MAX = 1024  # buffers per os.writev call (POSIX guarantees at least 16; Linux allows 1024)


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


def failure(exc: Exception) -> tuple[str, str, str | None]:
    """(issue code, message, location) of a failed context, without the error itself (which
    holds its traceback, the context's frames...)."""
    if isinstance(exc, NotApplicable):
        code = "business-rule"
    elif isinstance(exc, ApplyError):
        code = "invalid"
    else:
        code = "processing"
    location = exc.field if isinstance(exc, ApplyError) and not isinstance(exc, NotApplicable) else None
    return code, str(exc), location or None


def failure_outcome(line: int, exc: Exception | tuple[str, str, str | None]) -> dict[str, Any]:
    code, text, location = failure(exc) if isinstance(exc, Exception) else exc
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": f"line {line}: {text}"}
    if location:
        issue["location"] = [location]
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


def _open_out(path: Path, mode: str) -> IO[bytes]:
    buffering = 0 if hasattr(os, "writev") else WRITE_BUFFER  # unbuffered: see _write_lines
    return open(path, mode, buffering=buffering)  # noqa: SIM115  (closed by its owner)


def _write_lines(f: IO[bytes], data: list[bytes]) -> None:
    """Write the lines of a chunk: with os.writev the kernel copies them straight from their
    bytes (one copy, a few system calls); a short write is completed."""
    if not hasattr(os, "writev"):
        f.writelines(data)
        f.flush()
        return
    fd = f.fileno()
    for start in range(0, len(data), IOV_MAX):
        part = data[start : start + IOV_MAX]
        done = os.writev(fd, part)
        total = sum(map(len, part))
        if done < total:
            rest = memoryview(b"".join(part))[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]


class _Piece:
    """``length`` bytes of a file from its current offset, read by lines (for bounded_lines)."""

    def __init__(self, f: IO[bytes], length: int) -> None:
        self.f = f
        self.left = length

    def readline(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        line = self.f.readline(self.left if size < 0 else min(size, self.left))
        self.left -= len(line)
        return line


def line_start(f: IO[bytes], pos: int, total: int, limit: int | None = None) -> int | None:
    """The offset of the first line of the file starting at or after ``pos`` (``total`` when
    none does); None when ``limit`` is given and none starts before it."""
    if pos <= 0:
        return 0
    if pos >= total:
        return total if limit is None else None
    stop = total if limit is None else min(limit, total + 1) - 1  # newlines looked for before
    at = pos - 1  # a line starts after a newline
    f.seek(at)
    while at < stop:
        block = f.read(min(SCAN_BYTES, stop - at))
        if not block:
            break
        i = block.find(b"\n")
        if i >= 0:
            return at + i + 1
        at += len(block)
    return total if limit is None else None


def piece_lines(f: IO[bytes], k: int, size: int, total: int) -> tuple[list[tuple[int, bytes]], int]:
    """Piece ``k`` of the input: the lines starting in bytes ``[k * size, (k + 1) * size)``, as
    (line number within the piece, line) without the blank ones, and the number of lines."""
    start = line_start(f, k * size, total, limit=(k + 1) * size)
    if start is None:  # inside a line begun in an earlier piece (longer than a piece)
        return [], 0
    end = line_start(f, (k + 1) * size, total)
    assert end is not None
    f.seek(start)
    count = 0
    out: list[tuple[int, bytes]] = []
    for count, raw in enumerate(bounded_lines(_Piece(f, end - start), MAX_LINE_BYTES), start=1):  # type: ignore[arg-type]
        if raw.strip():
            out.append((count, raw))
    return out, count


class _Stopped(Exception):
    """A worker stops: another one failed."""


def _write_in_turn(
    k: int, chunk: Chunk, lines: int, turn: Any, folder: Path, files: dict[str, IO[bytes]]
) -> None:
    """When the pieces before ``k`` are written, append piece ``k``'s lines to the output files
    (its failures numbered after the lines of the pieces before it)."""
    cond, next_index, abort, lines_before = turn
    with cond:
        while next_index.value != k:
            if abort.value:
                raise _Stopped("stopped: another worker failed")
            cond.wait(0.5)
        try:
            base = lines_before.value
            for rtype, data in chunk.output(base):
                f = files.get(rtype)
                if f is None:
                    f = files[rtype] = _open_out(folder / f"{rtype}.ndjson", "ab")
                _write_lines(f, data)
            lines_before.value = base + lines
        finally:
            next_index.value += 1
            cond.notify_all()


def _work(
    w: int, workers: int, in_path: Path, total: int, turn: Any, folder: Path, args: tuple[Any, ...], conn: Any
) -> None:
    """A worker process: reads, parses and applies pieces ``w``, ``w + workers``... of the input
    itself, writes each in its turn, and sends back its counts (or its error)."""
    global _APPLIER_ARGS, _APPLIER
    try:
        if args != _APPLIER_ARGS:  # (forked from the parent: its loaded plan is reused)
            _APPLIER_ARGS, _APPLIER = args, None
        counts = Chunk()
        files: dict[str, IO[bytes]] = {}
        try:
            with open(in_path, "rb") as f:
                size = PIECE_BYTES
                for k in range(w, max(1, -(-total // size)), workers):
                    lines, n = piece_lines(f, k, size, total)
                    chunk = apply_lines(lines)
                    _write_in_turn(k, chunk, n, turn, folder, files)
                    counts.count(chunk)
                    del lines, chunk  # (not alive while the next piece is read and applied)
        finally:
            for out in files.values():
                out.close()
        conn.send(("done", counts.totals()))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
        cond, _, abort, _ = turn
        abort.value = 1
        with cond:
            cond.notify_all()
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - an exception that does not travel: its words do
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        conn.send(("error", exc))
    finally:
        conn.close()


def parse_line(raw: bytes) -> Any:
    """One context, read strictly (:func:`procfhir.strictio.loads_json`: no duplicate keys, no
    NaN, no lone surrogates, bounded depth). A line that orjson reads and writes back byte for
    byte (compact, no escapes, nothing dropped) meets those rules already and skips the slow
    strict reader; so does an integer beyond 53 bits (orjson reads integers up to 64 bits
    unsigned, the strict reader refuses more than 64 bits signed)."""
    line = raw.rstrip(b"\r\n")
    if b"\\u" not in line:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
        else:
            shallow = line.count(b"{") + line.count(b"[") <= MAX_DEPTH or _depth(obj) <= MAX_DEPTH
            try:
                if shallow and orjson.dumps(obj, option=orjson.OPT_STRICT_INTEGER) == line:
                    return obj
            except orjson.JSONEncodeError:
                pass
    return loads_json(raw, "")


def _depth(value: Any) -> int:
    if type(value) is dict:
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if type(value) is list:
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@dataclass
class Chunk:
    """What a chunk of contexts gives: per resource type, its NDJSON lines, in input order."""

    # type -> (its lines, each followed by b"\n", for _write_lines; count of lines): the lines
    # are not joined into one bytes: a chunk's output (megabytes) would be a fresh allocation
    # each time, its pages faulted in by the kernel then given back (half the system time)
    packed: dict[str, tuple[list[bytes], int]] = field(default_factory=dict)
    contexts: int = 0
    failed: int = 0
    warnings: int = 0
    # (line number, error) of each failed context: its OperationOutcome is written with the line
    # number in the whole input (a worker knows it only when the pieces before are written)
    failures: list[tuple[int, tuple[str, str, str | None]]] = field(default_factory=list)

    def output(self, base: int = 0) -> Iterator[tuple[str, list[bytes]]]:
        """(type, data for :func:`_write_lines`) of the chunk; failures numbered from ``base``."""
        for rtype, (data, _count) in self.packed.items():
            yield rtype, data
        if self.failures:
            data = []
            for lineno, what in self.failures:
                outcome = failure_outcome(base + lineno, what)
                data += [json.dumps(outcome, ensure_ascii=False).encode(), b"\n"]
            yield "OperationOutcome", data

    def count(self, other: Chunk) -> None:
        """Add the counts of ``other`` (its lines are not kept)."""
        self.contexts += other.contexts
        self.failed += other.failed
        self.warnings += other.warnings
        for rtype, (_data, n) in other.packed.items():
            self.packed[rtype] = ([], self.packed.get(rtype, ([], 0))[1] + n)

    def totals(self) -> Chunk:
        """The counts alone (what a worker sends back)."""
        out = Chunk(contexts=self.contexts, failed=self.failed, warnings=self.warnings)
        out.packed = {t: ([], n) for t, (_data, n) in self.packed.items()}
        return out


def apply_lines(chunk: list[tuple[int, bytes]]) -> Chunk:
    """Apply each (line number, line) of a chunk."""
    applier = _applier()
    out = Chunk()
    by_type: dict[str, list[bytes]] = {}
    for lineno, raw in chunk:
        out.contexts += 1
        try:
            if raw == OVERLONG_LINE:
                raise ApplyError("context", f"the line is longer than {MAX_LINE_BYTES:,} bytes")
            try:
                obj = parse_line(raw)
            except StrictInputError as exc:
                raise ApplyError("context", exc.problem) from None
            lines, warnings = applier.apply_json(obj)
        except (ApplyError, KnowledgeError) as exc:
            out.failed += 1
            out.failures.append((lineno, failure(exc)))
            continue
        out.warnings += warnings
        for rtype, line in lines:
            data = by_type.get(rtype)
            if data is None:
                data = by_type[rtype] = []
            data += (line, b"\n")
    out.packed = {t: (data, len(data) // 2) for t, data in by_type.items()}
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
        self.files: dict[str, IO[bytes]] = {}
        self.report = BatchReport()

    def write(self, chunk: Chunk) -> None:
        rep = self.report
        rep.contexts += chunk.contexts
        rep.failed += chunk.failed
        rep.applied += chunk.contexts - chunk.failed
        rep.warnings += chunk.warnings
        for rtype, (_data, count) in chunk.packed.items():
            rep.resources[rtype] = rep.resources.get(rtype, 0) + count
        for rtype, data in chunk.output():
            if data:  # (the workers of a parallel run write their own lines)
                f = self.files.get(rtype)
                if f is None:
                    f = self.files[rtype] = _open_out(self.folder / f"{rtype}.ndjson", "wb")
                _write_lines(f, data)

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
        # The modules and the plan live as long as the run: the cyclic garbage collector need
        # not walk them again and again (nor touch their pages in forked workers)
        gc.freeze()
        try:
            with open(in_path, "rb") as src:
                if workers <= 1:
                    for chunk in _chunks(bounded_lines(src, MAX_LINE_BYTES), CHUNK):
                        writer.write(apply_lines(chunk))
                else:
                    _run_parallel(in_path, writer, workers, args, tmp)
        finally:
            writer.close()
            gc.unfreeze()
        (tmp / "summary.json").write_text(
            json.dumps(writer.report.as_dict(), indent=2) + "\n", encoding="utf-8"
        )
    return writer.report


def _run_parallel(in_path: Path, writer: _Writer, workers: int, args: tuple[Any, ...], folder: Path) -> None:
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork") if hasattr(os, "fork") else multiprocessing.get_context()
    # (condition, next piece to write, abort flag, lines in the pieces written)
    turn = (ctx.Condition(), ctx.Value("q", 0), ctx.Value("b", 0), ctx.Value("q", 0))
    total = in_path.stat().st_size  # what the workers share; a line written meanwhile is not read
    procs: dict[Any, Any] = {}
    try:
        for w in range(workers):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_work, args=(w, workers, in_path, total, turn, folder, args, send), daemon=True
            )
            proc.start()
            send.close()  # (the worker's end: its death shows as end of file here)
            procs[receive] = proc
        error: BaseException | None = None
        waiting = dict(procs)
        while waiting:
            ready: list[Any] = wait(list(waiting))
            for conn in ready:
                proc = waiting.pop(conn)
                try:
                    kind, value = conn.recv()
                except EOFError:
                    proc.join()
                    kind, value = "error", RuntimeError(f"a worker process ended (exit code {proc.exitcode})")
                if kind == "done":
                    writer.write(value)
                elif error is None or isinstance(error, _Stopped):  # the first cause is raised
                    error = value
                    turn[2].value = 1
        if error is not None:
            raise error
    except BaseException:
        turn[2].value = 1  # the workers waiting for their turn stop
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
        raise
    finally:
        for proc in procs.values():
            proc.join()
