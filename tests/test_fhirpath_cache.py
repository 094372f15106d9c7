"""The FHIRPath parse-tree cache: the same trees as fhirpathpy's parser, a bad entry ignored, an
unwritable folder harmless, and ``apply --batch`` byte-identical with a cold and a warm cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fhirpathpy.parser
import pytest

from procfhir import fhirpath_cache
from tests.apply_samples import write_ndjson

ROOT = Path(__file__).resolve().parent.parent


def _package_expressions() -> list[str]:
    """Every FHIRPath expression of the built packages' PlanDefinitions and ActivityDefinitions."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("language") == "text/fhirpath" and isinstance(node.get("expression"), str):
                found.add(node["expression"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in [*ROOT.glob("fhir/**/*.json"), *ROOT.glob("examples/**/fhir/**/*.json")]:
        walk(json.loads(path.read_text(encoding="utf-8")))
    return sorted(found)


EXPRESSIONS = _package_expressions()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROCFHIR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / fhirpath_cache.FOLDER


def _no_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(expression: str) -> Any:
        raise AssertionError(f"parsed again: {expression}")

    monkeypatch.setattr(fhirpathpy.parser, "parse", refuse)


def test_cached_trees_equal_fresh_parses(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(EXPRESSIONS) >= 5  # (the packages' conditions and dynamic values)
    fresh = {e: fhirpathpy.parser.parse(e) for e in EXPRESSIONS}
    assert [fhirpath_cache.parse(e) for e in EXPRESSIONS] == list(fresh.values())  # cold: parsed
    assert len(list(cache.glob("*.json"))) == len(EXPRESSIONS)
    assert not list(cache.glob(".parse-*"))  # no temporary file left
    _no_parser(monkeypatch)
    for e in EXPRESSIONS:  # warm: read back, equal, and as str() (the memo reads str(node))
        tree = fhirpath_cache.parse(e)
        assert tree == fresh[e] and str(tree) == str(fresh[e])


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b"\xff\xfe garbage",
        b"[]",
        b'{"fhirpathpy": "0.0.0", "expression": "X", "tree": {"children": [1]}}',
        b'{"fhirpathpy": "VERSION", "expression": "EXPR", "tree": {"children": []}}',
        b'{"fhirpathpy": "VERSION", "expression": "other", "tree": TREE}',
        "truncated",
    ],
)
def test_a_bad_entry_is_ignored_and_rewritten(cache: Path, damage: bytes | str) -> None:
    expression = EXPRESSIONS[0]
    expected = fhirpathpy.parser.parse(expression)
    fhirpath_cache.parse(expression)
    (entry,) = cache.glob("*.json")
    good = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    else:
        assert isinstance(damage, bytes)
        version = fhirpathpy.__version__.encode()
        body = damage.replace(b"VERSION", version).replace(b"EXPR", expression.encode())
        entry.write_bytes(body.replace(b"TREE", json.dumps(expected).encode()))
    assert fhirpath_cache.parse(expression) == expected
    assert entry.read_bytes() == good  # parsed again and the entry written anew


def test_an_unwritable_cache_folder_still_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # (a file where the folder should be: mkdir fails, even as root)
    monkeypatch.setenv("PROCFHIR_CACHE", str(blocker))
    for e in EXPRESSIONS[:3]:
        assert fhirpath_cache.parse(e) == fhirpathpy.parser.parse(e)
    assert blocker.read_text() == "not a folder"


def test_an_expression_that_does_not_parse_raises_and_is_not_cached(cache: Path) -> None:
    with pytest.raises(Exception):  # noqa: B017 (fhirpathpy's own parser errors)
        fhirpath_cache.parse("'unterminated")
    assert not cache.exists() or not list(cache.iterdir())


def test_fhirpathpy_facts_read_without_importing_it() -> None:
    from fhirpathpy.models import models

    from procfhir.apply.compiled import _VARIABLE_TYPES, CHOICE_NAMES

    assert fhirpath_cache._version() == fhirpathpy.__version__
    paths = models["r4"]["choiceTypePaths"]
    expected = {p.rsplit(".", 1)[-1] for p in paths if p.split(".")[0] in _VARIABLE_TYPES}
    assert expected == CHOICE_NAMES and "onset" in CHOICE_NAMES


def test_a_warm_plan_load_never_imports_fhirpathpy(tmp_path: Path) -> None:
    """Loading the plan with its parse trees cached imports neither ANTLR nor fhirpathpy (every
    expression of the plan is compiled; fhirpathpy is imported only for a fallback)."""
    code = (
        "import sys; from procfhir.apply.engine import load_plan; load_plan(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fhirpathpy', 'antlr4')))"
    )
    env = {**os.environ, "PROCFHIR_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-c", code]
    runs = [subprocess.run(cmd, env=env, capture_output=True, text=True) for _ in "12"]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    assert "fhirpathpy.parser" in runs[0].stdout  # cold: parsed
    assert runs[1].stdout.strip() == "[]"  # warm: neither imported


def test_apply_batch_is_byte_identical_with_a_cold_and_a_warm_cache(tmp_path: Path) -> None:
    contexts = tmp_path / "contexts.ndjson"
    write_ndjson(contexts, 40, seed=3)
    env = {**os.environ, "PROCFHIR_CACHE": str(tmp_path / "cache")}
    outputs = []
    for run in ("cold", "warm", "warm2w"):
        out = tmp_path / run
        workers = "2" if run == "warm2w" else "1"
        cmd = [sys.executable, "-m", "procfhir.cli", "apply", "--batch", str(contexts), "--out", str(out)]
        done = subprocess.run([*cmd, "--workers", workers], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
        if run == "cold":
            assert list((tmp_path / "cache" / fhirpath_cache.FOLDER).glob("*.json"))
    assert outputs[0] and outputs[0] == outputs[1] == outputs[2]
