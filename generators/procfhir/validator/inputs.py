"""What ``validate`` reads: files, folders, Bundles and package tarballs, as (source, resource)
pairs; unreadable input becomes an issue instead of an exception."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from procfhir.validator.issues import Issue

_SKIP_NAMES = {"package.json", ".index.json"}


def _parse(data: bytes, source: str) -> tuple[Any, Issue | None]:
    try:
        return json.loads(data), None
    except UnicodeDecodeError:
        return None, Issue("fatal", "", "not UTF-8 text, so not FHIR JSON", "structure", source=source)
    except ValueError as exc:
        return None, Issue("fatal", "", f"not valid JSON: {exc}", "structure", source=source)


def _tgz(path: Path) -> Iterator[tuple[str, Any, Issue | None]]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = sorted((m for m in tar if m.isfile()), key=lambda m: m.name)
            for m in members:
                name = m.name
                if not name.endswith(".json") or Path(name).name in _SKIP_NAMES:
                    continue
                fh = tar.extractfile(m)
                if fh is None:
                    continue
                src = f"{path.name}:{name}"
                res, issue = _parse(fh.read(), src)
                yield src, res, issue
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield (
            str(path),
            None,
            Issue("fatal", "", f"not a readable package tarball: {exc}", "structure", source=str(path)),
        )


def read_inputs(paths: list[str]) -> Iterator[tuple[str, Any, Issue | None]]:
    """(source name, parsed JSON or None, problem or None) for every input resource file.

    In a folder, JSON files that are not FHIR resources (reports, package.json) are skipped with
    an information issue; named files must be FHIR resources."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if not f.is_file() or f.name in _SKIP_NAMES or any(p.startswith(".") for p in f.parts[-1:]):
                    continue
                if f.suffix == ".json":
                    res, issue = _parse(f.read_bytes(), str(f))
                    if issue is None and not (isinstance(res, dict) and "resourceType" in res):
                        msg = "skipped: a JSON file that is not a FHIR resource"
                        yield str(f), None, Issue("information", "", msg, "informational", source=str(f))
                        continue
                    yield str(f), res, issue
                elif f.name.endswith((".tgz", ".tar.gz")):
                    yield (
                        str(f),
                        None,
                        Issue(
                            "information",
                            "",
                            "skipped: a package tarball inside a folder (name it explicitly to validate it)",
                            "informational",
                            source=str(f),
                        ),
                    )
        elif path.is_file():
            if path.name.endswith((".tgz", ".tar.gz")):
                yield from _tgz(path)
            else:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    msg = f"cannot read: {exc}"
                    yield str(path), None, Issue("fatal", "", msg, "exception", source=str(path))
                    continue
                res, issue = _parse(data, str(path))
                yield str(path), res, issue
        else:
            yield str(path), None, Issue("fatal", "", "no such file or folder", "not-found", source=str(path))


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
