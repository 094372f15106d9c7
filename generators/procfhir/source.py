"""Stage 1: the source text, as it really is, parsed into sections, paragraphs and segments.

A *segment* is the unit that the mapping must claim: a sentence, or a heading. Every segment has
an id (``s1``, ``s2``, ... in document order) and character offsets into the text (0-based, end
exclusive), so that every generated element can point back to the exact words it rests on.

The parser copes with the text's known defects:

- paragraphs that lost their heading (they simply start a section with no title);
- a heading split over a paragraph break, whose last word(s) open the next paragraph in capitals
  followed by a period ("Leakage of X into Veins and Pulmonary" / "EMBOLUS. The ...");
  the capitalised fragment is joined to the heading, not taken for a sentence;
- a sentence ending with a colon that introduces a list of the following paragraphs
  ("These procedures have similar complications and include:").

It also reads what other patient-information texts do, with no knowledge of any one text:

- a heading on its own line directly followed by its text, with no blank line in between
  ("Possible problems" / "Some patients ..."): a short line with no closing punctuation, not ending in
  a word such as "and" or "the", followed by a line that starts a sentence;
- items of a bulleted or numbered list inside a paragraph ("- first item", "2) second item"): each
  item is read on its own (its sentences never run into the next item), without its marker; the
  sentence ending with a colon before them introduces that list;
- lines wrapped inside a sentence (a segment's text has its white space normalised);
- common abbreviations ("e.g.", "i.e.", "Dr.", an initial) do not end a sentence.

Exact provenance: the text is the file as received, byte for byte (``raw``; Windows line ends and
trailing spaces kept), decoded as UTF-8 without any newline translation, so that offsets index the
embedded text itself and the hashes are of the bytes received. A segment's ``text`` is its
wording with white space normalised (every run of white space, a line end or a paragraph break
inside a split heading, is one space): what a reader signs off, and what quotes are matched against.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from procfhir.errors import BuildError

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")
# A sentence ends at . ! ? or : followed by white space and an upper-case letter or digit.
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z0-9\"'(])")
# The capitalised continuation of a split heading: "EMBOLUS." at the start of a paragraph.
_HEADING_CONTINUATION = re.compile(r"^([A-Z][A-Z\- ]*[A-Z])\.\s+")
_MAX_HEADING = 80
# A heading line within a paragraph has at most this many words.
_MAX_HEADING_WORDS = 8
# A line ending with one of these words is a wrapped line of a sentence, never a heading.
_CONTINUING = "a an and as at by for from in into of on or the to with without than that which who"
_CONTINUING_WORDS = frozenset(_CONTINUING.split(" "))
# The marker of a list item at the start of a line: - * • ‣ ◦ – or 1. 1) a. a)
_BULLET = re.compile(r"(?:[-*\u2022\u2023\u25e6\u2013]|\d{1,2}[.)]|[a-z][.)])[ \t]+(?=\S)")
# A period after one of these does not end a sentence.
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|Dr|Mr|Mrs|Ms|St|vs|approx|cf)|(?<![\w.])[A-Z])\.$")


@dataclass(frozen=True)
class Span:
    start: int
    end: int


@dataclass
class Segment:
    id: str
    kind: str  # "heading" or "sentence"
    text: str
    spans: tuple[Span, ...]  # a heading split over a paragraph break has two spans
    section: int
    paragraph: int
    line: int  # 1-based line of the segment's first character
    introduces_list: bool = False

    @property
    def start(self) -> int:
        return self.spans[0].start

    @property
    def end(self) -> int:
        return self.spans[-1].end


@dataclass
class Section:
    index: int
    heading: Segment | None
    paragraphs: list[list[Segment]] = field(default_factory=list)
    list_item_of: str | None = None  # id of the sentence that introduces the list it belongs to


@dataclass
class SourceDocument:
    path: Path
    text: str
    title: Segment | None
    sections: list[Section]
    segments: list[Segment]
    raw: bytes = b""  # the file as received; empty only for a text parsed from a string

    def __post_init__(self) -> None:
        if not self.raw:
            self.raw = self.text.encode("utf-8")

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the bytes as received."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def sha1(self) -> bytes:
        """SHA-1 of the bytes as received (what an R4 ``Attachment.hash`` carries)."""
        return hashlib.sha1(self.raw).digest()  # noqa: S324 - R4 Attachment.hash is SHA-1

    def find_quote(self, quote: str) -> tuple[list[tuple[Segment, int, int]], int]:
        """Where a quote occurs: ``(segment, start, end)`` offsets into :attr:`text`, and the count.

        The quote is matched word for word within one segment; a run of white space in the quote
        matches any run of white space in the text (a line end, CRLF, a paragraph break inside a
        split heading), so ``text[start:end]`` is the quoted words exactly as the text has them.
        A quote that is a whole segment wins over its occurrences inside longer ones.
        """
        words = quote.split()
        if not words:
            return [], 0
        pattern = re.compile(r"\s+".join(re.escape(w) for w in words))
        hits: list[tuple[Segment, int, int]] = []
        for seg in self.segments:
            pos = seg.start
            while (m := pattern.search(self.text, pos, seg.end)) is not None:
                hits.append((seg, m.start(), m.end()))
                pos = m.start() + 1
        exact = [h for h in hits if h[0].text == " ".join(words) and (h[1], h[2]) == (h[0].start, h[0].end)]
        if len(exact) == 1:
            return exact, 1
        return hits, len(hits)

    def segment(self, sid: str) -> Segment:
        for seg in self.segments:
            if seg.id == sid:
                return seg
        raise KeyError(sid)

    def line_of(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def segments_in(self, start: int, end: int) -> list[Segment]:
        """The segments whose spans overlap the character range [start, end)."""
        return [s for s in self.segments if any(sp.start < end and start < sp.end for sp in s.spans)]


def _paragraphs(text: str) -> list[Span]:
    spans: list[Span] = []
    pos = 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        spans.append(Span(pos, m.start()))
        pos = m.end()
    spans.append(Span(pos, len(text)))
    out = []
    for sp in spans:
        chunk = text[sp.start : sp.end]
        lead = len(chunk) - len(chunk.lstrip().lstrip("\ufeff").lstrip())  # a byte-order mark too
        trail = len(chunk) - len(chunk.rstrip())
        if chunk.strip():
            out.append(Span(sp.start + lead, sp.end - trail))
    return out


def _is_heading(chunk: str) -> bool:
    return (
        "\n" not in chunk and len(chunk) <= _MAX_HEADING and chunk[-1] not in ".!?:;," and chunk[0].isupper()
    )


def _lines(text: str, span: Span) -> list[tuple[Span, bool]]:
    """The non-blank lines of a span, stripped, each with whether it was indented."""
    out: list[tuple[Span, bool]] = []
    pos = span.start
    while pos <= span.end:
        nl = text.find("\n", pos, span.end)
        end = span.end if nl == -1 else nl
        line = text[pos:end]
        stripped = line.strip()
        if stripped:
            lead = len(line) - len(line.lstrip())
            out.append((Span(pos + lead, pos + lead + len(stripped)), lead > 0 and pos != span.start))
        if nl == -1:
            break
        pos = nl + 1
    return out


def _heading_line(text: str, para: Span) -> list[Span] | None:
    """A heading on the paragraph's first line, its text on the next: the two parts, else None."""
    lines = _lines(text, para)
    if len(lines) < 2:
        return None
    head, nxt = lines[0][0], lines[1][0]
    words = text[head.start : head.end].split()
    following = text[nxt.start : nxt.end]
    if (
        not _is_heading(text[head.start : head.end])
        or len(words) > _MAX_HEADING_WORDS
        or words[-1].lower() in _CONTINUING_WORDS
        or _BULLET.match(text, head.start, head.end)
        or not (following[0].isupper() or following[0].isdigit() or _BULLET.match(following))
    ):
        return None
    return [head, Span(nxt.start, para.end)]


def _blocks(text: str, span: Span) -> list[tuple[Span, bool]]:
    """The span cut into prose and list items (``True``), an item without its marker.

    A line that does not start with a marker continues the item above it when it is indented
    or starts in lower case; otherwise it starts prose again.
    """
    lines = _lines(text, span)
    if not any(_BULLET.match(text, ln.start, ln.end) for ln, _ in lines):
        return [(span, False)]
    blocks: list[tuple[Span, bool]] = []
    for ln, indented in lines:
        marker = _BULLET.match(text, ln.start, ln.end)
        if marker:
            blocks.append((Span(marker.end(), ln.end), True))
            continue
        if blocks and (not blocks[-1][1] or indented or text[ln.start].islower()):
            blocks[-1] = (Span(blocks[-1][0].start, ln.end), blocks[-1][1])
        else:
            blocks.append((ln, False))
    return blocks


def _sentences(text: str, span: Span) -> list[Span]:
    chunk = text[span.start : span.end]
    out: list[Span] = []
    pos = 0
    for m in _SENTENCE_END.finditer(chunk):
        if _ABBREVIATION.search(chunk, pos, m.start()):
            continue  # "e.g. Aspirin", "Dr. Smith": not the end of a sentence
        out.append(Span(span.start + pos, span.start + m.start()))
        pos = m.end()
    out.append(Span(span.start + pos, span.end))
    return [s for s in out if s.end > s.start]


def parse_text(text: str, path: Path | str = "<text>") -> SourceDocument:
    """Parse the text; the first paragraph, if heading-like, is the document's title."""
    path = Path(path)
    if not text.strip():
        raise BuildError(f"{path}: the source text is empty")
    segments: list[Segment] = []
    sections: list[Section] = []
    title: Segment | None = None
    list_intro: str | None = None

    def new_segment(kind: str, spans: tuple[Span, ...], section: int, paragraph: int) -> Segment:
        seg_text = " ".join(" ".join(text[s.start : s.end] for s in spans).split())
        seg = Segment(
            id=f"s{len(segments) + 1}",
            kind=kind,
            text=seg_text,
            spans=spans,
            section=section,
            paragraph=paragraph,
            line=text.count("\n", 0, spans[0].start) + 1,
        )
        segments.append(seg)
        return seg

    paragraphs: list[Span] = []
    for para in _paragraphs(text):
        paragraphs.extend(_heading_line(text, para) or [para])
    current: Section | None = None
    pending_heading: Segment | None = None
    for p_index, para in enumerate(paragraphs):
        chunk = text[para.start : para.end]
        if p_index == 0 and _is_heading(chunk):
            title = new_segment("heading", (para,), 0, p_index)
            continue
        if _is_heading(chunk) and p_index + 1 < len(paragraphs):
            current = Section(index=len(sections), heading=None, list_item_of=list_intro)
            sections.append(current)
            pending_heading = new_segment("heading", (para,), current.index, p_index)
            current.heading = pending_heading
            continue
        body = para
        cont = _HEADING_CONTINUATION.match(chunk)
        if pending_heading is not None and cont:
            # "EMBOLUS." finishes the heading of the previous paragraph.
            pending_heading.spans = (
                *pending_heading.spans,
                Span(para.start, para.start + len(cont.group(1))),
            )
            pending_heading.text = " ".join((pending_heading.text + " " + cont.group(1)).split())
            body = Span(para.start + cont.end(), para.end)
        if pending_heading is None and (current is None or list_intro is not None):
            # A paragraph with no heading of its own: within an announced list (the
            # complications) it is an item of its own, else it continues the current section.
            current = Section(index=len(sections), heading=None, list_item_of=list_intro)
            sections.append(current)
        assert current is not None
        pending_heading = None
        para_segments: list[Segment] = []
        for block, is_item in _blocks(text, body):
            if is_item and para_segments and para_segments[-1].text.endswith(":"):
                para_segments[-1].introduces_list = True  # "... include:" then "- the first item"
            para_segments += [
                new_segment("sentence", (s,), current.index, p_index) for s in _sentences(text, block)
            ]
        current.paragraphs.append(para_segments)
        last = para_segments[-1]
        if last.text.endswith(":"):
            last.introduces_list = True
            list_intro = last.id
            current = None
    return SourceDocument(path=path, text=text, title=title, sections=sections, segments=segments)


def load_source(path: Path) -> SourceDocument:
    """Read the text as received: bytes kept, decoded as UTF-8 with no newline translation."""
    from procfhir.strictio import StrictInputError, read_bytes

    if not path.exists() and not path.is_symlink():
        raise BuildError(f"{path}: source text not found")
    try:
        raw = read_bytes(path, max_bytes=16 * 1024 * 1024, what="source text")
    except StrictInputError as exc:
        raise BuildError(str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise BuildError(
            f"{path}:{line}: source text is not UTF-8 (offset {exc.start}); save it as UTF-8"
        ) from None
    doc = parse_text(text, path)
    doc.raw = raw
    return doc
