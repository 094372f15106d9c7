"""The package configuration (``package.yaml``): the one file a publisher edits.

Canonical base URL, publisher, package name, version and date all come from here, so that a
hospital or vendor republishes the content under its own identity without touching code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from procfhir.errors import BuildError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "package.yaml"

_REQUIRED = ("canonical", "publisher", "package_name", "version", "date", "documents")
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*(\.[a-z0-9][a-z0-9\-]*)+$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.\-]+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Config:
    path: Path
    canonical: str
    publisher: str
    package_name: str
    version: str
    date: str
    documents: tuple[Path, ...]
    title: str = ""
    contact_email: str = ""
    license: str = "CC0-1.0"
    jurisdiction: str = ""
    consent_policy_uri: str = ""
    status: str = "draft"

    def url(self, resource_type: str, rid: str) -> str:
        """The canonical URL of a conformance or knowledge resource of this package."""
        return f"{self.canonical}/{resource_type}/{rid}"

    @property
    def local_system(self) -> str:
        return self.url("CodeSystem", "local")


def _status(path: Path, value: object) -> str:
    if value not in ("draft", "active", "retired"):
        raise BuildError(f"{path}: status must be draft, active or retired, got {value!r}")
    return str(value)


def load_config(path: str | Path | None = None) -> Config:
    """Read and check ``package.yaml``; raise :class:`BuildError` naming the problem."""
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{cfg_path}: configuration file not found") from None
    except yaml.YAMLError as exc:
        raise BuildError(f"{cfg_path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise BuildError(f"{cfg_path}: expected a mapping of settings")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise BuildError(f"{cfg_path}: missing setting(s): {', '.join(missing)}")
    canonical = str(raw["canonical"]).rstrip("/")
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", canonical):
        raise BuildError(f"{cfg_path}: canonical must be an http(s) URL, got {canonical!r}")
    name = str(raw["package_name"])
    if not _PACKAGE_NAME.match(name):
        raise BuildError(f"{cfg_path}: package_name {name!r} must be lowercase, dot-separated, 2+ parts")
    version = str(raw["version"])
    if not _SEMVER.match(version):
        raise BuildError(f"{cfg_path}: version {version!r} is not SemVer (e.g. 1.0.0)")
    date = str(raw["date"])
    if not _DATE.match(date):
        raise BuildError(f"{cfg_path}: date {date!r} must be YYYY-MM-DD")
    docs = raw["documents"]
    if not isinstance(docs, list) or not docs:
        raise BuildError(f"{cfg_path}: documents must be a non-empty list of mapping files")
    base = cfg_path.resolve().parent
    return Config(
        path=cfg_path,
        canonical=canonical,
        publisher=str(raw["publisher"]),
        package_name=name,
        version=version,
        date=date,
        documents=tuple((base / str(d)).resolve() for d in docs),
        title=str(raw.get("title", "")),
        contact_email=str(raw.get("contact_email", "")),
        license=str(raw.get("license", "CC0-1.0")),
        jurisdiction=str(raw.get("jurisdiction", "")),
        consent_policy_uri=str(raw.get("consent_policy_uri", "")),
        status=_status(cfg_path, raw.get("status", "draft")),
    )
