"""Helpers for the build tests: a private copy of the project's inputs to break on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from procfhir.config import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "source"
DOC = "vertebroplasty-kyphoplasty"


def copy_inputs(tmp: Path, canonical: str | None = None, extra_docs: list[str] | None = None) -> Path:
    """Copy package.yaml and source/ into tmp; return the path of the copied package.yaml."""
    shutil.copytree(SOURCE, tmp / "source")
    cfg = yaml.safe_load((PROJECT_ROOT / "package.yaml").read_text())
    if canonical:
        cfg["canonical"] = canonical
    if extra_docs:
        cfg["documents"] = cfg["documents"] + extra_docs
    path = tmp / "package.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def text_path(tmp: Path) -> Path:
    return tmp / "source" / f"{DOC}.txt"


def mapping_path(tmp: Path) -> Path:
    return tmp / "source" / f"{DOC}.yaml"
