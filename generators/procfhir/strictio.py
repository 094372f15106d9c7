"""Strict reading of the JSON and YAML we are given: one set of rules for every input.

Mappings, ``package.yaml``, patient contexts, resources, Bundles and NDJSON lines are read here, so
that each of these is refused the same way, with a message naming the file, line and problem:

- text that is not UTF-8 (a UTF-16 file is named as such); a UTF-8 byte order mark is ignored;
- duplicate keys in an object or mapping (YAML and Python's json keep the last one silently);
- NaN, Infinity and numbers out of range (``1e999`` would become infinity, ``1e-999`` zero,
  integers beyond 64 bits are no FHIR number);
- lone UTF-16 surrogates (``"\\ud800"``): not text, cannot be written back as UTF-8;
- nesting deeper than :data:`MAX_DEPTH` levels, checked without recursion (well below Python's
  recursion limit, so a hostile file never crashes the reader);
- YAML whose aliases expand to more than :data:`MAX_YAML_NODES` values (a shared node is
  expanded wherever it is written out: a few lines can become gigabytes), and YAML tags other
  than the plain ones;
- files larger than a limit (``max_bytes``), checked before reading.

Every refusal is a :class:`StrictInputError` (a ``ValueError``), with ``.where`` (file or file:line).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

MAX_DEPTH = 64
MAX_FILE_BYTES = 256 * 1024 * 1024  # one JSON or YAML document
MAX_INT = 2**63 - 1
MAX_YAML_NODES = 1_000_000

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class StrictInputError(ValueError):
    """Input refused by the strict reader; ``str()`` is the full message, ``where`` its place."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem


# ---------------------------------------------------------------------------------------------
# bytes and text


def read_bytes(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES, what: str = "file") -> bytes:
    """The bytes of a regular file, refused (never read) when larger than ``max_bytes``."""
    try:
        with open(path, "rb") as f:  # a folder: IsADirectoryError (PermissionError on Windows)
            # read(n) sets aside n bytes first: asking for the file's size (plus one, to see
            # it grow) spares a 256 MB allocation per file; the rest, if any, up to the limit
            size = os.fstat(f.fileno()).st_size
            want = min(size, max_bytes) + 1
            data = f.read(want)
            if len(data) == want and want <= max_bytes:
                data += f.read(max_bytes + 1 - want)
    except IsADirectoryError:
        raise StrictInputError(str(Path(path)), f"is a folder, not a {what}") from None
    except (FileNotFoundError, PermissionError) as exc:
        if Path(path).is_dir():  # ("" is the current folder; a folder on Windows)
            raise StrictInputError(str(Path(path)), f"is a folder, not a {what}") from None
        if isinstance(exc, FileNotFoundError):
            raise StrictInputError(str(Path(path)), "no such file") from None
        raise StrictInputError(str(Path(path)), f"cannot read the {what}: permission denied") from None
    except OSError as exc:
        raise StrictInputError(str(Path(path)), f"cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise StrictInputError(str(Path(path)), f"larger than {max_bytes:,} bytes: refused")
    return data


def decode_utf8(data: bytes, where: str) -> str:
    """UTF-8 text (a leading byte order mark dropped); anything else is refused, naming the line."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise StrictInputError(where, "is UTF-16 text, not UTF-8; save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise StrictInputError(
            f"{where}:{line}" if where else f"line {line}",
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8",
        ) from None


def read_text(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES, what: str = "file") -> str:
    return decode_utf8(read_bytes(path, max_bytes=max_bytes, what=what), str(path))


OVERLONG_LINE = b"\x00procfhir: overlong line\x00"


def bounded_lines(stream: IO[bytes], max_bytes: int) -> Iterator[bytes]:
    """The lines of a binary stream (NDJSON), never holding more than ``max_bytes`` of one line:
    a longer line is skipped and stands as :data:`OVERLONG_LINE`, so that line numbers hold."""
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:  # drop the rest of the line, a bounded piece at a time
                rest = stream.readline(1024 * 1024)
                if not rest or rest.endswith(b"\n"):
                    break
            yield OVERLONG_LINE
            continue
        yield line


# ---------------------------------------------------------------------------------------------
# checks on parsed values


def check_value(value: Any, where: str, *, max_depth: int = MAX_DEPTH, strings: bool = True) -> None:
    """Depth, numbers and (if ``strings``) lone surrogates of a parsed value, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                raise StrictInputError(where, f"nested deeper than {max_depth} levels")
            for k, v in node.items():
                if strings and isinstance(k, str):
                    _check_str(k, where)
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                raise StrictInputError(where, f"nested deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str):
            if strings:
                _check_str(node, where)
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise StrictInputError(
                    where, f"the number {node} is not allowed (NaN and Infinity are not JSON)"
                )
        elif isinstance(node, int) and not isinstance(node, bool) and not -MAX_INT - 1 <= node <= MAX_INT:
            raise StrictInputError(where, "an integer out of range (more than 64 bits)")


def _check_str(s: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise StrictInputError(
            where, "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff): not text"
        ) from None


# ---------------------------------------------------------------------------------------------
# JSON


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Dup(k)
        out[k] = v
    return out


class _Dup(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _constant(name: str) -> Any:
    raise _Bad(f"{name} is not a JSON number (NaN and Infinity are not allowed)")


class _Bad(ValueError):
    pass


def strict_float(text: str) -> float:
    """A JSON number with a fraction or exponent; ValueError when out of range (json's parse_float)."""
    return _float(text)


def strict_int(text: str) -> int:
    """A JSON integer; ValueError beyond 64 bits (json's parse_int)."""
    return _int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Bad(f"the number {text[:40]} is out of range")
    if value == 0.0 and re.search(r"[1-9]", text.lower().split("e")[0]):
        raise _Bad(f"the number {text[:40]} is out of range (too small, would become 0)")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise _Bad(f"the integer {text[:40]}{'...' if len(text) > 40 else ''} is out of range")
    value = int(text)
    if not -MAX_INT - 1 <= value <= MAX_INT:
        raise _Bad(f"the integer {text} is out of range (more than 64 bits)")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, parse_int=_int
)


def _max_depth_prescan(text: str, max_depth: int) -> int | None:
    """The offset where nesting first exceeds ``max_depth``, or None (strings skipped).

    Only used when the text has more brackets than ``max_depth``: json's C parser recurses and
    would reach Python's recursion limit first."""
    depth = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\{]|[\]\}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > max_depth:
                return m.start()
        elif c in "]}":
            depth -= 1
    return None


def loads_json(text: str | bytes, where: str = "", *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document strictly (see the module's rules)."""
    if isinstance(text, bytes):
        text = decode_utf8(text, where)
    if text.count("[") + text.count("{") > max_depth:
        # cheap pre-check only when nesting that deep is possible at all
        at = _max_depth_prescan(text, max_depth)
        if at is not None:
            line = text.count("\n", 0, at) + 1
            raise StrictInputError(_at(where, line), f"nested deeper than {max_depth} levels")
    try:
        value, end = _DECODER.raw_decode(text, _skip_ws(text, 0))
    except json.JSONDecodeError as exc:
        raise StrictInputError(
            _at(where, exc.lineno), f"not valid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    except _Dup as exc:
        raise StrictInputError(where, f"the key {exc.key!r} appears twice in one object") from None
    except _Bad as exc:
        raise StrictInputError(where, str(exc)) from None
    except RecursionError:
        raise StrictInputError(where, f"nested deeper than {max_depth} levels") from None
    end = _skip_ws(text, end)
    if end != len(text):
        line = text.count("\n", 0, end) + 1
        raise StrictInputError(_at(where, line), "not valid JSON: extra data after the document")
    check_value(value, where, max_depth=max_depth, strings=_SURROGATE_ESCAPE.search(text) is not None)
    return value


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i


def _at(where: str, line: int) -> str:
    return f"{where}:{line}" if where else f"line {line}"


def read_json(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Read and parse a JSON file strictly; :class:`StrictInputError` names file and line."""
    return loads_json(read_text(path, max_bytes=max_bytes, what="JSON file"), str(path), max_depth=max_depth)


# ---------------------------------------------------------------------------------------------
# YAML


def _yaml_loader_base() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_yaml_events(
    text: str, where: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_YAML_NODES
) -> None:
    """Nesting, tags and alias expansion, from the event stream (no recursion, nothing built).

    Anchors and aliases are allowed, but the document with every alias expanded must stay under
    ``max_nodes`` nodes (a "billion laughs" document of a few lines is refused)."""
    import yaml

    sizes: dict[str, int] = {}
    stack: list[list[Any]] = [[None, 0]]  # [anchor, expanded size] per open collection
    try:
        for event in yaml.parse(text, Loader=_yaml_loader_base()):
            line = event.start_mark.line + 1 if event.start_mark is not None else 0
            tag = getattr(event, "tag", None)
            if (
                tag is not None
                and tag not in ("!", "tag:yaml.org,2002:str")
                and not (isinstance(event, yaml.ScalarEvent) and tag in _PLAIN_SCALAR_TAGS)
            ):
                raise StrictInputError(_at(where, line), f"the YAML tag {tag!r} is not allowed")
            size = 0
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append([event.anchor, 1])
                if len(stack) - 1 > max_depth:
                    raise StrictInputError(_at(where, line), f"nested deeper than {max_depth} levels")
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, size = stack.pop()
                if anchor:
                    sizes[anchor] = size
            elif isinstance(event, yaml.ScalarEvent):
                size = 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                size = sizes.get(event.anchor or "", 1)
            else:
                continue
            stack[-1][1] += size
            if stack[-1][1] > max_nodes or sum(s for _, s in stack) > max_nodes:
                raise StrictInputError(
                    _at(where, line),
                    f"with its aliases (*) expanded the document exceeds {max_nodes:,} values",
                )
    except yaml.YAMLError as exc:
        raise StrictInputError(where, f"not valid YAML: {_yaml_problem(exc)}") from None


_PLAIN_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


def strict_yaml_loader(base: Any = None) -> Any:
    """A SafeLoader subclass (of ``base``, default the C or Python SafeLoader) that refuses
    duplicate keys and non-finite or out-of-range numbers, naming the line."""

    base = base or _yaml_loader_base()

    class Strict(base):  # type: ignore[misc,valid-type]
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise StrictInputError(
                    f"line {key_node.start_mark.line + 1}", "a mapping key must be plain text"
                ) from None
            if key in seen:
                raise StrictInputError(
                    f"line {key_node.start_mark.line + 1}",
                    f"the key {key!r} appears twice in one mapping (also on line {seen[key]})",
                )
            seen[key] = key_node.start_mark.line + 1
        return base.construct_mapping(loader, node, deep=deep)

    def construct_float(loader: Any, node: Any) -> float:
        value = base.construct_yaml_float(loader, node)
        if not math.isfinite(value):
            raise StrictInputError(
                f"line {node.start_mark.line + 1}",
                f"the number {node.value!r} is not allowed (NaN, infinity)",
            )
        return float(value)

    def construct_int(loader: Any, node: Any) -> int:
        if len(str(node.value)) > 25:
            raise StrictInputError(f"line {node.start_mark.line + 1}", "an integer out of range")
        value = base.construct_yaml_int(loader, node)
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise StrictInputError(
                f"line {node.start_mark.line + 1}", "an integer out of range (more than 64 bits)"
            )
        return int(value)

    Strict.construct_mapping = construct_mapping
    Strict.add_constructor("tag:yaml.org,2002:float", construct_float)
    Strict.add_constructor("tag:yaml.org,2002:int", construct_int)
    return Strict


_STRICT_LOADER: Any = None


def loads_yaml(text: str, where: str = "", *, loader: Any = None, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one YAML document strictly (see the module's rules); ``loader`` from
    :func:`strict_yaml_loader` when the caller needs its own constructors."""
    import yaml

    global _STRICT_LOADER
    if loader is None:
        if _STRICT_LOADER is None:
            _STRICT_LOADER = strict_yaml_loader()
        loader = _STRICT_LOADER
    check_yaml_events(text, where, max_depth=max_depth)
    try:
        value = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except StrictInputError as exc:
        line = exc.where.removeprefix("line ")
        raise StrictInputError(f"{where}:{line}" if where else exc.where, exc.problem) from None
    except yaml.YAMLError as exc:
        raise StrictInputError(where, f"not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise StrictInputError(where, f"nested deeper than {max_depth} levels") from None
    check_value(value, where, max_depth=max_depth)
    return value


def read_yaml(
    path: str | Path, *, loader: Any = None, max_bytes: int = 16 * 1024 * 1024, max_depth: int = MAX_DEPTH
) -> Any:
    """Read and parse a YAML file strictly; :class:`StrictInputError` names file and line."""
    return loads_yaml(
        read_text(path, max_bytes=max_bytes, what="YAML file"), str(path), loader=loader, max_depth=max_depth
    )


# ---------------------------------------------------------------------------------------------
# helpers for messages


def nearest(word: str, choices: list[str] | tuple[str, ...] | frozenset[str]) -> str | None:
    """The valid name closest to a misspelt one (for "did you mean"), or None."""
    import difflib

    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def loads_canonical_json(data: bytes, where: str = "", *, max_depth: int = MAX_DEPTH) -> Any:
    """:func:`loads_json`, fast for a document written by orjson (compact, or indented by 2 like
    ``json.dumps(indent=2, ensure_ascii=False)``; with or without a final newline): when orjson
    reads it and writes it back byte for byte, it has no duplicate key, no NaN, no number out of
    range or rounded (orjson would write another text; an integer beyond 53 bits goes to the
    strict reader, which checks the 64-bit signed range), and its depth shows in its indentation;
    without a ``\\u`` escape it holds no lone surrogate. Anything else goes through
    :func:`loads_json` and its checks."""
    if b"\\u" not in data:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = _NOTHING
        if value is not _NOTHING:
            body = data[:-1] if data.endswith(b"\n") else data
            if b"\n" in body:  # indented: an element at depth d is indented by 2 * d spaces
                shallow = b"\n" + b" " * (2 * max_depth) not in body
                option = orjson.OPT_INDENT_2 | orjson.OPT_STRICT_INTEGER
            else:
                shallow = body.count(b"[") + body.count(b"{") <= max_depth
                option = orjson.OPT_STRICT_INTEGER
            try:  # (an integer beyond 53 bits: the strict reader checks its 64-bit range)
                if shallow and orjson.dumps(value, option=option) == body:
                    return value
            except orjson.JSONEncodeError:
                pass
    return loads_json(data, where, max_depth=max_depth)


_NOTHING: Any = object()
