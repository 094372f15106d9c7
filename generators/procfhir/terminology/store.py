"""The installed terminology content: one SQLite file of concepts (system, code, display, source,
exact entry), written by :func:`procfhir.terminology.install.fill`, read offline afterwards.

Where: ``$PROCFHIR_TERMINOLOGY_CACHE`` or ``~/.cache/procfhir/terminology``; beside the database
a ``manifest.json`` names the pinned artifacts it was made from (with their SHA-256) and the
database's own SHA-256 (``procfhir terminology status --verify`` checks it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from procfhir.terminology.sources import ARTIFACTS, SOURCES, Source, strip_semantic_tag

STORE_FORMAT = 1
DB_NAME = f"concepts-v{STORE_FORMAT}.sqlite"
MANIFEST_NAME = "manifest.json"


class TerminologyError(Exception):
    """The terminology content is not installed, out of date or unreadable (or cannot be)."""


def store_root() -> Path:
    env = os.environ.get("PROCFHIR_TERMINOLOGY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "procfhir" / "terminology"


def expected_artifacts() -> list[dict[str, str]]:
    return [
        {"registry": a.registry, "name": a.name, "version": a.version, "sha256": a.sha256} for a in ARTIFACTS
    ]


@dataclass(frozen=True)
class Concept:
    """One row of the store: what ``source`` states about ``system|code``, at ``entry``."""

    system: str
    code: str
    display: str
    source: str
    entry: str
    kind: str
    note: str

    @property
    def origin(self) -> Source:
        return SOURCES[self.source]

    @classmethod
    def _make_row(cls, row: tuple[str, ...]) -> Concept:
        return cls(*row)

    def cite(self) -> str:
        """Package, version and exact entry, e.g. for the terminology report."""
        s = self.origin
        return f"{s.package} {s.version}: {self.entry}"


_COLUMNS = "system, code, display, source, entry, kind, note"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Store:
    """Read-only access to the installed concepts."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or store_root()
        self.db_path = self.root / DB_NAME
        manifest_path = self.root / MANIFEST_NAME
        if not self.db_path.is_file() or not manifest_path.is_file():
            raise TerminologyError(
                f"terminology content is not installed in {self.root}: run `procfhir terminology fill`"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            msg = f"{manifest_path} is not JSON: run `procfhir terminology fill --force`"
            raise TerminologyError(msg) from None
        if self.manifest.get("artifacts") != expected_artifacts():
            raise TerminologyError(
                f"the terminology content in {self.root} was made from other artifacts than this "
                "version pins: run `procfhir terminology fill`"
            )
        self._con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)

    def verify_checksum(self) -> None:
        want = self.manifest.get("sha256")
        got = _sha256(self.db_path)
        if got != want:
            raise TerminologyError(f"{self.db_path}: SHA-256 {got} differs from the manifest's {want}")

    def find(self, system: str, code: str) -> list[Concept]:
        """Every row stating ``system|code`` (definitions and maps), most authoritative first."""
        rows = self._con.execute(
            f"SELECT {_COLUMNS} FROM concepts WHERE system = ? AND code = ?", (system, code)
        ).fetchall()
        out = [Concept(*r) for r in rows]
        out.sort(key=lambda c: (c.kind != "definition", SOURCES[c.source].priority, c.entry))
        return out

    def definitions(self) -> Iterator[Concept]:
        """Every row that defines a code (not a mapping), in no particular order."""
        for r in self._con.execute(f"SELECT {_COLUMNS} FROM concepts WHERE kind = 'definition'"):
            yield Concept(*r)

    def systems(self) -> set[str]:
        return {r[0] for r in self._con.execute("SELECT DISTINCT system FROM concepts")}

    def count(self) -> int:
        return int(self._con.execute("SELECT COUNT(*) FROM concepts").fetchone()[0])

    def search(self, words: list[str], limit: int = 25) -> list[Concept]:
        """Rows whose display (or mapping note) contains every word, best first."""
        terms = [w for w in (re.sub(r"[^\w-]", "", w.lower()) for w in words) if w]
        if not terms:
            return []
        # LIKE is case-insensitive for ASCII in SQLite
        where = " AND ".join("(display || ' ' || note) LIKE ? ESCAPE '\\'" for _ in terms)
        args = ["%" + t.replace("_", "\\_") + "%" for t in terms]
        rows = self._con.execute(f"SELECT {_COLUMNS} FROM concepts WHERE {where}", args).fetchall()
        # every word must start a word of the text ("ring" is not found in "during")
        starts = [re.compile(rf"\b{re.escape(t)}", re.IGNORECASE) for t in terms]
        found = [
            c
            for c in map(Concept._make_row, rows)
            if all(rx.search(f"{c.display} {c.note}") for rx in starts)
        ]

        def rank(c: Concept) -> tuple[Any, ...]:
            text = f"{c.display} {c.note}".lower()
            whole = sum(1 for t in terms if re.search(rf"\b{re.escape(t)}\b", text))
            # the closer the matched text is to the words asked for, the better: count its other
            # words (a mapping row is matched by the quoted description in its note)
            quoted = re.findall(r"'([^']*)'", c.note) if c.kind == "map" else []
            matched = quoted[0] if quoted else strip_semantic_tag(c.display)
            extra = sum(
                1 for w in re.findall(r"\w+", matched.lower()) if not any(w.startswith(t) for t in terms)
            )
            priority = SOURCES[c.source].priority
            return (-whole, extra, c.kind != "definition", priority, len(c.display), c.code)

        found.sort(key=rank)
        out: list[Concept] = []
        seen: set[tuple[str, str, str]] = set()
        for c in found:
            key = (c.system, c.code, c.source)
            if key in seen:
                continue
            seen.add(key)
            out.append(c)
            if len(out) >= limit:
                break
        return out


@cache
def _open_cached(root: str) -> Store:
    return Store(Path(root))


def open_store(root: Path | None = None) -> Store:
    """The installed store (opened once per process and root)."""
    return _open_cached(str(root or store_root()))


def reset_cache() -> None:
    _open_cached.cache_clear()
