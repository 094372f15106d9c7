"""An entry agrees with its quotes: what an entry states in its own words, the text must say.

Every mapping entry that rests on quotes (``quotes: [...]``) also has words of its own (``text``,
``title``, ``outcome``, ``management``, ``warning``, a local code's ``display`` and
``definition``, a risk's ``frequency``). Those words end up in the package, so the figures in
them must be the text's: every number ("2", "two", "90%", "1 in 100"), frequency word ("rare",
"occurs frequently", "extremely rare", "typically") and negation ("no", "not", "without") in an
entry's own words must also occur in its quotes; so must an entry's numeric fields
(a limit's ``maximum``, ``preferred`` and ``period``, a step's ``quantity_per_site``, a risk's
``numerator`` in ``denominator``), and a risk's frequency code must say what its frequency words
say. Numbers that are the codes the entry carries (a CPT code
named in an activity's text) are the terminology's, not the text's, and are not asked for.

Python API::

    from procfhir.agreement import agreement_problems
    problems = agreement_problems(path, data, codes)   # [] when every entry agrees with its quotes

Run by :func:`procfhir.mapping.load_mapping` on the mapping's YAML (the one module that reads it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procfhir.model import Code

# The entry fields that are the entry's own words (the document's ``text`` is a file name).
_WORD_FIELDS = ("title", "text", "outcome", "management", "warning", "display", "definition")
# numeric fields, as (field, sub-field or None)
_NUMBER_FIELDS = (
    ("maximum", None),
    ("preferred", None),
    ("period", "value"),
    ("quantity_per_site", "value"),
)

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "hundred": 100,
    "thousand": 1000, "once": 1, "twice": 2, "single": 1, "both": 2, "half": 50,
}  # fmt: skip
# Frequency words, by their stem (so that "rarely" and "rare" are the same claim).
_FREQUENCY = {
    "rare": "rare", "rarely": "rare", "frequent": "frequent", "frequently": "frequent",
    "common": "common", "commonly": "common", "uncommon": "uncommon", "uncommonly": "uncommon",
    "often": "often", "usual": "usual", "usually": "usual", "typical": "typical",
    "typically": "typical", "occasional": "occasional", "occasionally": "occasional",
    "sometimes": "sometimes", "seldom": "seldom", "always": "always", "never": "never",
    "generally": "general", "mostly": "most", "unusual": "unusual", "infrequent": "infrequent",
    "infrequently": "infrequent",
}  # fmt: skip
_INTENSIFIERS = ("very", "extremely", "exceedingly")
_NEGATIONS = {"no", "not", "none", "nor", "neither", "nothing", "without", "cannot", "nobody"}

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*\s*(?:%|percent\b|per\s+cent\b)?|[A-Za-z]+(?:'[a-z]+)?")
_ONE_IN_N = re.compile(
    r"\b(\d+|one|a|an)\s+(?:in|out\s+of)\s+(?:every\s+)?(\d[\d,]*|ten|twenty|a\s+hundred|one\s+hundred|"
    r"a\s+thousand|one\s+thousand|hundred|thousand)\b",
    re.IGNORECASE,
)
_BIG = {"ten": 10, "twenty": 20, "hundred": 100, "thousand": 1000}


@dataclass(frozen=True, order=True)
class Claim:
    """One figure the words state: kind (number, percentage, ratio, frequency, negation) and value."""

    kind: str
    value: str
    words: str  # as written

    def key(self) -> tuple[str, str]:
        return (self.kind, self.value)


def _number(token: str) -> str:
    value = token.replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def claims(text: str) -> list[Claim]:
    """The numbers, percentages, "1 in N", frequency words and negations of a piece of text."""
    out: list[Claim] = []
    ratio_spans: list[tuple[int, int]] = []
    for m in _ONE_IN_N.finditer(text):
        first, second = m.group(1).lower(), " ".join(m.group(2).lower().split())
        one = "1" if first in ("one", "a", "an") else _number(first)
        many = _BIG[second.split()[-1]] if second.split()[-1] in _BIG else int(_number(second))
        out.append(Claim("ratio", f"{one} in {many}", m.group(0)))
        ratio_spans.append((m.start(), m.end()))
    tokens = list(_TOKEN.finditer(text))
    for i, m in enumerate(tokens):
        if any(s <= m.start() < e for s, e in ratio_spans):
            continue
        word = m.group(0).strip()
        low = word.lower()
        if word[0].isdigit():
            number = re.match(r"[\d.,]+", word)
            assert number is not None
            value = _number(number.group(0).rstrip(".,"))
            if word.rstrip()[-1] == "%" or low.rstrip().endswith("cent"):
                out.append(Claim("percentage", value + "%", word))
            else:
                out.append(Claim("number", value, word))
        elif low in _NUMBER_WORDS:
            if low == "half" or (low == "both" and i + 1 < len(tokens) and tokens[i + 1].group(0) == "of"):
                continue  # "half of", "both of": not a count the text would write as a figure
            out.append(Claim("number", str(_NUMBER_WORDS[low]), word))
        elif low in _FREQUENCY:
            before = tokens[i - 1].group(0).lower() if i else ""
            stem = _FREQUENCY[low]
            value = f"{before} {stem}" if before in _INTENSIFIERS else stem
            out.append(Claim("frequency", value, f"{before} {word}" if before in _INTENSIFIERS else word))
        elif low in _NEGATIONS or low.endswith("n't"):
            # any negation answers any other ("no symptoms" = "does not cause symptoms")
            out.append(Claim("negation", "negation", word))
    return out


def _entries(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if isinstance(node.get("quotes"), list):
            yield where, node
        for key, value in node.items():
            if key in ("codes", "local_codes"):
                if key == "local_codes" and isinstance(value, dict):
                    for code, entry in value.items():
                        if isinstance(entry, dict) and isinstance(entry.get("quotes"), list):
                            yield f"local code {code}", entry
                continue
            yield from _entries(value, f"{where}/{key}" if where else str(key))
    elif isinstance(node, list):
        for item in node:
            label = f"{where} {item.get('id')}" if isinstance(item, dict) and "id" in item else where
            yield from _entries(item, label)


def _label(where: str) -> str:
    return where.replace("plan/", "").replace("consent/", "").replace("/", " ")


def agreement_problems(path: Path, data: dict[str, Any], codes: Mapping[str, Code]) -> list[str]:
    """Every difference between an entry's own words and its quotes, naming file, line, entry."""
    problems: list[str] = []
    seen: set[int] = set()
    code_numbers = {c.code for c in codes.values()}
    for where, entry in _entries(data, ""):
        if id(entry) in seen or where == "document":
            continue
        seen.add(id(entry))
        quotes = [str(q) for q in entry["quotes"]]
        said = {c.key() for q in quotes for c in claims(q)}
        own_codes = {codes[k].code for k in entry.get("codes", []) if isinstance(k, str) and k in codes}
        label = _label(where)
        fields: list[tuple[str, Any]] = [(f, entry[f]) for f in _WORD_FIELDS if isinstance(entry.get(f), str)]
        freq = entry.get("frequency")
        if isinstance(freq, dict) and isinstance(freq.get("text"), str):
            fields.append(("frequency", freq["text"]))
        for name, value in fields:
            missing = []
            for c in claims(value):
                if c.key() in said:
                    continue
                if c.kind == "number" and (c.value in own_codes or c.value in code_numbers):
                    continue  # a code named in the text (CPT 22510), from the terminology
                missing.append(c)
            if missing:
                stated = ", ".join(f"{c.words!r} ({c.kind})" for c in missing)
                problems.append(
                    f"{path}:{getattr(value, 'line', 0) or getattr(entry, 'line', 0)}: {label}: "
                    f"{name} says {stated}, which its quotes do not say: {value!r}; quotes: {quotes!r}. "
                    "Correct the entry's words, or quote the sentence that says it."
                )
        for name, sub in _NUMBER_FIELDS:
            value = entry.get(name)
            if sub is not None and isinstance(value, dict):
                value = value.get(sub)
            if isinstance(value, int) and ("number", str(value)) not in said:
                problems.append(
                    f"{path}:{getattr(entry, 'line', 0)}: {label}: {name} is {value}, a number its quotes "
                    f"do not say; quotes: {quotes!r}"
                )
        if isinstance(freq, dict) and isinstance(freq.get("numerator"), int):
            ratio = f"{freq['numerator']} in {freq.get('denominator')}"
            if ("ratio", ratio) not in said:
                problems.append(
                    f"{path}:{getattr(freq, 'line', 0)}: {label}: frequency is {ratio}, which its quotes "
                    f"do not say; quotes: {quotes!r}"
                )
        if isinstance(freq, dict) and isinstance(freq.get("code"), str) and freq["code"] in codes:
            code = codes[freq["code"]]
            by_code = {c.key() for c in claims(code.display) if c.kind == "frequency"}
            by_words = {c.key() for c in claims(str(freq["text"])) if c.kind == "frequency"}
            if by_code and by_code != by_words:
                problems.append(
                    f"{path}:{getattr(freq, 'line', 0)}: {label}: frequency code {code.code!r} "
                    f"({code.display!r}) does not say what the frequency words {freq['text']!r} say"
                )
    return problems
