"""Stage 2: the human-edited mapping file, checked against its schema and against the text.

The mapping states the clinical knowledge of one document: for each statement the exact
quote(s) of the text it rests on and its codes (each with the source it was confirmed in).
:func:`load_mapping` refuses, naming file, line and text, when

- the mapping does not match ``generators/procfhir/schemas/mapping.schema.json``;
- a quote is not found in the text, or is ambiguous (found in more than one place);
- a code key, activity, indication or technique referred to is not defined;
- a sentence or heading of the text is claimed by no entry (``non_clinical`` entries claim
  sentences explicitly as carrying no clinical content).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from procfhir.draft import refuse_undecided
from procfhir.errors import BuildError
from procfhir.source import SourceDocument, load_source
from procfhir.strictio import StrictInputError, read_yaml, strict_yaml_loader

SCHEMA_PATH = Path(__file__).parent / "schemas" / "mapping.schema.json"


class _LineStr(str):
    line: int = 0


class _LineDict(dict):  # type: ignore[type-arg]
    line: int = 0


class _LineList(list):  # type: ignore[type-arg]
    line: int = 0


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader that remembers the line (1-based) of every string, mapping and list."""


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> _LineStr:
    value = _LineStr(loader.construct_scalar(node))
    value.line = node.start_mark.line + 1
    return value


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    value = _LineDict()
    value.line = node.start_mark.line + 1
    yield value
    value.update(loader.construct_mapping(node, deep=True))


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _LineList:
    value = _LineList()
    value.line = node.start_mark.line + 1
    yield value
    value.extend(loader.construct_sequence(node, deep=True))


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _line(value: Any) -> int:
    return getattr(value, "line", 0)


@cache
def _schema_validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    # The schema itself is checked against its meta-schema by the tests, not on every build
    # (that check alone costs a quarter of a second).
    return jsonschema.validators.validator_for(schema)(schema)


@dataclass(frozen=True)
class Code:
    """A code used by the package, with where it was confirmed (``local``: our own CodeSystem)."""

    key: str
    system: str
    code: str
    display: str
    source: str
    local: bool = False

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


@dataclass(frozen=True)
class Trace:
    """Where a statement came from: a quote of one segment of the source text.

    ``quote`` is ``source.text[start:end]``: the mapping's words exactly as the text has them.
    """

    document: str
    sentence: str
    quote: str
    start: int
    end: int


@dataclass
class Mapping:
    path: Path
    source: SourceDocument
    data: dict[str, Any]
    codes: dict[str, Code]
    _traces: dict[int, list[Trace]] = field(default_factory=dict, repr=False)
    claims: dict[str, list[str]] = field(default_factory=dict)  # segment id -> claiming entries

    @property
    def key(self) -> str:
        return str(self.data["document"]["key"])

    def traces(self, entry: dict[str, Any]) -> list[Trace]:
        """The traces of an entry's ``quotes``, in the order the mapping gives them."""
        return self._traces[id(entry)]

    def code(self, key: str) -> Code:
        return self.codes[key]

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def _read_yaml(path: Path) -> Any:
    """Strictly (see :mod:`procfhir.strictio`: duplicate keys, aliases, NaN... are refused)."""
    global _STRICT
    if _STRICT is None:
        _STRICT = strict_yaml_loader(_Loader)
    if not path.exists() and not path.is_symlink():
        raise BuildError(f"{path}: mapping file not found")
    try:
        return read_yaml(path, loader=_STRICT)
    except StrictInputError as exc:
        raise BuildError(str(exc)) from None


_STRICT: Any = None


def _schema_problems(path: Path, data: Any) -> list[str]:
    problems = []
    for err in sorted(_schema_validator().iter_errors(data), key=lambda e: list(map(str, e.path))):
        node: Any = data
        line = _line(data)
        for part in err.path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
            line = _line(node) or line
        where = "/".join(str(p) for p in err.path) or "(top level)"
        problems.append(f"{path}:{line}: {where}: {err.message}")
    return problems


class _Resolver:
    def __init__(self, path: Path, source: SourceDocument, data: dict[str, Any]) -> None:
        self.path = path
        self.source = source
        self.data = data
        self.problems: list[str] = []
        self.traces: dict[int, list[Trace]] = {}
        self.claims: dict[str, list[str]] = {}
        self.codes: dict[str, Code] = {}

    def where(self, value: Any) -> str:
        return f"{self.path}:{_line(value)}"

    def quotes(self, entry: dict[str, Any], label: str) -> None:
        if id(entry) in self.traces:  # an entry reused through a YAML alias
            return
        out: list[Trace] = []
        for quote in entry.get("quotes", []):
            hits, total = self.source.find_quote(quote)
            if total == 0:
                self.problems.append(
                    f"{self.where(quote)}: {label}: quote not found in {self.source.path}: {quote!r}"
                )
                continue
            if total > 1:
                lines = ", ".join(f"{seg.id} (line {seg.line})" for seg, _s, _e in hits)
                self.problems.append(
                    f"{self.where(quote)}: {label}: quote is ambiguous, found {total} times "
                    f"({lines}); quote more words: {quote!r}"
                )
                continue
            seg, start, end = hits[0]
            # the quote as the text has it (a paragraph break inside a split heading included),
            # so that text[start:end] == quote for every consumer of the offsets
            out.append(Trace(self.data["document"]["key"], seg.id, self.source.text[start:end], start, end))
            self.claims.setdefault(seg.id, []).append(label)
        self.traces[id(entry)] = out

    def code_keys(self, keys: list[str], label: str) -> None:
        for key in keys:
            if key not in self.codes:
                self.problems.append(
                    f"{self.where(key)}: {label}: unknown code key {key!r} "
                    "(define it under codes, with its source, or under local_codes)"
                )

    def ref(self, value: str, known: set[str], what: str, label: str) -> None:
        if value not in known:
            self.problems.append(
                f"{self.where(value)}: {label}: unknown {what} {value!r} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )


def load_mapping(path: Path, local_system: str) -> Mapping:
    """Load, check and resolve one mapping file; raise :class:`BuildError` with every problem."""
    path = Path(path)
    data = _read_yaml(path)
    refuse_undecided(path, data)
    problems = _schema_problems(path, data)
    if problems:
        raise BuildError(f"{path}: the mapping does not match its schema", problems)
    source = load_source((path.parent / data["document"]["text"]).resolve())
    r = _Resolver(path, source, data)

    for key, c in data["codes"].items():
        r.codes[key] = Code(key, c["system"], c["code"], c["display"], c["source"])
    for key, c in data["local_codes"].items():
        if key in r.codes:
            r.problems.append(f"{r.where(key)}: local code {key!r} is also a standard code key")
            continue
        r.codes[key] = Code(
            key, local_system, key, c["display"], "local code, awaiting terminology review", True
        )
        if "quotes" in c:
            r.quotes(c, f"local code {key}")

    r.quotes(data["document"], "document title")
    for nc in data.get("non_clinical", []):
        entry = {"quotes": [nc["quote"]]}
        nc_traces_holder = entry
        r.quotes(nc_traces_holder, "non-clinical")
        nc["_entry"] = nc_traces_holder

    plan = data["plan"]
    r.quotes(plan["description"], "plan description")
    if "setting" in plan:
        r.quotes(plan["setting"], "plan setting")
    r.quotes(plan["choice"], "plan choice")
    indications = {i["id"] for i in plan["indications"]}
    techniques = {t["id"] for t in plan["techniques"]}
    activities = {a["id"] for a in data["activities"]}
    for ind in plan["indications"]:
        r.quotes(ind, f"indication {ind['id']}")
        r.code_keys(ind["codes"], f"indication {ind['id']}")
    for lim in plan.get("limits", []):
        r.quotes(lim, f"limit {lim['id']}")
        r.code_keys(lim["conditions"], f"limit {lim['id']}")
    for goal in plan["goals"]:
        r.quotes(goal, f"goal {goal['id']}")
        for a in goal.get("addresses", []):
            r.ref(a, indications, "indication", f"goal {goal['id']}")
        for t in goal.get("techniques", []):
            r.ref(t, techniques, "technique", f"goal {goal['id']}")
    for tech in plan["techniques"]:
        r.quotes(tech, f"technique {tech['id']}")
        r.ref(tech["activity"], activities, "activity", f"technique {tech['id']}")
        for step in tech["steps"]:
            label = f"technique {tech['id']} step {step['id']}"
            r.quotes(step, label)
            r.code_keys(step.get("codes", []), label)
            if "activity" in step:
                r.ref(step["activity"], activities, "activity", label)
    for act in data["activities"]:
        r.quotes(act, f"activity {act['id']}")
        r.code_keys(act["codes"], f"activity {act['id']}")

    consent = data["consent"]
    r.quotes(consent, "consent")
    for p in consent["procedures"]:
        r.ref(p, techniques, "technique", "consent procedures")
    for risk in consent["risks"]:
        label = f"risk {risk['id']}"
        r.quotes(risk, label)
        r.code_keys(risk["codes"], label)
        freq = risk.get("frequency")
        if freq:
            r.code_keys([freq["code"]], label)
            if not any(freq["text"] in q for q in risk["quotes"]):
                r.problems.append(
                    f"{r.where(freq['text'])}: {label}: frequency words {freq['text']!r} "
                    "are not in any of the risk's quotes"
                )
    for vs in data["value_sets"]:
        r.code_keys(vs.get("codes", []), f"value set {vs['id']}")
    examples = data.get("examples")
    if examples:
        for proc in examples["procedures"]:
            label = f"example {proc['id']}"
            r.ref(proc["technique"], techniques, "technique", label)
            r.ref(proc["reason"], indications, "indication", label)
            for field_name in ("codes", "levels", "used", "complications"):
                r.code_keys(proc.get(field_name, []), label)

    for seg in source.segments:
        if seg.id not in r.claims:
            r.problems.append(
                f"{source.path}:{seg.line}: {seg.kind} {seg.id} is claimed by no mapping entry in "
                f"{path} (quote it, or list it under non_clinical): {seg.text!r}"
            )
    if r.problems:
        raise BuildError(f"{path}: the mapping does not match the text {source.path}", r.problems)
    return Mapping(path=path, source=source, data=data, codes=r.codes, _traces=r.traces, claims=r.claims)
