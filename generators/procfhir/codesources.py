"""Codes the project already knows, as candidates for a new text (``procfhir draft``).

A *code source* yields :class:`KnownCode` rows: system, code, display and where the code was
confirmed. Two sources read what the project has today:

- :class:`MappingCodes`: the ``codes`` of existing mapping files (each confirmed by its author);
- :class:`CodeTable`: the Markdown tables of a terminology note such as
  ``../shared/reference/codes.md`` (a ``## Name (system URL)`` heading, then a table with a
  ``code`` column and a ``display`` or ``meaning`` column).

- :class:`TerminologyCodes`: every code defined by the terminology content installed with
  ``procfhir terminology fill`` (SNOMED CT Global Patient Set, ICD-10-CM/PCS, DICOM, LOINC and
  HL7 code systems), cited by package, version and entry.

Anything with a ``codes()`` method returning known codes is a source (:class:`CodeSource`).
Candidates are only suggestions: a person confirms each one in the mapping, with its source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from procfhir.errors import BuildError


@dataclass(frozen=True)
class KnownCode:
    system: str
    code: str
    display: str
    source: str


class CodeSource(Protocol):
    def codes(self) -> Iterable[KnownCode]: ...


@dataclass(frozen=True)
class MappingCodes:
    """The standard codes (``codes:``) of a mapping file, with the source its author gave."""

    path: Path

    def codes(self) -> Iterator[KnownCode]:
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise BuildError(f"{self.path}: cannot read codes: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise BuildError(f"{self.path}: not valid YAML: {exc}") from None
        entries = data.get("codes") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            return
        for value in entries.values():
            if not isinstance(value, dict) or not all(k in value for k in ("system", "code", "display")):
                continue
            source = f"{value.get('source', '')} ({self.path.name})"
            yield KnownCode(str(value["system"]), str(value["code"]), str(value["display"]), source)


_TABLE_HEADING = re.compile(r"^#+\s+.*\((https?://[^)\s]+)\)\s*$")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@dataclass(frozen=True)
class CodeTable:
    """The code tables of a Markdown note: rows under a heading naming the code system's URL.

    A row giving several codes (``12989004 / 23215003``) yields each with its display when the
    display lists as many (``Display A / Display B``); otherwise the row is skipped rather
    than paired wrongly.
    """

    path: Path

    def codes(self) -> Iterator[KnownCode]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise BuildError(f"{self.path}: cannot read codes: {exc.strerror or exc}") from None
        system: str | None = None
        header: list[str] | None = None
        for line in lines:
            heading = _TABLE_HEADING.match(line)
            if heading:
                system, header = heading.group(1), None
                continue
            if line.startswith("#"):
                system, header = None, None
                continue
            if system is None or not line.lstrip().startswith("|"):
                header = None if not line.strip() else header
                continue
            cells = _cells(line)
            if header is None:
                header = [c.lower() for c in cells]
                continue
            if all(set(c) <= set("-: ") for c in cells):
                continue
            yield from self._row(system, header, cells)

    def _row(self, system: str, header: list[str], cells: list[str]) -> Iterator[KnownCode]:
        try:
            code_col = header.index("code")
        except ValueError:
            return
        names = [h.split(" ")[0] for h in header]
        display_col = next((i for i, h in enumerate(names) if h in ("display", "meaning")), None)
        if display_col is None or max(code_col, display_col) >= len(cells):
            return
        source_col = header.index("source") if "source" in header else None
        codes = [c.strip() for c in cells[code_col].split(" / ")]
        displays = [d.strip() for d in cells[display_col].split(" / ")]
        if len(codes) != len(displays):
            return
        where = self.path.name + (f", {cells[source_col]}" if source_col is not None else "")
        for code, display in zip(codes, displays, strict=True):
            if code and display:
                yield KnownCode(system, code, display, where)


@dataclass(frozen=True)
class TerminologyCodes:
    """The codes the installed terminology content defines (``procfhir terminology fill``)."""

    root: Path | None = None

    def codes(self) -> Iterator[KnownCode]:
        from procfhir.terminology import TerminologyError, open_store

        try:
            store = open_store(self.root)
        except TerminologyError as exc:
            raise BuildError(f"terminology content: {exc}") from None
        for c in store.definitions():
            yield KnownCode(c.system, c.code, c.display, c.cite())


def terminology_installed(root: Path | None = None) -> bool:
    from procfhir.terminology import TerminologyError, open_store

    try:
        open_store(root)
    except TerminologyError:
        return False
    return True


def known_codes(sources: Iterable[CodeSource]) -> list[KnownCode]:
    """Every code of the sources, once per (system, code), first source first."""
    seen: dict[tuple[str, str], KnownCode] = {}
    for source in sources:
        for c in source.codes():
            seen.setdefault((c.system, c.code), c)
    return list(seen.values())


def source_for(path: Path) -> CodeSource:
    """A mapping file (``.yaml``/``.yml``) or a Markdown code table (``.md``)."""
    if path.suffix in (".yaml", ".yml"):
        return MappingCodes(path)
    if path.suffix == ".md":
        return CodeTable(path)
    raise BuildError(f"{path}: a code source is a mapping (.yaml) or a Markdown code table (.md)")


def default_sources(root: Path) -> list[CodeSource]:
    """What the project knows: its mappings (``source/``, ``examples/*/``), the shared
    terminology note ``../shared/reference/codes.md`` beside the project, and the installed
    terminology content, each when it is there."""
    paths = sorted((root / "source").glob("*.yaml")) + sorted((root / "examples").glob("*/*.yaml"))
    sources: list[CodeSource] = [MappingCodes(p) for p in paths]
    note = root.parent / "shared" / "reference" / "codes.md"
    if note.is_file():
        sources.append(CodeTable(note))
    if terminology_installed():
        sources.append(TerminologyCodes())
    return sources
