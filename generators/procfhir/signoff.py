"""The review lock: what a clinician signed off, sentence by sentence, and whether the text still
says it.

A document's lock lives beside its mapping (``X.yaml`` -> ``X.lock.yaml``), a YAML file a person
reads and a diff shows well: per sentence (or heading) its id, who signed it off and when, and its
wording as signed (white space normalised, so that line ends and trailing spaces change nothing).
``procfhir review --sign-off --reviewer NAME`` writes it (:func:`sign_off`, :func:`write_lock`);
the build compares the text with it (:func:`compare`) and refuses any sentence that differs from
what was signed, even outside the quotes (:func:`lock_problems`), naming file, line, sentence, the
old and new wording and the FHIR elements resting on it. ``status: active`` in ``package.yaml``
is refused unless every document has a lock that matches its text.

The text is aligned with the lock sentence by sentence (a sentence inserted before others does
not make them "changed"): a sentence is *signed* (same wording as signed), *changed* since
sign-off (its wording differs from the signed sentence it replaces) or *unsigned* (never signed:
no lock, or added since); a signed sentence no longer in the text is *removed*.

Python API::

    from procfhir.signoff import compare, load_lock, lock_path, sign_off, write_lock
    comparison = compare(load_lock(lock_path(mapping.path)), mapping.source, mapping.key)
    lock, comparison = sign_off(mapping, "Dr A. Reviewer", "2026-11-30T09:00:00Z")
    write_lock(lock)
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from procfhir.errors import BuildError
from procfhir.model import Document
from procfhir.source import Segment, SourceDocument

LOCK_SUFFIX = ".lock.yaml"
SIGNED, CHANGED, UNSIGNED = "signed", "changed", "unsigned"
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_HEADER = """\
# Review lock of {text}: the text as a clinician signed it off, sentence by sentence
# (wording with white space normalised). Written by `procfhir review --sign-off --reviewer NAME`;
# the build refuses when a sentence of the text no longer reads as signed here.
"""


@dataclass(frozen=True)
class Signed:
    """One sentence or heading as signed off: its id then, its wording, who and when (UTC)."""

    id: str
    text: str
    by: str
    at: str


@dataclass
class Lock:
    path: Path
    document: str  # the document key
    text_file: str  # the text, relative to the lock's folder (as in the mapping)
    sentences: list[Signed]


@dataclass(frozen=True)
class SentenceState:
    id: str
    state: str  # SIGNED, CHANGED or UNSIGNED
    signed: Signed | None = None  # as signed: the same wording (SIGNED) or the former one (CHANGED)


@dataclass
class Comparison:
    """A document's text against its lock."""

    document: str
    lock: Lock | None
    states: dict[str, SentenceState] = field(default_factory=dict)  # by current segment id
    removed: list[tuple[Signed, int]] = field(default_factory=list)  # and where it was (line)

    @property
    def matches(self) -> bool:
        """True when there is a lock and the text says exactly what it signed."""
        return (
            self.lock is not None
            and not self.removed
            and all(s.state == SIGNED for s in self.states.values())
        )

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s.state == state)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lock_path(mapping_path: Path) -> Path:
    """``source/X.yaml`` -> ``source/X.lock.yaml``."""
    name = mapping_path.name
    stem = name[: -len(mapping_path.suffix)] if mapping_path.suffix else name
    return mapping_path.with_name(stem + LOCK_SUFFIX)


def _instant(value: Any) -> str | None:
    if isinstance(value, datetime):  # a hand-edited lock with an unquoted timestamp
        value = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value.tzinfo else None
    return value if isinstance(value, str) and _INSTANT.match(value) else None


def load_lock(path: Path) -> Lock | None:
    """The lock at ``path``, or None when there is none; BuildError naming the problem if unreadable."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: cannot read the review lock: {exc}") from None
    except yaml.YAMLError as exc:
        raise BuildError(f"{path}: the review lock is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sentences"), list):
        raise BuildError(f"{path}: a review lock needs document, text and a list of sentences")
    if not isinstance(raw.get("document"), str) or not isinstance(raw.get("text"), str):
        raise BuildError(f"{path}: a review lock needs document (the key) and text (the file name)")
    sentences = []
    for n, item in enumerate(raw["sentences"], 1):
        at = _instant(item.get("signed_at")) if isinstance(item, dict) else None
        fields = [item.get(k) for k in ("id", "text", "signed_by")] if isinstance(item, dict) else []
        if at is None or len(fields) != 3 or not all(isinstance(f, str) and f for f in fields):
            raise BuildError(
                f"{path}: sentence #{n} of the review lock needs id, text, signed_by and signed_at "
                f"(YYYY-MM-DDThh:mm:ssZ), got {item!r}"
            )
        sentences.append(Signed(str(item["id"]), str(item["text"]), str(item["signed_by"]), at))
    return Lock(path, str(raw["document"]), str(raw["text"]), sentences)


def dumps_lock(lock: Lock) -> str:
    """The lock file's text: a comment, then one block per sentence (same lock, same bytes)."""
    body = {  # plain str: the mapping's strings are str subclasses that remember their line
        "document": str(lock.document),
        "text": str(lock.text_file),
        "sentences": [
            {"id": str(s.id), "signed_by": str(s.by), "signed_at": str(s.at), "text": str(s.text)}
            for s in lock.sentences
        ],
    }
    dumped = yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1_000_000)
    return _HEADER.format(text=lock.text_file) + dumped


def write_lock(lock: Lock) -> None:
    """Write the lock atomically (a failure leaves the former lock as it was)."""
    data = dumps_lock(lock).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=".lock-", suffix=".tmp", dir=lock.path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, lock.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compare(lock: Lock | None, source: SourceDocument, document: str) -> Comparison:
    """Align the text's sentences with the lock's and give each its state."""
    segs = source.segments
    comp = Comparison(document, lock)
    if lock is None:
        comp.states = {s.id: SentenceState(s.id, UNSIGNED) for s in segs}
        return comp
    old = lock.sentences
    matcher = difflib.SequenceMatcher(None, [s.text for s in old], [s.text for s in segs], autojunk=False)

    def line_at(j: int) -> int:
        return segs[j].line if j < len(segs) else source.line_of(len(source.text))

    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                comp.states[segs[j].id] = SentenceState(segs[j].id, SIGNED, old[i])
            continue
        paired = min(i2 - i1, j2 - j1) if op == "replace" else 0
        for k in range(paired):
            comp.states[segs[j1 + k].id] = SentenceState(segs[j1 + k].id, CHANGED, old[i1 + k])
        for j in range(j1 + paired, j2):
            comp.states[segs[j].id] = SentenceState(segs[j].id, UNSIGNED)
        for i in range(i1 + paired, i2):
            comp.removed.append((old[i], line_at(j2)))
    comp.states = {s.id: comp.states[s.id] for s in segs}  # in document order
    return comp


def sign_off(
    source: SourceDocument, document: str, text_file: str, path: Path, reviewer: str, at: str
) -> tuple[Lock, Comparison]:
    """The new lock for the current text, and the comparison with the former lock (what changed).

    A sentence that still reads as signed keeps who signed it and when; every other sentence is
    signed now by ``reviewer``.
    """
    reviewer = " ".join(reviewer.split())
    if not reviewer:
        raise BuildError("a sign-off needs the reviewer's name (--reviewer NAME)")
    if _instant(at) is None:
        raise BuildError(f"sign-off time {at!r} must be YYYY-MM-DDThh:mm:ssZ (UTC)")
    comp = compare(load_lock(path), source, document)
    sentences = []
    for seg in source.segments:
        st = comp.states[seg.id]
        if st.state == SIGNED and st.signed is not None:
            sentences.append(Signed(seg.id, seg.text, st.signed.by, st.signed.at))
        else:
            sentences.append(Signed(seg.id, seg.text, reviewer, at))
    return Lock(path, document, text_file, sentences), comp


def _label(seg: Segment) -> str:
    return f"{seg.kind} {seg.id}"


def describe_changes(comp: Comparison, source: SourceDocument) -> list[str]:
    """What changed in the text since the lock was written, one line (or block) per sentence."""
    if comp.lock is None:
        return [f"{comp.document}: no sign-off yet; {len(source.segments)} sentences and headings to sign"]
    out = []
    for seg in source.segments:
        st = comp.states[seg.id]
        if st.state == CHANGED and st.signed is not None:
            out.append(
                f"{source.path}:{seg.line}: {_label(seg)} changed since signed by {st.signed.by} on "
                f"{st.signed.at}:\n      signed: {st.signed.text!r}\n      now:    {seg.text!r}"
            )
        elif st.state == UNSIGNED:
            out.append(f"{source.path}:{seg.line}: {_label(seg)} added since the sign-off: {seg.text!r}")
    for signed, line in comp.removed:
        out.append(
            f"{source.path}:{line}: {signed.id} signed by {signed.by} on {signed.at} is no longer in the "
            f"text: {signed.text!r}"
        )
    return out or [f"{comp.document}: no change since the sign-off"]


def elements_resting(trace: dict[str, Any], document: str) -> dict[str, list[str]]:
    """Per sentence id, the FHIR elements that carry its ``source-text``, grouped by resource:
    ``PlanDefinition/x (action[0], description)``."""
    out: dict[str, list[str]] = {}
    for doc in trace.get("documents", []):
        if doc.get("key") != document:
            continue
        for seg in doc["segments"]:
            by_resource: dict[str, list[str]] = {}
            for el in seg.get("elements", []):
                path = str(el["path"]).split(".", 1)[1] if "." in str(el["path"]) else "(the resource)"
                paths = by_resource.setdefault(str(el["resource"]), [])
                if path not in paths:
                    paths.append(path)
            out[seg["id"]] = [f"{ref} ({', '.join(paths)})" for ref, paths in by_resource.items()]
    return out


def lock_problems(
    comp: Comparison, source: SourceDocument, mapping_path: Path, text_file: str, trace: dict[str, Any] | None
) -> list[str]:
    """Every difference between the text and its lock, with the FHIR elements resting on it (from
    the ``trace`` of the build; None when the mapping failed and there is no trace)."""
    lock = comp.lock
    if lock is None:
        return []
    problems = []
    if lock.document != comp.document or lock.text_file != text_file:
        problems.append(
            f"{lock.path}: the lock is of document {lock.document!r} ({lock.text_file}), but "
            f"{mapping_path} maps document {comp.document!r} ({text_file}); sign the document off again"
        )
    resting = elements_resting(trace or {}, comp.document)
    segs = {s.id: s for s in source.segments}
    for sid, st in comp.states.items():
        if st.state == SIGNED:
            continue
        seg = segs[sid]
        elements = resting.get(sid, [])
        on_it = "; ".join(elements) if elements else "none (claimed by the mapping, no element carries it)"
        if st.state == CHANGED and st.signed is not None:
            what = (
                f"{_label(seg)} differs from the wording signed off by {st.signed.by} on {st.signed.at} "
                f"({lock.path.name}):\n      signed: {st.signed.text!r}\n      now:    {seg.text!r}"
            )
        else:
            what = (
                f"{_label(seg)} was never signed off (added since the sign-off in {lock.path.name}): "
                f"{seg.text!r}"
            )
        if trace is not None:
            what += f"\n      FHIR elements resting on it: {on_it}"
        problems.append(f"{source.path}:{seg.line}: {what}")
    for signed, line in comp.removed:
        problems.append(
            f"{source.path}:{line}: {signed.id} as signed off by {signed.by} on {signed.at} "
            f"({lock.path.name}) is no longer in the text:\n      signed: {signed.text!r}"
            "\n      now:    (removed)"
        )
    return problems


def unchecked_lock_problems(lock_paths: Iterable[Path], parse: Any) -> list[str]:
    """Lock differences when the mapping itself failed (no trace): from the text the lock names.

    ``parse`` reads a text file into a :class:`SourceDocument` (``procfhir.source.load_source``).
    """
    problems: list[str] = []
    for path in lock_paths:
        try:
            lock = load_lock(path)
            if lock is None:
                continue
            source = parse((path.parent / lock.text_file).resolve())
        except BuildError as exc:
            problems.extend(exc.problems)
            continue
        comp = compare(lock, source, lock.document)
        problems += lock_problems(comp, source, path, lock.text_file, None)
    return problems


# --- the build's checks ------------------------------------------------------------------------

_SIGN = "sign the text off again (`procfhir review --sign-off --reviewer NAME`) or restore the signed wording"


def compare_documents(mappings: Iterable[Document]) -> dict[str, Comparison]:
    """Each document's text against its lock, by document key."""
    return {m.key: compare(load_lock(lock_path(m.path)), m.source, m.key) for m in mappings}


def signoff_check(
    status: str, mappings: Iterable[Document], comparisons: dict[str, Comparison], trace: dict[str, Any]
) -> BuildError | None:
    """The build's refusal, if any: a text that differs from its lock; ``active`` without locks."""
    mappings = list(mappings)
    problems = []
    for m in mappings:
        comp = comparisons[m.key]
        problems += lock_problems(comp, m.source, m.path, m.text_file, trace)
    if problems:
        return BuildError(f"the text differs from what was signed off: {_SIGN}", problems)
    if status == "active":
        unsigned = [
            f"{m.path}: document {m.key} has no review lock ({lock_path(m.path).name}); a clinician signs "
            "it off with `procfhir review --sign-off --reviewer NAME`"
            for m in mappings
            if comparisons[m.key].lock is None
        ]
        if unsigned:
            return BuildError(
                "status: active in package.yaml needs every document signed off as its text reads now "
                "(keep status: draft until then)",
                unsigned,
            )
    return None
