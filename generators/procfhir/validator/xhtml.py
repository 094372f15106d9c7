"""Narrative safety: the XHTML subset FHIR allows in ``Narrative.div`` (R4 narrative rules,
invariants txt-1 and txt-2), checked natively.

Returns (message, code) pairs; the caller adds the location."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET

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
_XML_NS = "{http://www.w3.org/XML/1998/namespace}"
_STYLE_SCRIPT = re.compile(r"expression\s*\(|javascript:", re.I)
_STYLE_EXTERNAL = re.compile(r"url\s*\((?!\s*['\"]?data:)|@import", re.I)


_NS_PREFIX = f"{{{XHTML_NS}}}"
_NS_LEN = len(_NS_PREFIX)

_SEEN: dict[tuple[bytes, bool], list[tuple[str, str]]] = {}
_SEEN_MAX = 20000


def check_div(div: str, strict: bool = False) -> list[tuple[str, str]]:
    """:func:`check_narrative`, remembered by a digest of the narrative: the same narrative comes
    back (the R4 examples hold each definition twice, on its own and in a Bundle)."""
    key = (hashlib.blake2b(div.encode("utf-8", "surrogatepass"), digest_size=16).digest(), strict)
    hit = _SEEN.get(key)
    if hit is None:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        hit = _SEEN[key] = check_narrative(div, strict)
    return list(hit)


def check_narrative(div: str, strict: bool = False) -> list[tuple[str, str]]:
    """Problems of one Narrative.div value, as (message, issue code) pairs. R4's rules allow
    external images and ``data:`` URLs in styles; ``strict`` (our package's policy) forbids
    external images and external style resources (issue code ``policy``)."""
    if _DECL.search(div):
        return [("the narrative must not contain a DOCTYPE or entity/element declarations", "security")]
    if "<?" in div:
        return [("the narrative must not contain processing instructions", "security")]
    try:
        root = ET.fromstring(div)
    except ET.ParseError as exc:
        return [(f"the narrative is not well-formed XHTML: {exc}", "invalid")]
    out: list[tuple[str, str]] = []
    if root.tag != f"{{{XHTML_NS}}}div":
        out.append(
            (
                f"the narrative must be a <div> in the XHTML namespace ({XHTML_NS}), found {root.tag}",
                "invalid",
            )
        )
    has_content = False
    for el in root.iter():
        tag = el.tag
        if not isinstance(tag, str):  # comments
            continue
        if tag.startswith(_NS_PREFIX):
            local = tag[_NS_LEN:]
        else:
            out.append((f"element {tag} is not in the XHTML namespace", "invalid"))
            continue
        if local not in ALLOWED_ELEMENTS:
            code = (
                "security"
                if local
                in (
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
                )
                else "invalid"
            )
            out.append((f"the XHTML element <{local}> is not allowed in a narrative", code))
            continue
        if local == "img":
            has_content = True
        if (el.text and el.text.strip()) or (el.tail and el.tail.strip() and el is not root):
            has_content = True
        allowed = _ELEMENT_ATTRS.get(local, frozenset())
        for attr, value in el.attrib.items():
            name = "xml:" + attr[len(_XML_NS) :] if attr.startswith(_XML_NS) else attr
            if name.lower().startswith("on"):
                out.append((f"event attribute {name} on <{local}> is not allowed in a narrative", "security"))
                continue
            if name not in _GLOBAL_ATTRS and name not in allowed:
                out.append((f"attribute {name} is not allowed on <{local}> in a narrative", "invalid"))
                continue
            if name in ("href", "src", "cite", "longdesc") and _DANGEROUS_URL.match(value):
                out.append((f"{name}={value[:40]!r} on <{local}>: script URLs are not allowed", "security"))
            elif strict and local == "img" and name == "src" and not value.startswith(("#", "data:")):
                out.append(
                    (
                        f"<img src={value[:60]!r}>: images must be local (#id of a contained resource) "
                        "or data: URIs, not external references (our package's policy)",
                        "policy",
                    )
                )
            elif name == "style" and _STYLE_SCRIPT.search(value):
                out.append((f"style on <{local}> runs a script: not allowed", "security"))
            elif strict and name == "style" and _STYLE_EXTERNAL.search(value):
                out.append(
                    (f"style on <{local}> loads an external resource (our package's policy)", "policy")
                )
    anchors = {v for el in root.iter() for k, v in el.attrib.items() if k in ("id", "name")}
    for el in root.iter(f"{{{XHTML_NS}}}a"):
        href = el.attrib.get("href", "")
        if href.startswith("#") and len(href) > 1 and href[1:] not in anchors:
            out.append((f"hyperlink {href!r} names no element (id or name) of the narrative", "link"))
    if not has_content:
        out.append(("the narrative has no non-whitespace content (txt-2)", "invariant"))
    return out
