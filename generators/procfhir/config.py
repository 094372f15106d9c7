"""The package configuration (``package.yaml``): the one file a publisher edits.

Canonical base URL, publisher, package name, version and date all come from here, so that a
hospital or vendor republishes the content under its own identity without touching code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from procfhir.errors import BuildError
from procfhir.strictio import StrictInputError, nearest, read_yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "package.yaml"

_REQUIRED = ("canonical", "publisher", "package_name", "version", "date", "documents")
_OPTIONAL = ("title", "contact_email", "license", "jurisdiction", "consent_policy_uri", "status")
_KNOWN = frozenset(_REQUIRED + _OPTIONAL)
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


class ConfigError(BuildError):
    """``package.yaml`` cannot be used (unreadable, malformed, unknown or invalid settings)."""


def _status(path: Path, value: object) -> str:
    if value not in ("draft", "active", "retired"):
        raise ConfigError(f"{path}: status must be draft, active or retired, got {value!r}")
    return str(value)


def load_config(path: str | Path | None = None) -> Config:
    """Read and check ``package.yaml``; raise :class:`BuildError` naming the problem."""
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    if not cfg_path.exists() and not cfg_path.is_symlink():
        raise ConfigError(f"{cfg_path}: configuration file not found")
    try:
        raw = read_yaml(cfg_path, max_bytes=1024 * 1024, max_depth=8)
    except StrictInputError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: expected a mapping of settings (name: value)")
    unknown = sorted(str(k) for k in raw if k not in _KNOWN)
    if unknown:
        problems = []
        for key in unknown:
            near = nearest(key, _KNOWN)
            hint = f" (did you mean {near!r}?)" if near else f" (known settings: {', '.join(sorted(_KNOWN))})"
            problems.append(f"{cfg_path}: unknown setting {key!r}{hint}")
        raise ConfigError(problems[0] if len(problems) == 1 else f"{cfg_path}: unknown settings", problems)
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"{cfg_path}: missing setting(s): {', '.join(missing)}")
    for key in _KNOWN - {"documents"}:
        if isinstance(raw.get(key), dict | list) or (key in raw and raw[key] is None):
            raise ConfigError(f"{cfg_path}: {key} must be a single value, got {type(raw[key]).__name__}")
    canonical = str(raw["canonical"]).rstrip("/")
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", canonical):
        raise ConfigError(f"{cfg_path}: canonical must be an http(s) URL, got {canonical!r}")
    name = str(raw["package_name"])
    if not _PACKAGE_NAME.match(name):
        raise ConfigError(f"{cfg_path}: package_name {name!r} must be lowercase, dot-separated, 2+ parts")
    version = str(raw["version"])
    if not _SEMVER.match(version):
        raise ConfigError(f"{cfg_path}: version {version!r} is not SemVer (e.g. 1.0.0)")
    date = str(raw["date"])
    if not _DATE.match(date):
        raise ConfigError(f"{cfg_path}: date {date!r} must be YYYY-MM-DD")
    docs = raw["documents"]
    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) and d.strip() for d in docs):
        raise ConfigError(f"{cfg_path}: documents must be a non-empty list of mapping file names")
    policy = str(raw.get("consent_policy_uri", ""))
    if policy and not re.match(r"^(https?://[^\s/]+(/\S*)?|urn:(oid|uuid):\S+)$", policy):
        raise ConfigError(
            f"{cfg_path}: consent_policy_uri must be an http(s) URL or urn:oid/urn:uuid, got {policy!r}"
        )
    email = str(raw.get("contact_email", ""))
    if email and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email):
        raise ConfigError(f"{cfg_path}: contact_email {email!r} is not an e-mail address")
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
        consent_policy_uri=policy,
        status=_status(cfg_path, raw.get("status", "draft")),
    )
