"""``--conditional`` against the real HAPI server: our own package installs where the server
assigns ids (references rewritten), concurrent uploads create no duplicates, and ``--repair``
resolves duplicates a server already holds. Each test uses a copy of the package with canonical
urls and ids of its own, so that the shared server looks empty to it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from procfhir.upload import Uploader, load_resources
from procfhir.upload.compare import differences
from tests.cliutil import ROOT, run_upload_cli

pytestmark = pytest.mark.hapi


@pytest.fixture(scope="module", params=["h2", "postgresql"])
def hapi_base_url(request: pytest.FixtureRequest) -> str:
    """The suite runs on HAPI with H2 and again with PostgreSQL (the database hospitals use)."""
    name = "hapi_server" if request.param == "h2" else "hapi_pg_server"
    return str(request.getfixturevalue(name).base_url)


CANONICAL = "https://fhir.example.org/procedures"


def unique_package(tag: str) -> list[dict[str, Any]]:
    """The committed package with canonical urls under ``CANONICAL-tag`` and, for resources
    without a url, ids prefixed by ``tag`` (references to them follow)."""
    res = load_resources(ROOT / "fhir")
    text = json.dumps(res).replace(CANONICAL, f"{CANONICAL}-{tag}")
    res = json.loads(text)
    renames = {
        f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/{tag}-{r['id']}"
        for r in res
        if "url" not in r
    }
    text = json.dumps(res)
    for old, new in renames.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    res = json.loads(text)
    for r in res:
        if "url" not in r:
            r["id"] = f"{tag}-{r['id']}"
    return res


def held(base: str, r: dict[str, Any]) -> list[dict[str, Any]]:
    params = {"url": r["url"], "_count": "50"}
    if isinstance(r.get("version"), str):
        params["version"] = r["version"]
    resp = requests.get(
        f"{base}/{r['resourceType']}", params=params, headers={"Cache-Control": "no-cache"}, timeout=60
    )
    resp.raise_for_status()
    return [e["resource"] for e in resp.json().get("entry") or []]


def assert_each_canonical_once(base: str, res: list[dict[str, Any]]) -> None:
    for r in res:
        if "url" in r:
            copies = held(base, r)
            assert len(copies) == 1, f"{r['url']}: {len(copies)} copies on the server"


def test_our_package_installs_with_conditional_where_the_server_assigns_ids(hapi_base_url: str) -> None:
    tag = f"c{uuid.uuid4().hex[:8]}"
    res = unique_package(tag)
    assert any(r["resourceType"] == "ImplementationGuide" for r in res)
    up = Uploader(hapi_base_url)
    first = up.upload(res, conditional=True, verify=True)
    assert first.ok, first.summary_table() + "\n" + "\n".join(i.line() for i in first.issues)
    assert_each_canonical_once(hapi_base_url, res)
    # the ImplementationGuide's references point at the ids the server gave
    ig = next(r for r in res if r["resourceType"] == "ImplementationGuide")
    [server_ig] = held(hapi_base_url, ig)
    for ref in (x["reference"]["reference"] for x in server_ig["definition"]["resource"]):
        assert requests.get(f"{hapi_base_url}/{ref}", timeout=60).status_code == 200, ref
    again = Uploader(hapi_base_url).upload(res, conditional=True)
    assert again.ok and {r.action for r in again.results} == {"unchanged"}, again.summary_table()


def _write_folder(folder: Path, res: list[dict[str, Any]]) -> None:
    folder.mkdir()
    for r in res:
        (folder / f"{r['resourceType']}-{r['id']}.json").write_text(json.dumps(r), encoding="utf-8")


def test_concurrent_conditional_uploads_create_no_duplicates(hapi_base_url: str, tmp_path: Path) -> None:
    """Four uploads of one fresh package at once, two rounds: each canonical exactly once."""
    tag = f"c{uuid.uuid4().hex[:8]}"
    res = unique_package(tag)
    _write_folder(tmp_path / "pkg", res)
    for _round in range(2):
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "procfhir.cli",
                    "upload",
                    str(tmp_path / "pkg"),
                    "--server",
                    hapi_base_url,
                ]
                + ["--conditional", "--quiet"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=900) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, outs
        assert_each_canonical_once(hapi_base_url, res)


def test_repair_resolves_duplicates_already_on_the_server(hapi_base_url: str, tmp_path: Path) -> None:
    tag = f"c{uuid.uuid4().hex[:8]}"
    res = unique_package(tag)
    # (HAPI itself refuses a second CodeSystem with one url and version; other types it stores)
    ad = next(r for r in res if r["resourceType"] == "ActivityDefinition")
    for _ in range(2):  # what racing writers left behind: two copies of one canonical
        body = {k: v for k, v in ad.items() if k != "id"}
        resp = requests.post(
            f"{hapi_base_url}/ActivityDefinition",
            json=body,
            headers={"Content-Type": "application/fhir+json"},
            timeout=60,
        )
        assert resp.status_code == 201, resp.text
    assert len(held(hapi_base_url, ad)) == 2
    _write_folder(tmp_path / "pkg", res)
    args = [str(tmp_path / "pkg"), "--server", hapi_base_url, "--conditional", "--quiet"]
    r = run_upload_cli(args)
    assert r.returncode == 2 and "cannot choose" in r.stderr and "--repair" in r.stderr, r.stdout + r.stderr
    r = run_upload_cli([*args, "--repair"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--repair deleted ActivityDefinition/" in r.stdout
    assert_each_canonical_once(hapi_base_url, res)
    [kept] = held(hapi_base_url, ad)
    assert differences(ad, kept, ignore_id=True) == []
    r = run_upload_cli([*args, "--dry-run"])
    changes = [ln for ln in r.stdout.splitlines() if ln.startswith(("create ", "update "))]
    assert r.returncode == 0 and changes == [], r.stdout
