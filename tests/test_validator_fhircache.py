"""Filling the FHIR package cache from a registry: a small npm-style registry on 127.0.0.1 serves
a tarball made of real R4 core files; integrity is checked, the layout is the standard one, a
filled cache is left alone, and a tampered tarball installs nothing."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from procfhir import fhircache

CORE_FILES = [
    "StructureDefinition-Patient.json",
    "ValueSet-administrative-gender.json",
    "CodeSystem-administrative-gender.json",
]
EXAMPLE_FILES = ["Patient-example.json"]


def _tarball(core_dir: Path, examples_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        pkg = {"name": "hl7.fhir.r4.examples", "version": "4.0.1", "license": "CC0-1.0"}
        members = [("package/package.json", json.dumps(pkg).encode())]
        members += [(f"package/{n}", (core_dir / n).read_bytes()) for n in CORE_FILES]
        members += [(f"package/{n}", (examples_dir / n).read_bytes()) for n in EXAMPLE_FILES]
        members.append(("package/../evil.json", b"{}"))  # must never be written outside
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Registry:
    def __init__(self, tarball: bytes) -> None:
        self.tarball = tarball
        self.integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
        self.shasum = hashlib.sha1(tarball).hexdigest()
        self.requests: list[str] = []


@pytest.fixture()
def registry() -> Iterator[tuple[str, _Registry]]:
    if not fhircache.is_filled():  # the source files come from the real cache
        try:
            fhircache.fill()
        except fhircache.CacheError as exc:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI=true but the FHIR package cache cannot be filled: {exc}", pytrace=False)
            pytest.skip(f"FHIR package cache empty and the npm registry is unreachable: {exc}")
    core, examples = fhircache.core_dir(), fhircache.examples_dir()
    state = _Registry(_tarball(core, examples))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.requests.append(self.path)
            host = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path == "/hl7.fhir.r4.examples/4.0.1":
                body = json.dumps(
                    {
                        "name": "hl7.fhir.r4.examples",
                        "version": "4.0.1",
                        "dist": {
                            "tarball": f"{host}/t.tgz",
                            "integrity": state.integrity,
                            "shasum": state.shasum,
                        },
                    }
                ).encode()
            elif self.path == "/t.tgz":
                body = state.tarball
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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_fill_installs_standard_layout_and_is_then_a_no_op(registry, tmp_path: Path) -> None:
    url, state = registry
    root = tmp_path / "packages"
    assert fhircache.fill(url, root=root) is True
    core = fhircache.core_dir(root)
    assert json.loads((core / "package.json").read_text())["name"] == "hl7.fhir.r4.core"
    index = json.loads((core / ".index.json").read_text())
    assert index["index-version"] == 2
    by_file = {e["filename"]: e for e in index["files"]}
    assert set(by_file) == set(CORE_FILES)  # conformance only: the example Patient is not core
    assert (
        by_file["StructureDefinition-Patient.json"]["url"]
        == "http://hl7.org/fhir/StructureDefinition/Patient"
    )
    assert (fhircache.examples_dir(root) / "Patient-example.json").is_file()
    assert not (tmp_path / "evil.json").exists() and not (root / "evil.json").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp dirs left
    calls = len(state.requests)
    assert fhircache.fill(url, root=root) is False
    assert len(state.requests) == calls  # filled: the registry is not asked again


def test_tampered_tarball_is_refused_and_nothing_installed(registry, tmp_path: Path) -> None:
    url, state = registry
    state.tarball = state.tarball[:-10] + b"0123456789"
    root = tmp_path / "packages"
    with pytest.raises(fhircache.CacheError, match="integrity mismatch"):
        fhircache.fill(url, root=root)
    assert not fhircache.is_filled(root)
    assert not (root.exists() and any(root.iterdir()))


def test_unreachable_registry_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(fhircache.CacheError, match="cannot reach"):
        fhircache.fill("http://127.0.0.1:9", root=tmp_path / "p")
