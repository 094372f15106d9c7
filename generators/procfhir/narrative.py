"""Generated XHTML narratives: every text escaped, only elements FHIR narrative allows.

A node is a tuple ``(tag, children...)`` or ``(tag, {attrs}, children...)``; a str is text and is
always escaped. Only the tags in :data:`ALLOWED` may be used (a subset of what FHIR R4 allows:
no scripts, forms, event attributes or external references).
"""

from __future__ import annotations

from html import escape
from typing import Any

ALLOWED = frozenset(
    {
        "div", "p", "span", "b", "i", "em", "strong", "br", "ul", "ol", "li", "table",
        "thead", "tbody", "tr", "th", "td", "h2", "h3", "h4", "a", "dl", "dt", "dd",
    }
)  # fmt: skip
_ALLOWED_ATTRS = frozenset({"id", "class", "href", "title", "colspan", "rowspan"})

Node = str | tuple[Any, ...]


def _text(value: str) -> str:
    # html.escape(value, quote=False), without its call overhead on the common no-markup text
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    return value


def render(node: Node) -> str:
    if type(node) is str:
        return _text(node)
    if isinstance(node, str):
        return escape(node, quote=False)
    tag = node[0]
    if tag not in ALLOWED:
        raise ValueError(f"narrative element <{tag}> is not allowed")
    start = 1
    attr_text = ""
    if len(node) > 1 and isinstance(node[1], dict):
        attrs = node[1]
        start = 2
        for name, value in attrs.items():
            if name not in _ALLOWED_ATTRS:
                raise ValueError(f"narrative attribute {name!r} is not allowed")
            if name == "href" and not str(value).startswith("#"):
                raise ValueError("narrative links must stay inside the document (#...)")
        attr_text = "".join(f' {k}="{escape(str(v), quote=True)}"' for k, v in attrs.items())
    if tag == "br":
        return "<br/>"
    inner = "".join([render(c) for c in node[start:] if c is not None])
    return f"<{tag}{attr_text}>{inner}</{tag}>"


def narrative(*children: Node | None) -> dict[str, str]:
    """A ``Resource.text`` with status generated."""
    body = "".join(render(c) for c in children if c is not None)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def table(header: list[str], rows: list[list[Node]]) -> Node:
    return (
        "table",
        ("tr", *[("th", h) for h in header]),
        *[("tr", *[("td", cell) for cell in row]) for row in rows],
    )


def procedure_narrative(proc: dict[str, Any], sites_label: str = "Body sites") -> dict[str, str]:
    """The narrative of a Procedure (the build's examples and $apply's Procedures alike): one table."""

    def text(cc: dict[str, Any]) -> str:
        return cc.get("text") or "; ".join(c.get("display", c["code"]) for c in cc.get("coding", []))

    rows: list[list[Any]] = [
        ["Status", proc["status"]],
        ["Procedure", text(proc["code"])],
        ["Patient", proc["subject"].get("display", proc["subject"].get("reference", ""))],
    ]
    if "performedDateTime" in proc:
        rows.append(["Performed", proc["performedDateTime"]])
    if proc.get("bodySite"):
        rows.append([sites_label, ", ".join(text(b) for b in proc["bodySite"])])
    if proc.get("reasonCode"):
        rows.append(["Reason", ", ".join(text(r) for r in proc["reasonCode"])])
    if proc.get("usedCode"):
        rows.append(["Used", ", ".join(text(u) for u in proc["usedCode"])])
    if proc.get("complication"):
        rows.append(["Complications", ", ".join(text(c) for c in proc["complication"])])
    return narrative(table(["Item", "Value"], rows))


# R4's element order of Procedure, for Procedures built from parts (the build's examples, $apply)
PROCEDURE_ORDER = (
    "resourceType",
    "id",
    "meta",
    "text",
    "extension",
    "instantiatesCanonical",
    "basedOn",
    "status",
    "code",
    "subject",
    "performedDateTime",
    "performedPeriod",
    "performer",
    "reasonCode",
    "bodySite",
    "complication",
    "usedCode",
)


def ordered_procedure(res: dict[str, Any]) -> dict[str, Any]:
    """``res`` with its elements in R4's order (any others after them, as they were)."""
    return {k: res[k] for k in PROCEDURE_ORDER if k in res} | {
        k: v for k, v in res.items() if k not in PROCEDURE_ORDER
    }
