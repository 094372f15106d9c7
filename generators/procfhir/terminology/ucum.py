"""UCUM unit codes (the Unified Code for Units of Measure, case-sensitive form), checked against
the UCUM tables (``ucum-essence.xml``: prefixes, base units, units and whether each is metric).

The tables are content installed by ``procfhir terminology fill`` (see
:data:`procfhir.terminology.sources.UCUM`); nothing here is a hand-written list of units.

The syntax is UCUM's (§ 2.1 and its grammar, with what the HL7 validator's UCUM service accepts
beyond it, so that verdicts agree with the reference)::

    main-term  ::= "/" term | term            (empty: the unity "1")
    term       ::= component | term "." component | term "/" component
                   (an annotation right after a component multiplies it implicitly)
    component  ::= annotatable annotation? | annotation | factor | "(" term ")"
    annotatable::= simple-unit exponent?      (exponent: digits with an optional + or -)
    simple-unit::= atom | prefix metric-atom  (a prefix is tried first, as the reference does)
    annotation ::= "{" printable ASCII characters but "}" "}"

Python API::

    tables = load()            # None when the content is not installed
    tables.check("mg/dL")      # None: valid
    tables.check("ea")         # "the unit 'ea' is unknown (at position 0)"
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SYSTEM = "http://unitsofmeasure.org"
ESSENCE_NAME = "ucum-essence.xml"
MANIFEST_NAME = "manifest.json"
_NS = "{http://unitsofmeasure.org/ucum-essence}"
MAX_NESTING = 64  # parentheses; real codes use one or two levels
_SYMBOL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ[]%*^'\"_")
_DIGITS = frozenset("0123456789")


class UcumError(Exception):
    """A unit code that is not valid UCUM; ``str()`` says why and where."""


def ucum_dir(root: Path | None = None) -> Path:
    from procfhir.terminology.store import store_root

    return (root or store_root()) / "ucum"


@dataclass
class Tables:
    """UCUM's prefixes (in the tables' order) and units (code -> metric), from ucum-essence.xml."""

    version: str
    prefixes: list[str]
    units: dict[str, bool]
    _verdicts: dict[str, str | None] = field(default_factory=dict, repr=False)

    @classmethod
    def from_xml(cls, data: bytes) -> Tables:
        root = ET.fromstring(data)  # noqa: S314 - pinned content, checked against its SHA-256
        if root.tag != f"{_NS}root":
            raise UcumError("not a UCUM essence file (root element)")
        prefixes = [str(p.get("Code")) for p in root.iter(f"{_NS}prefix") if p.get("Code")]
        units: dict[str, bool] = {str(b.get("Code")): True for b in root.iter(f"{_NS}base-unit")}
        for u in root.iter(f"{_NS}unit"):
            code = u.get("Code")
            if code:
                units[code] = u.get("isMetric") == "yes"
        if not prefixes or len(units) < 100:
            raise UcumError("the UCUM essence file holds no prefixes or too few units")
        return cls(str(root.get("version", "?")), prefixes, units)

    def check(self, code: str) -> str | None:
        """None when ``code`` is a valid UCUM unit expression, else why not (remembered)."""
        got = self._verdicts.get(code, "")
        if got != "":
            return got
        try:
            _Parser(self, code).parse()
            verdict = None
        except UcumError as exc:
            verdict = str(exc)
        if len(self._verdicts) < 100_000:
            self._verdicts[code] = verdict
        return verdict

    def is_valid(self, code: str) -> bool:
        return self.check(code) is None

    def fullmatch(self, code: str) -> bool:
        """Grammar-style check (the interface of the validator's grammar-based code systems)."""
        return self.check(code) is None

    def resolve(self, symbol: str) -> bool:
        """Whether a symbol (without exponent) is an atom, or a prefix and a metric atom."""
        for p in self.prefixes:
            if symbol.startswith(p) and self.units.get(symbol[len(p) :]) is True:
                return True
        return symbol in self.units or symbol == "1"


# token kinds
_OP, _ANN, _NUM, _SYM = "op", "ann", "num", "sym"
Token = tuple[str, str, int]  # kind, text, position


def tokens(code: str) -> list[Token]:
    """The tokens of a unit expression; :class:`UcumError` for a character that fits none."""
    out: list[Token] = []
    i, n = 0, len(code)
    while i < n:
        ch = code[i]
        start = i
        if ch in "/.()":
            out.append((_OP, ch, i))
            i += 1
        elif ch == "{":
            j = i + 1
            while j < n and code[j] != "}":
                if not " " <= code[j] <= "~":
                    raise UcumError(f"the annotation at position {i} holds a character that is not ASCII")
                j += 1
            if j >= n:
                raise UcumError(f"the annotation at position {i} is not closed")
            out.append((_ANN, code[i + 1 : j], i))
            i = j + 1
        elif ch in "+-":
            j = i + 1
            while j < n and code[j] in _DIGITS:
                j += 1
            if j == i + 1:
                raise UcumError(f"a {ch} must be followed by at least one digit (position {i})")
            out.append((_NUM, code[i:j], i))
            i = j
        elif ch in _SYMBOL_CHARS or ch in _DIGITS:
            # digits belong to a symbol only before its first non-digit, or inside [...]
            is_symbol = False
            in_brackets = False
            j = i
            while j < n:
                c = code[j]
                if c == "[":
                    if in_brackets:
                        raise UcumError(f"nested [ at position {j}")
                    in_brackets = True
                elif c == "]":
                    if not in_brackets:
                        raise UcumError(f"] without [ at position {j}")
                    in_brackets = False
                elif c in _DIGITS:
                    if is_symbol and not in_brackets:
                        break
                elif c == "." and in_brackets:
                    pass
                elif c not in _SYMBOL_CHARS:
                    break
                if c not in _DIGITS:
                    is_symbol = True
                j += 1
            if in_brackets:
                raise UcumError(f"[ without ] from position {i}")
            out.append((_SYM if is_symbol else _NUM, code[i:j], i))
            i = j
        else:
            raise UcumError(f"unexpected character {ch!r} at position {start}")
    return out


class _Parser:
    def __init__(self, tables: Tables, code: str) -> None:
        self.tables = tables
        self.code = code
        self.toks = tokens(code)
        self.i = 0

    def _peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def parse(self) -> None:
        self._term(first=True, depth=0)
        tok = self._peek()
        if tok is not None:
            raise UcumError(f"unexpected {tok[1]!r} at position {tok[2]}")

    def _term(self, first: bool, depth: int) -> None:
        if first and self._peek() is None:
            return  # the empty code is the unity
        while True:
            tok = self._peek()
            if tok is not None and tok[:2] == (_OP, "/"):
                self.i += 1
                continue
            if tok is not None and tok[0] == _ANN:
                self.i += 1
            else:
                self._component(depth)
            tok = self._peek()
            if tok is None or tok[:2] == (_OP, ")"):
                return
            if tok[0] == _OP and tok[1] in "./":
                self.i += 1
            elif tok[0] != _ANN:  # an annotation right after a component: implicit product
                raise UcumError(f"expected '/' or '.' at position {tok[2]}, found {tok[1]!r}")

    def _component(self, depth: int) -> None:
        tok = self._peek()
        if tok is None:
            raise UcumError("unexpected end of the expression, looking for a unit or a number")
        kind, text, pos = tok
        self.i += 1
        if kind == _NUM:
            return
        if kind == _SYM:
            if not self.tables.resolve(text):
                raise UcumError(f"the unit {text!r} is unknown (at position {pos})")
            nxt = self._peek()
            if nxt is not None and nxt[0] == _NUM:
                self.i += 1  # the exponent
            return
        if (kind, text) == (_OP, "("):
            if depth >= MAX_NESTING:
                raise UcumError(f"parentheses nested more than {MAX_NESTING} levels deep")
            self._term(first=True, depth=depth + 1)
            close = self._peek()
            if close is None or close[:2] != (_OP, ")"):
                where = f"position {close[2]}" if close else "the end"
                raise UcumError(f"a closing parenthesis is expected at {where}")
            self.i += 1
            return
        raise UcumError(f"unexpected {text!r} at position {pos}, looking for a unit or a number")


# ---------------------------------------------------------------- installed content
def install(essence: bytes, artifact: dict[str, str], root: Path | None = None) -> Path:
    """Write the tables and their manifest (atomic: the manifest last, after a test parse)."""
    Tables.from_xml(essence)
    folder = ucum_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"artifact": artifact, "file": ESSENCE_NAME, "sha256": hashlib.sha256(essence).hexdigest()}
    for name, data in (
        (ESSENCE_NAME, essence),
        (MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode()),
    ):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / name)
    load.cache_clear()
    return folder / ESSENCE_NAME


def installed_manifest(root: Path | None = None) -> dict[str, object] | None:
    try:
        got = json.loads((ucum_dir(root) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def is_installed(root: Path | None = None) -> bool:
    from procfhir.terminology.sources import UCUM

    manifest = installed_manifest(root)
    if manifest is None or (manifest.get("artifact") or {}) != _artifact_record(UCUM):
        return False
    return (ucum_dir(root) / ESSENCE_NAME).is_file()


def _artifact_record(a: object) -> dict[str, str]:
    return {k: str(getattr(a, k)) for k in ("registry", "name", "version", "sha256")}


@cache
def load(root: Path | None = None) -> Tables | None:
    """The installed tables (read once per process), or None when not installed or altered."""
    if not is_installed(root):
        return None
    path = ucum_dir(root) / ESSENCE_NAME
    try:
        data = path.read_bytes()
    except OSError:
        return None
    manifest = installed_manifest(root) or {}
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return None
    try:
        return Tables.from_xml(data)
    except (UcumError, ET.ParseError):
        return None
