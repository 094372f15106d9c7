"""Stage 2: the human-edited mapping file, checked against its schema and against the text.

The mapping states the clinical knowledge of one document: for each statement the exact
quote(s) of the text it rests on and its codes (each with the source it was confirmed in).
:func:`load_mapping` refuses, naming file, line and text, when

- the mapping does not match ``generators/procfhir/schemas/mapping.schema.json``;
- a quote is not found in the text, or is ambiguous (found in more than one place);
- a code key, activity, indication or technique referred to is not defined;
- a sentence or heading of the text is claimed by no entry (``non_clinical`` entries claim
  sentences explicitly as carrying no clinical content).

It returns the typed model (:mod:`procfhir.model`); nothing outside this module reads the YAML.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from procfhir.draft import refuse_undecided
from procfhir.errors import BuildError
from procfhir.model import (
    Activity,
    Advice,
    BodySites,
    Choice,
    Code,
    Consent,
    Document,
    ExamplePatient,
    ExampleProcedure,
    Examples,
    Frequency,
    Goal,
    Indication,
    Limit,
    Material,
    NonClinical,
    Patients,
    Period,
    Plan,
    QuantityPerSite,
    Quote,
    Quotes,
    Risk,
    RiskModifier,
    SiteCode,
    Step,
    Technique,
    Text,
    ValueSetDef,
)
from procfhir.source import SourceDocument, load_source
from procfhir.strictio import StrictInputError, read_yaml, strict_yaml_loader

SCHEMA_PATH = Path(__file__).parent / "schemas" / "mapping.schema.json"


class _LineStr(str):
    line: int = 0


class _LineDict(dict):  # type: ignore[type-arg]
    line: int = 0


class _LineList(list):  # type: ignore[type-arg]
    line: int = 0


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader that remembers the line (1-based) of every string, mapping and list."""


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> _LineStr:
    value = _LineStr(loader.construct_scalar(node))
    value.line = node.start_mark.line + 1
    return value


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[_LineDict]:
    value = _LineDict()
    value.line = node.start_mark.line + 1
    yield value
    value.update(loader.construct_mapping(node, deep=True))


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[_LineList]:
    value = _LineList()
    value.line = node.start_mark.line + 1
    yield value
    value.extend(loader.construct_sequence(node, deep=True))


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _line(value: Any) -> int:
    return getattr(value, "line", 0)


@cache
def _schema_validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    # The schema itself is checked against its meta-schema by the tests, not on every build
    # (that check alone costs a quarter of a second).
    return jsonschema.validators.validator_for(schema)(schema)


def _read_yaml(path: Path) -> Any:
    """Strictly (see :mod:`procfhir.strictio`: duplicate keys, aliases, NaN... are refused)."""
    global _STRICT
    if _STRICT is None:
        _STRICT = strict_yaml_loader(_Loader)
    if not path.exists() and not path.is_symlink():
        raise BuildError(f"{path}: mapping file not found")
    try:
        return read_yaml(path, loader=_STRICT)
    except StrictInputError as exc:
        raise BuildError(str(exc)) from None


_STRICT: Any = None


def _schema_problems(path: Path, data: Any) -> list[str]:
    problems = []
    for err in sorted(_schema_validator().iter_errors(data), key=lambda e: list(map(str, e.path))):
        node: Any = data
        line = _line(data)
        for part in err.path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
            line = _line(node) or line
        where = "/".join(str(p) for p in err.path) or "(top level)"
        problems.append(f"{path}:{line}: {where}: {err.message}")
    return problems


class _Resolver:
    """Turns the schema-checked YAML of one mapping into the model, collecting every problem."""

    def __init__(self, path: Path, source: SourceDocument, key: str) -> None:
        self.path = path
        self.source = source
        self.key = key
        self.problems: list[str] = []
        self.claims: dict[str, list[str]] = {}
        self.codes: dict[str, Code] = {}
        self._seen: dict[int, Quotes] = {}  # an entry reused through a YAML alias: quoted once

    def where(self, value: Any) -> str:
        return f"{self.path}:{_line(value)}"

    def quote(self, quote: str, label: str) -> Quote | None:
        hits, total = self.source.find_quote(quote)
        if total == 0:
            self.problems.append(
                f"{self.where(quote)}: {label}: quote not found in {self.source.path}: {quote!r}"
            )
            return None
        if total > 1:
            lines = ", ".join(f"{seg.id} (line {seg.line})" for seg, _s, _e in hits)
            self.problems.append(
                f"{self.where(quote)}: {label}: quote is ambiguous, found {total} times "
                f"({lines}); quote more words: {quote!r}"
            )
            return None
        seg, start, end = hits[0]
        self.claims.setdefault(seg.id, []).append(label)
        # the quote as the text has it (a paragraph break inside a split heading included), so
        # that text[start:end] == quote for every consumer of the offsets
        return Quote(self.key, seg.id, self.source.text[start:end], start, end)

    def quotes(self, entry: dict[str, Any], label: str) -> Quotes:
        if id(entry) in self._seen:
            return self._seen[id(entry)]
        out = tuple(q for q in (self.quote(s, label) for s in entry.get("quotes", [])) if q is not None)
        self._seen[id(entry)] = out
        return out

    def code(self, key: str, label: str) -> Code | None:
        if key not in self.codes:
            self.problems.append(
                f"{self.where(key)}: {label}: unknown code key {key!r} "
                "(define it under codes, with its source, or under local_codes)"
            )
            return None
        return self.codes[key]

    def code_list(self, keys: list[str], label: str) -> tuple[Code, ...]:
        return tuple(c for c in (self.code(k, label) for k in keys) if c is not None)

    def ref(self, value: str, known: dict[str, _T], what: str, label: str) -> _T | None:
        if value not in known:
            self.problems.append(
                f"{self.where(value)}: {label}: unknown {what} {value!r} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
            return None
        return known[value]

    def patients(self, raw: dict[str, Any] | None, label: str) -> Patients | None:
        if raw is None:
            return None
        if "text_only" in raw and ("conditions" in raw or "medications" in raw):
            self.problems.append(
                f"{self.where(raw)}: {label}: applies_to gives codes and text_only: the patients are "
                "either computable (conditions, medications) or text only, not both"
            )
        return Patients(
            conditions=self.code_list(raw.get("conditions", []), label),
            medications=self.code_list(raw.get("medications", []), label),
            text_only=raw.get("text_only"),
        )

    def wording(self, quotes: Quotes) -> str:
        """The quoted sentences in text order, headings left out, each once."""
        ids: list[str] = []
        for q in quotes:
            seg = self.source.segment(q.sentence)
            if seg.kind == "sentence" and seg.id not in ids:
                ids.append(seg.id)
        ids.sort(key=lambda sid: int(sid[1:]))
        return " ".join(self.source.segment(s).text for s in ids)


_T = TypeVar("_T")
_NO_ACTIVITY = Activity("", "ServiceRequest", "", "", "", (), ())


def _codes(r: _Resolver, data: dict[str, Any], local_system: str) -> None:
    for key, c in data["codes"].items():
        r.codes[key] = Code(
            key,
            c["system"],
            c["code"],
            c["display"],
            c["source"],
            defined_at=r.where(key),
            synonym_source=c.get("synonym_source"),
        )
    for key, c in data["local_codes"].items():
        if key in r.codes:
            r.problems.append(f"{r.where(key)}: local code {key!r} is also a standard code key")
            continue
        quotes = r.quotes(c, f"local code {key}") if "quotes" in c else ()
        r.codes[key] = Code(
            key,
            local_system,
            key,
            c["display"],
            "local code, awaiting terminology review",
            True,
            definition=c["definition"],
            quotes=quotes,
            defined_at=r.where(key),
            no_standard_code=c.get("no_standard_code"),
        )


def _limit(r: _Resolver, lim: dict[str, Any]) -> Limit:
    label = f"limit {lim['id']}"
    quotes = r.quotes(lim, label)
    kind = lim["type"]
    needs = {
        "sites-per-session": ("maximum",),
        "repetitions-per-period": ("maximum", "period"),
        "min-interval": ("period",),
    }[kind]
    for name in needs:
        if name not in lim:
            r.problems.append(f"{r.where(lim)}: {label}: a {kind} limit needs {name}")
    for name in ("groups", "preferred", "warning"):
        if name in lim and kind != "sites-per-session":
            r.problems.append(f"{r.where(lim)}: {label}: {name} is for sites-per-session limits only")
    period = Period(lim["period"]["value"], lim["period"]["unit"]) if "period" in lim else None
    return Limit(
        id=lim["id"],
        title=lim["title"],
        text=lim["text"],
        type=kind,
        quotes=quotes,
        maximum=lim.get("maximum"),
        groups=tuple(r.code_list(g, label) for g in lim.get("groups", [])),
        period=period,
        preferred=lim.get("preferred"),
        warning=lim.get("warning"),
        applies_to=r.patients(lim.get("applies_to"), label),
        wording=r.wording(quotes),
    )


def _step(
    r: _Resolver, tech_id: str, step: dict[str, Any], activities: dict[str, Activity], step_ids: set[str]
) -> Step:
    label = f"technique {tech_id} step {step['id']}"
    quotes = r.quotes(step, label)
    activity = r.ref(step["activity"], activities, "activity", label) if "activity" in step else None
    if "before" in step:
        r.ref(step["before"], {s: s for s in step_ids}, "step", label)
    qps = step.get("quantity_per_site")
    return Step(
        id=step["id"],
        title=step["title"],
        text=step["text"],
        quotes=quotes,
        activity=activity,
        codes=r.code_list(step.get("codes", []), label),
        before=step.get("before"),
        quantity_per_site=QuantityPerSite(qps["value"], qps["unit"]) if qps else None,
        applies_to=r.patients(step.get("applies_to"), label),
        wording=r.wording(quotes),
    )


def _activity(r: _Resolver, act: dict[str, Any]) -> Activity:
    label = f"activity {act['id']}"
    quotes = r.quotes(act, label)
    codes = r.code_list(act["codes"], label)
    by_site = []
    for entry in act.get("codes_by_site", []):
        code = r.code(entry["code"], label)
        if code is None:
            continue
        if code not in codes:
            r.problems.append(
                f"{r.where(entry['code'])}: {label}: codes_by_site code {entry['code']!r} is not "
                "among the activity's codes"
            )
        by_site.append(
            SiteCode(code, r.code_list(entry.get("sites", []), label), bool(entry.get("additional")))
        )
    return Activity(
        id=act["id"],
        kind=act["kind"],
        name=act["name"],
        title=act["title"],
        text=act["text"],
        codes=codes,
        quotes=quotes,
        codes_by_site=tuple(by_site),
    )


def _risk(r: _Resolver, risk: dict[str, Any]) -> Risk:
    label = f"risk {risk['id']}"
    quotes = r.quotes(risk, label)
    codes = r.code_list(risk["codes"], label)
    frequency = None
    if "frequency" in risk:
        f = risk["frequency"]
        fcode = r.code(f["code"], label) if "code" in f else None
        if not any(f["text"] in q for q in risk["quotes"]):
            r.problems.append(
                f"{r.where(f['text'])}: {label}: frequency words {f['text']!r} "
                "are not in any of the risk's quotes"
            )
        frequency = Frequency(f["text"], fcode, f.get("numerator"), f.get("denominator"))
    modifiers = []
    for mod in risk.get("modifiers", []):
        mquotes = r.quotes(mod, label + " modifier")
        modifiers.append(
            RiskModifier(mod["text"], mod["effect"], mquotes, r.patients(mod.get("applies_to"), label))
        )
    return Risk(
        id=risk["id"],
        title=risk["title"],
        outcome=risk["outcome"],
        codes=codes,
        quotes=quotes,
        wording=r.wording(quotes),
        frequency=frequency,
        management=risk.get("management"),
        modifiers=tuple(modifiers),
    )


def _unique(codes: list[Code]) -> tuple[Code, ...]:
    out: list[Code] = []
    for c in codes:
        if c not in out:
            out.append(c)
    return tuple(out)


_ROLE_OF_SOURCE = {
    "indications": "indication",
    "risks": "complication",
    "techniques": "procedure",
    "materials": "material",
}


def _value_set(r: _Resolver, vs: dict[str, Any], plan: Plan, consent: Consent) -> ValueSetDef:
    label = f"value set {vs['id']}"
    body = plan.body_sites
    if "codes" in vs:
        codes = r.code_list(vs["codes"], label)
        role = "body-site" if body is not None and body.value_set == vs["id"] else None
    else:
        src = vs["from"]
        role = _ROLE_OF_SOURCE[src]
        if src == "indications":
            keys = [c for i in plan.indications for c in i.codes]
        elif src == "risks":
            keys = [c for k in consent.risks for c in k.codes]
        elif src == "techniques":
            keys = [c for t in plan.techniques for c in t.activity.codes]
        else:
            keys = [m.code for t in plan.techniques for m in t.materials]
        codes = _unique(keys)
    return ValueSetDef(vs["id"], vs["name"], vs["title"], codes, role)


def load_mapping(path: Path, local_system: str) -> Document:
    """Load, check and resolve one mapping file; raise :class:`BuildError` with every problem."""
    path = Path(path)
    data = _read_yaml(path)
    refuse_undecided(path, data)
    problems = _schema_problems(path, data)
    if problems:
        raise BuildError(f"{path}: the mapping does not match its schema", problems)
    doc = data["document"]
    source = load_source((path.parent / doc["text"]).resolve())
    r = _Resolver(path, source, str(doc["key"]))
    _codes(r, data, local_system)

    title_quotes = r.quotes(doc, "document title")
    non_clinical = []
    for nc in data.get("non_clinical", []):
        non_clinical.append(NonClinical(r.quote(nc["quote"], "non-clinical"), nc["reason"]))

    raw = data["plan"]
    description = Text(raw["description"]["text"], r.quotes(raw["description"], "plan description"))
    setting = (
        Text(raw["setting"]["text"], r.quotes(raw["setting"], "plan setting")) if "setting" in raw else None
    )
    choice = None
    if "choice" in raw:
        ch = raw["choice"]
        choice = Choice(ch["id"], ch["title"], ch["text"], r.quotes(ch, "plan choice"))
    elif len(raw["techniques"]) > 1:
        r.problems.append(
            f"{r.where(raw)}: plan: several techniques need a choice (exactly one is performed)"
        )
    indications = {}
    for ind in raw["indications"]:
        label = f"indication {ind['id']}"
        quotes = r.quotes(ind, label)
        indications[ind["id"]] = Indication(ind["id"], ind["text"], r.code_list(ind["codes"], label), quotes)
    limits = tuple(_limit(r, lim) for lim in raw.get("limits", []))
    technique_ids = {t["id"]: t["id"] for t in raw["techniques"]}
    goals = []
    for goal in raw["goals"]:
        label = f"goal {goal['id']}"
        quotes = r.quotes(goal, label)
        addresses = [r.ref(a, indications, "indication", label) for a in goal.get("addresses", [])]
        for t in goal.get("techniques", []):
            r.ref(t, technique_ids, "technique", label)
        goals.append(
            Goal(
                goal["id"],
                goal["text"],
                quotes,
                tuple(a for a in addresses if a is not None),
                tuple(goal["techniques"]) if "techniques" in goal else None,
            )
        )
    # activities are quoted after the techniques (the order of the claims), but resolved first
    activities = {a["id"]: a for a in data["activities"]}
    resolved: dict[str, Activity] = {}

    def activity(act_id: str, label: str) -> Activity | None:
        if r.ref(act_id, activities, "activity", label) is None:
            return None
        return resolved.setdefault(act_id, _activity(r, activities[act_id]))

    techniques = []
    for tech in raw["techniques"]:
        label = f"technique {tech['id']}"
        quotes = r.quotes(tech, label)
        act = activity(tech["activity"], label) or _NO_ACTIVITY
        step_ids = {s["id"] for s in tech["steps"]}
        steps = []
        for step in tech["steps"]:
            if "activity" in step:
                activity(step["activity"], f"technique {tech['id']} step {step['id']}")
            steps.append(_step(r, tech["id"], step, resolved, step_ids))
        materials = []
        for mat in tech.get("materials", []):
            code = r.code(mat["code"], label)
            if code is not None:
                materials.append(Material(code, mat["kind"]))
        techniques.append(
            Technique(
                tech["id"],
                tech["title"],
                tech["text"],
                act,
                tuple(steps),
                quotes,
                r.codes.get(tech["id"]),
                tuple(materials),
            )
        )
    for act_id in activities:
        activity(act_id, "activities")
    advice = []
    for adv in raw.get("advice", []):
        label = f"advice {adv['id']}"
        quotes = r.quotes(adv, label)
        patients = r.patients(adv["applies_to"], label) or Patients()
        advice.append(Advice(adv["id"], adv["title"], adv["text"], patients, quotes, r.wording(quotes)))
    body = raw.get("body_sites")
    body_sites = (
        BodySites(body["value_set"], body["label"], body["each"], body.get("required", True))
        if body
        else None
    )
    plan = Plan(
        id=raw["id"],
        name=raw["name"],
        title=raw["title"],
        description=description,
        indications=tuple(indications.values()),
        techniques=tuple(techniques),
        goals=tuple(goals),
        choice=choice,
        setting=setting,
        limits=limits,
        advice=tuple(advice),
        body_sites=body_sites,
    )

    rc = data["consent"]
    consent_quotes = r.quotes(rc, "consent")
    by_id = {t.id: t for t in techniques}
    procedures = [r.ref(p, by_id, "technique", "consent procedures") for p in rc["procedures"]]
    risks = tuple(_risk(r, risk) for risk in rc["risks"])
    heading = source.segment(consent_quotes[0].sentence).text if consent_quotes else ""
    consent = Consent(
        rc["id"], rc["title"], heading, tuple(p for p in procedures if p is not None), risks, consent_quotes
    )

    value_sets = tuple(_value_set(r, vs, plan, consent) for vs in data["value_sets"])
    for raw_vs, vs in zip(data["value_sets"], value_sets, strict=True):
        if not vs.codes:
            r.problems.append(f"{r.where(raw_vs)}: value set {vs.id}: it holds no code")
    for raw_lim, lim in zip(raw.get("limits", []), limits, strict=True):
        if lim.type == "sites-per-session" and body_sites is None:
            r.problems.append(
                f"{r.where(raw_lim)}: limit {lim.id}: a sites-per-session limit needs the plan's body_sites"
            )
    if body_sites is not None:
        target = next((vs for vs in data["value_sets"] if vs["id"] == body_sites.value_set), None)
        if target is None or "codes" not in target:
            r.problems.append(
                f"{r.where(body)}: plan body_sites: value set {body_sites.value_set!r} is not a "
                "value_sets entry with codes"
            )
    examples = _examples(r, data.get("examples"), by_id, indications, plan)

    for seg in source.segments:
        if seg.id not in r.claims:
            r.problems.append(
                f"{source.path}:{seg.line}: {seg.kind} {seg.id} is claimed by no mapping entry in "
                f"{path} (quote it, or list it under non_clinical): {seg.text!r}"
            )
    if r.problems:
        raise BuildError(f"{path}: the mapping does not match the text {source.path}", r.problems)
    from procfhir.agreement import agreement_problems

    disagreements = agreement_problems(path, data, r.codes)
    if disagreements:
        raise BuildError(f"{path}: mapping entries say what their quotes do not", disagreements)
    return Document(
        key=r.key,
        path=path,
        title=doc["title"],
        text_file=doc["text"],
        source=source,
        quotes=title_quotes,
        codes=r.codes,
        plan=plan,
        activities=tuple(resolved[a] for a in activities),
        consent=consent,
        value_sets=value_sets,
        non_clinical=tuple(non_clinical),
        examples=examples,
        claims={k: tuple(v) for k, v in r.claims.items()},
    )


def _examples(
    r: _Resolver,
    raw: dict[str, Any] | None,
    techniques: dict[str, Technique],
    indications: dict[str, Indication],
    plan: Plan,
) -> Examples | None:
    if not raw:
        return None
    p = raw["patient"]
    procs = []
    for proc in raw["procedures"]:
        label = f"example {proc['id']}"
        tech = r.ref(proc["technique"], techniques, "technique", label)
        reason = r.ref(proc["reason"], indications, "indication", label)
        if tech is None or reason is None:
            continue
        sites = r.code_list(proc.get("sites", []), label)
        if sites and plan.body_sites is None:
            r.problems.append(f"{r.where(proc)}: {label}: sites given, but the plan has no body_sites")
        elif not sites and plan.body_sites is not None and plan.body_sites.required:
            r.problems.append(f"{r.where(proc)}: {label}: the plan's body sites are required: give sites")
        procs.append(
            ExampleProcedure(
                id=proc["id"],
                technique=tech,
                status=proc["status"],
                codes=r.code_list(proc["codes"], label),
                reason=reason,
                performed=proc["performed"],
                sites=sites,
                used=r.code_list(proc.get("used", []), label),
                complications=r.code_list(proc.get("complications", []), label),
            )
        )
    return Examples(ExamplePatient(p["id"], p["family"], p["given"]), tuple(procs))


def check_shared_codes(documents: list[Document]) -> None:
    """A code key defined by several documents must be defined alike; else an error naming both."""
    first: dict[str, Code] = {}
    problems = []
    for d in documents:
        for key, c in d.codes.items():
            other = first.setdefault(key, c)
            if other is c:
                continue
            fields = ("system", "code", "display", "definition", "local")  # not where it was confirmed
            differ = [f for f in fields if getattr(other, f) != getattr(c, f)]
            if differ:
                problems.append(
                    f"{c.defined_at}: code {key!r} is defined differently ({', '.join(differ)}) "
                    f"from {other.defined_at}"
                )
    if problems:
        raise BuildError("a code key is defined differently by two mappings", problems)
