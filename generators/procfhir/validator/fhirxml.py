"""FHIR R4 XML read into FHIR JSON, by the R4 core definitions (which properties repeat, which
are primitives and of what JSON type), so that XML resources and profiles can be validated and
used as definitions like JSON ones.

The rules of FHIR's XML format (https://hl7.org/fhir/R4/xml.html): the root element names the
resource type, in the namespace ``http://hl7.org/fhir``; a primitive is an element with a
``value`` attribute (and optionally an ``id`` attribute and ``extension`` children, which become
the JSON ``_name`` twin); an element's ``id`` and an extension's ``url`` are attributes; an
inline resource (``contained``, ``Bundle.entry.resource``, ``Parameters.parameter.resource``) is
wrapped in its element; the narrative's ``div`` is XHTML, kept as its XML text.

Python API::

    resource = xml_to_json(data)   # XmlError when it is not FHIR XML (DTDs are refused)

An element the definitions do not know is kept under its name (with its ``value``, or its
children read the same way), for the validator to report it as an unknown element.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procfhir.validator.definitions import Definitions, Node

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_F = f"{{{FHIR_NS}}}"
_X = f"{{{XHTML_NS}}}"
_INTS = {"integer", "positiveInt", "unsignedInt", "http://hl7.org/fhirpath/System.Integer"}
_DECIMALS = {"decimal", "http://hl7.org/fhirpath/System.Decimal"}
_BOOLS = {"boolean", "http://hl7.org/fhirpath/System.Boolean"}
_DOCTYPE = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)
MAX_DEPTH = 200


class XmlError(Exception):
    """Not FHIR XML (or not XML); ``str()`` says why."""


@cache
def _core() -> Definitions:
    from procfhir.validator.definitions import Definitions

    return Definitions(None, lean=True)


def xml_to_json(data: bytes, defs: Definitions | None = None) -> dict[str, Any]:
    """The FHIR JSON form of a FHIR XML resource."""
    if _DOCTYPE.search(data[:4096]) or b"<!ENTITY" in data:
        raise XmlError("a DTD or entity declaration (FHIR XML has none): refused")
    try:
        root = ET.fromstring(data)  # noqa: S314 - no DTD/entities (refused above)
    except ET.ParseError as exc:
        raise XmlError(f"not well-formed XML: {exc}") from None
    return _Reader(defs or _core()).resource(root, 0)


def _local(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


class _Reader:
    def __init__(self, defs: Definitions) -> None:
        self.defs = defs

    def resource(self, el: ET.Element, depth: int) -> dict[str, Any]:
        ns, rtype = _local(el.tag)
        if ns != FHIR_NS:
            raise XmlError(f"<{rtype}> is not in the FHIR namespace {FHIR_NS} (found {ns or 'none'})")
        sd = self.defs.type_sd(rtype)
        if sd is None or sd.kind != "resource":
            raise XmlError(f"<{rtype}> is not an R4 resource type")
        out: dict[str, Any] = {"resourceType": rtype}
        self.children(el, sd.root, out, depth + 1)
        return out

    def children(self, el: ET.Element, node: Node | None, out: dict[str, Any], depth: int) -> None:
        if depth > MAX_DEPTH:
            raise XmlError(f"nested more than {MAX_DEPTH} levels deep")
        keymap = node.keymap() if node is not None else {}
        twins: dict[str, list[Any]] = {}
        for child in el:
            if not isinstance(child.tag, str):
                continue  # comments, processing instructions
            ns, name = _local(child.tag)
            if ns == XHTML_NS and name == "div":
                out["div"] = _xhtml(child)
                continue
            hit = keymap.get(name)
            cnode = node.children.get(hit[0]) if node is not None and hit is not None else None
            tcode = hit[1] if hit is not None else ""
            repeats = cnode.repeats if cnode is not None else False
            if cnode is not None and _is_primitive(tcode):
                value = _primitive(child.get("value"), tcode)
                twin = self.twin(child, depth)
                if repeats:
                    out.setdefault(name, []).append(value)
                    twins.setdefault(name, []).append(twin)
                else:
                    out[name] = value
                    if twin is not None:
                        out[f"_{name}"] = twin
                continue
            if cnode is not None and (tcode in self.defs.resource_types or tcode == "Resource"):
                inner = [c for c in child if isinstance(c.tag, str)]
                if len(inner) != 1:
                    raise XmlError(f"<{name}> must hold exactly one resource, found {len(inner)} elements")
                value = self.resource(inner[0], depth + 1)
            else:
                value = self.complex(child, self._node_for(cnode, tcode), depth + 1)
            if repeats:
                out.setdefault(name, []).append(value)
            else:
                out[name] = value
        for name, items in twins.items():
            if any(t is not None for t in items):
                out[f"_{name}"] = items
                if all(v is None for v in out[name]):
                    del out[name]  # extensions only: the JSON form may leave the values out

    def complex(self, el: ET.Element, node: Node | None, depth: int) -> Any:
        out: dict[str, Any] = {}
        for attr in ("id", "url"):
            if el.get(attr) is not None:
                out[attr] = el.get(attr)
        if node is None and el.get("value") is not None and not len(el):
            return el.get("value")  # an unknown element: kept for the validator to report
        self.children(el, node, out, depth)
        return out

    def twin(self, el: ET.Element, depth: int) -> dict[str, Any] | None:
        """A primitive's id and extensions (the JSON ``_name`` object), or None."""
        out: dict[str, Any] = {}
        if el.get("id") is not None:
            out["id"] = el.get("id")
        ext_sd = self.defs.type_sd("Extension")
        for c in el:
            if isinstance(c.tag, str) and _local(c.tag)[1] == "extension":
                node = ext_sd.root if ext_sd is not None else None
                out.setdefault("extension", []).append(self.complex(c, node, depth + 1))
        return out or None

    def _node_for(self, cnode: Node | None, tcode: str) -> Node | None:
        if cnode is None:
            return None
        if cnode.children:
            return cnode
        if cnode.content_ref:
            return cnode.sd.node_for_ref(cnode.content_ref)
        tsd = self.defs.type_sd(tcode) if tcode else None
        return tsd.root if tsd is not None else None


def _is_primitive(tcode: str) -> bool:
    return tcode[:1].islower() or tcode.startswith("http://hl7.org/fhirpath/System.")


def _primitive(value: str | None, tcode: str) -> Any:
    if value is None:
        return None
    if tcode in _BOOLS:
        return {"true": True, "false": False}.get(value, value)
    if tcode in _INTS:
        try:
            return int(value)
        except ValueError:
            return value  # the validator reports the wrong JSON type
    if tcode in _DECIMALS:
        try:
            return int(value) if re.fullmatch(r"-?\d+", value) else float(value)
        except ValueError:
            return value
    return value


def _xhtml(el: ET.Element) -> str:
    ET.register_namespace("", XHTML_NS)
    tail, el.tail = el.tail, None
    try:
        return ET.tostring(el, encoding="unicode", short_empty_elements=True)
    finally:
        el.tail = tail
