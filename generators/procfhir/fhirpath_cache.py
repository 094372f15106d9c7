"""FHIRPath parse trees kept between processes.

fhirpathpy parses with an ANTLR grammar: the first parse in a process warms ANTLR up and costs
tens of milliseconds, each further one milliseconds. Its parse tree is plain JSON (dicts, lists,
strings), so :func:`parse` keeps each tree in a file of its own, named by the SHA-256 of the
fhirpathpy version and the expression, and a later process reads it back in microseconds.

Used by the validator's invariants and by ``$apply``'s expressions. Where:
``$PROCFHIR_CACHE/fhirpath-parse`` or ``$XDG_CACHE_HOME/procfhir/fhirpath-parse`` or
``~/.cache/procfhir/fhirpath-parse``. An entry is written atomically (a temporary file, then
``os.replace``); a missing, unreadable, corrupt or foreign entry is ignored and the expression
parsed again; a folder that cannot be written only costs the speed. A cache never changes a
result: an entry holds its expression and version and is used only when both match. Nothing here
imports fhirpathpy until a tree must be parsed (the version is read from its source, its model
files located by ``importlib.util.find_spec``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from procfhir.cachedir import cache_base

FOLDER = "fhirpath-parse"


def cache_dir() -> Path:
    return cache_base() / FOLDER


def _package_dir() -> Path | None:
    """fhirpathpy's folder, found without importing it (its ``__init__`` loads the parser)."""
    spec = importlib.util.find_spec("fhirpathpy")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


_VERSION = re.compile(rb"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


@lru_cache(maxsize=1)
def _version() -> str:
    """fhirpathpy's ``__version__``, read from its source when fhirpathpy is not imported yet."""
    module = sys.modules.get("fhirpathpy")
    if module is None:
        folder = _package_dir()
        try:
            m = _VERSION.search((folder / "__init__.py").read_bytes()) if folder else None
        except OSError:
            m = None
        if m is not None:
            return m.group(1).decode("ascii", "replace")
    import fhirpathpy

    return str(fhirpathpy.__version__)


def fhirpathpy_model_file(model: str, name: str) -> Path:
    """A JSON file of fhirpathpy's models (``models/r4/choiceTypePaths.json``...), the data
    ``fhirpathpy.models`` loads, located without importing fhirpathpy."""
    folder = _package_dir()
    if folder is None:
        raise ModuleNotFoundError("fhirpathpy is not installed")
    return folder / "models" / model / f"{name}.json"


def _entry(expression: str, version: str) -> Path:
    digest = hashlib.sha256(orjson.dumps([version, expression])).hexdigest()
    return cache_dir() / f"{digest}.json"


def _read(path: Path, expression: str, version: str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("expression") != expression
        or data.get("fhirpathpy") != version
    ):
        return None
    tree = data.get("tree")
    if not isinstance(tree, dict) or not isinstance(tree.get("children"), list) or not tree["children"]:
        return None
    return tree


def _write(path: Path, expression: str, version: str, tree: dict[str, Any]) -> None:
    tmp = ""
    try:
        body = orjson.dumps({"fhirpathpy": version, "expression": expression, "tree": tree})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".parse-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        os.replace(tmp, path)
        tmp = ""
    except (OSError, TypeError):  # (TypeError: a tree that is not plain JSON is simply not kept)
        pass
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def parse(expression: str) -> dict[str, Any]:
    """fhirpathpy's parse tree of ``expression``, from the cache when it holds it.

    Raises what ``fhirpathpy.parser.parse`` raises for an expression that does not parse (such an
    expression is never cached)."""
    version = _version()
    path = _entry(expression, version)
    tree = _read(path, expression, version)
    if tree is not None:
        return tree
    from fhirpathpy.parser import parse as antlr_parse

    tree = antlr_parse(expression)
    _write(path, expression, version, tree)
    return tree
