"""PlanDefinition ``$apply`` (FHIR R4 semantics), generic over the plan's actions.

The plan is compiled once: every applicability condition and dynamicValue expression is parsed
(fhirpathpy.compile), every ``definitionCanonical`` resolved to its ActivityDefinition, and every
dynamicValue path checked against the target resource's model. Applying it to a patient walks the
actions: an action applies when all its applicability conditions are true; in a group whose
``selectionBehavior`` asks for a choice (exactly-one, at-most-one, one-or-more, any), the child
chosen by the user (the context's technique) is taken; other groups take every applicable child.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from procfhir.apply.context import PatientContext, parse_context
from procfhir.apply.errors import ApplyError, ConditionCheck, KnowledgeError, NotApplicable
from procfhir.apply.expressions import Evaluator, Expression, project
from procfhir.apply.knowledge import Knowledge, load_knowledge

CHOICE_BEHAVIORS = frozenset({"exactly-one", "at-most-one", "one-or-more", "any"})
# ActivityDefinition.kind values $apply instantiates (see procfhir.apply.resources)
KINDS = frozenset(
    {
        "ServiceRequest",
        "MedicationRequest",
        "Task",
        "CommunicationRequest",
        "DeviceRequest",
        "SupplyRequest",
        "Appointment",
    }
)
# the variables every plan expression may use (docs/contract.md)
VARIABLES = ("patient", "conditions", "medications", "priorProcedures", "sites", "plannedDate")


@dataclass
class DynamicValue:
    path: str
    steps: list[tuple[str, bool]]  # (element name, repeats) from the resource root
    expression: Expression


@dataclass
class CompiledAction:
    raw: dict[str, Any]
    id: str
    conditions: list[tuple[str, str, Expression]]
    dynamic: list[DynamicValue]
    activity: dict[str, Any] | None
    activity_dynamic: list[DynamicValue]
    children: list[CompiledAction] = field(default_factory=list)

    @property
    def is_choice(self) -> bool:
        return self.raw.get("selectionBehavior") in CHOICE_BEHAVIORS and bool(self.children)


@dataclass
class Selected:
    """An action the plan selects for the patient, with its evaluated dynamic values."""

    action: CompiledAction
    children: list[Selected]
    values: list[tuple[DynamicValue, list[Any]]]


@dataclass
class Warning:
    action: str
    text: str
    priority: str | None


@dataclass
class Outcome:
    context: PatientContext
    selected: list[Selected]
    checks: list[ConditionCheck]
    warnings: list[Warning]
    memo: dict[Any, Any] | None = None  # shared by the patients of one remembered outcome


def _path_steps(resource_type: str, path: str, where: str) -> list[tuple[str, bool]]:
    """Check a dynamicValue path against the FHIR R4 definitions; say for each step whether it
    repeats. The core package's StructureDefinitions (``procfhir fhir-cache fill``) are read
    when installed (a few ms); else fhir.resources' models (about 0.2 s to import)."""
    from procfhir.fhircache import core_dir

    core = core_dir()
    if (core / f"StructureDefinition-{resource_type}.json").is_file():
        return _path_steps_core(core, resource_type, path, where)
    return _path_steps_models(resource_type, path, where)


_CORE_SNAPSHOTS: dict[str, dict[str, dict[str, Any]]] = {}


def _snapshot(core: Any, type_name: str, where: str) -> dict[str, dict[str, Any]]:
    elements = _CORE_SNAPSHOTS.get(type_name)
    if elements is None:
        path = core / f"StructureDefinition-{type_name}.json"
        try:
            sd = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            raise KnowledgeError(f"{where}: unknown FHIR type {type_name}") from None
        elements = _CORE_SNAPSHOTS[type_name] = {e["path"]: e for e in sd["snapshot"]["element"]}
    return elements


def _choice_type(suffix: str, element: dict[str, Any]) -> str | None:
    """The type of a choice element named with this suffix (``String`` -> ``string``)."""
    for t in element.get("type") or []:
        code = t["code"]
        if code[:1].upper() + code[1:] == suffix:
            return str(code)
    return None


def _path_steps_core(core: Any, resource_type: str, path: str, where: str) -> list[tuple[str, bool]]:
    steps = []
    elements = _snapshot(core, resource_type, where)
    prefix = resource_type
    parts = path.split(".")
    for i, part in enumerate(parts):
        e = elements.get(f"{prefix}.{part}")
        types = [t["code"] for t in (e or {}).get("type") or []]
        if e is None:  # a choice element by its typed name: contentString -> content[x], string
            e = next(
                (
                    x
                    for p, x in elements.items()
                    if p.endswith("[x]")
                    and p.rsplit(".", 1)[0] == prefix
                    and part.startswith(p.rsplit(".", 1)[1][:-3])
                    and _choice_type(part[len(p.rsplit(".", 1)[1]) - 3 :], x)
                ),
                None,
            )
            if e is None:
                raise KnowledgeError(f"{where}: dynamicValue path {path!r}: {prefix} has no element {part!r}")
            types = [_choice_type(part[len(e["path"].rsplit(".", 1)[1]) - 3 :], e) or ""]
        steps.append((part, e.get("max") != "1" and e.get("max") != "0"))
        if i < len(parts) - 1:
            if types in (["BackboneElement"], ["Element"]):
                prefix = f"{prefix}.{part}"
            elif len(types) == 1 and types[0][:1].isupper():
                elements, prefix = _snapshot(core, types[0], where), types[0]
            else:
                raise KnowledgeError(f"{where}: dynamicValue path {path!r}: {part!r} has no elements")
    return steps


def _path_steps_models(resource_type: str, path: str, where: str) -> list[tuple[str, bool]]:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource_type)
    except Exception:  # unknown type
        raise KnowledgeError(f"{where}: unknown resource type {resource_type}") from None
    steps = []
    parts = path.split(".")
    for i, part in enumerate(parts):
        fld = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if fld is None:
            raise KnowledgeError(
                f"{where}: dynamicValue path {path!r}: {model.__name__} has no element {part!r}"
            )
        ann = str(fld.annotation)
        steps.append((part, "List[" in ann))
        if i < len(parts) - 1:
            m = re.search(r"abc\.(\w+)Type", ann)
            if not m:
                raise KnowledgeError(f"{where}: dynamicValue path {path!r}: {part!r} has no elements")
            model = get_fhir_model_class(m.group(1))
    return steps


def set_path(resource: dict[str, Any], dv: DynamicValue, values: list[Any]) -> None:
    node = resource
    for i, (name, repeats) in enumerate(dv.steps):
        if i == len(dv.steps) - 1:
            node[name] = list(values) if repeats else values[0]
        elif repeats:
            node = (node.setdefault(name, [{}]) or [{}])[0]
        else:
            node = node.setdefault(name, {})


class Plan:
    """A compiled PlanDefinition, ready to be applied to many patients."""

    def __init__(self, knowledge: Knowledge, memo: bool = True, compiled: bool = True) -> None:
        self.k = knowledge
        self.plan = knowledge.plan
        self.url = self.plan["url"] + (f"|{self.plan['version']}" if self.plan.get("version") else "")
        self.canonical = self.plan["url"]
        self.expressions: list[Expression] = []
        self.actions = [
            self._compile(a, f"PlanDefinition/{self.plan['id']}.action[{i}]")
            for i, a in enumerate(self.plan.get("action", []))
        ]
        self.evaluator = Evaluator(memo=memo, compiled=compiled)
        self.choices: dict[str, list[str]] = {}  # choice id -> ids of its ancestors (root first)
        self._index_choices(self.actions, [])
        self.by_id: dict[str, CompiledAction] = {}
        self.paths: dict[str, list[str]] = {}  # action id -> ids from the root to it
        _index(self.actions, self.by_id, self.paths, [])
        self.techniques = list(self.choices)
        self.sites = knowledge.sites
        # The outcome of the whole plan for a patient depends only on the environment projected
        # onto the names its expressions use (when each of them is memoizable): patients with the
        # same relevant facts share one walk of the plan.
        self.memo = memo and all(x.memoizable for x in self.expressions)
        self._used = sorted({v for x in self.expressions for v in x.variables})
        # each variable projected onto the names the expressions read from it (``%sites`` read
        # only by ``%sites.count()``: patients with other sites but as many share one walk)
        self._names = {
            v: frozenset().union(*(x.variable_names[v] for x in self.expressions if v in x.variables))
            for v in self._used
        }
        self._outcomes: OrderedDict[tuple[Any, ...], tuple[Any, ...]] = OrderedDict()
        self.max_outcomes = 4096
        unknown = sorted(set(self._used) - set(VARIABLES))
        if unknown:
            raise KnowledgeError(
                f"PlanDefinition/{self.plan['id']}: the expressions use the unknown variable(s) "
                f"{', '.join('%' + v for v in unknown)} (known: {', '.join('%' + v for v in VARIABLES)})"
            )
        self._procedure_action = self._find_procedure_action()
        k = knowledge
        self.sites_label: str = (k.sites.label if k.sites else None) or "Body sites"  # as the build
        self.materials: dict[str, list[dict[str, Any]]] = {}  # action id -> CodeableConcepts
        for a in self.by_id.values():
            for e in k.extensions(a.raw, "uses-material"):
                item = next(
                    (
                        x.get("valueCodeableConcept")
                        for x in e.get("extension") or []
                        if x.get("url") == "item"
                    ),
                    None,
                )
                if isinstance(item, dict):
                    self.materials.setdefault(a.id, []).append(item)

    def action_codings(self, action_id: str) -> set[tuple[str, str]]:
        """The codings of an action: its own code and its ActivityDefinition's."""
        a = self.by_id[action_id]
        ccs = [*(a.raw.get("code") or []), (a.activity or {}).get("code") or {}]
        return {(c.get("system", ""), c.get("code", "")) for cc in ccs for c in cc.get("coding") or []}

    def procedure_action(self, technique: str | None) -> str | None:
        """The action whose order the Procedure is based on: the chosen technique, or (in a plan
        without a choice) the action coded as a procedure of the plan's Procedure profile."""
        return technique if technique is not None else self._procedure_action

    def _find_procedure_action(self) -> str | None:
        if self.choices:
            return None
        with_activity = [a for a in self.by_id.values() if a.activity is not None]
        vs = self.k.procedures
        if vs:
            codes = {(c["system"], c["code"]) for c in self.k.value_set_codings(vs)}
            coded = [a for a in with_activity if self.action_codings(a.id) & codes]
            if coded:
                return coded[0].id
        return with_activity[0].id if with_activity else None

    # -- compilation -------------------------------------------------------------------------
    def _expr(self, e: dict[str, Any], where: str) -> Expression:
        if not isinstance(e, dict) or not e.get("expression"):
            raise KnowledgeError(f"{where}: no expression")
        x = Expression(e["expression"], e.get("language", "text/fhirpath"), where)
        self.expressions.append(x)
        return x

    def _compile(self, a: dict[str, Any], where: str) -> CompiledAction:
        aid = a.get("id") or where
        conditions = []
        for j, c in enumerate(a.get("condition", [])):
            if c.get("kind") != "applicability":
                continue  # start/stop conditions belong to the running of the plan, not to $apply
            e = c.get("expression", {})
            name = e.get("name") or f"{aid}-condition-{j}"
            conditions.append(
                (
                    name,
                    e.get("description") or e.get("expression", ""),
                    self._expr(e, f"{where}.condition[{j}]"),
                )
            )
        activity, activity_dynamic = None, []
        target_type = "ServiceRequest"
        if a.get("definitionCanonical"):
            activity = self.k.activities.get(a["definitionCanonical"])
            if activity is None:
                raise KnowledgeError(
                    f"{where}: definitionCanonical {a['definitionCanonical']} is not in the package"
                )
            target_type = activity.get("kind") or ""
            if target_type not in KINDS:
                raise KnowledgeError(
                    f"{where}: ActivityDefinition/{activity.get('id')}: kind {target_type!r} is not "
                    f"instantiated by $apply (supported: {', '.join(sorted(KINDS))})"
                )
            for j, dv in enumerate(activity.get("dynamicValue", [])):
                w = f"ActivityDefinition/{activity['id']}.dynamicValue[{j}]"
                activity_dynamic.append(
                    DynamicValue(
                        dv["path"],
                        _path_steps(target_type, dv["path"], w),
                        self._expr(dv.get("expression"), w),
                    )
                )
        elif a.get("definitionUri") or a.get("definitionCanonical") == "":
            raise KnowledgeError(f"{where}: only definitionCanonical to an ActivityDefinition is supported")
        dynamic = []
        for j, dv in enumerate(a.get("dynamicValue", [])):
            w = f"{where}.dynamicValue[{j}]"
            dynamic.append(
                DynamicValue(
                    dv["path"], _path_steps(target_type, dv["path"], w), self._expr(dv.get("expression"), w)
                )
            )
        children = [self._compile(c, f"{where}.action[{i}]") for i, c in enumerate(a.get("action", []))]
        return CompiledAction(a, aid, conditions, dynamic, activity, activity_dynamic, children)

    def _index_choices(self, actions: list[CompiledAction], ancestors: list[str]) -> None:
        for a in actions:
            if a.is_choice:
                for c in a.children:
                    self.choices[c.id] = [*ancestors, a.id, c.id]
            self._index_choices(a.children, [*ancestors, a.id])

    # -- applying ----------------------------------------------------------------------------
    def parse(self, obj: Any) -> PatientContext:
        return parse_context(obj, self.techniques, self.sites)

    def environment(self, ctx: PatientContext) -> dict[str, Any]:
        sites = [dict(s.coding) for s in ctx.sites]  # Codings (docs/contract.md: %sites)
        env = {
            "patient": ctx.patient,
            "conditions": ctx.conditions,
            "medications": ctx.medications,
            "priorProcedures": ctx.prior_procedures,
            "plannedDate": ctx.date[:10],
        }
        env["sites"] = sites
        return env

    def evaluate(self, ctx: PatientContext) -> Outcome:
        """Walk the plan for one patient; raise :class:`NotApplicable` when the choice is excluded."""
        env = self.environment(ctx)
        key = None
        if self.memo:
            projected = {v: project(env.get(v), self._names[v]) for v in self._used}
            key = (ctx.technique, orjson.dumps(projected, option=orjson.OPT_SORT_KEYS))
            hit = self._outcomes.get(key)
            if hit is not None:
                self._outcomes.move_to_end(key)
                if hit[3] is not None:
                    raise NotApplicable(self.plan["id"], hit[3], list(hit[1]))
                return Outcome(ctx, hit[0], list(hit[1]), hit[2], hit[4])
        checks: list[ConditionCheck] = []
        selected = [s for a in self.actions if (s := self._walk(a, env, ctx.technique, checks))]
        target = self.procedure_action(ctx.technique)
        failed: list[ConditionCheck] | None = None
        if target is not None:
            path = self.paths[target]
            if not _reached(selected, path):
                failed = [c for c in checks if not c.result and c.action in path]
        elif not any(s.action.activity is not None or s.children for s in selected):
            failed = [c for c in checks if not c.result]
        warnings: list[Warning] = []
        if failed is None:
            _collect_warnings(selected, warnings)
        if key is not None:
            memo: dict[Any, Any] | None = {}
            self._outcomes[key] = (selected, tuple(checks), warnings, failed, memo)
            if len(self._outcomes) > self.max_outcomes:
                self._outcomes.popitem(last=False)
        else:
            memo = None
        if failed is not None:
            raise NotApplicable(self.plan["id"], failed, checks)
        return Outcome(ctx, selected, checks, warnings, memo)

    def _walk(
        self,
        a: CompiledAction,
        env: dict[str, Any],
        choice: str | None,
        checks: list[ConditionCheck],
    ) -> Selected | None:
        ok = True
        for name, description, expr in a.conditions:
            result = self.evaluator.evaluate(expr, env)
            if result and not all(isinstance(r, bool) for r in result):
                raise KnowledgeError(f"{expr.where}: the condition gave {result!r}, not a boolean")
            value = result == [True]
            checks.append(ConditionCheck(a.id, name, description, value))
            ok = ok and value
        if not ok:
            return None
        candidates = a.children
        if a.is_choice:
            candidates = [c for c in a.children if c.id == choice]
            if not candidates and a.raw.get("selectionBehavior") in ("exactly-one", "one-or-more"):
                ids = ", ".join(c.id for c in a.children)
                raise ApplyError("technique", f"the plan's action {a.id} needs a choice among {ids}")
        children = [s for c in candidates if (s := self._walk(c, env, choice, checks))]
        if a.is_choice and candidates and not children:
            return None  # the chosen option is excluded by its own conditions
        values = []
        for dv in [*a.activity_dynamic, *a.dynamic]:
            result = self.evaluator.evaluate(dv.expression, env)
            if result:
                values.append((dv, result))
        return Selected(a, children, values)


def _index(
    actions: list[CompiledAction],
    out: dict[str, CompiledAction],
    paths: dict[str, list[str]],
    above: list[str],
) -> None:
    for a in actions:
        if a.id in out:
            raise KnowledgeError(f"the plan has two actions with the id {a.id}")
        out[a.id] = a
        paths[a.id] = [*above, a.id]
        _index(a.children, out, paths, paths[a.id])


def _reached(selected: list[Selected], path: list[str]) -> bool:
    level = selected
    for aid in path:
        nxt = next((s for s in level if s.action.id == aid), None)
        if nxt is None:
            return False
        level = nxt.children
    return True


def _collect_warnings(selected: list[Selected], out: list[Warning]) -> None:
    """The notes the plan selects for the patient: advice, preferences, rules left as text."""
    for s in selected:
        raw = s.action.raw
        if raw.get("textEquivalent") and s.action.activity is None and not s.children:
            out.append(Warning(s.action.id, raw["textEquivalent"], raw.get("priority")))
        _collect_warnings(s.children, out)


_PLAN_CACHE: dict[tuple[Any, ...], Plan] = {}


def load_plan(package: Any = None, plan: str | None = None, memo: bool = True) -> Plan:
    """Load and compile a plan of the package (cached per arguments within a process).

    ``package``: a folder, a ``.tgz`` NPM package, a Bundle file or a FHIR server's base URL
    (default: the project's ``fhir/``); ``plan``: its canonical url (``url`` or ``url|version``)
    or id, needed when the package holds several plans.
    """
    key = (str(package), plan, memo)
    if key not in _PLAN_CACHE:
        _PLAN_CACHE[key] = Plan(load_knowledge(package, plan), memo=memo)
    return _PLAN_CACHE[key]
