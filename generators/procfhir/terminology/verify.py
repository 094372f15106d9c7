"""Build-time verification of every standard code of the mappings against the installed content.

For each entry under a mapping's ``codes``:

- CPT (AMA licence) cannot be verified: it is reported "unverifiable", never "confirmed";
- otherwise the code must be stated by an installed source (a definition, not a mapping); a code
  not found is an error naming the mapping file and line;
- the display must be the one of the most authoritative source that has the code (for the
  SNOMED CT GPS, its fully specified name with or without the semantic tag), after white space
  is normalised. Anything else is an error, unless the entry states ``synonym_source``: the
  display is then an allowed synonym with that source; when another installed source gives that
  very display it is cited, otherwise the mapping's statement is reported as such.

Local codes are reported with the reason the mapping gives (``no_standard_code``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from procfhir.errors import BuildError
from procfhir.model import Code, Document
from procfhir.terminology.sources import SOURCES, UNVERIFIABLE, strip_semantic_tag
from procfhir.terminology.store import Concept, Store, TerminologyError, open_store


@dataclass(frozen=True)
class CodeCheck:
    """The outcome for one (system, code, display) of a mapping."""

    system: str
    code: str
    display: str
    status: str  # "confirmed" | "synonym" | "unverifiable" | "local"
    package: str = ""
    version: str = ""
    entry: str = ""
    source_display: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {"status": self.status}
        for key in ("package", "version", "entry", "source_display", "note"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


def _norm(text: str) -> str:
    return " ".join(text.split())


def accepted_displays(concept: Concept) -> set[str]:
    shown = {_norm(concept.display)}
    if concept.source == "snomed-gps":
        shown.add(_norm(strip_semantic_tag(concept.display)))
    return shown


def check_code(
    store: Store, system: str, code: str, display: str, synonym_source: str | None, where: str
) -> tuple[CodeCheck | None, str | None]:
    """(result, None) or (None, problem)."""
    if system in UNVERIFIABLE:
        return CodeCheck(system, code, display, "unverifiable", note=UNVERIFIABLE[system]), None
    rows = [c for c in store.find(system, code) if c.kind == "definition"]
    if not rows:
        if system not in store.systems():
            return None, (
                f"{where}: {system}|{code}: no installed terminology source covers the system {system} "
                "(use a system the sources cover, or a local code)"
            )
        return None, (
            f"{where}: {system}|{code} ({display!r}) is not found in the installed terminology "
            f"({', '.join(sorted({s.title for s in SOURCES.values()}))})"
        )
    best = rows[0].origin.priority
    top = [c for c in rows if c.origin.priority == best]
    want = _norm(display)
    for c in top:
        if want in accepted_displays(c):
            return _confirmed(c, system, code, display, "confirmed", ""), None
    if synonym_source:
        for c in rows:
            if want in accepted_displays(c):
                note = f"allowed synonym ({synonym_source}); {top[0].cite()} says {top[0].display!r}"
                return _confirmed(c, system, code, display, "synonym", note), None
        note = f"allowed synonym stated by the mapping, source: {synonym_source}"
        return _confirmed(top[0], system, code, display, "synonym", note), None
    other = next((c for c in rows if want in accepted_displays(c)), None)
    hint = f" ({other.cite()} gives it)" if other is not None else ""
    return None, (
        f"{where}: {system}|{code}: display {display!r} differs from the source's "
        f"{strip_semantic_tag(top[0].display) if top[0].source == 'snomed-gps' else top[0].display!r} "
        f"({top[0].cite()}); use the source's display, or state the display as an allowed synonym "
        f"with its source (synonym_source){hint}"
    )


def _confirmed(c: Concept, system: str, code: str, display: str, status: str, note: str) -> CodeCheck:
    s = c.origin
    return CodeCheck(system, code, display, status, s.package, s.version, c.entry, c.display, note)


def verify_mappings(
    mappings: list[Document], store: Store | None = None, extra: Iterable[Code] = ()
) -> dict[tuple[str, str], CodeCheck]:
    """Check every code of every mapping, and the ``extra`` codes builders add themselves (e.g.
    the Provenance codes); raise :class:`BuildError` naming each problem's place."""
    try:
        store = store or open_store()
    except TerminologyError as exc:
        raise BuildError(f"cannot verify the codes: {exc}") from None
    results: dict[tuple[str, str], CodeCheck] = {}
    problems: list[str] = []
    codes = [c for m in mappings for c in m.codes.values()] + list(extra)
    for c in codes:
        check: CodeCheck | None
        if c.local:
            reason = c.no_standard_code or "no reason stated in the mapping"
            check, problem = CodeCheck(c.system, c.code, c.display, "local", note=reason), None
        else:
            where = f"{c.defined_at or 'built into the generator'}: code {c.key}"
            check, problem = check_code(store, c.system, c.code, c.display, c.synonym_source, where)
        if problem:
            problems.append(problem)
        elif check is not None:
            results.setdefault((c.system, c.code), check)
    if problems:
        raise BuildError("codes do not match the installed terminology", problems)
    return results
