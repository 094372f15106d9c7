"""The review lock and the sign-off, end to end on a private copy of the project's inputs: a text
that differs from what was signed (even outside the quotes) is refused with the sentence shown;
a whitespace-only change is not; `procfhir review --sign-off` rewrites the lock and the package's
Provenance; `status: active` needs every document signed off as it reads."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from procfhir.build import BuildResult, build
from procfhir.config import PROJECT_ROOT
from procfhir.errors import BuildError
from tests.buildutil import copy_inputs, mapping_path, text_path

LOCK = "vertebroplasty-kyphoplasty.lock.yaml"
FIRST = "2026-11-30T09:00:00Z"
SECOND = "2026-12-01T10:30:00Z"
S2_OLD = "procedures that are typically performed for acute"
S2_NEW = "procedures that are no longer typically performed for acute"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procfhir.cli", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=300, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def sign(cfg: Path, reviewer: str, at: str, *extra: str) -> subprocess.CompletedProcess[str]:
    out = cfg.parent / "page"
    out.mkdir(exist_ok=True)
    args = ("review", "--config", str(cfg), "--out", str(out), "--no-validate", "--sign-off")
    return cli(*args, "--reviewer", reviewer, "--at", at, *extra)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def provenances(result: BuildResult) -> list[dict[str, Any]]:
    return [r for r in result.resources if r["resourceType"] == "Provenance"]


def resting_on(result: BuildResult, sentences: set[str]) -> list[str]:
    doc = result.trace["documents"][0]
    return sorted({el["resource"] for s in doc["segments"] if s["id"] in sentences for el in s["elements"]})


@pytest.fixture()
def signed(tmp_path: Path) -> Path:
    """A copy of the inputs, signed off by Dr. A (the committed project has no lock: nobody signed it)."""
    cfg = copy_inputs(tmp_path)
    assert not (PROJECT_ROOT / "source" / LOCK).exists()
    proc = sign(cfg, "Dr. A Reviewer", FIRST, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "no sign-off yet" in proc.stdout and f"wrote {tmp_path / 'source' / LOCK}" in proc.stdout
    return cfg


def test_the_lock_is_readable_and_the_signed_package_has_a_provenance(signed: Path) -> None:
    lock_file = signed.parent / "source" / LOCK
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8"))
    result = build(signed, write=False)
    segs = result.mappings[0].source.segments
    assert (
        lock["document"] == "vertebroplasty-kyphoplasty" and lock["text"] == "vertebroplasty-kyphoplasty.txt"
    )
    assert [(s["id"], s["text"]) for s in lock["sentences"]] == [(s.id, s.text) for s in segs]
    assert {(s["signed_by"], s["signed_at"]) for s in lock["sentences"]} == {("Dr. A Reviewer", FIRST)}
    # one sentence per block, one line each: a diff shows a changed sentence as its own lines
    lines = lock_file.read_text(encoding="utf-8").splitlines()
    assert sum(1 for line in lines if line.startswith("  text: ")) == len(segs)

    (prov,) = provenances(result)
    assert prov["id"] == "signoff-vertebroplasty-kyphoplasty-20261130-090000"
    assert prov["recorded"] == FIRST and prov["agent"][0]["who"] == {"display": "Dr. A Reviewer"}
    assert prov["activity"]["coding"][0]["code"] == "VRF"
    assert prov["agent"][0]["type"]["coding"][0]["code"] == "verifier"
    targets = [t["reference"] for t in prov["target"]]
    assert targets == resting_on(result, {s.id for s in segs})
    assert (
        "PlanDefinition/vertebral-augmentation" in targets
        and "Consent/vertebral-augmentation-consent" in targets
    )
    assert not result.validation or all(i.severity not in ("error", "fatal") for _r, i in result.validation)
    assert build(signed, write=False).files == result.files  # deterministic: no clock in the output


def test_unquoted_insertion_is_refused_with_the_sentence_shown(signed: Path) -> None:
    # a negation and an indication inserted into the unquoted gaps of s2: every quote still found
    edit(text_path(signed.parent), S2_OLD, S2_NEW)
    edit(text_path(signed.parent), "metastatic cancer and myeloma", "metastatic cancer, lymphoma and myeloma")
    with pytest.raises(BuildError) as err:
        build(signed, signed.parent / "out", validate=False)
    assert not (signed.parent / "out").exists()
    (problem,) = err.value.problems
    text_file = text_path(signed.parent)
    assert problem.startswith(
        f"{text_file}:3: sentence s2 differs from the wording signed off by Dr. A Reviewer"
    )
    signed_line, now_line, resting = problem.splitlines()[1:]
    assert S2_OLD in signed_line and "cancer and myeloma" in signed_line
    assert S2_NEW in now_line and "cancer, lymphoma and myeloma" in now_line
    assert "PlanDefinition/vertebral-augmentation (action[0], action[0].condition[0], description)" in resting
    assert "Procedure/example-vertebroplasty (reasonCode[0])" in resting
    # the same text without a lock builds: it is the lock that catches the change
    (signed.parent / "source" / LOCK).unlink()
    build(signed, write=False, validate=False)


def test_unquoted_deletion_and_removed_sentence_are_refused(signed: Path) -> None:
    text_file = text_path(signed.parent)
    edit(
        text_file, "related to osteoporosis but may be performed", "related to osteoporosis may be performed"
    )
    removed = "If height is improved, the alignment of the spine may also be improved."
    edit(text_file, " " + removed, "")
    edit(mapping_path(signed.parent), f'\n        - "{removed}"', "")
    with pytest.raises(BuildError) as err:
        build(signed, write=False, validate=False)
    first, second = err.value.problems
    assert first.startswith(f"{text_file}:3: sentence s2 differs") and "osteoporosis but may" in first
    assert "osteoporosis may be performed" in first.splitlines()[2]
    assert second.startswith(f"{text_file}:7: s8 as signed off by Dr. A Reviewer on {FIRST}")
    assert removed in second and "(removed)" in second

    # a removed sentence whose quote the mapping still holds: the mapping's error and the lock's
    edit(mapping_path(signed.parent), '- "hopefully restore', f'- "{removed}"\n        - "hopefully restore')
    with pytest.raises(BuildError) as err:
        build(signed, write=False, validate=False)
    assert any("quote not found" in p and removed in p for p in err.value.problems)
    assert any(p.startswith(f"{text_file}:7: s8 as signed off") for p in err.value.problems)


def test_whitespace_only_change_keeps_the_lock_and_the_content(signed: Path) -> None:
    before = build(signed, write=False, validate=False)
    text_file = text_path(signed.parent)
    lf = text_file.read_bytes()
    crlf = b"\r\n".join(line + b" \t " for line in lf.split(b"\n"))  # CRLF, trailing white space
    text_file.write_bytes(crlf)
    cfg = yaml.safe_load(signed.read_text())
    cfg["status"] = "active"  # allowed: the lock matches
    signed.write_text(yaml.safe_dump(cfg, sort_keys=False))
    after = build(signed, write=False)
    assert after.signoff["vertebroplasty-kyphoplasty"].matches
    assert provenances(after) == provenances(before)
    plan = next(r for r in after.resources if r["resourceType"] == "PlanDefinition")
    assert plan["status"] == "active"
    assert [s.text for s in after.mappings[0].source.segments] == [
        s.text for s in before.mappings[0].source.segments
    ]


def test_sign_off_shows_the_changes_and_rewrites_lock_and_provenance(signed: Path) -> None:
    lock_file = signed.parent / "source" / LOCK
    first_lock = lock_file.read_text(encoding="utf-8")
    edit(text_path(signed.parent), S2_OLD, S2_NEW)

    refused = sign(signed, "Dr. B Second", SECOND)  # no terminal, no --yes: nothing written
    assert refused.returncode == 1 and "--yes" in refused.stderr and "Traceback" not in refused.stderr
    assert lock_file.read_text(encoding="utf-8") == first_lock

    proc = sign(signed, "Dr. B Second", SECOND, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "sentence s2 changed since signed by Dr. A Reviewer" in proc.stdout
    signed_line, now_line = (
        line.strip() for line in proc.stdout.split("Dr. A Reviewer on")[1].splitlines()[1:3]
    )
    assert signed_line.startswith("signed: ") and S2_OLD in signed_line
    assert now_line.startswith("now: ") and S2_NEW in now_line
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8"))
    by_id = {s["id"]: s for s in lock["sentences"]}
    assert (by_id["s2"]["signed_by"], by_id["s2"]["signed_at"]) == ("Dr. B Second", SECOND)
    assert S2_NEW in by_id["s2"]["text"]
    assert all(s["signed_by"] == "Dr. A Reviewer" for sid, s in by_id.items() if sid != "s2")
    new_lines = lock_file.read_text(encoding="utf-8").splitlines()
    diff = list(difflib.unified_diff(first_lock.splitlines(), new_lines, lineterm="", n=0))
    changed = [d for d in diff if d[:1] in "+-" and d[:3] not in ("+++", "---")]
    # a diff shows s2's lines, before and after, and nothing else
    assert sorted(c[:1] for c in changed) == ["+"] * 3 + ["-"] * 3, changed
    assert [c[1:].split(":")[0].strip() for c in changed if c[:1] == "+"] == [
        "signed_by",
        "signed_at",
        "text",
    ]

    result = build(signed, write=False, validate=True)
    first, second = provenances(result)
    assert first["agent"][0]["who"]["display"] == "Dr. A Reviewer" and first["recorded"] == FIRST
    assert second["agent"][0]["who"]["display"] == "Dr. B Second" and second["recorded"] == SECOND
    others = {s.id for s in result.mappings[0].source.segments} - {"s2"}
    assert [t["reference"] for t in first["target"]] == resting_on(result, others)
    assert [t["reference"] for t in second["target"]] == resting_on(result, {"s2"})
    assert "(s2)" in second["entity"][0]["what"]["display"]

    again = sign(signed, "Dr. C", "2026-12-02T08:00:00Z", "--yes")  # nothing changed: lock kept
    assert (
        again.returncode == 0 and "already matches" in again.stdout and "nothing to sign off" in again.stdout
    )
    assert yaml.safe_load(lock_file.read_text(encoding="utf-8")) == lock


def test_status_active_needs_every_document_signed_off(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["status"] = "active"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = cli("build", "--config", str(cfg), "--out", str(tmp_path / "out"), "--no-validate")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "status: active in package.yaml needs every document signed off" in proc.stderr
    assert f"document vertebroplasty-kyphoplasty has no review lock ({LOCK})" in proc.stderr
    assert not (tmp_path / "out").exists()
    assert sign(cfg, "Dr. A Reviewer", FIRST, "--yes").returncode == 0
    result = build(cfg, tmp_path / "out", validate=False)
    assert {r.get("status") for r in result.resources if r["resourceType"] == "PlanDefinition"} == {"active"}
    edit(text_path(tmp_path), S2_OLD, S2_NEW)
    with pytest.raises(BuildError, match="differs from what was signed off"):
        build(cfg, write=False, validate=False)


def test_a_damaged_lock_is_named(signed: Path) -> None:
    lock_file = signed.parent / "source" / LOCK
    data = yaml.safe_load(lock_file.read_text(encoding="utf-8"))
    data["sentences"][3]["signed_at"] = "yesterday"
    lock_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    proc = cli("build", "--config", str(signed), "--out", str(signed.parent / "out"), "--no-validate")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{lock_file}: sentence #4 of the review lock needs" in proc.stderr
    lock_file.write_text("sentences: [unclosed", encoding="utf-8")
    proc = cli("build", "--config", str(signed), "--out", str(signed.parent / "out"), "--no-validate")
    assert proc.returncode == 1 and "is not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_committed_package_has_no_invented_sign_off() -> None:
    committed = [json.loads(p.read_text()) for p in (PROJECT_ROOT / "fhir").glob("*.json")]
    assert not [r for r in committed if r.get("resourceType") == "Provenance"]
    assert yaml.safe_load((PROJECT_ROOT / "package.yaml").read_text())["status"] == "draft"


def test_sign_off_refuses_unclear_requests(tmp_path: Path) -> None:
    cfg = copy_inputs(tmp_path)
    lock_file = tmp_path / "source" / LOCK
    base = ("review", "--config", str(cfg), "--out", str(tmp_path), "--no-validate")
    cases = [
        (("--sign-off", "--yes"), "needs the reviewer's name"),
        (
            ("--sign-off", "--reviewer", "Dr. A", "--document", "nope", "--yes"),
            "no document nope in the package",
        ),
        (
            ("--sign-off", "--reviewer", "Dr. A", "--at", "30/11/2026", "--yes"),
            "must be YYYY-MM-DDThh:mm:ssZ",
        ),
        (("--reviewer", "Dr. A"), "go with --sign-off"),
    ]
    for args, message in cases:
        proc = cli(*base, *args)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and not lock_file.exists()
