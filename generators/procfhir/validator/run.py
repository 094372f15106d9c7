"""Validate inputs (files, folders, Bundles, package tarballs) in one call: used by the CLI,
tests and benchmarks.

Two passes, so that memory stays flat on large inputs: the first reads every input for its
definitions (resources with a canonical url: profiles, extensions, value sets...), the second
validates one input at a time (kept from the first pass while they fit in a small budget,
read again otherwise). An input read again only needs its definitions from the first pass:
orjson finds them (:mod:`procfhir.validator.fastjson`), the exact reader only reads it where
orjson's reading is not proven the same (as it reads every input of the second pass).
``workers`` > 1 validates in that many processes (forked after the definitions are known)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procfhir.validator import messages as M
from procfhir.validator.definitions import DefinitionsError
from procfhir.validator.engine import Validator
from procfhir.validator.fastjson import UNPROVEN, loads_plain, proven
from procfhir.validator.inputs import (
    RawInput,
    definitions_in,
    parse_input_owned,
    raw_inputs,
    read_file,
    read_inputs,
)
from procfhir.validator.issues import Issue

KEEP_BYTES = 16 * 1024 * 1024  # inputs kept parsed between the passes, at most (their JSON size)
BIG_BYTES = 4 * 1024 * 1024  # inputs validated first (see _largest_first)
# The cycle collector is off during a run. Left on, each parsed input (a large Bundle: millions of
# dicts and lists, made while it is off in inputs.parse_text) would sit in the young generation
# and be walked by the next collections, generation after generation: about a tenth of a run on
# the R4 examples. JSON makes no cycles, and neither does the walk: a parsed input is freed by
# reference counting as soon as it is done. A collection is made only once the containers kept
# since the last one (gc.get_count()[0]: made less freed) exceed COLLECT_GROWTH: what a run keeps
# is mostly the definitions it loads and the issues, which a collection would only walk (on the
# R4 examples, some 300,000 of them: 0.15 s for nothing); cycles an input would make (none
# known) are still reclaimed, at most that many containers late. What survives a collection is
# frozen (run's gc.unfreeze hands it back at the end).
COLLECT_GROWTH = 1_000_000
_URL = re.compile(rb'"url"\s*:\s*"([^"\\]*)"')


def _new_definitions(value: Any, validator: Validator) -> list[dict[str, Any]]:
    """The definitions of a parsed input that are not core's (core's own are not replaced)."""
    return [d for d in definitions_in([value]) if not validator.defs.is_core(d["url"])]


def _define_only(source: str, data: bytes, validator: Validator, urls: Counter[bytes]) -> int | None:
    """The first pass on an input read again to be validated: its new definitions added (a
    stripped copy); 1 when it is read, 0 when only the second pass knows, None when the
    exact reader must read it (:func:`parse_input_owned`; then nothing is added here).

    orjson reads it first: when orjson finds no new definition, the exact reader would find
    none either (it gives the same values whenever it reads the file at all: they differ
    only in what it refuses, and in the order of duplicate keys, whose last value both
    keep), so the exact reading is left to the second pass; when it finds some and it is
    :func:`proven` that the exact reader gives the same without issue, they are added.
    ``urls`` counts the ``"url"`` values met (see :func:`_may_define`)."""
    if not _may_define(data, validator, urls):
        return 1  # parsed (and its JSON judged) in the second pass
    value = loads_plain(data)
    if value is UNPROVEN:
        return None
    found = _new_definitions(value, validator)
    if not found:
        return 0
    if not proven(value, data):
        return None
    del value
    for d in found:
        validator.defs.add(d, strip=True)
    return 1


def _may_define(data: bytes, validator: Validator, urls: Counter[bytes]) -> bool:
    """Whether a file can hold a definition beyond core: some ``"url"`` in it is not a core
    canonical (a cheap scan that spares the first pass most of the spec's own files). Every
    ``"url"`` value is counted in ``urls``: a canonical resource whose url is met once is not
    met twice (see :func:`_repeated`)."""
    found = _URL.findall(data)
    urls.update(found)
    return any(not validator.defs.is_core(url.decode("utf-8", "replace")) for url in found)


def _repeated(urls: Counter[bytes]) -> set[str]:
    """The ``"url"`` values met more than once in the inputs: only canonical resources with one
    of them may be met again with the same content, so only their findings are worth keeping
    (:attr:`Validator.repeated_urls`; the R4 examples' 7,000 data elements are met once)."""
    return {url.decode("utf-8", "replace") for url, n in urls.items() if n > 1}


@dataclass
class RunResult:
    issues: list[Issue] = field(default_factory=list)
    resources: int = 0
    could_not_run: bool = False  # no definitions, or not one input could be read


def validate_paths(
    paths: list[str],
    profile: str | None = None,
    definitions: list[str] | None = None,
    core_dir: Path | None = None,
    workers: int = 1,
    strict: bool = False,
) -> tuple[list[Issue], int]:
    """(issues, number of resources validated): see :func:`run`."""
    result = run(paths, profile, definitions, core_dir, workers, strict)
    return result.issues, result.resources


def run(
    paths: list[str],
    profile: str | None = None,
    definitions: list[str] | None = None,
    core_dir: Path | None = None,
    workers: int = 1,
    strict: bool = False,
) -> RunResult:
    """Validate every resource of ``paths``. Resources with a url among the inputs (and in
    ``definitions`` paths) resolve canonicals and profiles (core's own are not replaced)."""
    collecting = gc.isenabled()
    gc.disable()  # see COLLECT_GROWTH
    try:
        return _run(paths, profile, definitions, core_dir, workers, strict)
    finally:
        if collecting:
            gc.enable()


def _run(
    paths: list[str],
    profile: str | None,
    definitions: list[str] | None,
    core_dir: Path | None,
    workers: int,
    strict: bool,
) -> RunResult:
    out = RunResult()
    extra_defs: list[dict[str, Any]] = []
    for _source, res, issues in read_inputs(definitions or [], definitions=True):
        out.issues.extend(issues)
        if res is not None:
            extra_defs.extend(definitions_in([res]))
    try:
        validator = Validator(extra_definitions=extra_defs, core_dir=core_dir, strict=strict)
    except DefinitionsError as exc:
        out.issues.append(Issue("fatal", "", str(exc), "processing", message_id=M.DEFINITIONS_UNAVAILABLE))
        out.could_not_run = True
        return out
    # (the cycle collector is off: see run and COLLECT_GROWTH)
    try:
        listings: dict[str, list[Path]] = {}  # each folder walked once
        kept, readable, big = _first_pass(paths, validator, workers, listings)
        # The definitions stay to the end, as each input's JSON until it is validated: the
        # collector need not walk them again and again (they hold no cycle); unfrozen at the end
        gc.freeze()
        if workers > 1:
            _validate_parallel(validator, _raw_largest_first(paths, big, listings), profile, workers, out)
        else:
            items = kept if kept is not None else _largest_first(paths, big, listings)
            # (not enumerate(items) nor zip: their reused result tuple would hold the last
            # input's JSON while the next one is read and parsed: ~30 MiB more at the peak)
            for source, res, issues in items:
                out.issues.extend(issues)
                if res is not None:
                    out.resources += 1
                    out.issues.extend(_validate(validator, res, profile, source))
                del res  # not held while the next input is read and parsed
                _collect_if_grown()
    finally:
        gc.unfreeze()
    # an input read in the second pass was readable (the first pass counts only some of them)
    fatal = any(i.severity == "fatal" for i in out.issues)
    out.could_not_run = readable == 0 and out.resources == 0 and fatal
    return out


Kept = list[tuple[str, Any, list[Issue]]]


def _first_pass(
    paths: list[str],
    validator: Validator,
    workers: int,
    listings: dict[str, list[Path]],
) -> tuple[Kept | None, int, list[tuple[int, str, bool]]]:
    """Every input read for its definitions (added to ``validator``): (the inputs parsed, when
    they all fit in KEEP_BYTES and one process validates; the number read; the large files:
    size, file, found in a folder). Inputs are parsed only once they are known to fit: until
    then their bytes wait (if they do not all fit, they are read again in the second pass)."""
    pending: list[RawInput] | None = [] if workers == 1 else None
    urls: Counter[bytes] = Counter()
    size = 0
    readable = 0
    big: list[tuple[int, str, bool]] = []
    for item in raw_inputs(paths, listings=listings):
        source, data, _problem, in_folder = item
        size += len(data or b"")
        if data is not None and len(data) > BIG_BYTES and source.endswith(".json") and Path(source).is_file():
            # a JSON file read as it is (an XML file's bytes are its converted JSON: left in place)
            big.append((len(data), source, in_folder))
        del data
        if pending is not None:
            if size <= KEEP_BYTES:
                pending.append(item)
                continue
            pending.reverse()
            while pending:
                readable += _define_from([pending.pop()], validator, urls)
            pending = None
        box = [item]
        del item
        readable += _define_from(box, validator, urls)
    if pending is None:
        validator.repeated_urls = _repeated(urls)
        return None, readable, big
    kept: Kept = []
    pending.reverse()
    while pending:
        source, res, issues = parse_input_owned([pending.pop()])
        if res is not None:
            readable += 1
            for d in _new_definitions(res, validator):
                validator.defs.add(d)  # kept, validated as they are: not stripped
        kept.append((source, res, issues))
    return kept, readable, big


def _define_from(box: list[RawInput], validator: Validator, urls: Counter[bytes]) -> int:
    """The new definitions of the one input in ``box`` (taken out of it), read again to be
    validated, added (stripped copies); 1 when it is read, else 0 (then the second pass may)."""
    source, data, problem, in_folder = box.pop()
    if data is None:
        return 0
    read = _define_only(source, data, validator, urls)
    if read is not None:
        return read
    box.append((source, data, problem, in_folder))
    del data
    _source, res, _issues = parse_input_owned(box)
    if res is None:
        return 0
    for d in _new_definitions(res, validator):
        validator.defs.add(d, strip=True)  # this copy only defines
    return 1


def _largest_first(
    paths: list[str],
    big: list[tuple[int, str, bool]],
    listings: dict[str, list[Path]] | None = None,
) -> Iterator[tuple[str, Any, list[Issue]]]:
    """:func:`read_inputs` of ``paths``, the large files first (largest first): a large Bundle
    parsed while little else is held (a 35 MB one is about 100 MB of objects) keeps the peak of
    memory down; the order of the issues is the outcome's own (sorted by file)."""
    for item in _raw_largest_first(paths, big, listings):
        box = [item]
        del item
        yield parse_input_owned(box)


def _raw_largest_first(
    paths: list[str], big: list[tuple[int, str, bool]], listings: dict[str, list[Path]] | None = None
) -> Iterator[RawInput]:
    """:func:`raw_inputs` of ``paths``, the large files (``big``: size, file, found in a
    folder) first, largest first; each input once per time it is named."""
    first = sorted(big, reverse=True)
    pending = Counter(source for _, source, _ in first)
    # No local here holds an input's bytes while it is parsed (suspended at yield): they are
    # freed once decoded (see parse_input_owned)
    for _, source, in_folder in first:
        yield (source, *read_file(Path(source)), in_folder)
    for item in raw_inputs(paths, listings=listings):
        if pending.get(item[0]):
            pending[item[0]] -= 1
            continue
        box = [item]
        del item
        yield box.pop()


def _validate(validator: Validator, res: Any, profile: str | None, source: str) -> list[Issue]:
    """``validator.validate``, without the cycle collector: the walk makes millions of small
    objects (locations, lists), none in a cycle, and each collection would also walk the whole
    resource (a large Bundle: millions of objects), about a tenth of the run's time."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return validator.validate(res, profile=profile, source=source)
    finally:
        if collecting:
            gc.enable()


def _collect_if_grown(growth: int = COLLECT_GROWTH) -> bool:
    """Collect the cycles made since the last collection and freeze what survives, when the
    containers kept since then exceed ``growth`` (see COLLECT_GROWTH); whether it collected."""
    if gc.get_count()[0] <= growth:
        return False
    gc.collect()
    gc.freeze()  # the next collection walks only what is newer
    return True


# ---------------------------------------------------------------- workers
_WORKER: tuple[Validator, str | None] | None = None


def _work(item: RawInput) -> tuple[int, list[Issue]]:
    assert _WORKER is not None
    validator, profile = _WORKER
    _collect_if_grown()
    source, res, issues = parse_input_owned([item])
    if res is None:
        return 0, issues
    return 1, issues + _validate(validator, res, profile, source)


def _validate_parallel(
    validator: Validator, items: Iterator[RawInput], profile: str | None, workers: int, out: RunResult
) -> None:
    """The inputs validated in ``workers`` processes, one input at a time (the largest come
    first: they are most of the work, so the processes end about together)."""
    global _WORKER
    _WORKER = (validator, profile)
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:  # no fork on this platform: one process
        ctx = None
    if ctx is None:
        for item in items:
            n, issues = _work(item)
            out.resources += n
            out.issues.extend(issues)
        return
    with ctx.Pool(workers) as pool:
        for n, issues in pool.imap_unordered(_work, items, chunksize=1):
            out.resources += n
            out.issues.extend(issues)
    _WORKER = None


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8))
