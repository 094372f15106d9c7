"""The code base stays ruff-clean and ruff-formatted (the rules are in pyproject.toml)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from procfhir.config import PROJECT_ROOT


def test_ruff_check_is_clean() -> None:
    ruff = shutil.which("ruff") or str(PROJECT_ROOT / ".venv" / "bin" / "ruff")
    proc = subprocess.run(
        [ruff, "check", "--no-cache", "."], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean() -> None:
    ruff = shutil.which("ruff") or str(PROJECT_ROOT / ".venv" / "bin" / "ruff")
    proc = subprocess.run(
        [ruff, "format", "--check", "--no-cache", "."],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fhir_folder_is_not_a_python_package() -> None:
    # it would shadow the `fhir` namespace of fhir.resources
    assert not list((PROJECT_ROOT / "fhir").rglob("*.py"))
    import fhir.resources

    assert "fhir.resources" in sys.modules
    assert not str(fhir.resources.__file__).startswith(str(PROJECT_ROOT / "fhir"))


def test_mypy_is_clean() -> None:
    mypy = shutil.which("mypy") or str(PROJECT_ROOT / ".venv" / "bin" / "mypy")
    proc = subprocess.run([mypy], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_library_holds_no_procedure_specific_words() -> None:
    # procedure knowledge lives in the mappings (source/, examples/), never in the library code
    words = re.compile(r"vertebr|kyphopl|copd|cement|lung|lumbar|puncture|ablation|facet", re.IGNORECASE)
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}"
        for path in sorted((PROJECT_ROOT / "generators").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if words.search(line)
    ]
    assert found == []
