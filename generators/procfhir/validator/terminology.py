"""Local terminology: CodeSystems with complete content, and ValueSet expansion from compose
(enumerated concepts, whole local code systems, is-a filters on local hierarchies, imported value
sets). Anything else (SNOMED CT or LOINC filters, code systems not available locally) is reported
as *not expandable* with the reason, and codes against it are not judged.

Terminology content installed by ``procfhir terminology fill`` is used offline too:

- the HL7 Terminology package (``hl7.terminology.r4`` in the FHIR package cache) supplies the
  code systems and value sets that R4 core lacks (R4 core's own copies come first), so bindings
  to THO value sets, and codes of THO code systems, are checked;
- the concept store (SNOMED CT GPS, DICOM, LOINC as R4 core lists it, ICD-10-CM/PCS) gives the
  displays of codes from systems with no CodeSystem resource: :meth:`Terminology.display_issue`
  reports a display that no installed source gives (a warning, as the reference validator does).
Without the content installed, both are simply absent (nothing is reported for them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from procfhir.terminology import ucum
from procfhir.validator.definitions import load_json_file

if TYPE_CHECKING:
    from procfhir.validator.definitions import Definitions


@dataclass
class CodeSystemInfo:
    url: str
    complete: bool
    codes: dict[str, str | None] = field(default_factory=dict)  # code -> display
    children: dict[str, list[str]] = field(default_factory=dict)  # code -> child codes
    case_sensitive: bool = True

    def descendants(self, code: str, include_self: bool) -> set[str]:
        out = {code} if include_self else set()
        todo = list(self.children.get(code, []))
        while todo:
            c = todo.pop()
            if c not in out:
                out.add(c)
                todo.extend(self.children.get(c, []))
        return out


def _add_concepts(info: CodeSystemInfo, concepts: list[dict[str, Any]], parent: str | None) -> None:
    """A CodeSystem's concepts (and those nested in them) into ``info``: codes, displays, the
    hierarchy (nesting, ``parent`` and ``subsumedBy`` properties). A function of the module, not
    a closure: a recursive closure is a reference cycle, left to the cycle collector."""
    for c in concepts:
        code = c.get("code")
        if not isinstance(code, str):
            continue
        info.codes[code] = c.get("display")
        if parent is not None:
            info.children.setdefault(parent, []).append(code)
        for prop in c.get("property", []):
            if prop.get("code") in ("parent", "subsumedBy") and "valueCode" in prop:
                info.children.setdefault(prop["valueCode"], []).append(code)
        _add_concepts(info, c.get("concept", []), code)


class Matcher(Protocol):
    """A grammar: a compiled pattern, or the UCUM tables (:mod:`procfhir.terminology.ucum`)."""

    def fullmatch(self, code: str) -> object: ...


# Code systems defined by a grammar rather than a list: checked by their syntax.
GRAMMARS: dict[str, Matcher] = {
    "urn:ietf:bcp:13": re.compile(  # MIME types (RFC 6838), with optional parameters
        r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
        r"(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=(\"[^\"]*\"|[^;\s]([^;]*[^;\s])?))*"  # values may hold spaces
    ),
    "urn:ietf:bcp:47": re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*"),  # language tags (syntax only)
}


@dataclass
class Expansion:
    url: str
    codes: frozenset[tuple[str, str]] | None  # None: not expandable
    reason: str = ""
    grammar: dict[str, Matcher] | None = None  # value sets of whole grammar-based systems

    @property
    def expandable(self) -> bool:
        return self.codes is not None


class _NotExpandable(Exception):
    pass


class Terminology:
    def __init__(self, defs: Definitions) -> None:
        self.defs = defs
        self._cs: dict[str, CodeSystemInfo | None] = {}
        self._vs: dict[str, Expansion] = {}
        self._tho_index: dict[str, Path] | None = None
        self._tho_loaded: dict[str, dict[str, Any] | None] = {}
        self._store: Any = None  # procfhir.terminology.store.Store, False when not installed

    # ------------------------------------------------------------ installed terminology content
    def _tho(self) -> dict[str, Path]:
        """url -> file of THO's CodeSystems and ValueSets (empty when THO is not installed)."""
        if self._tho_index is None:
            from procfhir import fhircache
            from procfhir.terminology.sources import THO

            self._tho_index = {}
            folder = fhircache.package_dir(THO.name, THO.version)
            try:
                index = load_json_file(folder / ".index.json")
            except (OSError, ValueError):
                index = {}
            for e in index.get("files", []) if isinstance(index, dict) else []:
                url = e.get("url") if isinstance(e, dict) else None
                if isinstance(url, str) and e.get("resourceType") in ("CodeSystem", "ValueSet"):
                    self._tho_index.setdefault(url, folder / str(e.get("filename")))
        return self._tho_index

    def resource(self, url: str) -> dict[str, Any] | None:
        """A CodeSystem or ValueSet: the package's and R4 core's first, else THO's."""
        res = self.defs.resource(url)
        if res is not None:
            return res
        url = url.split("|", 1)[0]
        if url not in self._tho_loaded:
            path = self._tho().get(url)
            loaded = None
            if path is not None:
                try:
                    loaded = load_json_file(path)
                except (OSError, ValueError):
                    loaded = None
            self._tho_loaded[url] = loaded if isinstance(loaded, dict) else None
        return self._tho_loaded[url]

    def display_issue(self, system: str, code: str, display: Any) -> str | None:
        """For a code of a system with no CodeSystem resource (SNOMED CT, LOINC, ICD-10, ...):
        a message when the installed sources know the code but none gives this display."""
        if not isinstance(display, str) or not display.strip():
            return None
        if self._store is None:
            from procfhir.terminology.store import TerminologyError, open_store

            try:
                self._store = open_store()
            except TerminologyError:
                self._store = False
        if self._store is False:
            return None
        from procfhir.terminology.sources import strip_semantic_tag

        rows = [c for c in self._store.find(system, code) if c.kind == "definition"]
        if not rows:
            return None
        shown = " ".join(display.split()).lower()
        valid = []
        for c in rows:
            valid.append(c.display)
            if c.source == "snomed-gps":
                valid.append(strip_semantic_tag(c.display))
        if shown in {" ".join(v.split()).lower() for v in valid}:
            return None
        best = strip_semantic_tag(rows[0].display) if rows[0].source == "snomed-gps" else rows[0].display
        return (
            f"display {display!r} differs from the installed sources' for {system}#{code}: "
            f"valid display is {best!r} ({rows[0].cite()})"
        )

    def code_system(self, system: str) -> CodeSystemInfo | None:
        if system in self._cs:
            return self._cs[system]
        res = self.resource(system)
        info = None
        if res is not None and res.get("resourceType") == "CodeSystem":
            info = CodeSystemInfo(
                system,
                res.get("content") == "complete",
                case_sensitive=res.get("caseSensitive", True) is not False,
            )

            _add_concepts(info, res.get("concept", []), None)
        self._cs[system] = info
        return info

    def expand(self, url: str) -> Expansion:
        url = url.split("|", 1)[0]
        if url in self._vs:
            return self._vs[url]
        self._vs[url] = Expansion(url, None, "circular value set import")  # guard
        try:
            codes = self._expand(url)
            exp = Expansion(url, frozenset(codes))
        except _NotExpandable as exc:
            exp = Expansion(url, None, str(exc), self._grammar(url))
        self._vs[url] = exp
        return exp

    def _grammar(self, url: str) -> dict[str, Matcher] | None:
        """For a value set of whole grammar-based code systems (e.g. all MIME types): the syntax."""
        vs = self.resource(url)
        compose = (vs or {}).get("compose") or {}
        includes = compose.get("include") or []
        if not includes or compose.get("exclude"):
            return None
        out: dict[str, Matcher] = {}
        for inc in includes:
            system = inc.get("system")
            grammar = GRAMMARS.get(system) if isinstance(system, str) else None
            if grammar is None and system == ucum.SYSTEM:
                grammar = ucum.load()  # all UCUM codes (R4's ucum-units): when the tables are installed
            if grammar is None or inc.get("concept") or inc.get("filter") or inc.get("valueSet"):
                return None
            out[system] = grammar
        return out

    def _expand(self, url: str) -> set[tuple[str, str]]:
        vs = self.resource(url)
        if vs is None or vs.get("resourceType") != "ValueSet":
            raise _NotExpandable(f"value set {url} is not available locally")
        compose = vs.get("compose")
        if not compose:
            expansion = vs.get("expansion") or {}
            if "contains" in expansion and "offset" not in expansion:
                out: set[tuple[str, str]] = set()
                todo = list(expansion["contains"])
                while todo:
                    c = todo.pop()
                    if c.get("code") and c.get("system"):
                        out.add((c["system"], c["code"]))
                    todo.extend(c.get("contains", []))
                return out
            raise _NotExpandable(f"value set {url} has neither compose nor a complete expansion")
        codes: set[tuple[str, str]] = set()
        for inc in compose.get("include", []):
            codes |= self._include(url, inc)
        for exc in compose.get("exclude", []):
            try:
                codes -= self._include(url, exc)
            except _NotExpandable as err:
                raise _NotExpandable(f"exclude: {err}") from None
        return codes

    def _include(self, url: str, inc: dict[str, Any]) -> set[tuple[str, str]]:
        system = inc.get("system")
        result: set[tuple[str, str]] | None = None
        if system:
            if inc.get("concept"):
                result = {(system, c["code"]) for c in inc["concept"] if "code" in c}
            else:
                cs = self.code_system(system)
                if cs is None:
                    raise _NotExpandable(f"code system {system} (included by {url}) is not available locally")
                if not cs.complete:
                    raise _NotExpandable(f"code system {system} is not complete locally")
                if inc.get("filter"):
                    allowed: set[str] | None = None
                    for flt in inc["filter"]:
                        op, prop, value = flt.get("op"), flt.get("property"), flt.get("value", "")
                        if prop == "concept" and op in ("is-a", "descendent-of", "="):
                            sel = {value} if op == "=" else cs.descendants(value, include_self=op == "is-a")
                        else:
                            raise _NotExpandable(
                                f"filter {prop} {op} {value} on {system} cannot be evaluated locally"
                            )
                        allowed = sel if allowed is None else allowed & sel
                    result = {(system, c) for c in (allowed or set()) if c in cs.codes}
                else:
                    result = {(system, c) for c in cs.codes}
        for vs_url in inc.get("valueSet", []):
            sub = self.expand(vs_url)
            if sub.codes is None:
                raise _NotExpandable(sub.reason)
            result = set(sub.codes) if result is None else result & sub.codes
        if result is None:
            raise _NotExpandable(f"an include of {url} has neither system nor valueSet")
        return result
