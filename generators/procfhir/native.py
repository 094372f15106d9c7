"""Compiled builds of the validator's hot modules: the same Python source, compiled with mypyc.

The validator's element walk (a few million values on a large package) runs in the modules of
:data:`MODULES`. `mypyc <https://mypyc.readthedocs.io>`_ (part of mypy, already the project's type
checker) compiles type-annotated Python modules to C extensions with the same behaviour, about
twice as fast on this code; black and mypy itself ship that way. The Python source stays the only
source: :func:`build` compiles it, and nothing is compiled by hand or committed.

A build lives in the cache (``$PROCFHIR_CACHE/native`` or ``$XDG_CACHE_HOME/procfhir/native`` or
``~/.cache/procfhir/native``), in a folder named by a :func:`stamp`: the SHA-256 of the
interpreter's ABI and of the source of every module compiled. :func:`activate` (called when
``procfhir.validator`` is imported) uses a build only when its stamp is the one of the source as
it is now, so an edited module is never shadowed by a stale build: it simply runs as Python until
:func:`build` is called again. ``PROCFHIR_NATIVE=0`` runs the Python modules whatever is built.
A build is written in a temporary folder and renamed into place when complete, so a half-made
build is never used; a machine without a C compiler or mypy keeps the Python modules (same
results, slower).

What compiled modules ask of their source (``tests/test_native.py`` checks the last two):

- annotations are checked at run time: a value that is not of its declared type raises
  ``TypeError`` where Python would go on (a variable first bound to a narrowed value, e.g. after
  ``type(x[0]) is dict``, keeps that type);
- one variable, one type: two ``except ... as exc`` clauses of different types in one function
  need two names;
- their functions and classes cannot be patched from outside (a test that must patch them runs
  with the Python modules: ``ran_with_python_modules`` in ``tests/conftest.py``), and a compiled
  frozen dataclass does not unpickle (``Issue``, which workers send back, stays in Python).

Python API: :func:`build`, :func:`status`, :func:`activate`; command line: ``procfhir native``.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from procfhir.cachedir import cache_base

FOLDER = "native"
GROUP = "procfhir_native"
ENV_SWITCH = "PROCFHIR_NATIVE"
MANIFEST = "manifest.json"
_FORMAT = b"procfhir-native-1"

# The validator's walk: each module annotated truthfully (mypyc checks annotations at run time).
# Not issues.py: its frozen dataclass Issue crosses processes (--workers), and a compiled one does
# not unpickle.
MODULES: tuple[str, ...] = (
    "procfhir.validator.definitions",
    "procfhir.validator.engine",
    "procfhir.validator.fastjson",
    "procfhir.validator.fastpath",
    "procfhir.validator.inputs",
    "procfhir.validator.invariants",
    "procfhir.validator.plan",
    "procfhir.validator.quantity",
    "procfhir.validator.resolve",
    "procfhir.validator.rules",
    "procfhir.validator.snapshot",
    "procfhir.validator.structure",
    "procfhir.validator.terminology",
    "procfhir.validator.xhtml",
)


class NativeBuildError(Exception):
    """A build could not be made (no mypy, no C compiler, a compile error)."""


@dataclass(frozen=True)
class Status:
    """What :func:`activate` finds: ``built`` (a build of the current source exists), ``active``
    (its modules are the ones imported in this process), and a line saying why not."""

    built: bool
    active: bool
    folder: Path
    reason: str


def cache_root() -> Path:
    return cache_base() / FOLDER


def _source_root() -> Path:
    """The folder holding the ``procfhir`` package (``generators/`` in the repository)."""
    return Path(__file__).resolve().parent.parent


def _source_file(module: str) -> Path:
    return _source_root().joinpath(*module.split(".")).with_suffix(".py")


def stamp(modules: Sequence[str] = MODULES) -> str:
    """The SHA-256 naming a build of ``modules`` as their source is now, for this interpreter."""
    h = hashlib.sha256(_FORMAT)
    for part in (sys.implementation.cache_tag, sysconfig.get_config_var("EXT_SUFFIX") or ""):
        h.update(b"\0" + part.encode())
    for module in modules:
        h.update(b"\0" + module.encode() + b"\0")
        h.update(_source_file(module).read_bytes())
    return h.hexdigest()


def build_folder(modules: Sequence[str] = MODULES) -> Path:
    return cache_root() / stamp(modules)


def _manifest(folder: Path) -> dict[str, str] | None:
    """module name -> extension file of a complete build (None: no usable build there)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and (folder / v).is_file() for k, v in files.items()
    ):
        return None
    return {k: str(folder / v) for k, v in files.items()}


class _Finder(importlib.abc.MetaPathFinder):
    """Serves the compiled modules of one build (and its shared library) by name."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, file)
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


_active: _Finder | None = None


def activate() -> bool:
    """Import the compiled modules from here on, when a build of the current source exists
    (and ``PROCFHIR_NATIVE`` is not ``0``). Must run before any of :data:`MODULES` is imported:
    ``procfhir.validator`` calls it first. True when compiled modules are in use."""
    global _active
    if _active is not None:
        return True
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    try:
        files = _manifest(build_folder())
    except OSError:  # a source file unreadable: run what Python imports
        return False
    if files is None or any(m in sys.modules for m in MODULES):
        return False
    _active = _Finder(files)
    sys.meta_path.insert(0, _active)
    return True


def is_native(module: ModuleType) -> bool:
    """Whether ``module`` was imported from a compiled build."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def status() -> Status:
    folder = build_folder()
    built = _manifest(folder) is not None
    loaded = [sys.modules[m] for m in MODULES if m in sys.modules]
    active = bool(loaded) and all(is_native(m) for m in loaded)
    if active:
        reason = "compiled modules in use"
    elif os.environ.get(ENV_SWITCH, "1") == "0":
        reason = f"{ENV_SWITCH}=0: the Python modules are used"
    elif not built:
        reason = "no build of the current source: run `procfhir native build`"
    else:
        reason = "built; used by processes that import the validator"
    return Status(built=built, active=active, folder=folder, reason=reason)


def build(force: bool = False, verbose: bool = False) -> Path:
    """Compile :data:`MODULES` into :func:`build_folder` (nothing to do when that build exists,
    unless ``force``). Raises :class:`NativeBuildError` with the reason when it cannot; the
    compiler's output is shown only with ``verbose`` (its last lines are in the error)."""
    folder = build_folder()
    if not force and _manifest(folder) is not None:
        return folder
    missing = [m for m in ("mypyc", "setuptools") if importlib.util.find_spec(m) is None]
    if missing:
        raise NativeBuildError(f"{' and '.join(missing)} not installed (mypyc comes with mypy)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    try:
        staged = work / "out"
        log = work / "build.log"
        cwd = os.getcwd()
        os.chdir(work)  # mypyc and setuptools write their intermediate files under the cwd
        try:
            _with_output(log, verbose, lambda: _compile(work, staged, verbose))
        except (SystemExit, Exception) as exc:  # type errors exit; a compiler's failure raises
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-12:]
            detail = "\n".join([*tail, f"{type(exc).__name__}: {exc}"])
            raise NativeBuildError(f"the build failed:\n{detail}") from exc
        finally:
            os.chdir(cwd)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        files: dict[str, str] = {}
        for name in (*MODULES, f"{GROUP}__mypyc"):
            rel = Path(*name.split(".")).with_name(name.split(".")[-1] + suffix)
            if not (staged / rel).is_file():
                raise NativeBuildError(f"the build made no {rel}")
            files[name] = rel.as_posix()
        manifest = {"stamp": folder.name, "modules": list(MODULES), "files": files}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        if _manifest(folder) is not None and not force:
            return folder  # another process finished the same build meanwhile: its files stay
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staged, folder)  # complete or absent, never half-made
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _compile(work: Path, staged: Path, verbose: bool) -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped]

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    options = ["--ignore-missing-imports", "--python-version", version]
    paths = [str(_source_file(m)) for m in MODULES]
    extensions = mypycify([*options, *paths], opt_level="3", target_dir=str(work / "c"), group_name=GROUP)
    dist = Distribution({"ext_modules": extensions, "script_name": "procfhir-native"})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(staged)  # type: ignore[attr-defined]
    cmd.build_temp = str(work / "tmp")  # type: ignore[attr-defined]
    cmd.verbose = int(verbose)  # type: ignore[attr-defined]
    dist.run_command("build_ext")


def _with_output(log: Path, verbose: bool, run: Callable[[], None]) -> None:
    """``run()`` with this process's stdout and stderr (the compiler's too) in ``log``, unless
    ``verbose``."""
    if verbose:
        run()
        return
    saved = os.dup(1), os.dup(2)
    with open(log, "w", encoding="utf-8") as out:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            run()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def clean(keep_current: bool = True) -> list[Path]:
    """Remove builds of older sources (all builds when not ``keep_current``); the folders removed."""
    root = cache_root()
    current = build_folder().name if keep_current else None
    removed = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and entry.name != current:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed
