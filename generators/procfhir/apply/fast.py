"""Serialized output without rebuilding it: the resources of an outcome as JSON templates.

The resources ``$apply`` gives depend on the patient only through a few values: the context key
(ids), the patient's id and name, the planned date, the performer and the organization, and the
consent form. Everything else follows from the *outcome* (technique, actions selected, their
dynamic values, the sites), which many patients share. So the builder runs once per outcome with
placeholder values, the result is serialized once, and each patient's JSON lines are that text
with the placeholders replaced by the patient's values, JSON- (and, in narratives, HTML-) escaped.
``tests/test_apply.py`` checks the lines equal ``orjson.dumps`` of :meth:`Applier.apply`'s
resources, context by context.
"""

from __future__ import annotations

import base64
import re
from collections import OrderedDict
from dataclasses import replace
from html import escape
from typing import Any

import orjson

from procfhir.apply.engine import Outcome, Selected
from procfhir.apply.resources import Builder

_OPEN, _CLOSE = "\ue000", "\ue001"
KEY = _OPEN + "K" * 14 + _CLOSE  # as long as a real key (16): ids longer than 64 are hashed alike
PATIENT = _OPEN + "P" + _CLOSE
NAME = _OPEN + "N" + _CLOSE
NAME_HTML = _OPEN + "H" + _CLOSE
DATE = _OPEN + "D" + _CLOSE
PERFORMER = _OPEN + "R" + _CLOSE
ORGANIZATION = _OPEN + "O" + _CLOSE
FORM = _OPEN + "F" + _CLOSE
_TOKEN = re.compile(
    rb'"\xee\x80\x80([RO])\xee\x80\x81"|\xee\x80\x80(K{14}|[PNHDF])\xee\x80\x81'
)  # a whole-object placeholder with its quotes, or one inside a string
_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})  # html.escape(quote=False)


def signature(selected: list[Selected]) -> tuple[Any, ...]:
    """What of an outcome shapes its resources: the actions selected and their values."""
    return tuple(
        (
            s.action.id,
            tuple((dv.path, orjson.dumps(values)) for dv, values in s.values),
            signature(s.children),
        )
        for s in selected
    )


def _narratives_html(node: Any) -> Any:
    """The name placeholder in narratives (``div``) becomes the HTML-escaped one."""
    if isinstance(node, dict):
        return {
            k: (v.replace(NAME, NAME_HTML) if k == "div" and isinstance(v, str) else _narratives_html(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_narratives_html(v) for v in node]
    return node


class Form:
    """The base64 of a consent form that differs between patients only by the name: the parts
    before and after the name encoded once (the part after for each of the 3 alignments)."""

    def __init__(self, before: bytes, after: bytes) -> None:
        cut = len(before) - len(before) % 3
        self.head, self.rest = base64.b64encode(before[:cut]), before[cut:]
        self.after = after
        self.tails = [base64.b64encode(after[k:]) for k in range(3)]

    def encode(self, name: str) -> bytes:
        middle = self.rest + escape(name).encode("utf-8")
        k = (3 - len(middle) % 3) % 3
        return self.head + base64.b64encode(middle + self.after[:k]) + self.tails[k]


class Template:
    """Each resource as a ``bytes % values`` format: ``%(K)s`` for the key..., ``%%`` for ``%``."""

    def __init__(self, resources: list[dict[str, Any]], form: Form | None = None) -> None:
        self.form = form
        self.parts: list[tuple[str, bytes]] = []
        for r in resources:
            r = _narratives_html(r)
            if r["resourceType"] == "Consent" and "sourceAttachment" in r:
                r["sourceAttachment"] = {**r["sourceAttachment"], "data": FORM}
            text = orjson.dumps(r).replace(b"%", b"%%")
            fmt = _TOKEN.sub(lambda m: b"%(" + (m.group(1) or m.group(2))[:1] + b")s", text)
            self.parts.append((r["resourceType"], fmt))


class JsonOutput:
    """The JSON lines of an outcome's resources, from a bounded cache of templates."""

    def __init__(self, builder: Builder, max_templates: int = 1024) -> None:
        self.builder = builder
        self.max_templates = max_templates
        self._templates: OrderedDict[tuple[Any, ...], Template] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _template(self, out: Outcome) -> Template:
        ctx = out.context
        sites = tuple((s.coding["system"], s.coding["code"]) for s in ctx.sites)
        local = (ctx.technique, sites)
        if out.memo is not None:  # the outcome's own templates: a small key to hash
            tpl = out.memo.get(local)
            if tpl is not None:
                self.hits += 1
                return tpl  # type: ignore[no-any-return]
        key = (ctx.technique, sites, signature(out.selected))
        tpl = self._templates.get(key)
        if tpl is not None:
            self._templates.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
            placeholder = replace(
                ctx,
                key=KEY,
                patient_ref={"reference": f"Patient/{PATIENT}", "display": NAME},
                patient_name=NAME,
                date=DATE,
                performer=PERFORMER,  # type: ignore[arg-type]
                organization=ORGANIZATION,  # type: ignore[arg-type]
            )
            form = None
            if self.builder.consent is not None:
                text = self.builder.consent.texts(ctx.technique, NAME, ctx.site_labels)[0].encode("utf-8")
                before, _, after = text.partition(escape(NAME).encode("utf-8"))
                if escape(NAME).encode("utf-8") not in after:  # the name once in the form
                    form = Form(before, after)
            tpl = Template(self.builder.build(replace(out, context=placeholder)), form)
            self._templates[key] = tpl
            if len(self._templates) > self.max_templates:
                self._templates.popitem(last=False)
        if out.memo is not None and len(out.memo) < 64:
            out.memo[local] = tpl
        return tpl

    def render(self, out: Outcome) -> list[tuple[str, bytes]] | None:
        """The (resource type, JSON line) pairs; None when a value holds a placeholder character."""
        ctx = out.context
        name = ctx.patient_name
        if _OPEN in name or _CLOSE in name:
            return None
        tpl = self._template(out)
        values: dict[bytes, bytes] = {
            b"K": ctx.key.encode(),
            b"P": ctx.patient_ref["reference"].split("/", 1)[1].encode(),
            b"N": orjson.dumps(name)[1:-1],
            b"H": orjson.dumps(name.translate(_HTML))[1:-1],
            b"D": ctx.date.encode(),
            b"R": orjson.dumps(ctx.performer),
            b"O": orjson.dumps(ctx.organization),
        }
        if tpl.form is not None:
            values[b"F"] = tpl.form.encode(name)
        elif self.builder.consent is not None:
            form = self.builder.consent.texts(ctx.technique, name, ctx.site_labels)[0]
            values[b"F"] = base64.b64encode(form.encode("utf-8"))
        return [(rtype, fmt % values) for rtype, fmt in tpl.parts]
