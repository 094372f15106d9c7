"""``procfhir draft``: every segment of a text in the skeleton, and the build refusing a draft."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from procfhir.codesources import CodeTable, KnownCode, TerminologyCodes, known_codes, terminology_installed
from procfhir.config import PROJECT_ROOT
from procfhir.draft import KINDS, candidates, draft
from procfhir.source import load_source

EXAMPLES = PROJECT_ROOT / "examples"
TEXTS = {
    "vertebroplasty-kyphoplasty": PROJECT_ROOT / "source" / "vertebroplasty-kyphoplasty.txt",
    "lumbar-puncture": EXAMPLES / "lumbar-puncture" / "lumbar-puncture.txt",
    "radiofrequency-ablation": EXAMPLES / "radiofrequency-ablation" / "radiofrequency-ablation.txt",
}


MAPPING = PROJECT_ROOT / "source" / "vertebroplasty-kyphoplasty.yaml"


def procfhir(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procfhir.cli", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def draft_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``procfhir draft`` with the project's mapping as the only code source (fast)."""
    return procfhir("draft", *args, "--codes", str(MAPPING))


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_draft_lists_every_segment_with_its_exact_words(name: str, tmp_path: Path) -> None:
    text = tmp_path / f"{name}.txt"
    shutil.copy(TEXTS[name], text)
    out = tmp_path / f"{name}.yaml"
    run = draft_cli(str(text), "--out", str(out))
    assert run.returncode == 0, run.stderr
    data = yaml.safe_load(out.read_text())
    source = load_source(text)
    assert source.title is not None
    assert data["document"]["text"] == f"{name}.txt"
    assert data["document"]["quotes"] == [source.title.text]
    listed = {e["id"]: e.get("sentence", e.get("heading")) for e in data["draft"]}
    expected = {s.id: s.text for s in source.segments if s is not source.title}
    assert listed == expected
    lines = out.read_text().splitlines()
    for entry in data["draft"]:
        seg = source.segment(entry["id"])
        assert entry[seg.kind] == seg.text and entry["line"] == seg.line
        assert entry["kind"] == "?" and entry["decide"] is True
        assert entry["suggested"] and set(entry["suggested"]) <= set(KINDS)
        assert f"  - id: {seg.id}" in lines


def test_rules_suggest_the_kinds_a_reader_sees() -> None:
    d = {e.segment.text: e for e in draft(TEXTS["radiofrequency-ablation"]).entries}
    assert "limit" in d["No more than 4 joints on each side are treated in one session."].suggested
    interval = d[
        "The nerves grow back over time and the procedure may be repeated, but not sooner than 6 months "
        "after the last treatment."
    ]
    assert "limit" in interval.suggested and "not sooner than 6 months" in interval.numbers
    pacemaker = d[
        "Patients with a pacemaker or an implanted defibrillator need their device checked before and "
        "after the procedure."
    ]
    assert "step" in pacemaker.suggested and pacemaker.conditions
    assert d["Nerve Injury"].suggested == ("risk",) and d["Nerve Injury"].in_list_of
    lp = {e.segment.text: e for e in draft(TEXTS["lumbar-puncture"]).entries}
    headache = lp[
        "A headache that is worse when sitting or standing and better when lying down follows in about 1 "
        "in 10 patients."
    ]
    assert {"frequency", "risk"} <= set(headache.suggested) and "about 1 in 10 patients" in headache.numbers
    thinners = lp[
        "If you take blood thinners, they will be stopped before the procedure when it is safe to do so."
    ]
    assert thinners.suggested == ("step",) and thinners.conditions[0] == "If you take blood thinners"
    setting = "We perform lumbar punctures on outpatients or inpatients, with local anesthetic and"
    assert "setting" in lp[setting + " usually without sedation."].suggested


def test_candidate_codes_from_a_code_table(tmp_path: Path) -> None:
    note = tmp_path / "codes.md"
    note.write_text(
        "# Codes\n\n## SNOMED CT (http://snomed.info/sct)\n"
        "| concept | code | display | source |\n|---|---|---|---|\n"
        "| Sedation | 72641008 | Sedation | DICOM |\n"
        "| Spinal cord / Rib | 2748008 / 113197003 | Spinal cord / Rib | DICOM |\n"
        "| L1 .. L5 | 1 / 2 / 3 | L1 .. L5 | skipped: cannot be paired |\n\n"
        "## CPT (http://www.ama-assn.org/go/cpt)\n| code | meaning (abbreviated) |\n|---|---|\n"
        "| 62270 | Spinal puncture, lumbar, diagnostic |\n"
    )
    codes = known_codes([CodeTable(note)])
    assert [(c.system.rsplit("/", 1)[-1], c.code, c.display) for c in codes] == [
        ("sct", "72641008", "Sedation"),
        ("sct", "2748008", "Spinal cord"),
        ("sct", "113197003", "Rib"),
        ("cpt", "62270", "Spinal puncture, lumbar, diagnostic"),
    ]
    found = candidates("A thin needle is placed below the end of the spinal cord, without sedation.", codes)
    assert {c.code.code for c in found} == {"2748008", "72641008"}
    assert not candidates("The rib cage", [KnownCode("s", "1", "Fracture of rib", "x")])


def test_build_refuses_a_draft_listing_every_undecided_entry(tmp_path: Path) -> None:
    text = tmp_path / "lumbar-puncture.txt"
    shutil.copy(TEXTS["lumbar-puncture"], text)
    mapping = tmp_path / "lumbar-puncture.yaml"
    assert draft_cli(str(text), "--out", str(mapping)).returncode == 0
    # A person decided one entry (s2): its markers are gone, so it is no longer listed.
    draft_text = mapping.read_text()
    decided = draft_text.replace("  - id: s2\n", "  - id: s2\n    decided_by: test\n", 1)
    block = decided.split("  - id: s2\n", 1)[1].split("  - id: s3\n", 1)[0]
    decided = decided.replace(block, block.replace('    kind: "?"\n', "").replace("    decide: true\n", ""))
    mapping.write_text(decided)
    config = tmp_path / "package.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "canonical": "https://fhir.example.org/lp",
                "publisher": "Test",
                "package_name": "example.fhir.lp",
                "version": "0.1.0",
                "date": "2026-11-24",
                "documents": ["lumbar-puncture.yaml"],
            }
        )
    )
    run = procfhir("build", "--config", str(config), "--out", str(tmp_path / "out"))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    listed = re.findall(rf"{re.escape(str(mapping))}:(\d+): undecided: draft/\d+: (s\d+) ", run.stderr)
    segments = [s.id for s in load_source(text).segments[1:]]
    assert [sid for _, sid in listed] == [s for s in segments if s != "s2"]
    lines = mapping.read_text().splitlines()
    for line, sid in listed:  # each names the line of its entry in the draft
        assert lines[int(line) - 1] == f"  - id: {sid}"
    assert not (tmp_path / "out").exists()


def test_draft_never_overwrites_without_force_nor_a_file_not_ours(tmp_path: Path) -> None:
    out = tmp_path / "mine.yaml"
    out.write_text("decisions: kept\n")
    run = draft_cli(str(TEXTS["lumbar-puncture"]), "--out", str(out))
    assert run.returncode == 2 and "exists" in run.stderr and out.read_text() == "decisions: kept\n"
    forced = draft_cli(str(TEXTS["lumbar-puncture"]), "--out", str(out), "--force")  # not a draft of ours
    assert (
        forced.returncode == 2 and "did not write" in forced.stderr and out.read_text() == "decisions: kept\n"
    )
    ours = tmp_path / "draft.yaml"
    assert draft_cli(str(TEXTS["lumbar-puncture"]), "--out", str(ours)).returncode == 0
    assert draft_cli(str(TEXTS["lumbar-puncture"]), "--out", str(ours), "--force").returncode == 0
    missing = draft_cli(str(tmp_path / "nope.txt"))
    assert missing.returncode == 1 and "source text not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_candidates_from_the_installed_terminology() -> None:
    if not terminology_installed():
        reason = "terminology content not installed: procfhir terminology fill"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    d = draft(TEXTS["lumbar-puncture"], known_codes([TerminologyCodes()]))
    found = {e.segment.id: {(c.code.system, c.code.code) for c in e.candidates} for e in d.entries}
    sct = "http://snomed.info/sct"
    assert (sct, "277762005") in found["s5"]  # Lumbar puncture (procedure): "We perform lumbar punctures"
    assert (sct, "25064002") in found["s14"]  # Headache (finding), the heading
    assert (sct, "24700007") in found["s3"]  # Multiple sclerosis (disorder)
    for entry in d.entries:  # never a qualifier value, a unit or a code of FHIR's own workings
        for c in entry.candidates:
            assert "(qualifier value)" not in c.code.display
            assert not c.code.system.startswith(("http://unitsofmeasure.org", "http://terminology.hl7.org/"))
