"""Narrative safety: the XHTML subset FHIR allows in ``Narrative.div`` (R4 narrative rules,
invariants txt-1 and txt-2), checked natively.

Returns (message, code) pairs; the caller adds the location."""

from __future__ import annotations

import hashlib
import re
import xml.parsers.expat as expat

XHTML_NS = "http://www.w3.org/1999/xhtml"

ALLOWED_ELEMENTS = frozenset(
    [
        "a",
        "abbr",
        "acronym",
        "b",
        "big",
        "blockquote",
        "br",
        "caption",
        "cite",
        "code",
        "col",
        "colgroup",
        "dd",
        "dfn",
        "div",
        "dl",
        "dt",
        "em",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "img",
        "li",
        "ol",
        "p",
        "pre",
        "q",
        "samp",
        "small",
        "span",
        "strong",
        "sub",
        "sup",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "tt",
        "ul",
        "var",
    ]
)
_GLOBAL_ATTRS = frozenset({"id", "class", "style", "lang", "title", "dir", "xml:lang"})
_ELEMENT_ATTRS: dict[str, frozenset[str]] = {
    "a": frozenset({"href", "name", "rel", "rev", "shape", "coords", "hreflang", "type", "charset"}),
    "img": frozenset({"src", "alt", "height", "width", "longdesc", "usemap", "ismap"}),
    "table": frozenset({"summary", "width", "border", "frame", "rules", "cellspacing", "cellpadding"}),
    "td": frozenset(
        {
            "abbr",
            "axis",
            "headers",
            "scope",
            "rowspan",
            "colspan",
            "align",
            "char",
            "charoff",
            "valign",
            "nowrap",
            "width",
            "height",
        }
    ),
    "col": frozenset({"span", "width", "align", "char", "charoff", "valign"}),
    "ol": frozenset({"start", "type", "compact"}),
    "ul": frozenset({"type", "compact"}),
    "li": frozenset({"value", "type"}),
    "blockquote": frozenset({"cite"}),
    "q": frozenset({"cite"}),
    "p": frozenset({"align"}),
    "div": frozenset({"align"}),
    "br": frozenset({"clear"}),
    "hr": frozenset({"align", "noshade", "size", "width"}),
    "pre": frozenset({"width"}),
    "tr": frozenset({"align", "char", "charoff", "valign", "bgcolor"}),
    "caption": frozenset({"align"}),
}
for _n in ("th",):
    _ELEMENT_ATTRS[_n] = _ELEMENT_ATTRS["td"]
for _n in ("colgroup",):
    _ELEMENT_ATTRS[_n] = _ELEMENT_ATTRS["col"]
for _n in ("thead", "tbody", "tfoot"):
    _ELEMENT_ATTRS[_n] = _ELEMENT_ATTRS["tr"]
for _n in ("h1", "h2", "h3", "h4", "h5", "h6"):
    _ELEMENT_ATTRS[_n] = frozenset({"align"})

_DANGEROUS_URL = re.compile(r"^\s*(javascript|vbscript|data\s*:\s*text/html)", re.I)
_DECL = re.compile(r"<!(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.I)
_DECL_OR_PI = re.compile(r"<[!?]")
_STYLE_SCRIPT = re.compile(r"expression\s*\(|javascript:", re.I)
_STYLE_EXTERNAL = re.compile(r"url\s*\((?!\s*['\"]?data:)|@import", re.I)

_SEEN: dict[tuple[bytes, bool], list[tuple[str, str]]] = {}
_SEEN_MAX = 20000


def check_div(div: str, strict: bool = False) -> list[tuple[str, str]]:
    """:func:`check_narrative`, remembered by a digest of the narrative: the same narrative comes
    back (the R4 examples hold each definition twice, on its own and in a Bundle)."""
    key = (hashlib.sha256(div.encode("utf-8", "surrogatepass")).digest(), strict)
    hit = _SEEN.get(key)
    if hit is None:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        hit = _SEEN[key] = check_narrative(div, strict)
    return list(hit)


def check_narrative(div: str, strict: bool = False) -> list[tuple[str, str]]:
    """Problems of one Narrative.div value, as (message, issue code) pairs. R4's rules allow
    external images and ``data:`` URLs in styles; ``strict`` (our package's policy) forbids
    external images and external style resources (issue code ``policy``).

    One pass of expat's handlers (:class:`_Walk`) over the text, no tree: the per-element
    findings in document order, then the hyperlinks naming no anchor, then txt-2."""
    if _DECL_OR_PI.search(div) is not None:  # one scan where two would find nothing
        if _DECL.search(div):
            msg = "the narrative must not contain a DOCTYPE or entity/element declarations"
            return [(msg, "security")]
        if "<?" in div:
            return [("the narrative must not contain processing instructions", "security")]
    # the parser ElementTree uses, set up as ElementTree sets it (namespace separator "}"): the
    # same documents accepted, the same error messages; names not interned (cheaper: the names
    # are looked up once each)
    parser = expat.ParserCreate(None, "}", intern=None)
    parser.ordered_attributes = True
    parser.buffer_text = False  # (the default) text in pieces: cheaper here than joined
    walk = _Walk(strict, parser)
    parser.StartElementHandler = walk.start
    parser.EndElementHandler = walk.end
    parser.CharacterDataHandler = walk.data
    try:
        parser.Parse(div, True)
    except expat.ExpatError as exc:
        return [(f"the narrative is not well-formed XHTML: {exc}", "invalid")]
    finally:
        walk.parser = None  # no reference cycle left (the run collects cycles seldom)
    out = walk.out
    anchors = walk.anchors
    for href in walk.hrefs:
        if href.startswith("#") and len(href) > 1 and href[1:] not in anchors:
            out.append((f"hyperlink {href!r} names no element (id or name) of the narrative", "link"))
    if not walk.has_content:
        out.append(("the narrative has no non-whitespace content (txt-2)", "invariant"))
    return out


# expat (namespace separator "}") names an element or attribute of a namespace "uri}local"
# where ElementTree names it "{uri}local"
_EXPAT_NS = XHTML_NS + "}"
_EXPAT_NS_LEN = len(_EXPAT_NS)
_EXPAT_XML_NS = "http://www.w3.org/XML/1998/namespace}"
_EXPAT_XML_NS_LEN = len(_EXPAT_XML_NS)
_SECURITY_ELEMENTS = frozenset(
    {
        "script",
        "iframe",
        "object",
        "embed",
        "form",
        "style",
        "base",
        "link",
        "meta",
        "frame",
        "frameset",
        "applet",
    }
)

# what an allowed attribute asks for (none of the allowed names starts with "on")
_PLAIN = 0  # nothing
_ANCHOR = 1  # id, name: an anchor hyperlinks may name
_URL = 2  # href, src, cite, longdesc: no script URL
_STYLE = 3  # style: no script (nor, strict, external resources)


def _attr_kind(name: str) -> int:
    if name in ("id", "name"):
        return _ANCHOR
    if name in ("href", "src", "cite", "longdesc"):
        return _URL
    return _STYLE if name == "style" else _PLAIN


class _Element:
    """An allowed XHTML element: its local name and its allowed attributes, by expat name."""

    def __init__(self, local: str) -> None:
        self.local = local
        self.is_a = local == "a"
        self.is_img = local == "img"
        names = _GLOBAL_ATTRS | _ELEMENT_ATTRS.get(local, frozenset())
        self.attrs: dict[str, int] = {
            (_EXPAT_XML_NS + n[4:] if n.startswith("xml:") else n): _attr_kind(n) for n in names
        }


_ELEMENTS: dict[str, _Element] = {_EXPAT_NS + local: _Element(local) for local in ALLOWED_ELEMENTS}
_EXPAT_DIV = _EXPAT_NS + "div"


def _et_name(name: str) -> str:
    """ElementTree's name for an expat name."""
    return "{" + name if "}" in name else name


_STYLE_RUNS_SCRIPT = 1
_STYLE_LOADS = 2  # an external resource
_STYLES: dict[str, int] = {}  # style value -> verdict: narratives repeat a few styles many times
_STYLES_MAX = 4096
_STYLE_MEMO_LEN = 512  # longer values are not remembered


def _style_verdict(value: str) -> int:
    verdict = _STYLES.get(value)
    if verdict is None:
        if _STYLE_SCRIPT.search(value):
            verdict = _STYLE_RUNS_SCRIPT
        elif _STYLE_EXTERNAL.search(value):
            verdict = _STYLE_LOADS
        else:
            verdict = 0
        if len(value) <= _STYLE_MEMO_LEN:
            if len(_STYLES) >= _STYLES_MAX:
                _STYLES.clear()
            _STYLES[value] = verdict
    return verdict


class _Walk:
    """expat's handlers for one narrative: the per-element findings in document order, the
    anchors (id and name values of any element), the hrefs of <a> elements, and whether an
    allowed element holds non-whitespace text (its own text, or the text after it inside its
    parent: ElementTree's text and tail) or is an <img>. Once content is found, the text and
    end handlers are removed."""

    def __init__(self, strict: bool, parser: expat.XMLParserType) -> None:
        self.strict = strict
        self.parser: expat.XMLParserType | None = parser  # it holds this walk's handlers
        self.out: list[tuple[str, str]] = []
        self.anchors: set[str] = set()
        self.hrefs: list[str] = []
        self.has_content = False
        self.text_counts = False  # the text now read belongs to an allowed element
        self.first = True
        self.listening = True  # the text and end handlers are set

    def start(self, name: str, attrs: list[str]) -> None:
        if self.first:
            self.first = False
            if name != _EXPAT_DIV:
                found = _et_name(name)
                msg = f"the narrative must be a <div> in the XHTML namespace ({XHTML_NS}), found {found}"
                self.out.append((msg, "invalid"))
        if self.has_content and self.listening:
            # nothing more to learn from the text (removed here, between two texts: removing
            # the text handler while it runs would flush a buffered text through it again)
            self.listening = False
            parser = self.parser
            if parser is not None:
                parser.CharacterDataHandler = None
                parser.EndElementHandler = None
        el = _ELEMENTS.get(name)
        if el is None:
            self._not_allowed(name, attrs)
            return
        if not self.has_content:
            self.text_counts = True
            if el.is_img:
                self.has_content = True
        if attrs:
            self._attributes(el, attrs)

    def _not_allowed(self, name: str, attrs: list[str]) -> None:
        if name.startswith(_EXPAT_NS):
            local = name[_EXPAT_NS_LEN:]
            code = "security" if local in _SECURITY_ELEMENTS else "invalid"
            self.out.append((f"the XHTML element <{local}> is not allowed in a narrative", code))
        else:
            self.out.append((f"element {_et_name(name)} is not in the XHTML namespace", "invalid"))
        self.text_counts = False
        for i in range(0, len(attrs), 2):
            attr = attrs[i]
            if attr == "id" or attr == "name":
                self.anchors.add(attrs[i + 1])

    def _attributes(self, el: _Element, attrs: list[str]) -> None:
        kinds = el.attrs
        for i in range(0, len(attrs), 2):
            attr = attrs[i]
            kind = kinds.get(attr)
            if kind is None:
                self._attribute_not_allowed(el, attr, attrs[i + 1])
            elif kind == _ANCHOR:
                self.anchors.add(attrs[i + 1])
            elif kind == _URL:
                self._url(el, attr, attrs[i + 1])
            elif kind == _STYLE:
                self._style(el, attrs[i + 1])

    def _attribute_not_allowed(self, el: _Element, attr: str, value: str) -> None:
        if "}" not in attr:
            name = attr
            if attr == "id" or attr == "name":
                self.anchors.add(value)
        elif attr.startswith(_EXPAT_XML_NS):
            name = "xml:" + attr[_EXPAT_XML_NS_LEN:]
        else:
            name = "{" + attr
        if name.lower().startswith("on"):
            msg = f"event attribute {name} on <{el.local}> is not allowed in a narrative"
            self.out.append((msg, "security"))
        else:
            self.out.append((f"attribute {name} is not allowed on <{el.local}> in a narrative", "invalid"))

    def _url(self, el: _Element, name: str, value: str) -> None:
        if el.is_a and name == "href":
            self.hrefs.append(value)
        if _DANGEROUS_URL.match(value):
            msg = f"{name}={value[:40]!r} on <{el.local}>: script URLs are not allowed"
            self.out.append((msg, "security"))
        elif self.strict and el.is_img and name == "src" and not value.startswith(("#", "data:")):
            self.out.append(
                (
                    f"<img src={value[:60]!r}>: images must be local (#id of a contained resource) "
                    "or data: URIs, not external references (our package's policy)",
                    "policy",
                )
            )

    def _style(self, el: _Element, value: str) -> None:
        verdict = _style_verdict(value)
        if verdict == _STYLE_RUNS_SCRIPT:
            self.out.append((f"style on <{el.local}> runs a script: not allowed", "security"))
        elif self.strict and verdict == _STYLE_LOADS:
            msg = f"style on <{el.local}> loads an external resource (our package's policy)"
            self.out.append((msg, "policy"))

    def end(self, name: str) -> None:
        # the text after an element (ElementTree's tail) counts when the element is allowed
        # (after the root's end, expat reports no text)
        self.text_counts = name in _ELEMENTS

    def data(self, text: str) -> None:
        if self.text_counts and text and not text.isspace():
            self.has_content = True
