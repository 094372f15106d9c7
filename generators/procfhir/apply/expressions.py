"""FHIRPath expressions of a plan, compiled once and evaluated fast.

An expression in the subset of :mod:`procfhir.apply.compiled` runs as Python closures; an
input that closure hands back (and any other expression) runs in fhirpathpy with a bounded memo.
fhirpathpy interprets an expression in about 0.3-0.7 ms; a batch evaluates the same few
expressions for every patient. The memo key is the environment *projected* onto the element names the
expression mentions (ids, dates, names the expression never reads are dropped), so patients
with the same relevant facts (the same condition codes, the same number of levels...) share one
evaluation. The projection is exact only for expressions that navigate by name; an expression
using reflective functions (children, descendants...) or comparing two non-literal operands is
never memoized (see :func:`memo_safe`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import orjson

from procfhir.apply.compiled import CHOICE_NAMES, Compiled, Unsupported, compile_fast
from procfhir.apply.errors import KnowledgeError
from procfhir.fhirpath_cache import parse

_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_BACKTICK = re.compile(r"`((?:[^`\\]|\\.)*)`")
_VARIABLE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFLECTIVE = re.compile(r"\b(children|descendants|repeat|trace|aggregate|resolve|extension|memberOf)\s*\(")
# a comparison operator and the operand on each side
_COMPARISON = re.compile(r"(!=|!~|<=|>=|=|~|<|>|\bin\b|\bcontains\b)")
_LITERAL = re.compile(r"^\s*(''|-?\d+(\.\d+)?|true|false|@[0-9T:\-+.Z]+|\{\s*\})")
_LITERAL_END = re.compile(r"(''|\d|true|false|\})\s*$")
_LITERAL_UNION = re.compile(r"^\s*\((\s*(''|-?\d+(\.\d+)?)\s*\|?)+\)")


def memo_safe(expression: str) -> bool:
    """True when projecting the environment onto the names used cannot change the result."""
    text = _STRING.sub("''", expression)
    if "`" in text or _REFLECTIVE.search(text) or "$this" in text or "$index" in text:
        return False
    for m in _COMPARISON.finditer(text):
        before, after = text[: m.start()], text[m.end() :]
        if not (_LITERAL_END.search(before) or _LITERAL.match(after) or _LITERAL_UNION.match(after)):
            return False
    return True


def names_used(expression: str) -> frozenset[str]:
    text = _STRING.sub("''", expression)
    return frozenset(_WORD.findall(text)) | {"resourceType"}


def project(value: Any, names: frozenset[str]) -> Any:
    """Keep only the object keys in ``names`` (and their ``_name`` primitive extensions, and the
    typed forms ``performedDateTime``... of the choice elements named), deeply."""
    choices = tuple(names & CHOICE_NAMES)
    return _project(value, names, choices) if choices else _project_plain(value, _with_twins(names))


@lru_cache(maxsize=256)
def _with_twins(names: frozenset[str]) -> frozenset[str]:
    """The names and their ``_name`` primitive-extension twins (one set lookup per key)."""
    return names | {"_" + n for n in names}


_NESTED = (dict, list)


def _project_plain(value: Any, keep: frozenset[str]) -> Any:
    if type(value) is dict:  # (leaves kept without a call: most values are strings)
        return {
            k: _project_plain(v, keep) if type(v) in _NESTED else v for k, v in value.items() if k in keep
        }
    if type(value) is list:
        return [_project_plain(v, keep) if type(v) in _NESTED else v for v in value]
    return value


def _keep(key: str, names: frozenset[str], choices: tuple[str, ...]) -> bool:
    if key[:1] == "_":
        key = key[1:]
    if key in names:
        return True
    return any(key.startswith(c) and key[len(c) : len(c) + 1].isupper() for c in choices)


def _project(value: Any, names: frozenset[str], choices: tuple[str, ...]) -> Any:
    if type(value) is dict:
        return {k: _project(v, names, choices) for k, v in value.items() if _keep(k, names, choices)}
    if type(value) is list:
        return [_project(v, names, choices) for v in value]
    return value


_AGGREGATES = frozenset({"count", "exists", "empty"})  # without a parameter: how many, whether any
_FILTERS = frozenset({"where", "exists"})  # with a criterion: a subset of the items (or whether any)


def _identifiers(node: dict[str, Any]) -> set[str]:
    out = {node["text"]} if node.get("type") == "Identifier" and isinstance(node.get("text"), str) else set()
    for child in node.get("children") or []:
        if isinstance(child, dict):
            out |= _identifiers(child)
    return out


def _chain_names(ancestors: list[dict[str, Any]]) -> frozenset[str] | None:
    """The element names read from a ``%variable``'s items, when they only flow through a chain
    of navigations and filters ending in ``count()``, ``exists()`` or ``empty()``; None when its
    items (or values read from them) go anywhere else."""
    names: set[str] = {"resourceType"}
    child = ancestors[-1]  # the TermExpression holding the variable
    for parent in reversed(ancestors[:-1]):
        kids = parent.get("children") or []
        if parent.get("type") != "InvocationExpression" or len(kids) != 2 or kids[0] is not child:
            return None
        right = kids[1]
        words = _identifiers(right)
        if any(not w.isidentifier() for w in words):
            return None  # a quoted name
        if right.get("type") == "MemberInvocation":
            names |= words
        elif right.get("type") == "FunctionInvocation":
            functn = (right.get("children") or [{}])[0]
            parts = functn.get("children") or []
            fname = parts[0].get("text") if parts else None
            if len(parts) == 1 and fname in _AGGREGATES:
                return frozenset(names)
            criterion = str(parts[1]) if len(parts) == 2 else ""
            if (
                fname in _FILTERS
                and criterion
                and "$" not in criterion
                and "ExternalConstant" not in criterion
            ):
                names |= words  # the criterion reads these names of each item (and no variable)
                if fname == "exists":
                    return frozenset(names)
            else:
                return None
        else:
            return None
        child = parent
    return None  # the items are the expression's result


def variable_names(tree: dict[str, Any], variables: list[str]) -> dict[str, frozenset[str] | None]:
    """Per variable, the element names the expression reads from it (None: unknown, use all the
    expression's names). ``%sites.count() > 2`` reads none: only how many sites there are."""
    found: dict[str, frozenset[str] | None] = {}

    def visit(node: dict[str, Any], ancestors: list[dict[str, Any]]) -> None:
        if node.get("type") == "ExternalConstantTerm":
            ident = ((node.get("children") or [{}])[0].get("children") or [{}])[0]
            text = ident.get("text")
            name = text.strip('"').replace("`", "") if isinstance(text, str) else None
            if name is None:  # (not one of ours: every variable gets all names)
                found.update(dict.fromkeys(variables))
                return
            names = _chain_names(ancestors) if ancestors else None
            old = found.get(name, frozenset())
            found[name] = None if names is None or old is None else old | names
            return
        for child in node.get("children") or []:
            if isinstance(child, dict):
                visit(child, [*ancestors, node])

    visit(tree, [])
    return {v: found.get(v) for v in variables}


@lru_cache(maxsize=1)
def _engine() -> Any:
    """fhirpathpy's evaluator, imported only when an expression or an input needs it."""
    from fhirpathpy import apply_parsed_path

    return apply_parsed_path


@lru_cache(maxsize=1)
def _r4() -> Any:
    """fhirpathpy's R4 model: types choice elements (performed -> performedDateTime), dates."""
    from fhirpathpy.models import models

    return models["r4"]


class Expression:
    """A compiled FHIRPath expression evaluated on ``%``-variables only (no focus resource)."""

    def __init__(self, expression: str, language: str = "text/fhirpath", where: str = "") -> None:
        if language != "text/fhirpath":
            raise KnowledgeError(
                f"{where}: expression language {language!r} is not supported (text/fhirpath)"
            )
        try:
            tree = parse(expression)  # once: fhirpathpy and the compiled subset share the tree
        except Exception as exc:  # fhirpathpy raises various parser errors
            raise KnowledgeError(f"{where}: the FHIRPath expression does not parse: {exc}") from None
        self._tree = tree
        self.text = expression
        self.where = where
        self.names = names_used(expression)
        self.variables = sorted(set(_VARIABLE.findall(_STRING.sub("''", expression))))
        self.memoizable = memo_safe(expression)
        # per variable, the names to project it onto for a memo key (all the expression's names
        # unless its items only reach count(), exists() or empty() through navigation and where)
        self.variable_names = {
            v: self.names if names is None else names
            for v, names in variable_names(tree, self.variables).items()
        }
        self.fast: Compiled | None
        try:
            self.fast = compile_fast(expression, tree)
        except Unsupported:
            self.fast = None  # outside the compiled subset: always fhirpathpy

    def evaluate(self, env: dict[str, Any]) -> list[Any]:
        try:
            return list(_engine()({}, self._tree, env, _r4()))
        except Exception as exc:  # an expression failing on unusual input data
            raise KnowledgeError(f"{self.where}: evaluating the expression failed: {exc}") from None


class Evaluator:
    """Evaluates a plan's expressions with a bounded (LRU) memo over projected environments.

    The key of an expression is the environment restricted to the ``%``-variables it uses,
    projected onto the element names it mentions: ``%levels.count()`` only sees how many levels.
    """

    def __init__(self, max_entries: int = 16384, memo: bool = True, compiled: bool = True) -> None:
        self.max_entries = max_entries
        self.memo = memo
        self.use_compiled = compiled
        self._cache: OrderedDict[tuple[str, bytes], list[Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.compiled = 0  # evaluations done by the compiled fast path
        self.fallbacks = 0  # inputs the fast path handed back to fhirpathpy

    def evaluate(self, expr: Expression, env: dict[str, Any]) -> list[Any]:
        if expr.fast is not None and self.use_compiled:
            try:
                result = expr.fast(env)
                self.compiled += 1
                return result
            except Unsupported:
                self.fallbacks += 1
        if not (self.memo and expr.memoizable):
            return expr.evaluate(env)
        projected = {v: project(env.get(v), expr.names) for v in expr.variables}
        k = (expr.text, orjson.dumps(projected, option=orjson.OPT_SORT_KEYS))
        hit = self._cache.get(k)
        if hit is not None:
            self._cache.move_to_end(k)
            self.hits += 1
            return hit
        self.misses += 1
        result = expr.evaluate(env)
        self._cache[k] = result
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return result
