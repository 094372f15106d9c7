"""Batch ``$apply``: NDJSON contexts in, Bulk Data NDJSON out, streaming with flat memory.

The input is read line by line; each context's resources are serialized only once the whole
context succeeded, so a failed context writes nothing. Output (in ``out_dir``):

- ``{ResourceType}.ndjson``: one resource per line (the FHIR Bulk Data format, one file per type);
- ``OperationOutcome.ndjson``: one OperationOutcome per failed context, naming its line;
- ``summary.json``: counts.

Everything is written in a temporary folder beside ``out_dir`` and renamed at the end. With
``workers > 1`` the parent only cuts the input into pieces of whole lines (offset, length, number
of the first line: it looks at newlines, nothing else); each worker process, forked once the plan
is loaded, reads, parses and applies its pieces itself and appends their output to the files when
the pieces before have been written (a turn shared by the workers), so the output is the same,
byte for byte, as with one worker. At most ``2 * workers`` pieces are in flight.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from concurrent.futures import Future

MAX_LINE_BYTES = 64 * 1024 * 1024  # one context (NDJSON line)

CHUNK = 256  # contexts applied together (one worker)
PIECE_BYTES = 256 * 1024  # input read, applied and written together by a worker (several workers)
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


_TURN: Any = None  # (Condition, next piece to write, abort flag), shared with the workers
_FOLDER: Path | None = None
_FILES: dict[str, IO[bytes]] = {}
_INPUT: IO[bytes] | None = None  # a worker's own handle on the input (its own file offset)


def _init_worker(args: tuple[Any, ...], turn: Any, folder: Path, in_path: Path) -> None:
    global _APPLIER_ARGS, _APPLIER, _TURN, _FOLDER, _INPUT
    if args != _APPLIER_ARGS:  # forked from the parent: its loaded plan is reused
        _APPLIER_ARGS, _APPLIER = args, None
    _TURN, _FOLDER = turn, folder
    _FILES.clear()
    _INPUT = open(in_path, "rb")  # noqa: SIM115  (open for the worker's life)


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


def read_piece(f: IO[bytes], offset: int, length: int, first_line: int) -> list[tuple[int, bytes]]:
    """The non-blank (line number, line) of a piece of the input, as :func:`_chunks` gives them."""
    f.seek(offset)
    lines = bounded_lines(_Piece(f, length), MAX_LINE_BYTES)  # type: ignore[arg-type]
    return [(n, raw) for n, raw in enumerate(lines, start=first_line) if raw.strip()]


def pieces(src: IO[bytes], size: int) -> Iterator[tuple[int, int, int]]:
    """Cut the input into pieces of whole lines, about ``size`` bytes each: (offset, length,
    number of its first line). Only newlines are looked at (counted in C): the lines themselves
    are read, parsed and applied by the workers."""
    pos = start = 0
    line = 1
    newlines = 0
    while data := src.read(size):
        cut = data.rfind(b"\n")
        if cut >= 0:  # the piece ends after the block's last newline; the rest starts the next
            newlines += data.count(b"\n")
            end = pos + cut + 1
            yield start, end - start, line
            start, line, newlines = end, line + newlines, 0
        pos += len(data)
    if pos > start:
        yield start, pos - start, line


def apply_piece(index: int, offset: int, length: int, first_line: int) -> Chunk:
    """In a worker: read and apply a piece of the input, then, when the pieces before it are
    written, append its lines to the output files (in input order, without sending them through
    the parent); give back the counts only."""
    assert _INPUT is not None
    result = apply_lines(read_piece(_INPUT, offset, length, first_line))
    cond, next_index, abort = _TURN
    assert _FOLDER is not None
    with cond:
        while next_index.value != index:
            if abort.value:
                raise ApplyError("batch", "stopped: another chunk failed")
            cond.wait(0.5)
        try:
            for rtype, (data, _count) in result.packed.items():
                f = _FILES.get(rtype)
                if f is None:
                    f = _FILES[rtype] = _open_out(_FOLDER / f"{rtype}.ndjson", "ab")
                _write_lines(f, data)
        finally:
            next_index.value += 1
            cond.notify_all()
    result.packed = {t: ([], count) for t, (_, count) in result.packed.items()}
    return result


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

    lines: dict[str, list[bytes]] = field(default_factory=dict)
    # type -> (its lines, each followed by b"\n", for writelines; count of lines)
    packed: dict[str, tuple[list[bytes], int]] = field(default_factory=dict)
    contexts: int = 0
    failed: int = 0
    warnings: int = 0

    def add(self, rtype: str, line: bytes) -> None:
        lines = self.lines.get(rtype)
        if lines is None:
            lines = self.lines[rtype] = []
        lines.append(line)

    def pack(self) -> Chunk:
        """The lines of each type interleaved with newlines, without copying them: joined into one
        bytes, a chunk's output (megabytes) would be a fresh allocation each time, its pages
        faulted in by the kernel then given back (half the system time of a run)."""
        packed: dict[str, tuple[list[bytes], int]] = {}
        for t, v in self.lines.items():
            data = [b"\n"] * (2 * len(v))
            data[::2] = v
            packed[t] = (data, len(v))
        self.packed = packed
        self.lines = {}
        return self


def apply_lines(chunk: list[tuple[int, bytes]]) -> Chunk:
    """Apply each (line number, line) of a chunk."""
    applier = _applier()
    out = Chunk()
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
            out.add("OperationOutcome", json.dumps(failure_outcome(lineno, exc), ensure_ascii=False).encode())
            continue
        out.warnings += warnings
        for rtype, line in lines:
            out.add(rtype, line)
    return out.pack()


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
        for rtype, (data, count) in chunk.packed.items():
            if data:  # (the workers of a parallel run write their own lines)
                f = self.files.get(rtype)
                if f is None:
                    f = self.files[rtype] = _open_out(self.folder / f"{rtype}.ndjson", "wb")
                _write_lines(f, data)
            if rtype != "OperationOutcome":
                rep.resources[rtype] = rep.resources.get(rtype, 0) + count

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
                    _run_parallel(src, writer, workers, args, tmp)
        finally:
            writer.close()
        (tmp / "summary.json").write_text(
            json.dumps(writer.report.as_dict(), indent=2) + "\n", encoding="utf-8"
        )
    return writer.report


def _run_parallel(src: IO[bytes], writer: _Writer, workers: int, args: tuple[Any, ...], folder: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor  # (imported only for a parallel run)

    ctx = multiprocessing.get_context("fork") if hasattr(os, "fork") else multiprocessing.get_context()
    turn = (ctx.Condition(), ctx.Value("q", 0), ctx.Value("b", 0))
    initargs = (args, turn, folder, Path(src.name))
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque[Future[Any]] = deque()
        try:
            for index, piece in enumerate(pieces(src, PIECE_BYTES)):
                pending.append(pool.submit(apply_piece, index, *piece))
                if len(pending) >= 2 * workers:  # bounded: memory stays flat
                    writer.write(pending.popleft().result())
            while pending:
                writer.write(pending.popleft().result())
        except BaseException:
            turn[2].value = 1  # the workers waiting for their turn stop
            for f in pending:
                f.cancel()
            raise
