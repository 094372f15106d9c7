"""The FHIR package cache (``~/.fhir/packages``) and how to fill it from a registry tarball.

The FHIR package server is often unreachable; the npm registry publishes
``hl7.fhir.r4.examples@4.0.1``, which carries every R4 conformance resource (StructureDefinitions
with snapshots, ValueSets, CodeSystems, ...) beside the spec's examples. :func:`fill` downloads
it, checks its integrity against the registry's published ``integrity``/``shasum``, and installs

- ``hl7.fhir.r4.core#4.0.1/package/``: the conformance resources, with ``package.json`` and
  ``.index.json`` (the standard layout other tools read), and
- ``hl7.fhir.r4.examples#4.0.1/package/``: the whole tarball (the spec's examples, for tests).

Each package folder is written to a temporary folder inside the cache and renamed into place, so
a half-filled cache never exists. Filling a filled cache does nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_REGISTRY = "https://registry.npmjs.org"
SOURCE_PACKAGE = "hl7.fhir.r4.examples"
FHIR_VERSION = "4.0.1"
CORE_PACKAGE = "hl7.fhir.r4.core"
EXAMPLES_PACKAGE = "hl7.fhir.r4.examples"

# Resource types that make up the core (conformance) package.
CONFORMANCE_TYPES = frozenset(
    {
        "StructureDefinition",
        "ValueSet",
        "CodeSystem",
        "SearchParameter",
        "OperationDefinition",
        "CompartmentDefinition",
        "ConceptMap",
        "NamingSystem",
        "CapabilityStatement",
        "StructureMap",
        "ImplementationGuide",
        "GraphDefinition",
        "MessageDefinition",
    }
)
_INDEX_FIELDS = ("resourceType", "id", "url", "version", "kind", "type", "supplements", "content")


class CacheError(Exception):
    """The cache cannot be filled (registry unreachable, bad tarball, integrity mismatch...)."""


def cache_root() -> Path:
    env = os.environ.get("FHIR_PACKAGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".fhir" / "packages"


def package_dir(name: str, version: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / f"{name}#{version}" / "package"


def core_dir(root: Path | None = None) -> Path:
    return package_dir(CORE_PACKAGE, FHIR_VERSION, root)


def examples_dir(root: Path | None = None) -> Path:
    return package_dir(EXAMPLES_PACKAGE, FHIR_VERSION, root)


def is_installed(name: str, version: str, root: Path | None = None) -> bool:
    d = package_dir(name, version, root)
    return (d / "package.json").is_file() and (d / ".index.json").is_file()


def is_filled(root: Path | None = None) -> bool:
    return all(is_installed(n, FHIR_VERSION, root) for n in (CORE_PACKAGE, EXAMPLES_PACKAGE))


def _get(url: str, timeout: float = 120.0) -> bytes:
    import requests  # imported here: validation never needs it

    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise CacheError(f"cannot reach {url}: {exc}") from None
    if resp.status_code != 200:
        raise CacheError(f"{url}: HTTP {resp.status_code}")
    return resp.content


def registry_metadata(registry: str, name: str, version: str) -> dict[str, Any]:
    """The registry's ``dist`` record (tarball URL, integrity, shasum) for ``name@version``."""
    url = f"{registry.rstrip('/')}/{name}/{version}"
    try:
        meta = json.loads(_get(url))
    except ValueError:
        raise CacheError(f"{url}: the registry did not answer JSON") from None
    dist = meta.get("dist") if isinstance(meta, dict) else None
    if not isinstance(dist, dict) or not dist.get("tarball"):
        raise CacheError(f"{url}: no dist.tarball in the registry's answer")
    return dist


def verify_integrity(data: bytes, dist: dict[str, Any]) -> None:
    """Check ``data`` against the registry's ``integrity`` (SRI) and ``shasum`` (SHA-1 hex)."""
    checked = False
    integrity = dist.get("integrity")
    if integrity:
        for item in str(integrity).split():
            algo, _, b64 = item.partition("-")
            if algo not in ("sha512", "sha384", "sha256"):
                continue
            digest = base64.b64encode(hashlib.new(algo, data).digest()).decode()
            if digest != b64:
                raise CacheError(f"tarball integrity mismatch ({algo}): expected {b64}, got {digest}")
            checked = True
    shasum = dist.get("shasum")
    if shasum:
        got = hashlib.sha1(data).hexdigest()
        if got != shasum:
            raise CacheError(f"tarball shasum mismatch: expected {shasum}, got {got}")
        checked = True
    if not checked:
        raise CacheError(
            "the registry published neither integrity nor shasum: refusing an unverified tarball"
        )


def _read_tarball(data: bytes) -> dict[str, bytes]:
    """Regular files under ``package/`` by their name relative to it (no links, no ``..``)."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                if len(parts) < 2 or parts[0] != "package" or ".." in parts or parts[0].startswith("/"):
                    continue
                fh = tar.extractfile(member)
                if fh is not None:
                    files["/".join(parts[1:])] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CacheError(f"not a readable package tarball: {exc}") from None
    if "package.json" not in files:
        raise CacheError("the tarball has no package/package.json")
    return files


def index_entry(filename: str, res: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"filename": filename}
    for key in _INDEX_FIELDS:
        value = res.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            entry[key] = value
    return entry


def _write_package(target: Path, package_json: dict[str, Any], files: dict[str, bytes]) -> None:
    """Write ``files`` (top-level resource JSON) + package.json + .index.json atomically to target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent.parent))
    try:
        pkg = tmp / "package"
        pkg.mkdir()
        entries = []
        for name in sorted(files):
            data = files[name]
            (pkg / name).write_bytes(data)
            if "/" in name or not name.endswith(".json") or name in ("package.json", ".index.json"):
                continue
            try:
                res = json.loads(data)
            except ValueError:
                continue
            if isinstance(res, dict) and isinstance(res.get("resourceType"), str):
                entries.append(index_entry(name, res))
        (pkg / "package.json").write_text(json.dumps(package_json, indent=2) + "\n", encoding="utf-8")
        index = {"index-version": 2, "files": entries}
        (pkg / ".index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        final = target.parent  # {name}#{version}
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=final.parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _split(files: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(core files, example files): conformance resources go to core, everything to examples."""
    core: dict[str, bytes] = {}
    examples: dict[str, bytes] = {}
    for name, data in files.items():
        if name in ("package.json", ".index.json"):
            continue
        examples[name] = data
        if "/" in name or not name.endswith(".json"):
            continue
        rtype = name.split("-", 1)[0]
        if rtype not in CONFORMANCE_TYPES:
            continue
        if rtype == "StructureDefinition" and b'"snapshot"' not in data:
            continue  # the two differential-only SDs of the spec are examples, not core definitions
        core[name] = data
    return core, examples


def fill(
    registry: str = DEFAULT_REGISTRY, root: Path | None = None, force: bool = False, log: Any = None
) -> bool:
    """Fill the cache with R4 core (+ examples). Returns False when it was already filled."""
    root = root or cache_root()
    if is_filled(root) and not force:
        return False
    say = log or (lambda _msg: None)
    dist = registry_metadata(registry, SOURCE_PACKAGE, FHIR_VERSION)
    say(f"downloading {dist['tarball']}")
    data = _get(str(dist["tarball"]), timeout=600.0)
    verify_integrity(data, dist)
    say(f"verified {len(data)} bytes (shasum {dist.get('shasum')}, integrity {dist.get('integrity')})")
    files = _read_tarball(data)
    try:
        src_pkg = json.loads(files["package.json"])
    except ValueError:
        raise CacheError("package/package.json is not JSON") from None
    if src_pkg.get("version") != FHIR_VERSION:
        raise CacheError(f"expected FHIR version {FHIR_VERSION}, the tarball says {src_pkg.get('version')!r}")
    core, examples = _split(files)
    core_json = {
        "name": CORE_PACKAGE,
        "version": FHIR_VERSION,
        "fhirVersions": [FHIR_VERSION],
        "type": "Core",
        "license": src_pkg.get("license", "CC0-1.0"),
        "canonical": "http://hl7.org/fhir",
        "url": "http://hl7.org/fhir/R4",
        "title": "FHIR R4 package : Core (conformance resources)",
        "description": f"R4 conformance resources extracted from {SOURCE_PACKAGE}@{FHIR_VERSION} "
        f"(shasum {dist.get('shasum')})",
        "author": src_pkg.get("author", "HL7 Inc"),
        "dependencies": {},
    }
    examples_json = dict(src_pkg)
    examples_json["dependencies"] = {CORE_PACKAGE: FHIR_VERSION}
    root.mkdir(parents=True, exist_ok=True)
    _write_package(core_dir(root), core_json, core)
    say(f"installed {len(core)} conformance resources in {core_dir(root)}")
    _write_package(examples_dir(root), examples_json, examples)
    say(f"installed {len(examples)} files in {examples_dir(root)}")
    return True
