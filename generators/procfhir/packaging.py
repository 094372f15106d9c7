"""Stage 5: the built package on disk, deterministic and written atomically.

``fhir/`` gets one ``{ResourceType}-{id}.json`` per resource, ``bundle.json`` (a collection
Bundle of all of them), the FHIR NPM package ``{name}-{version}.tgz`` (``package/package.json``,
``package/.index.json``, examples under ``package/example/``), the terminology report and the
trace of every source sentence. Output goes to a temporary sibling folder that replaces the old
one only when complete, so a failed build never leaves half-written output; a folder the build did
not make is never replaced (see :mod:`procfhir.safeout`).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from procfhir.config import Config
from procfhir.safeout import replace_folder

EXAMPLE_TYPES = frozenset({"Patient", "Procedure"})
# Upload and package order: what others depend on first.
TYPE_ORDER = [
    "ImplementationGuide",
    "CodeSystem",
    "ValueSet",
    "StructureDefinition",
    "ActivityDefinition",
    "PlanDefinition",
    "Patient",
    "Consent",
    "Procedure",
]


def dumps(resource: Any) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def file_name(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}-{resource['id']}.json"


def sort_resources(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(r: dict[str, Any]) -> tuple[int, str]:
        t = r["resourceType"]
        return (TYPE_ORDER.index(t) if t in TYPE_ORDER else len(TYPE_ORDER), f"{t}/{r['id']}")

    return sorted(resources, key=key)


def full_url(cfg: Config, r: dict[str, Any]) -> str:
    return r.get("url") or f"{cfg.canonical}/{r['resourceType']}/{r['id']}"


def bundle(cfg: Config, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": cfg.package_name,
        "meta": {"lastUpdated": f"{cfg.date}T00:00:00Z"},
        "identifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"{cfg.canonical}/Bundle/{cfg.package_name}-{cfg.version}",
        },
        "type": "collection",
        "timestamp": f"{cfg.date}T00:00:00Z",
        "entry": [
            {"fullUrl": f"{cfg.canonical}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
        ],
    }


def implementation_guide(cfg: Config, resources: list[dict[str, Any]]) -> dict[str, Any]:
    ig_id = cfg.package_name.replace("_", "-")
    return {
        "resourceType": "ImplementationGuide",
        "id": ig_id,
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/ImplementationGuide"]},
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>'
            + _esc(cfg.title or cfg.package_name)
            + f" ({len(resources)} resources).</p></div>",
        },
        "url": f"{cfg.canonical}/ImplementationGuide/{cfg.package_name}",
        "version": cfg.version,
        "name": "".join(p.capitalize() for p in cfg.package_name.replace("-", ".").split(".")),
        "title": cfg.title or cfg.package_name,
        "status": cfg.status,
        "experimental": False,
        "date": cfg.date,
        "publisher": cfg.publisher,
        "packageId": cfg.package_name,
        "license": cfg.license,
        "fhirVersion": ["4.0.1"],
        "definition": {
            "resource": [
                {
                    "reference": {"reference": f"{r['resourceType']}/{r['id']}"},
                    "exampleBoolean": r["resourceType"] in EXAMPLE_TYPES,
                }
                for r in resources
            ]
        },
    }


def _esc(text: str) -> str:
    from html import escape

    return escape(text, quote=False)


def package_json(cfg: Config) -> dict[str, Any]:
    return {
        "name": cfg.package_name,
        "version": cfg.version,
        "description": cfg.title,
        "author": cfg.publisher,
        "title": cfg.title,
        "canonical": cfg.canonical,
        "url": cfg.canonical,
        "fhirVersions": ["4.0.1"],
        "type": "Conformance",
        "license": cfg.license,
        "date": cfg.date.replace("-", "") + "000000",
        "dependencies": {"hl7.fhir.r4.core": "4.0.1"},
    }


def index_entry(filename: str, r: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"filename": filename, "resourceType": r["resourceType"], "id": r["id"]}
    for key in ("url", "version", "kind", "type", "supplements", "content"):
        value = r.get(key)
        if isinstance(value, str):
            entry[key] = value
    return entry


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def npm_package(cfg: Config, resources: list[dict[str, Any]]) -> bytes:
    """The FHIR NPM package as gzip bytes (byte-identical for the same input)."""
    main = [r for r in resources if r["resourceType"] not in EXAMPLE_TYPES]
    examples = [r for r in resources if r["resourceType"] in EXAMPLE_TYPES]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _tar_add(tar, "package/package.json", dumps(package_json(cfg)).encode())
        for folder, group in (("package", main), ("package/example", examples)):
            index = {"index-version": 2, "files": [index_entry(file_name(r), r) for r in group]}
            _tar_add(tar, f"{folder}/.index.json", dumps(index).encode())
            for r in group:
                _tar_add(tar, f"{folder}/{file_name(r)}", dumps(r).encode())
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_output(out_dir: Path, files: dict[str, bytes]) -> None:
    """Replace ``out_dir`` by exactly ``files``, atomically (temp sibling, then rename).

    Only a missing or empty folder, or one an earlier build wrote (it holds our marker file), is
    replaced; anything else raises :class:`procfhir.safeout.OutputRefused` and nothing is written."""
    replace_folder(out_dir, files)


def package_files(
    cfg: Config,
    resources: list[dict[str, Any]],
    extra: dict[str, bytes],
) -> dict[str, bytes]:
    files = {file_name(r): dumps(r).encode() for r in resources}
    files["bundle.json"] = dumps(bundle(cfg, resources)).encode()
    files[f"{cfg.package_name}-{cfg.version}.tgz"] = npm_package(cfg, resources)
    files.update(extra)
    return files
