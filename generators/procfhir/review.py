"""The review page: one static HTML file showing the package the way a clinician and a
terminologist check it (source text and what each sentence became, the plan as a diagram, the
consent form, the codes, the validation result).

Python API::

    from procfhir.review import render_review
    html = render_review(build_result)

The page opens from the file system: no server, no external resource of any kind (a Content
Security Policy forbids them), readable with JavaScript off (links and CSS ``:target`` do the
cross-referencing; a small inline script only adds hover highlighting). Every text is escaped.
Same build, same bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from html import escape
from typing import Any

from procfhir.model import Document

# In the head of every review page: `procfhir review --out` replaces only a file that holds it.
PAGE_MARKER = '<meta name="generator" content="procfhir review">'

# Where an element went, by resource type; the first category found colours a sentence.
_CATEGORIES = (
    ("plan", "plan / activity", ("PlanDefinition", "ActivityDefinition")),
    ("consent", "consent", ("Consent",)),
    ("term", "terminology", ("CodeSystem", "ValueSet")),
    ("example", "example", ("Procedure", "Patient")),
)
_SYSTEM_NAMES = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://loinc.org": "LOINC",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "urn:iso:std:iso:3166": "ISO 3166",
}
_SELECTION = {
    "exactly-one": "choose exactly one",
    "at-most-one": "choose at most one",
    "one-or-more": "choose one or more",
    "any": "any of",
    "all": "all of these steps",
    "all-or-none": "all of these steps, or none",
}
_CONDITION_KIND = {"applicability": "Applies when", "start": "Starts when", "stop": "Stops when"}
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")
_SEVERITIES = ("fatal", "error", "warning", "information")

_SCRIPT = (
    "(function(){function f(e,on){var t=e.target.closest&&e.target.closest('[data-seg]');"
    "if(!t)return;var k=t.getAttribute('data-seg');"
    "document.querySelectorAll('[data-seg=\"'+k+'\"]').forEach(function(n){"
    "n.classList.toggle('hl',on);});"
    "if(on&&t.classList.contains('seg')){var g=document.getElementById('gen-'+k);"
    "if(g)g.scrollIntoView({block:'nearest'});}}"
    "document.addEventListener('mouseover',function(e){f(e,true);});"
    "document.addEventListener('mouseout',function(e){f(e,false);});})();"
)

_CSS = """
:root{--ink:#1d2329;--muted:#5b6670;--line:#d5dbe0;--plan:#dbeafe;--consent:#fde2e1;--term:#e6f4d7;
--example:#efe5fb;--none:#eceff1;--nc:#f3f3f3;--warn:#fff1c2;--bad:#b42318;--ok:#17663a}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:var(--ink);
background:#fafbfc}
header.top{padding:18px 28px;background:#21313f;color:#fff}
header.top h1{margin:0 0 4px;font-size:22px}
header.top p{margin:2px 0;color:#d6e0e8}
nav.toc{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:6px 28px}
nav.toc a{margin-right:18px;color:#1f5f99;text-decoration:none;font-weight:600}
main{padding:0 28px 40px}
section.part{margin-top:28px}
h2{font-size:20px;border-bottom:2px solid #21313f;padding-bottom:4px}
h3{font-size:17px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef2f5}
code,.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.badge{display:inline-block;border-radius:9px;padding:0 8px;font-size:12px;font-weight:600;
border:1px solid #9aa5ae;background:#fff;color:#39444d;vertical-align:middle}
.badge.nc{border-style:dashed}
.badge.local{background:#ffd666;border-color:#b7791f;color:#4a3000}
.badge.err{background:#fde2e1;border-color:var(--bad);color:var(--bad)}
.badge.ok{background:#dcf5e5;border-color:var(--ok);color:var(--ok)}
.badge.warn{background:var(--warn);border-color:#b7791f;color:#5c3c00}
.summary{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.summary div{background:#fff;border:1px solid var(--line);border-radius:6px;padding:6px 12px}
.legend span{margin-right:10px}
.k-plan{background:var(--plan)}.k-consent{background:var(--consent)}.k-term{background:var(--term)}
.k-example{background:var(--example)}.k-none{background:var(--none)}
.trace{display:grid;grid-template-columns:minmax(0,42%) minmax(0,58%);gap:20px;align-items:start}
.source-text,.trace .elements{max-height:calc(100vh - 60px);overflow:auto}
.source-text{background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px 16px}
.source-text p{margin:10px 0}
a.seg{color:inherit;text-decoration:none;border-radius:3px;padding:1px 2px;
border-bottom:2px solid transparent}
a.seg.heading{font-weight:700;font-size:16px}
a.seg.nc{background:var(--nc);color:#6b747c;font-style:italic;border-bottom:2px dashed #9aa5ae}
a.seg:hover,a.seg:focus,a.seg.hl,a.seg:target{outline:2px solid #f59e0b;background:#fff4d6}
.gen{background:#fff;border:1px solid var(--line);border-left-width:6px;border-radius:6px;padding:4px 10px;
margin:0 0 10px;scroll-margin-top:48px}
.gen.k-plan{border-left-color:#3b82f6}.gen.k-consent{border-left-color:#e5484d}
.gen.k-term{border-left-color:#5fa83a}.gen.k-example{border-left-color:#8e5bd6}
.gen.k-none{border-left-color:#9aa5ae}.gen.nc{border-left-style:dashed;background:var(--nc)}
.gen:target,.gen.hl{outline:3px solid #f59e0b}
.gen h4{margin:4px 0;font-size:14px}.gen blockquote{margin:2px 0 6px;color:var(--muted);font-size:13px}
.gen table{font-size:13px;table-layout:fixed}.gen td{overflow-wrap:anywhere}
.gen .quote{color:var(--muted);font-style:italic}
.plan-diagram{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px}
.box{border:2px solid #3b6e99;border-radius:8px;padding:8px 12px;background:#f4f8fc;margin:0 auto;
max-width:1100px}
.box h4{margin:0 0 4px;font-size:15px}
.box.indications{border-color:#5f7d2e;background:#f3f9ea}
.box.goals{border-color:#7a4cc2;background:#f6f1fd}
.action.urgent{border-color:#c27803;background:var(--warn)}
.arrow{text-align:center;font-size:22px;color:#6b7a87;line-height:1.2}
.choice{margin-top:8px;border:2px dashed #3b6e99;border-radius:8px;padding:8px}
.choice-label{font-weight:700;text-transform:uppercase;letter-spacing:.04em;color:#1f5f99;font-size:13px}
.alternatives{display:flex;gap:10px;align-items:stretch}
.alternatives>.action{flex:1 1 0;margin:0;background:#fff}
.or{align-self:center;font-weight:800;color:#1f5f99;padding:0 4px}
ol.steps{margin:6px 0 0;padding-left:22px}
ol.steps>li{margin:0 0 6px}
ol.steps>li>.action{border-width:1px;padding:4px 8px;background:#fff;max-width:none}
.cond{margin:4px 0;padding:4px 8px;border-left:4px solid #c27803;background:#fffaf0;font-size:13px}
.meta-line{font-size:13px;color:var(--muted)}
.chip{display:inline-block;font-size:12px;border:1px solid var(--line);border-radius:4px;padding:0 5px;
margin:1px 2px;background:#fff;font-family:ui-monospace,Menlo,Consolas,monospace}
details{font-size:12px}details code{white-space:pre-wrap;word-break:break-all}
.consent-form h1,.consent-form h2,.consent-form h3{border:0;padding:0;font-size:revert}
.consent-form{background:#fff;border:1px solid #b9c2c9;box-shadow:0 1px 4px rgba(0,0,0,.12);max-width:820px;
padding:18px 32px;font-family:Georgia,"Times New Roman",serif;font-size:16px}
tr.local td{background:#fff4cc}
tr.local td:first-child{border-left:5px solid #d97706}
.callout{border:2px solid #d97706;background:#fff8e6;border-radius:6px;padding:8px 12px;margin:8px 0}
tr.has-error td{background:#fdecea}
table.validation{table-layout:fixed}table.validation td{overflow-wrap:anywhere}
ul.issues{margin:0;padding-left:18px;font-size:13px}
li.sev-error,li.sev-fatal{color:var(--bad)}
.signoff td{height:44px}
a.seg.so-changed{text-decoration:underline wavy var(--bad);text-decoration-thickness:1px}
a.seg.so-unsigned{text-decoration:underline dotted #6b747c}
.badge.so-signed{background:#dcf5e5;border-color:var(--ok);color:var(--ok)}
.badge.so-changed{background:#fde2e1;border-color:var(--bad);color:var(--bad)}
.badge.so-unsigned{border-style:dotted;color:#5b6670}
.signoff-was{font-size:13px;border-left:4px solid var(--bad);padding-left:8px;margin:4px 0}
table.signoff-state td{height:auto}
@media print{.source-text,.trace .elements{max-height:none;overflow:visible}nav.toc{display:none}
.trace{display:block}}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", value)


def res_anchor(ref: str) -> str:
    """The page anchor of a resource (``Type/id``) in the validation table."""
    return "res-" + _slug(ref.replace("/", "-"))


def _category(resource_ref: str) -> str:
    rtype = resource_ref.split("/", 1)[0]
    for key, _label, types in _CATEGORIES:
        if rtype in types:
            return key
    return "none"


def _sentence_category(elements: list[dict[str, Any]]) -> str:
    found = {_category(el["resource"]) for el in elements}
    for key, _label, _types in _CATEGORIES:
        if key in found:
            return key
    return "none"


# --- source text and trace ---------------------------------------------------------------------


def _seg_key(doc_index: int, seg_id: str) -> str:
    return _slug(seg_id if doc_index == 0 else f"d{doc_index + 1}-{seg_id}")


def _non_clinical_reasons(mapping: Document | None) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    if mapping is None:
        return reasons
    for nc in mapping.non_clinical:
        if nc.quote is not None:
            reasons.setdefault(nc.quote.sentence, []).append(nc.reason)
    return reasons


def _signoff_states(result: Any, key: str) -> dict[str, Any]:
    """Per sentence id its sign-off state (``procfhir.signoff.SentenceState``), if the build has one."""
    comp = (getattr(result, "signoff", None) or {}).get(key)
    return dict(comp.states) if comp is not None else {}


_SO_LABEL = {"signed": "signed", "changed": "changed since sign-off", "unsigned": "never signed"}


def _signoff_badge(state: Any) -> str:
    if state is None:
        return ""
    title = f"signed off by {state.signed.by} on {state.signed.at}" if state.signed is not None else ""
    if state.state == "changed":
        title = "the wording differs from the one " + title
    return (
        f' <span class="badge so-{_e(state.state)}" data-signoff="{_e(state.state)}"'
        + (f' title="{_e(title)}"' if title else "")
        + f">{_e(_SO_LABEL.get(state.state, state.state))}</span>"
    )


def _source_text(doc: dict[str, Any], doc_index: int, states: dict[str, Any] | None = None) -> str:
    """The text as it is, paragraph by paragraph, each segment a link to what it became."""
    states = states or {}
    text: str = doc["text"]
    pieces: list[tuple[int, int, dict[str, Any], bool]] = []
    for seg in doc["segments"]:
        for i, (start, end) in enumerate(seg["spans"]):
            pieces.append((start, end, seg, i == 0))
    pieces.sort(key=lambda p: (p[0], p[1]))
    paragraphs: list[list[str]] = [[]]
    kinds: list[set[str]] = [set()]

    def gap(chunk: str) -> None:
        parts = _PARAGRAPH_BREAK.split(chunk)
        for n, part in enumerate(parts):
            if n:
                paragraphs.append([])
                kinds.append(set())
            if part.strip():
                paragraphs[-1].append(_e(part))
                kinds[-1].add("text")
            elif part and paragraphs[-1]:
                paragraphs[-1].append(" ")

    pos = 0
    for start, end, seg, first in pieces:
        if start < pos:  # overlapping spans cannot be drawn twice
            continue
        gap(text[pos:start])
        key = _seg_key(doc_index, seg["id"])
        cls = ["seg", seg["kind"], "k-" + _sentence_category(seg["elements"])]
        if seg["non_clinical"]:
            cls.append("nc")
        if seg["id"] in states:
            cls.append("so-" + states[seg["id"]].state)
        ident = f' id="sent-{key}"' if first else ""
        label = f"{seg['id']}: {len(seg['elements'])} generated element(s)"
        if seg["non_clinical"]:
            label += ", non-clinical"
        paragraphs[-1].append(
            f'<a class="{" ".join(cls)}"{ident} data-seg="{key}" href="#gen-{key}" title="{_e(label)}">'
            f"{_e(text[start:end])}</a>"
        )
        if first and seg["non_clinical"]:
            paragraphs[-1].append(' <span class="badge nc">non-clinical</span>')
        kinds[-1].add(seg["kind"])
        pos = end
    gap(text[pos:])
    out = []
    for body, k in zip(paragraphs, kinds, strict=True):
        if not body:
            continue
        para = "para heading" if k == {"heading"} else "para"
        out.append(f'<p class="{para}">{"".join(body).strip()}</p>')
    return "".join(out)


def _trace_entries(
    doc: dict[str, Any], doc_index: int, reasons: dict[str, list[str]], states: dict[str, Any] | None = None
) -> str:
    states = states or {}
    out = []
    for seg in doc["segments"]:
        key = _seg_key(doc_index, seg["id"])
        cat = _sentence_category(seg["elements"])
        cls = f"gen k-{cat}" + (" nc" if seg["non_clinical"] else "")
        head = (
            f'<h4><a class="back" href="#sent-{key}">{_e(seg["id"])}</a> '
            f'<span class="meta-line">{_e(seg["kind"])}, line {_e(seg["line"])}'
            f" &middot; {len(seg['elements'])} element(s)</span>"
        )
        if seg["non_clinical"]:
            head += ' <span class="badge nc">non-clinical</span>'
        state = states.get(seg["id"])
        head += _signoff_badge(state)
        parts = [f'<section class="{cls}" id="gen-{key}" data-seg="{key}">{head}</h4>']
        parts.append(f"<blockquote>{_e(seg['text'])}</blockquote>")
        if state is not None and state.state == "changed" and state.signed is not None:
            parts.append(
                f'<p class="signoff-was">Signed wording ({_e(state.signed.by)}, {_e(state.signed.at)}): '
                f"<q>{_e(state.signed.text)}</q></p>"
            )
        if seg["non_clinical"]:
            why = "; ".join(reasons.get(seg["id"], [])) or "listed as non-clinical in the mapping"
            parts.append(f'<p class="nc-reason">Not clinical content: {_e(why)}</p>')
        if seg["elements"]:
            rows = []
            for el in seg["elements"]:
                quote = ""
                if el.get("quote") and " ".join(el["quote"].split()) != seg["text"]:
                    quote = f'<div class="quote">&ldquo;{_e(el["quote"])}&rdquo;</div>'
                ref = el["resource"]
                rows.append(
                    f'<tr class="element"><td><a href="#{res_anchor(ref)}">{_e(ref)}</a>'
                    f'</td><td><a class="back path" href="#sent-{key}">{_e(el["path"])}</a></td>'
                    f"<td>{_e(el['value'])}{quote}</td></tr>"
                )
            parts.append(
                '<table><colgroup><col style="width:27%"><col style="width:31%"><col></colgroup>'
                "<thead><tr><th>Resource</th><th>Element</th><th>Value</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>"
            )
        elif not seg["non_clinical"]:
            claimed = ", ".join(seg.get("claimed_by") or []) or "nothing"
            parts.append(
                f'<p class="meta-line">No FHIR element carries this text; claimed by: {_e(claimed)}.</p>'
            )
        parts.append("</section>")
        out.append("".join(parts))
    return "".join(out)


def _source_section(result: Any) -> str:
    mappings = {m.key: m for m in getattr(result, "mappings", [])}
    legend = " ".join(
        f'<span><span class="badge k-{k}">{_e(label)}</span></span>' for k, label, _t in _CATEGORIES
    )
    legend += (
        ' <span><span class="badge k-none">no element</span></span>'
        ' <span><span class="badge nc">non-clinical</span></span>'
        " &middot; sign-off: "
        + " ".join(f'<span><span class="badge so-{k}">{v}</span></span>' for k, v in _SO_LABEL.items())
    )
    parts = [
        '<section class="part" id="source"><h2>Source text and what each sentence became</h2>',
        '<p class="meta-line">Select a sentence to see the FHIR elements generated from it; each element '
        "links back to its sentence. Colour: where the sentence went.</p>",
        f'<p class="legend">{legend}</p>',
    ]
    for i, doc in enumerate(result.trace.get("documents", [])):
        reasons = _non_clinical_reasons(mappings.get(doc["key"]))
        states = _signoff_states(result, doc["key"])
        segs = doc["segments"]
        traced = sum(1 for s in segs if s["elements"])
        nc = sum(1 for s in segs if s["non_clinical"])
        parts.append(
            f'<div class="document" id="doc-{_slug(doc["key"])}"><h3>{_e(doc["title"])} '
            f'<span class="meta-line">({_e(doc["key"])}: {len(segs)} sentences and headings, '
            f"{traced} carried by FHIR elements, {nc} non-clinical)</span></h3>"
            f'<div class="trace"><div class="source-text">{_source_text(doc, i, states)}</div>'
            f'<div class="elements">{_trace_entries(doc, i, reasons, states)}</div></div></div>'
        )
    parts.append("</section>")
    return "".join(parts)


# --- the plan diagram (from the PlanDefinition itself) -----------------------------------------


def _chips(concepts: Iterable[dict[str, Any]]) -> str:
    out = []
    for cc in concepts:
        for c in cc.get("coding", []) or []:
            system = _SYSTEM_NAMES.get(
                c.get("system", ""), "local" if "/CodeSystem/" in c.get("system", "") else c.get("system", "")
            )
            out.append(
                f'<span class="chip" title="{_e(c.get("system"))} | {_e(c.get("display"))}">'
                f"{_e(system)} {_e(c.get('code'))}</span>"
            )
    return "".join(out)


def _concept_text(cc: dict[str, Any]) -> str:
    if cc.get("text"):
        return str(cc["text"])
    return ", ".join(str(c.get("display") or c.get("code")) for c in cc.get("coding", []) or [])


def _action(a: dict[str, Any], prefix: str, titles: dict[str, str], refs: set[str]) -> str:
    aid = str(a.get("id", ""))
    title = a.get("title") or a.get("textEquivalent") or aid or "(untitled action)"
    cls = "box action"
    if a.get("priority") in ("urgent", "asap", "stat"):
        cls += " urgent"
    ident = f' id="{prefix}act-{_slug(aid)}"' if aid else ""
    parts = [
        f'<div class="{cls}"{ident} data-action="{_e(aid)}">'
        f'<h4 class="action-title"><span class="name">{_e(title)}</span>'
    ]
    if a.get("priority") and a["priority"] != "routine":
        parts.append(f' <span class="badge warn">{_e(a["priority"])}</span>')
    parts.append(f" {_chips(a.get('code', []))}</h4>")
    if a.get("description"):
        parts.append(f'<div class="description">{_e(a["description"])}</div>')
    if a.get("textEquivalent") and a.get("textEquivalent") != a.get("description"):
        parts.append(f'<div class="cond warning-text">&#9888; {_e(a["textEquivalent"])}</div>')
    for cond in a.get("condition", []) or []:
        expr = cond.get("expression", {}) or {}
        kind = _CONDITION_KIND.get(cond.get("kind", ""), str(cond.get("kind", "")))
        name = f" <code>{_e(expr['name'])}</code>" if expr.get("name") else ""
        parts.append(
            f'<div class="cond" data-kind="{_e(cond.get("kind"))}"><b>{_e(kind)}</b>{name}: '
            f"{_e(expr.get('description', ''))}"
        )
        if expr.get("expression"):
            parts.append(
                f"<details><summary>{_e(expr.get('language', 'expression'))}</summary>"
                f"<code>{_e(expr['expression'])}</code></details>"
            )
        parts.append("</div>")
    for ext in a.get("extension", []) or []:  # a rule no expression can test (docs/contract.md)
        if str(ext.get("url", "")).endswith("/StructureDefinition/not-computable"):
            parts.append(
                '<div class="cond" data-kind="not-computable"><b>Not computable: the clinician decides</b>: '
                f"{_e(ext.get('valueString', ''))}</div>"
            )
    meta = []
    for rel in a.get("relatedAction", []) or []:
        target = str(rel.get("actionId", ""))
        meta.append(
            f'{_e(rel.get("relationship", "related to"))} <a href="#{prefix}act-{_slug(target)}">'
            f"{_e(titles.get(target, target))}</a>"
        )
    if a.get("definitionCanonical"):
        canonical = str(a["definitionCanonical"])
        tail = "/".join(canonical.rstrip("/").split("/")[-2:])
        link = f'<a href="#{res_anchor(tail)}">{_e(tail)}</a>' if tail in refs else _e(canonical)
        meta.append(f"defined by {link}")
    for dv in a.get("dynamicValue", []) or []:
        expr = dv.get("expression", {}) or {}
        value = expr.get("description") or expr.get("expression")
        meta.append(f"<code>{_e(dv.get('path'))}</code> = {_e(value)}")
    if a.get("goalId"):
        goals = ", ".join(f'<a href="#{prefix}goal-{_slug(g)}">{_e(g)}</a>' for g in a["goalId"])
        meta.append(f"goals: {goals}")
    if meta:
        parts.append(f'<div class="meta-line">{" &middot; ".join(meta)}</div>')
    children = a.get("action", []) or []
    if children:
        selection = a.get("selectionBehavior", "")
        if selection in ("exactly-one", "at-most-one", "one-or-more", "any"):
            alts = '<div class="or">or</div>'.join(_action(c, prefix, titles, refs) for c in children)
            parts.append(
                f'<div class="choice" data-selection="{_e(selection)}">'
                f'<div class="choice-label">{_e(_SELECTION[selection])}</div>'
                f'<div class="alternatives">{alts}</div></div>'
            )
        else:
            label = _SELECTION.get(selection, "steps")
            steps = "".join(f'<li class="step">{_action(c, prefix, titles, refs)}</li>' for c in children)
            parts.append(
                f'<div class="meta-line">{_e(label)}:</div>'
                f'<ol class="steps" data-selection="{_e(selection)}">{steps}</ol>'
            )
    parts.append("</div>")
    return "".join(parts)


def _titles(actions: list[dict[str, Any]], into: dict[str, str]) -> dict[str, str]:
    for a in actions:
        if a.get("id"):
            into[str(a["id"])] = str(a.get("title") or a["id"])
        _titles(a.get("action", []) or [], into)
    return into


def _plan_diagram(pd: dict[str, Any], refs: set[str]) -> str:
    prefix = _slug(str(pd.get("id", ""))) + "-"
    goals = pd.get("goal", []) or []
    indications: dict[str, dict[str, Any]] = {}
    for g in goals:
        for cc in g.get("addresses", []) or []:
            indications.setdefault(_concept_text(cc), cc)
    parts = [
        f'<div class="plan" id="plan-{_slug(str(pd.get("id", "")))}">',
        f'<h3>{_e(pd.get("title") or pd.get("name"))} <span class="meta-line">PlanDefinition/'
        f"{_e(pd.get('id'))}, status {_e(pd.get('status'))}</span></h3>",
    ]
    if pd.get("description"):
        parts.append(f"<p>{_e(pd['description'])}</p>")
    if pd.get("usage"):
        parts.append(f'<p class="meta-line">Usage: {_e(pd["usage"])}</p>')
    parts.append('<div class="plan-diagram">')
    if indications:
        items = "".join(f"<li>{_e(t)} {_chips([cc])}</li>" for t, cc in indications.items())
        parts.append(
            '<div class="box indications"><h4>Indications</h4>'
            f'<div class="meta-line">the conditions the plan\'s goals address</div><ul>{items}</ul></div>'
            '<div class="arrow" aria-hidden="true">&#8595;</div>'
        )
    titles = _titles(pd.get("action", []) or [], {})
    actions = [_action(a, prefix, titles, refs) for a in pd.get("action", []) or []]
    parts.append('<div class="arrow" aria-hidden="true">&#8595;</div>'.join(actions))
    if goals:
        items = "".join(
            f'<li id="{prefix}goal-{_slug(str(g.get("id", "")))}"><b>{_e(g.get("id"))}</b>: '
            f"{_e(_concept_text(g.get('description', {}) or {}))}"
            '<div class="meta-line">addresses: '
            f"{_e('; '.join(_concept_text(c) for c in g.get('addresses', [])))}"
            "</div></li>"
            for g in goals
        )
        parts.append(
            '<div class="arrow" aria-hidden="true">&#8595;</div>'
            f'<div class="box goals"><h4>Goals</h4><ul>{items}</ul></div>'
        )
    parts.append("</div></div>")
    return "".join(parts)


def _plan_section(result: Any) -> str:
    refs = {f"{r['resourceType']}/{r['id']}" for r in result.resources}
    plans = [r for r in result.resources if r["resourceType"] == "PlanDefinition"]
    body = "".join(_plan_diagram(pd, refs) for pd in plans) or "<p>The package has no PlanDefinition.</p>"
    return f'<section class="part" id="plan"><h2>The plan</h2>{body}</section>'


# --- consent form ------------------------------------------------------------------------------


def _consent_body(consent: dict[str, Any]) -> str | None:
    att = consent.get("sourceAttachment") or {}
    if not str(att.get("contentType", "")).startswith("text/html") or "data" not in att:
        return None
    try:
        html = base64.b64decode(att["data"], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    match = re.search(r"<body[^>]*>(.*)</body>", html, re.S | re.I)
    return match.group(1) if match else None


def _consent_section(result: Any) -> str:
    parts = [
        '<section class="part" id="consent"><h2>The consent form, as the patient reads it</h2>',
        '<p class="meta-line">The HTML form attached to the Consent (sourceAttachment), shown as it is.</p>',
    ]
    found = False
    for r in result.resources:
        if r["resourceType"] != "Consent":
            continue
        body = _consent_body(r)
        ref = f"Consent/{r['id']}"
        if body is None:
            parts.append(f"<p>{_e(ref)} carries no HTML consent form.</p>")
            continue
        found = True
        parts.append(
            f'<h3><a href="#{res_anchor(ref)}">{_e(ref)}</a></h3>'
            f'<article class="consent-form" data-consent="{_e(r["id"])}">{body}</article>'
        )
    if not found:
        parts.append("<p>No consent form in this package.</p>")
    parts.append("</section>")
    return "".join(parts)


# --- terminology -------------------------------------------------------------------------------


def _system_label(system: str) -> str:
    if system in _SYSTEM_NAMES:
        return _SYSTEM_NAMES[system]
    if "/CodeSystem/" in system:
        return "local"
    return system


def _terminology_section(result: Any) -> str:
    codes = result.terminology.get("codes", [])
    local = [c for c in codes if c.get("local")]
    rows = []
    for n, c in enumerate(codes, 1):
        used = ", ".join(f'<a href="#{res_anchor(u)}">{_e(u)}</a>' for u in c.get("used_in", []))
        badge = ' <span class="badge local">awaiting terminology review</span>' if c.get("local") else ""
        rows.append(
            f'<tr id="code-{n}" class="{"local" if c.get("local") else "confirmed"}">'
            f'<td>{_e(_system_label(c["system"]))}<div class="meta-line">{_e(c["system"])}</div></td>'
            f"<td><code>{_e(c['code'])}</code>{badge}</td><td>{_e(c.get('display'))}</td>"
            f"<td>{_e(c.get('source'))}</td><td>{used}</td></tr>"
        )
    callout = ""
    if local:
        index = {id(c): n for n, c in enumerate(codes, 1)}
        links = ", ".join(f'<a href="#code-{index[id(c)]}"><code>{_e(c["code"])}</code></a>' for c in local)
        callout = (
            f'<div class="callout"><b>{len(local)} local code(s) awaiting terminology review</b> '
            f"(no standard code was confirmed for them): {links}</div>"
        )
    return (
        '<section class="part" id="terminology"><h2>Terminology</h2>'
        f"<p>{len(codes)} codes used by the package, each with the source it was confirmed in.</p>{callout}"
        '<table><colgroup><col style="width:15%"><col style="width:13%"><col style="width:24%">'
        '<col style="width:20%"><col></colgroup>'
        "<thead><tr><th>System</th><th>Code</th><th>Display</th><th>Confirmed in</th>"
        f"<th>Used in</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


# --- validation --------------------------------------------------------------------------------


def _issue_parts(issue: Any) -> tuple[str, str, str]:
    if isinstance(issue, dict):
        return str(issue.get("severity", "")), str(issue.get("location", "")), str(issue.get("message", ""))
    severity = getattr(issue, "severity", None)
    if severity is None:
        return "", "", str(issue)
    return str(severity), str(getattr(issue, "location", "") or ""), str(getattr(issue, "message", "") or "")


def _validation_section(result: Any, validated: bool | None) -> str:
    findings: dict[str, list[tuple[str, str, str]]] = {}
    for item in result.validation or []:
        ref, issue = item if isinstance(item, tuple | list) and len(item) == 2 else ("", item)
        findings.setdefault(str(ref), []).append(_issue_parts(issue))
    if validated is None:
        validated = bool(findings)
    totals = {s: 0 for s in _SEVERITIES}
    rows = []
    refs = []
    for r in result.resources:
        ref = f"{r['resourceType']}/{r['id']}"
        refs.append(ref)
        rows.append(_validation_row(ref, r, findings.get(ref, []), validated, totals))
    for ref in sorted(set(findings) - set(refs)):  # findings about something not in the package
        rows.append(_validation_row(ref, {}, findings[ref], validated, totals))
    if validated:
        head = (
            f"<p>Offline validation of {len(result.resources)} resources: "
            f"{totals['fatal'] + totals['error']} "
            f"error(s), {totals['warning']} warning(s), {totals['information']} information message(s).</p>"
        )
    else:
        head = (
            '<p class="callout">This build was not validated (validation skipped or the validator is not '
            "available): the table lists the resources without a result.</p>"
        )
    return (
        f'<section class="part" id="validation"><h2>Validation</h2>{head}'
        '<table class="validation"><colgroup><col style="width:22%"><col style="width:22%"><col></colgroup>'
        "<thead><tr><th>Resource</th><th>Profile</th><th>Result</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _validation_row(
    ref: str,
    resource: dict[str, Any],
    issues: list[tuple[str, str, str]],
    validated: bool,
    totals: dict[str, int],
) -> str:
    profiles = ", ".join(_e(p) for p in (resource.get("meta", {}) or {}).get("profile", []) or [])
    for sev, _loc, _msg in issues:
        if sev in totals:
            totals[sev] += 1
    errors = sum(1 for sev, _l, _m in issues if sev in ("error", "fatal"))
    warnings = sum(1 for sev, _l, _m in issues if sev == "warning")
    if not validated:
        status = '<span class="badge">not validated</span>'
    elif errors:
        status = f'<span class="badge err">{errors} error(s)</span>'
    elif warnings:
        status = f'<span class="badge warn">valid, {warnings} warning(s)</span>'
    else:
        status = '<span class="badge ok">valid</span>'

    def listed(selected: list[tuple[str, str, str]]) -> str:
        items = "".join(
            f'<li class="sev-{_e(sev)}"><b>{_e(sev)}</b> <code>{_e(loc)}</code> {_e(msg)}</li>'
            for sev, loc, msg in selected
        )
        return f'<ul class="issues">{items}</ul>'

    serious = [i for i in issues if i[0] in ("error", "fatal")]
    other = [i for i in issues if i[0] not in ("error", "fatal")]
    detail = listed(serious) if serious else ""
    if other:  # warnings and information fold away (a <details>, no script needed)
        counts = ", ".join(
            f"{n} {sev}" for sev in _SEVERITIES[2:] if (n := sum(1 for i in other if i[0] == sev))
        )
        summary = counts or f"{len(other)} other"
        detail += f"<details><summary>{_e(summary)}</summary>{listed(other)}</details>"
    cls = "has-error" if errors else ""
    return (
        f'<tr id="{res_anchor(ref)}" class="{cls}" data-resource="{_e(ref)}"><td>{_e(ref)}</td>'
        f'<td class="meta-line">{profiles}</td><td>{status}{detail}</td></tr>'
    )


# --- the page ----------------------------------------------------------------------------------


def _header(result: Any) -> str:
    cfg = result.config
    segs = [s for d in result.trace.get("documents", []) for s in d["segments"]]
    local = result.terminology.get("local_codes_awaiting_review", [])
    title = cfg.title or cfg.package_name
    return (
        '<header class="top">'
        f"<h1>Review: {_e(title)}</h1>"
        f"<p>{_e(cfg.package_name)} version {_e(cfg.version)} &middot; {_e(cfg.date)} &middot; "
        f"{_e(cfg.publisher)} &middot; {_e(cfg.canonical)}</p>"
        f"<p>Status: <b>{_e(cfg.status)}</b>"
        + (" &mdash; awaiting clinical and terminology sign-off" if cfg.status == "draft" else "")
        + "</p></header>"
        '<nav class="toc"><a href="#source">Source text</a><a href="#plan">Plan</a>'
        '<a href="#consent">Consent form</a><a href="#terminology">Terminology</a>'
        '<a href="#validation">Validation</a><a href="#signoff">Sign-off</a></nav>'
        '<main><div class="summary">'
        f"<div>{len(segs)} sentences and headings, {sum(1 for s in segs if s['elements'])} carried by FHIR "
        f"elements, {sum(1 for s in segs if s['non_clinical'])} non-clinical</div>"
        f"<div>{len(result.resources)} resources</div>"
        f"<div>{len(result.terminology.get('codes', []))} codes, {len(local)} local awaiting review</div>"
        "</div>"
    )


def _signoff_state_rows(result: Any) -> str:
    """Per document: its review lock, who signed what, and how the text stands against it."""
    rows = []
    for doc in result.trace.get("documents", []):
        comp = (getattr(result, "signoff", None) or {}).get(doc["key"])
        if comp is None:
            continue
        counts = {k: comp.count(k) for k in _SO_LABEL}
        summary = ", ".join(f"{n} {_SO_LABEL[k]}" for k, n in counts.items() if n)
        if comp.lock is None:
            lock = "no review lock: never signed off"
            who = ""
        else:
            lock = _e(comp.lock.path.name)
            signers = sorted({(s.at, s.by) for s in comp.lock.sentences})
            who = "<br>".join(f"{_e(by)}, {_e(at)}" for at, by in signers)
        removed = "".join(
            f'<li class="removed">{_e(signed.id)} (by {_e(signed.by)}, {_e(signed.at)}): '
            f"<q>{_e(signed.text)}</q></li>"
            for signed, _line in comp.removed
        )
        if removed:
            summary += f", {len(comp.removed)} signed sentence(s) removed<ul>{removed}</ul>"
        verdict = (
            '<span class="badge so-signed">matches its sign-off</span>'
            if comp.matches
            else '<span class="badge so-changed">not signed off as it reads now</span>'
        )
        rows.append(
            f'<tr data-document="{_e(doc["key"])}"><td>{_e(doc["title"])}</td><td>{lock}</td>'
            f"<td>{who}</td><td>{verdict} {summary}</td></tr>"
        )
    if not rows:
        return ""
    return (
        '<p class="meta-line">Clinical sign-off of the text, sentence by sentence '
        "(<code>procfhir review --sign-off --reviewer NAME</code> records it; the build refuses a text "
        "that differs from it, and <code>status: active</code> without it).</p>"
        '<table class="signoff-state"><thead><tr><th>Document</th><th>Review lock</th><th>Signed by</th>'
        f"<th>Text against the lock</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _signoff(result: Any = None) -> str:
    rows = "".join(
        f"<tr><td>{role}</td><td></td><td></td><td></td></tr>"
        for role in ("Clinician (content)", "Terminologist (codes)")
    )
    state = _signoff_state_rows(result) if result is not None else ""
    return (
        f'<section class="part" id="signoff"><h2>Sign-off</h2>{state}'
        '<table class="signoff"><thead><tr><th>Role</th><th>Name</th><th>Signature</th><th>Date</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></section>"
    )


def render_review(result: Any, *, validated: bool | None = None) -> str:
    """The review page of a build (a :class:`procfhir.build.BuildResult`), as one HTML string.

    ``validated`` says whether the build ran the validator (so that "no findings" reads as
    "valid"); when None it is taken as True if there are findings.
    """
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
    )
    title = result.config.title or result.config.package_name
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        + PAGE_MARKER
        + f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Review: {_e(title)}</title><style>{_CSS}</style></head><body>"
        + _header(result)
        + _source_section(result)
        + _plan_section(result)
        + _consent_section(result)
        + _terminology_section(result)
        + _validation_section(result, validated)
        + _signoff(result)
        + f'</main><script id="review-hover">{_SCRIPT}</script></body></html>\n'
    )
