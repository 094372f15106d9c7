"""Output folders are never wiped: only a folder we made (our marker) or an empty one is replaced."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procfhir.safeout import MARKER, OutputRefused, replace_folder, write_file

ROOT = Path(__file__).resolve().parent.parent


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procfhir.cli", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_build_never_replaces_the_projects_own_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "source").mkdir(parents=True)
    for name in ("vertebroplasty-kyphoplasty.txt", "vertebroplasty-kyphoplasty.yaml"):
        shutil.copy(ROOT / "source" / name, project / "source" / name)
    shutil.copy(ROOT / "package.yaml", project / "package.yaml")
    before = _snapshot(project)
    r = _cli(
        "build",
        "--no-validate",
        "--config",
        str(project / "package.yaml"),
        "--out",
        str(project),
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert "did not write" in r.stderr and "Traceback" not in r.stderr
    assert _snapshot(project) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no temporary folder left
    # a new folder is made (with our marker), and a second build replaces it
    out = tmp_path / "out"
    for _ in range(2):
        r = _cli(
            "build",
            "--no-validate",
            "--config",
            str(project / "package.yaml"),
            "--out",
            str(out),
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        assert (out / MARKER).is_file()
    # without our marker the same folder is no longer ours to replace
    (out / MARKER).unlink()
    r = _cli(
        "build", "--no-validate", "--config", str(project / "package.yaml"), "--out", str(out), cwd=tmp_path
    )
    assert r.returncode == 2 and "did not write" in r.stderr


@pytest.mark.parametrize("kind", ["file", "under-a-file", "read-only-parent"])
def test_unusable_output_places_are_refused_cleanly(tmp_path: Path, kind: str) -> None:
    if kind == "file":
        target = tmp_path / "taken"
        target.write_text("user data")
    elif kind == "under-a-file":
        (tmp_path / "plain").write_text("user data")
        target = tmp_path / "plain" / "out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
        import os

        if os.access(ro, os.W_OK):  # root ignores permissions
            ro.chmod(0o700)
            pytest.skip("running as root: permissions are not enforced")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputRefused):
        replace_folder(target, {"a.json": b"{}\n"})
    assert _snapshot(tmp_path) == before


def test_write_file_never_replaces_a_file_it_did_not_write(tmp_path: Path) -> None:
    target = tmp_path / "bundle.json"
    target.write_text("precious")
    with pytest.raises(OutputRefused):
        write_file(target, b"new")
    assert target.read_text() == "precious"
    write_file(target, b"new", may_replace=lambda p: True)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.json"]


def test_single_output_files_replace_only_our_own_earlier_output(tmp_path: Path) -> None:
    """review --out, validate --outcome and draft --out --force rewrite a file they wrote before
    (recognised by its content: our page marker, an OperationOutcome, our draft header), and refuse
    the same name once the user has put something else there; nothing is left behind."""
    from click.testing import CliRunner

    from procfhir.cli import main
    from procfhir.review import PAGE_MARKER

    runner = CliRunner()
    patient = tmp_path / "p.json"
    patient.write_text('{"resourceType": "Patient", "id": "p1"}')
    text = tmp_path / "new-procedure.txt"
    text.write_text("A procedure.\n\nThe doctor numbs the skin.\n")
    commands = {
        "review.html": ["review", "--no-validate", "--out", str(tmp_path / "review.html")],
        "outcome.json": ["validate", str(patient), "--outcome", str(tmp_path / "outcome.json")],
        "draft.yaml": ["draft", str(text), "--out", str(tmp_path / "draft.yaml"), "--force"],
    }
    for name, args in commands.items():
        target = tmp_path / name
        for _ in range(2):  # missing, then ours: written both times
            r = runner.invoke(main, args)
            assert r.exit_code in (0, 1), (name, r.output)
            assert target.is_file()
        first = target.read_bytes()
        if name == "review.html":
            assert PAGE_MARKER.encode() in first[:4096]
        target.write_bytes(first.replace(b"procfhir", b"someone-else", 3) + b"\nmy notes\n")
        mine = target.read_bytes()
        r = runner.invoke(main, args)
        assert r.exit_code == 2 and "did not write" in r.output, (name, r.output)
        assert target.read_bytes() == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p.json", "new-procedure.txt", *commands])
