"""What ``validate`` reads: files, folders, Bundles and package tarballs, as (source, resource)
pairs; unreadable input becomes an issue instead of an exception.

Reading is two steps, so that workers can parse: :func:`raw_inputs` yields each input's bytes,
:func:`parse` turns bytes into JSON with the problems of the JSON itself (not UTF-8, not JSON,
duplicate keys, NaN or Infinity, nesting too deep) as issues."""

from __future__ import annotations

import gc
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from procfhir.strictio import StrictInputError, check_value, read_bytes, strict_float, strict_int
from procfhir.validator import messages as M
from procfhir.validator.fastjson import UNPROVEN, loads_proven
from procfhir.validator.issues import Issue

MAX_FILE_BYTES = 256 * 1024 * 1024  # one resource file or package member

_SKIP_NAMES = {"package.json", ".index.json"}
# a lone surrogate can only come from a \uD800-\uDFFF escape (UTF-8 decoding refuses the raw bytes);
# numbers, NaN and depth are already judged while parsing: without such an escape, no walk is needed
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# the same in UTF-8 bytes (ASCII only: found in the bytes exactly when in the text), faster
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _pairs_hook(dups: list[str]) -> Any:
    """An ``object_pairs_hook`` that records in ``dups`` the keys met twice in one object."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    dups.append(k)
                seen.add(k)
        return out

    return hook


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (FHIR JSON has no NaN or Infinity)")


def parse(data: bytes, source: str) -> tuple[Any, list[Issue]]:
    """(parsed JSON or None, issues of the JSON itself)."""
    text, issues = _decode(data, source)
    return (None, issues) if text is None else parse_text(text, source)


def _decode(data: bytes, source: str) -> tuple[str | None, list[Issue]]:
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        return None, [
            Issue(
                "fatal",
                "",
                "not UTF-8 text, so not FHIR JSON",
                "structure",
                source=source,
                message_id=M.JSON_NOT_UTF8,
            )
        ]


def parse_text(text: str, source: str, surrogate_escape: bool | None = None) -> tuple[Any, list[Issue]]:
    """:func:`parse` of decoded text (``surrogate_escape``: whether it holds a ``\\uD800`` to
    ``\\uDFFF`` escape, when already known)."""
    dups: list[str] = []
    collecting = gc.isenabled()
    gc.disable()  # parsing makes no reference cycles: a collection would only walk the new tree
    try:
        res = json.loads(
            text,
            object_pairs_hook=_pairs_hook(dups),
            parse_constant=_no_constant,
            parse_float=strict_float,  # 1e999, 1e-999 and 64-bit overflow: procfhir.strictio
            parse_int=strict_int,
        )
        if surrogate_escape is None:
            surrogate_escape = _SURROGATE_ESCAPE.search(text) is not None
        if surrogate_escape:  # lone surrogates (depth: the validator's own rule)
            check_value(res, "", max_depth=1 << 30)
    except RecursionError:
        msg = "the JSON is nested too deeply to be read"
        return None, [Issue("fatal", "", msg, "too-costly", source=source, message_id=M.JSON_TOO_DEEP)]
    except ValueError as exc:
        mid = M.JSON_NAN if "NaN" in str(exc) else M.JSON_INVALID
        return None, [
            Issue("fatal", "", f"not valid JSON: {exc}", "structure", source=source, message_id=mid)
        ]
    finally:
        if collecting:
            gc.enable()
    if res is None:
        msg = "the JSON is null: expected a FHIR resource (a JSON object)"
        return None, [Issue("error", "", msg, "structure", source=source, message_id=M.RESOURCE_NOT_OBJECT)]
    issues = []
    where = res.get("resourceType", "") if isinstance(res, dict) else ""
    for k in sorted(set(dups)):
        msg = f"the JSON has the property {k!r} more than once in one object (the last one is used)"
        issues.append(
            Issue("error", str(where), msg, "structure", source=source, message_id=M.JSON_DUPLICATE_KEY)
        )
    return res, issues


def _tgz(path: Path) -> Iterator[tuple[str, bytes | None, Issue | None]]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = sorted((m for m in tar if m.isfile()), key=lambda m: m.name)
            for m in members:
                name = m.name
                if not name.endswith(".json") or Path(name).name in _SKIP_NAMES:
                    continue
                if m.size > MAX_FILE_BYTES:
                    msg = f"{m.size:,} bytes, more than {MAX_FILE_BYTES:,} accepted"
                    src = f"{path.name}:{name}"
                    yield (
                        src,
                        None,
                        Issue("fatal", "", msg, "too-costly", source=src, message_id=M.INPUT_UNREADABLE),
                    )
                    continue
                fh = tar.extractfile(m)
                if fh is None:
                    continue
                yield f"{path.name}:{name}", fh.read(MAX_FILE_BYTES + 1), None
    except (tarfile.TarError, OSError, EOFError) as exc:
        msg = f"not a readable package tarball: {exc}"
        yield (
            str(path),
            None,
            Issue("fatal", "", msg, "structure", source=str(path), message_id=M.TARBALL_UNREADABLE),
        )


def read_file(path: Path) -> tuple[bytes | None, Issue | None]:
    """One file's bytes, or the issue saying why it cannot be read."""
    return _read(path)


def _read(path: Path) -> tuple[bytes | None, Issue | None]:
    try:
        return read_bytes(path, max_bytes=MAX_FILE_BYTES), None
    except StrictInputError as exc:
        issue = Issue(
            "fatal",
            "",
            f"cannot read: {exc.problem}",
            "exception",
            source=str(path),
            message_id=M.INPUT_UNREADABLE,
        )
        return None, issue


def _info(source: str, msg: str, mid: str) -> Issue:
    return Issue("information", "", msg, "informational", source=source, message_id=mid)


RawInput = tuple[str, bytes | None, Issue | None, bool]  # source, bytes, problem, found in a folder


def folder_files(path: Path) -> list[Path]:
    """The files of a folder and its subfolders that :func:`raw_inputs` looks at, sorted
    (hidden files, ``package.json`` and ``.index.json`` left out)."""
    # (sorted by parts, as Paths sort, without their slower comparisons)
    return [
        f
        for f in sorted(path.rglob("*"), key=_parts)
        if f.is_file() and f.name not in _SKIP_NAMES and not f.name.startswith(".")
    ]


def _parts(path: Path) -> tuple[str, ...]:
    """What Paths compare (their parts; on Windows, case-folded)."""
    if _CASE_FOLDED:
        return tuple(part.lower() for part in path.parts)
    return path.parts


_CASE_FOLDED = os.name == "nt"


def raw_inputs(
    paths: list[str], definitions: bool = False, listings: dict[str, list[Path]] | None = None
) -> Iterator[RawInput]:
    """(source name, bytes or None, problem or None) for every input file (folders walked,
    tarballs opened). FHIR XML files are read as the JSON of their resource. ``listings``:
    each folder's :func:`folder_files`, found there or kept there (the same folder walked
    once in two passes)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = listings.get(raw) if listings is not None else None
            if files is None:
                files = folder_files(path)
                if listings is not None:
                    listings[raw] = files
            for f in files:
                if f.suffix == ".json":
                    yield (str(f), *_read(f), True)  # no local keeps the bytes while suspended
                elif f.suffix == ".xml":
                    yield (str(f), *_read_xml(f, named=False), True)
                elif f.name.endswith((".tgz", ".tar.gz")):
                    msg = "skipped: a package tarball inside a folder (name it explicitly to validate it)"
                    yield str(f), None, _info(str(f), msg, M.INPUT_SKIPPED), True
        elif path.is_file():
            if path.name.endswith((".tgz", ".tar.gz")):
                for source, data, issue in _tgz(path):
                    yield source, data, issue, False
            elif path.suffix == ".xml":
                yield (str(path), *_read_xml(path, named=True), False)
            else:
                yield (str(path), *_read(path), False)
        else:
            issue = Issue(
                "fatal",
                "",
                "no such file or folder",
                "not-found",
                source=str(path),
                message_id=M.INPUT_NOT_FOUND,
            )
            yield str(path), None, issue, False


def _read_xml(path: Path, named: bool) -> tuple[bytes | None, Issue | None]:
    """A FHIR XML file read as the JSON of its resource (:mod:`procfhir.validator.fhirxml`); XML
    that is not FHIR is an error when named, skipped with a warning in a folder."""
    from procfhir.validator.definitions import DefinitionsError
    from procfhir.validator.fhirxml import XmlError, xml_to_json

    data, issue = _read(path)
    if data is None:
        return None, issue
    try:
        res = xml_to_json(data)
    except XmlError as exc:
        sev = "error" if named else "warning"
        msg = f"not read as FHIR XML: {exc}"
        return None, Issue(sev, "", msg, "structure", source=str(path), message_id=M.INPUT_XML_INVALID)
    except DefinitionsError as unavailable:  # not ``exc``: one name per type (procfhir.native)
        mid = M.DEFINITIONS_UNAVAILABLE
        return None, Issue("fatal", "", str(unavailable), "processing", source=str(path), message_id=mid)
    return json.dumps(res, ensure_ascii=False).encode("utf-8"), None


def read_inputs(paths: list[str], definitions: bool = False) -> Iterator[tuple[str, Any, list[Issue]]]:
    """(source name, parsed JSON or None, problems) for every input resource file.

    In a folder, JSON files that are not FHIR resources (reports, package.json) are skipped with
    an information issue; named files must be FHIR resources."""
    for item in raw_inputs(paths, definitions):
        box = [item]
        del item
        yield parse_input_owned(box)


def parse_input(item: RawInput) -> tuple[str, Any, list[Issue]]:
    """:func:`parse` of one raw input; a JSON file in a folder that is no FHIR resource is skipped."""
    return parse_input_owned([item])


def parse_input_owned(box: list[RawInput]) -> tuple[str, Any, list[Issue]]:
    """:func:`parse_input` of the one raw input in ``box``, taken out of it: when nothing else
    holds the input, its bytes are freed once read (a large file's bytes, text and parsed form
    are not all held at once).

    orjson reads it first; its value is taken when it is proven to be the exact reader's,
    without issue (:func:`procfhir.validator.fastjson.loads_proven`); else the exact reader
    reads it, and words its problems."""
    source, data, issue, in_folder = box.pop()
    if data is None:
        return source, None, [issue] if issue else []
    res = loads_proven(data)
    if res is not UNPROVEN:
        issues: list[Issue] = []
        del data
    else:
        escape = _SURROGATE_ESCAPE_BYTES.search(data) is not None
        text, issues = _decode(data, source)
        del data
        if text is None:
            return source, None, issues
        res, issues = parse_text(text, source, escape)
        del text
    if in_folder and res is not None and not (isinstance(res, dict) and "resourceType" in res):
        return (
            source,
            None,
            [_info(source, "skipped: a JSON file that is not a FHIR resource", M.INPUT_SKIPPED)],
        )
    return source, res, issues


def definitions_in(resources: list[Any]) -> list[dict[str, Any]]:
    """Resources with a canonical url (Bundle entries included): the package's own definitions."""
    out = []
    for r in resources:
        if not isinstance(r, dict):
            continue
        if isinstance(r.get("url"), str) and r.get("resourceType") not in ("Bundle", None):
            out.append(r)
        if r.get("resourceType") == "Bundle" and isinstance(r.get("entry"), list):
            out.extend(definitions_in([e.get("resource") for e in r["entry"] if isinstance(e, dict)]))
    return out
