"""The compiled (mypyc) build of the validator's walk (procfhir.native): built from the source as
it is, used only when it matches that source, and giving byte-identical outcomes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from procfhir import native

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(os.path.expanduser("~/.fhir/packages/hl7.fhir.r4.examples#4.0.1/package"))


def _compiler() -> str | None:
    """The C compiler a build would use, when there is one and Python's headers are installed."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(cc) if headers.is_file() else None


def _procfhir(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procfhir.cli", *args], capture_output=True, text=True, env=env, timeout=900
    )


def _active(env: dict[str, str]) -> bool:
    code = "import procfhir.validator, procfhir.native as n; print(n.status().active)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip() == "True"


@pytest.mark.skipif(_compiler() is None, reason="no C compiler or no Python headers")
def test_native_build_is_used_and_gives_identical_outcomes(tmp_path: Path) -> None:
    env = {**os.environ, "PROCFHIR_CACHE": str(tmp_path / "cache")}
    env.pop(native.ENV_SWITCH, None)
    assert not _active(env)  # nothing built in this cache yet: the Python modules
    built = _procfhir(["native", "build"], env)
    assert built.returncode == 0, built.stderr
    assert "built:" in built.stdout
    status = _procfhir(["native", "status"], env)
    assert "built: yes" in status.stdout
    assert _active(env)
    assert not _active({**env, native.ENV_SWITCH: "0"})
    again = _procfhir(["native", "build"], env)  # a build of this source exists: nothing to do
    assert again.returncode == 0 and again.stdout == built.stdout

    # every 9th example (Bundles, profiles, narratives, terminology) and our own package
    files = sorted(p for p in EXAMPLES.glob("*.json") if p.name != "package.json")[::9]
    inputs = [*map(str, files), str(ROOT / "fhir")]
    outcomes = []
    # Python, compiled, and compiled in two workers (whose issues cross processes by pickle)
    for n, (switch, workers) in enumerate((("0", "1"), ("1", "1"), ("1", "2"))):
        out = tmp_path / f"oo-{n}.json"
        args = ["validate", "-q", *inputs, "--outcome", str(out), "--workers", workers]
        run = _procfhir(args, {**env, native.ENV_SWITCH: switch})
        assert run.returncode == 1, run.stderr  # the examples have errors
        outcomes.append(out.read_bytes())
    assert outcomes[0] == outcomes[1] == outcomes[2]
    issues = json.loads(outcomes[0])["issue"]
    assert len(issues) > 1000
    assert not [i for i in issues if i["code"] == "exception"]  # no rule crashed in either


def test_a_build_is_used_only_for_the_source_it_was_made_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "generators" / "procfhir", src / "procfhir")
    monkeypatch.setattr(native, "_source_root", lambda: src)
    monkeypatch.setenv("PROCFHIR_CACHE", str(tmp_path / "cache"))
    before = native.stamp()
    assert before == native.stamp()
    rules = src / "procfhir" / "validator" / "rules.py"
    rules.write_text(rules.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    assert native.stamp() != before  # an edited module: another build folder

    folder = native.build_folder()
    folder.mkdir(parents=True)
    assert native._manifest(folder) is None  # a folder without a manifest: half-made, not used
    files = {m: f"{m}.so" for m in native.MODULES}
    (folder / native.MANIFEST).write_text(json.dumps({"files": files}), encoding="utf-8")
    assert native._manifest(folder) is None  # a manifest naming missing files: not used
    (folder / native.MANIFEST).write_text("{not json", encoding="utf-8")
    assert native._manifest(folder) is None
    assert not native.status().built


@pytest.mark.skipif(_compiler() is None, reason="no C compiler or no Python headers")
def test_a_failed_build_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PROCFHIR_CACHE": str(tmp_path / "cache"), "CC": str(tmp_path / "no-such-cc")}
    run = _procfhir(["native", "build"], env)
    assert run.returncode == 1
    assert "native build failed" in run.stderr and "Traceback" not in run.stderr
    root = tmp_path / "cache" / native.FOLDER
    assert not root.exists() or not list(root.iterdir())  # no build, no leftovers


def test_compiled_modules_use_one_name_per_except_type() -> None:
    """mypyc gives a variable one type: ``except A as exc`` then ``except B as exc`` in one
    function makes the second a TypeError at run time (procfhir.native)."""
    import ast

    clashes = []
    for module in native.MODULES:
        path = ROOT / "generators" / Path(*module.split(".")).with_suffix(".py")
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            types: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and node.name:
                    types.setdefault(node.name, set()).add(ast.unparse(node.type) if node.type else "")
            clashes += [f"{path.name}:{fn.lineno} {fn.name}: {n} {t}" for n, t in types.items() if len(t) > 1]
    assert not clashes
