"""``procfhir draft``: the skeleton of a mapping for a new text.

:func:`draft` parses the text with the same parser as the build (:mod:`procfhir.source`) and
lists every segment (sentence or heading) with its id, line and exact quote, the kinds our rules
suggest for it (indication, step, risk, frequency, limit, goal, setting, non-clinical), the words
that look like a condition or a number, and candidate codes whose display matches words of the
segment. Every entry is marked ``decide: true`` with ``kind: "?"``: a person decides, writes the
real mapping entries, and removes the markers. :func:`undecided` finds the markers left in a
mapping; the build refuses a mapping that has any and lists every one (file:line).

The rules are ours and plain: word patterns of patient-information texts, in :data:`RULES`.
They only suggest; nothing of a draft reaches a package until a person has decided it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procfhir.codesources import KnownCode
from procfhir.errors import BuildError
from procfhir.source import Segment, SourceDocument, load_source

KINDS = ("indication", "step", "risk", "frequency", "limit", "goal", "setting", "non-clinical")
UNDECIDED = "?"


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    why: str


def _rule(kind: str, words: str, why: str) -> Rule:
    return Rule(kind, re.compile(words, re.IGNORECASE), why)


# Word patterns, in the order their kinds are listed when several match.
RULES: tuple[Rule, ...] = (
    _rule(
        "limit",
        r"\b(no more than|not more than|at most|up to \d+|maximum|not sooner than|not earlier than|"
        r"at least \d+ (days?|weeks?|months?|years?) (after|since|between)|only one .* at a time|"
        r"per (session|day|week|month|year)|in one session|at one time)\b",
        "states a maximum, a minimum interval or a count per session",
    ),
    _rule(
        "frequency",
        r"(\b\d+ in \d+\b|\b\d+(\.\d+)? ?%|\bper cent\b|\b(very |extremely )?(rare|rarely|uncommon|common|"
        r"frequent|frequently|often|seldom)\b)",
        "gives how often something happens (a number or a frequency word)",
    ),
    _rule(
        "risk",
        r"\b(risks?|complications?|side effects?|harm|injury|damage|deaths?|emergency)\b",
        "names a risk, a complication or a harm",
    ),
    _rule(
        "indication",
        r"\b(performed (for|to)|done (for|to)|offered|indicated|used to (treat|diagnose)|"
        r"a procedure (to|for)|to look for|for patients (with|whose)|treats?|diagnos\w*)\b",
        "says what the procedure is for or whom it is offered to",
    ),
    _rule(
        "goal",
        r"\b(relieved|relief|improve\w*|success\w*|works? (very )?well|cured?|results?|benefits?|"
        r"restores?)\b",
        "states an expected result or benefit",
    ),
    _rule(
        "setting",
        r"\b(outpatients?|inpatients?|day case|admitted|at the bedside|in the (clinic|ward|hospital))\b",
        "says where or for whom (outpatients, inpatients) it is done",
    ),
    _rule(
        "step",
        r"\b((is|are|be|been) (then |first |usually |directly )?"
        r"(\w+(ed|en|t)|done|given|taken|made|sent|kept)|"
        r"will (be|give|have)|"
        r"sedation|an(a|ae)esthe\w*|guidance|needles?|placed|injected|inserted|removed|stopped|checked|"
        r"cleaned|given|you lie|lying)\b",
        "describes something done to the patient (an action, a preparation, an aftercare)",
    ),
)
# Words that make a statement apply to some patients only.
CONDITION = re.compile(
    r"\b(if [^,.;]+|in patients (who|with|whose) [^,.;]+|patients (with|who|whose) [^,.;]+|unless [^,.;]+)",
    re.IGNORECASE,
)
NUMBER = re.compile(
    r"\b((about|around|approximately|at least|no more than|not sooner than|up to)\s+)?"
    r"\d+(\.\d+)?(\s*(%|in \d+|to \d+))?(\s+(levels?|joints?|days?|weeks?|months?|years?|times?|"
    r"patients?|minutes?|seconds?|degrees?|hours?))?\b",
    re.IGNORECASE,
)
# Code systems of FHIR's own workings and of units: never the code of a clinical statement.
_INFRASTRUCTURE = (
    "http://terminology.hl7.org/",
    "http://hl7.org/fhir/",
    "http://unitsofmeasure.org",
    "http://dicom.nema.org/resources/ontology/DCM",
    "http://healthit.gov/",
    "urn:",
)
_SEMANTIC_TAG = re.compile(r"\s*\(([a-z /]+)\)\s*$")
# SNOMED CT concepts of these kinds name a clinical thing; qualifiers, attributes, units... do not.
_CLINICAL_TAGS = frozenset(
    (
        "procedure",
        "disorder",
        "finding",
        "substance",
        "physical object",
        "body structure",
        "regime/therapy",
        "situation",
        "observable entity",
        "morphologic abnormality",
        "product",
        "event",
    )
)
_WORD = re.compile(r"[a-z0-9]+")
# Words too common to tell codes apart.
_STOP_WORDS = (
    "a an and are as at be by for from in into is it of on or the to with without other others "
    "than that this these those its their your you we our not no any each per first"
)
_STOP = frozenset(_STOP_WORDS.split(" "))


@dataclass(frozen=True)
class Candidate:
    code: KnownCode
    matched: tuple[str, ...]  # the display's words found in the segment


@dataclass(frozen=True)
class DraftEntry:
    segment: Segment
    in_list_of: str | None  # id of the sentence introducing the list this segment belongs to
    suggested: tuple[str, ...]
    why: tuple[str, ...]
    conditions: tuple[str, ...]
    numbers: tuple[str, ...]
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class Draft:
    source: SourceDocument
    key: str
    entries: tuple[DraftEntry, ...]


def _words(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


def _stem(word: str) -> str:
    """Singular and plural alike: 'needles' -> 'needle', 'emboli' stays (too irregular)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss") and not word.endswith("is"):
        return word[:-1]
    return word


def _significant(display: str) -> tuple[str, ...]:
    """The words of a display that must all occur in a sentence (a SNOMED semantic tag such as
    "(procedure)" is not one of them)."""
    display = _SEMANTIC_TAG.sub("", display)
    return tuple(dict.fromkeys(w for w in _words(display) if not w.isdigit()))


def match_codes(texts: list[str], codes: Iterable[KnownCode], limit: int = 6) -> list[tuple[Candidate, ...]]:
    """For each text, the codes every significant word of whose display occurs in it: most words
    first, then in the order the codes were given (the project's own before the rest)."""
    words = [set(_words(t)) for t in texts]
    index: dict[str, list[int]] = {}
    for i, ws in enumerate(words):
        for w in ws:
            index.setdefault(w, []).append(i)
    found: list[list[tuple[int, int, Candidate]]] = [[] for _ in texts]
    for order, code in enumerate(codes):
        if code.system.startswith(_INFRASTRUCTURE) and not code.system.startswith("http://hl7.org/fhir/sid/"):
            continue  # codes of FHIR's own workings (consent scope, plan type), not of clinical words
        tag = _SEMANTIC_TAG.search(code.display)
        if tag and tag.group(1) not in _CLINICAL_TAGS:
            continue  # "Rare (qualifier value)", "Site of (attribute)"
        significant = _significant(code.display)
        if not significant:
            continue
        for i in index.get(significant[0], ()):
            if all(w in words[i] for w in significant[1:]):
                found[i].append((-len(significant), order, Candidate(code, significant)))
    return [tuple(c for *_, c in sorted(f, key=lambda x: (x[0], x[1]))[:limit]) for f in found]


def candidates(text: str, codes: Iterable[KnownCode], limit: int = 6) -> tuple[Candidate, ...]:
    """Codes every significant word of whose display occurs in the text, most words first."""
    return match_codes([text], codes, limit)[0]


def _suggest(seg: Segment, in_list_of: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if seg.kind == "heading":
        if in_list_of:
            return ("risk",), (f"heading of an item of the list introduced by {in_list_of}",)
        return ("non-clinical",), ("a heading outside any list",)
    if seg.introduces_list:
        if RULES[2].pattern.search(seg.text):
            return ("risk",), ("introduces the list of risks that follows",)
        return ("non-clinical",), ("introduces the list that follows",)
    kinds: list[str] = []
    why: list[str] = []
    for rule in RULES:
        if rule.kind not in kinds and rule.pattern.search(seg.text):
            kinds.append(rule.kind)
            why.append(rule.why)
    if in_list_of and "risk" not in kinds:
        kinds.append("risk")
        why.append(f"in an item of the list introduced by {in_list_of}")
    if not kinds:
        return ("non-clinical",), ("no rule matched: no clinical words found",)
    return tuple(kinds), tuple(why)


def draft(text_path: Path, codes: Iterable[KnownCode] = (), key: str | None = None) -> Draft:
    """The draft of a mapping for the text: every segment, with suggestions."""
    source = load_source(Path(text_path))
    matches = match_codes([s.text for s in source.segments], codes)
    list_of = {}
    for section in source.sections:
        members = [s for p in section.paragraphs for s in p]
        for seg in ([section.heading] if section.heading else []) + members:
            list_of[seg.id] = section.list_item_of
    entries = []
    for seg, found in zip(source.segments, matches, strict=True):
        in_list = None if seg is source.title else list_of.get(seg.id)
        kinds, why = _suggest(seg, in_list)
        entries.append(
            DraftEntry(
                segment=seg,
                in_list_of=in_list,
                suggested=kinds,
                why=why,
                conditions=tuple(m.group(0).strip() for m in CONDITION.finditer(seg.text)),
                numbers=tuple(m.group(0).strip() for m in NUMBER.finditer(seg.text)),
                candidates=found,
            )
        )
    return Draft(source=source, key=key or _key(source.path), entries=tuple(entries))


def _key(path: Path) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "document"


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(value, ensure_ascii=False)


# In the first line of every draft: `procfhir draft --out FILE --force` replaces only a file holding it.
HEADER_MARK = "written by `procfhir draft`"


def render(d: Draft, out: Path | None = None) -> str:
    """The draft as YAML; ``document.text`` is relative to ``out``'s folder (or to the cwd)."""
    base = out.resolve().parent if out is not None else Path.cwd()
    text_ref = os.path.relpath(d.source.path.resolve(), base)
    title = d.source.title
    lines = [
        f"# Draft mapping of {d.source.path.name}, {HEADER_MARK}.",
        "#",
        "# Every sentence and heading of the text is listed under `draft`, with its id, its line in the",
        "# text and its exact words (`quote`). For each: decide what it is, write it as the real",
        "# mapping entry (indications, steps, limits, risks, goals, setting, non_clinical...; see the",
        "# README, 'Adding a procedure'), and delete the draft entry. `suggested` and `candidate_codes`",
        "# are only suggestions of our rules: confirm every code in a terminology source before use,",
        "# else give the concept a local code. The build refuses this file while any entry is still",
        '# marked `decide: true` or `kind: "?"`, and lists every one.',
        "",
        "document:",
        f"  key: {_q(d.key)}",
        f"  text: {_q(text_ref)}",
    ]
    if title is not None:
        lines += [f"  title: {_q(title.text)}", f"  quotes: [{_q(title.text)}]"]
    else:
        lines += [f'  title: "{UNDECIDED}"', "  decide: true", "  quotes: []"]
    lines += ["", "draft:"]
    for e in d.entries:
        if e.segment is title:
            continue
        seg = e.segment
        lines += [
            f"  - id: {seg.id}",
            f"    {seg.kind}: {_q(seg.text)}",
            f"    line: {seg.line}",
        ]
        if e.in_list_of:
            lines.append(f"    in_list_of: {e.in_list_of}")
        if seg.introduces_list:
            lines.append("    introduces_list: true")
        lines += [
            f'    kind: "{UNDECIDED}"',
            f"    suggested: [{', '.join(e.suggested)}]",
            f"    why: [{', '.join(_q(w) for w in e.why)}]",
        ]
        if e.conditions:
            lines.append(f"    conditions: [{', '.join(_q(c) for c in e.conditions)}]")
        if e.numbers:
            lines.append(f"    numbers: [{', '.join(_q(n) for n in e.numbers)}]")
        if e.candidates:
            lines.append("    candidate_codes:")
            for c in e.candidates:
                lines.append(
                    f"      - {{system: {_q(c.code.system)}, code: {_q(c.code.code)}, "
                    f"display: {_q(c.code.display)}, source: {_q(c.code.source)}, "
                    f"matched: [{', '.join(c.matched)}]}}"
                )
        lines.append("    decide: true")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Undecided:
    line: int
    what: str


def undecided(data: Any) -> list[Undecided]:
    """Every entry of a loaded mapping still marked ``decide: true`` or holding ``"?"``.

    ``data`` is the mapping as loaded by :mod:`procfhir.mapping` (its nodes know their line).
    """
    found: list[Undecided] = []

    def describe(node: dict[str, Any]) -> str:
        ident = node.get("id") or node.get("key")
        words = next((node[k] for k in ("sentence", "heading", "quote", "text", "title") if k in node), None)
        parts = [str(ident)] if ident else []
        if isinstance(words, str) and words != UNDECIDED:
            parts.append(repr(words if len(words) <= 90 else words[:87] + "..."))
        return " ".join(parts) or "entry"

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            open_keys = [k for k, v in node.items() if isinstance(v, str) and v.strip() == UNDECIDED]
            if node.get("decide") is True or open_keys:
                marks = (["decide: true"] if node.get("decide") is True else []) + [
                    f'{k}: "{UNDECIDED}"' for k in open_keys
                ]
                found.append(
                    Undecided(getattr(node, "line", 0), f"{path}: {describe(node)} ({', '.join(marks)})")
                )
            for k, v in node.items():
                if k != "decide" and k not in open_keys:
                    walk(v, f"{path}/{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, str) and v.strip() == UNDECIDED:
                    found.append(Undecided(getattr(v, "line", 0), f'{path}/{i}: "{UNDECIDED}"'))
                else:
                    walk(v, f"{path}/{i}")

    walk(data, "")
    return found


def refuse_undecided(path: Path, data: Any) -> None:
    """Raise :class:`BuildError` listing every undecided entry (file:line) of a mapping."""
    found = undecided(data)
    if found:
        raise BuildError(
            f"{path}: the mapping is a draft: {len(found)} entr{'y' if len(found) == 1 else 'ies'} "
            'still to decide (remove each `decide: true` / `"?"` once decided)',
            [f"{path}:{u.line}: undecided: {u.what}" for u in found],
        )
