"""The narrative check (procfhir.validator.xhtml) in one pass of expat's handlers gives exactly
what the ElementTree implementation it replaced gave (kept below as the reference): the same
findings in the same order, the same parse error messages, the same exceptions, on every
narrative of the R4 examples and on mutated and adversarial ones. The reference applies the
module's own tables (allowed elements and attributes, URL and style patterns): the algorithm is
what is compared."""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from procfhir import fhircache
from procfhir.validator import xhtml

# ------------------------------------------------------------- the reference (ElementTree)
# The rules' data (allowed elements and attributes, dangerous URLs and styles) is the module's:
# what is compared is the algorithm that applies it.
XHTML_NS = xhtml.XHTML_NS
_GLOBAL_ATTRS = xhtml._GLOBAL_ATTRS
_ELEMENT_ATTRS = xhtml._ELEMENT_ATTRS
_ALLOWED = xhtml.ALLOWED_ELEMENTS
_DANGEROUS_URL = xhtml._DANGEROUS_URL
_DECL = xhtml._DECL
_STYLE_SCRIPT = xhtml._STYLE_SCRIPT
_STYLE_EXTERNAL = xhtml._STYLE_EXTERNAL
_SECURITY = xhtml._SECURITY_ELEMENTS
_XML_NS = "{http://www.w3.org/XML/1998/namespace}"
_NS_PREFIX = f"{{{XHTML_NS}}}"
_NS_LEN = len(_NS_PREFIX)


def reference(div: str, strict: bool = False) -> list[tuple[str, str]]:
    """check_narrative as it was: ElementTree, then three walks over the tree."""
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
        msg = f"the narrative must be a <div> in the XHTML namespace ({XHTML_NS}), found {root.tag}"
        out.append((msg, "invalid"))
    has_content = False
    for el in root.iter():
        tag = el.tag
        if not isinstance(tag, str):
            continue
        if tag.startswith(_NS_PREFIX):
            local = tag[_NS_LEN:]
        else:
            out.append((f"element {tag} is not in the XHTML namespace", "invalid"))
            continue
        if local not in _ALLOWED:
            code = "security" if local in _SECURITY else "invalid"
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


# ------------------------------------------------------------------------- comparison
def _result(check: Any, div: str, strict: bool) -> Any:
    try:
        return check(div, strict)
    except Exception as exc:  # the same exception (e.g. a lone surrogate) is the same result
        return ("raised", type(exc).__name__, str(exc))


def _differences(divs: list[str]) -> list[tuple[str, bool, Any, Any]]:
    out = []
    for div in divs:
        for strict in (False, True):
            want = _result(reference, div, strict)
            got = _result(xhtml.check_narrative, div, strict)
            if got != want:
                out.append((div[:300], strict, want, got))
    return out


def _example_divs() -> list[str]:
    divs: dict[str, None] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            div = x.get("div")
            if isinstance(div, str):
                divs[div] = None
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for path in sorted(fhircache.examples_dir().glob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return list(divs)


def test_every_narrative_of_the_r4_examples_same_findings() -> None:
    if not fhircache.is_filled():
        pytest.skip("the FHIR package cache is empty")
    divs = _example_divs()
    assert len(divs) > 5000
    assert _differences(divs) == []
    # the corpus does exercise findings (hyperlinks naming nothing, empty narratives)
    codes = {code for div in divs for _, code in reference(div)}
    assert {"link", "invariant"} <= codes


D = f'<div xmlns="{XHTML_NS}">'
# whole narratives: each a case on its own, and material for the mutations below
ADVERSARIAL = [
    f"{D}<p>text</p></div>",
    f"{D}</div>",
    f"{D}   \n\t </div>",
    f"{D}\xa0\u2003</div>",
    f"{D}&#160;&#x2003;</div>",
    f"{D}&nbsp;</div>",
    f"{D}&amp;&lt;&gt;&quot;&apos;</div>",
    f"{D}&#0;</div>",
    f"{D}&#xD800;x</div>",
    f"{D}\ud800</div>",
    f"{D}<img src='x.png'/></div>",
    f"{D}<img src='#c1'/><img src='data:image/png;base64,AA=='/><img src=' https://e.org/i'/></div>",
    f"{D}<img src='javascript:alert(1)' longdesc=' JaVaScRiPt:x'/></div>",
    f"{D}<a href='javascript:alert(1)'>x</a><a href='vbscript:x'>y</a></div>",
    f"{D}<a href='data : text/html,x'>z</a><a href='data:image/png,x'>i</a></div>",
    f"{D}<a href='&#x09;javascript:x'>x</a><q cite='JAVASCRIPT:x'>q</q></div>",
    f"{D}<a href='#a1'>1</a><a href='#'>2</a><a href='#nope'>3</a><p id='a1'/><a name='n1'/></div>",
    f"{D}<a href='#n1'>1</a><foo xmlns='urn:x' name='n1'/><script id='s1'/><a href='#s1'>s</a></div>",
    f"{D}<a href='#x'>1</a><span name='x'>t</span><a href='#y' id='y'>2</a></div>",
    f"{D}<p onclick='x()' OnLoad='y' oNmouseover='z' on='1'>t</p></div>",
    f"{D}<p style='width: expression(alert(1))'>a</p><p style='background: url(http://e.org/x)'>b</p></div>",
    f"{D}<p style='background:url( \"data:image/png,x\")'>a</p><p style='@IMPORT \"x.css\"'>b</p></div>",
    f"{D}<p style='x: JavaScript:alert(1)'>a</p><p style='EXPRESSION (1)'>b</p></div>",
    f"{D}<p style='color: red'>a</p><p style='color: red'>a</p><p style='color:blue'/></div>",
    f"{D}<p xml:lang='en' xml:space='preserve' lang='en'>t</p></div>",
    f"{D}<p xmlns:xl='http://www.w3.org/1999/xlink' xl:href='x' foo='1'>t</p></div>",
    f"{D}<p class='c' title='t' dir='ltr' align='left' colspan='2'>t</p></div>",
    f"{D}<td abbr='a' nowrap='1' rowspan='2'>t</td><table border='1' summary='s'/><col span='2'/></div>",
    f"{D}<script>alert(1)</script><iframe/><object/><embed/><form/><style/><base/><link/></div>",
    f"{D}<meta/><frame/><frameset/><applet/><blink>t</blink><svg xmlns='http://www.w3.org/2000/svg'/></div>",
    f"{D}<foo>only in a disallowed element</foo></div>",
    f"{D}<foo/>tail after a disallowed element</div>",
    f"{D}<p/>tail after an allowed element</div>",
    f"{D}<x:p xmlns:x='urn:other'>text in another namespace</x:p></div>",
    f"{D}<p xmlns=''>no namespace</p></div>",
    f"{D}<p><!-- c -->  <!-- d --> </p></div>",
    f"{D}<p> <!-- c -->x</p></div>",
    f"{D}<p><![CDATA[ <script> ]]></p></div>",
    f"{D}<p><![CDATA[   ]]></p></div>",
    f"{D}<p>a</p></div>  <!-- after -->  ",
    f"  \n{D}<p>a</p></div>",
    f"\ufeff{D}<p>a</p></div>",
    "<div><p>no namespace</p></div>",
    f'<p xmlns="{XHTML_NS}">not a div</p>',
    f'<h:div xmlns:h="{XHTML_NS}"><h:p>prefixed</h:p></h:div>',
    '<div xmlns="http://www.w3.org/1999/xhtml}x"><p>brace in the namespace</p></div>',
    f'<div xmlns="{XHTML_NS}/"><p>near namespace</p></div>',
    f"<script xmlns='{XHTML_NS}'>x</script>",
    f"<!DOCTYPE div>{D}x</div>",
    f"{D}<!ENTITY x 'y'>x</div>",
    f"{D}<!doctype x>x</div>",
    f"<?xml version='1.0'?>{D}x</div>",
    f"{D}<?pi x?>x</div>",
    f"{D}<p title='<?'>x</p></div>",
    f"{D}<!-- <?pi?> --></div>",
    f"{D}<p>x</div>",
    f"{D}<p>x</p>",
    f"{D}<p x='1' x='2'>x</p></div>",
    f"{D}<a:p>x</a:p></div>",
    f"{D}</div><p/>",
    f"{D}x</div>junk",
    "",
    "   ",
    "not xml",
    f"{D}<p>\x00</p></div>",
    f"{D}<p>]]></p></div>",
    f"{D}<p a=b>x</p></div>",
]

_FRAGMENTS = [
    "<p>t</p>",
    " ",
    "\xa0",
    "x",
    "<script>s</script>",
    "<foo bar='1'>f</foo>",
    "<img src='http://e.org/i.png'/>",
    "<img/>",
    "<a href='#t'>t</a>",
    "<a href='#zz'>z</a>",
    "<span id='t'/>",
    "<b name='zz'/>",
    "<p onclick='x'>c</p>",
    "<p style='background:url(x)'>u</p>",
    "<p style='color:red'>r</p>",
    "<a href=' javascript:x'>j</a>",
    "<q xmlns='urn:q'>q</q>",
    "<p xml:lang='en'>l</p>",
    "<!-- c -->",
    "<![CDATA[c]]>",
    "&amp;",
    "&nbsp;",
    "&#160;",
    "<?pi?>",
    "<!DOCTYPE x>",
    "<",
    "&",
    "</p>",
    "'",
    '"',
]


def _mutants(seed_divs: list[str], n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        div = rng.choice(seed_divs)
        op = rng.randrange(5)
        tags = [m.start() for m in re.finditer("<", div)] or [0]
        if op == 0:  # a fragment inserted before a tag
            at = rng.choice(tags)
            div = div[:at] + rng.choice(_FRAGMENTS) + div[at:]
        elif op == 1:  # cut anywhere (broken XML)
            div = div[: rng.randrange(len(div) + 1)]
        elif op == 2:  # a range removed
            a = rng.randrange(len(div) + 1)
            div = div[:a] + div[a + rng.randrange(1, 20) :]
        elif op == 3:  # an element renamed, or its namespace changed
            div = re.sub(r"<(/?)p\b", r"<\1" + rng.choice(["foo", "h:p", "img", "P", "a", "p"]), div)
            div = div.replace(XHTML_NS, rng.choice([XHTML_NS, "urn:x", XHTML_NS + "}y", ""]), 1)
        else:  # an attribute added to some element
            at = rng.choice([m.end() for m in re.finditer(r"<[A-Za-z:]+", div)] or [0])
            attr = rng.choice(
                [" onclick='x'", " href='#t'", " id='t'", " name='zz'", " style='expression(1)'", " bad='1'"]
                + [" src='data:x'", " xml:lang='en'", " cite='vbscript:x'", " style='@import x'"]
            )
            div = div[:at] + attr + div[at:]
        out.append(div)
    return out


def test_adversarial_and_mutated_narratives_same_findings() -> None:
    seeds = list(ADVERSARIAL)
    if fhircache.is_filled():
        seeds += [d for d in _example_divs() if len(d) < 3000][::40]
    mutants = _mutants(seeds, 6000, random.Random(12))
    assert _differences(ADVERSARIAL) == []
    assert _differences(mutants) == []
    # the cases do reach every kind of finding, and exceptions, in both implementations
    results = [_result(reference, d, s) for d in ADVERSARIAL + mutants for s in (False, True)]
    codes = {code for r in results if isinstance(r, list) for _, code in r}
    assert codes == {"security", "invalid", "policy", "link", "invariant"}
    messages = {m.split(":")[0] for r in results if isinstance(r, list) for m, _ in r}
    assert "the narrative is not well-formed XHTML" in messages
    assert any(isinstance(r, tuple) and r[1] == "UnicodeEncodeError" for r in results)


def test_check_div_remembers_a_copy() -> None:
    div = f"{D}<a href='#nope'>x</a></div>"
    first = xhtml.check_div(div)
    first.append(("changed", "x"))
    assert xhtml.check_div(div) == reference(div) == xhtml.check_narrative(div)
    assert xhtml.check_div(div, strict=True) == reference(div, True)
