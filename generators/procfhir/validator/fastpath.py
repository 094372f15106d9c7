"""Invariants compiled to Python closures over plain JSON: the validator's fast path.

fhirpathpy interprets an expression by walking its parse tree and wraps every value it touches
in a node object; on the R4 examples, the core invariants it evaluated took about 60 % of the
validator's time. The FHIRPath that core invariants use is a small subset, compiled here, once,
from fhirpathpy's own parse tree. fhirpathpy stays the reference:

- :func:`compile_invariant` raises :class:`Unsupported` at compile time for anything outside the
  subset (types: ``is``/``as``/``ofType``, dates, quantities, ``resolve()``...): such an
  expression always runs in fhirpathpy;
- a closure raises :class:`Unsupported` at run time when the data leaves the subset (a choice
  element or a primitive's ``_name`` twin reached by name, a comparison of objects or dates, a
  collection where one value is needed...): that evaluation runs in fhirpathpy.

Each construct mirrors fhirpathpy's behaviour on what it accepts (``tests/test_validator_fastpath.py``
compares the two over every invariant of the R4 examples it can reach).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import repeat
from typing import Any

Env = dict[str, Any]
Fn = Callable[[list[Any], Env], list[Any]]
# a function applied to its input collection: (input, focus of the invocation, env)
Func = Callable[[list[Any], list[Any], Env], list[Any]]


class Unsupported(Exception):
    """The expression (at compile time) or the input (at run time) is outside the subset."""


_CHOICE_NAMES: frozenset[str] | None = None


def _choice_names() -> frozenset[str]:
    """Last segments of the R4 model's choice elements (``value``, ``effective``...)."""
    global _CHOICE_NAMES
    if _CHOICE_NAMES is None:
        from fhirpathpy.models import models

        paths = models["r4"].get("choiceTypePaths") or {}
        _CHOICE_NAMES = frozenset(p.rsplit(".", 1)[-1] for p in paths)
    return _CHOICE_NAMES


def compile_invariant(tree: dict[str, Any]) -> Fn:
    """A closure ``fn(focus, env)`` for fhirpathpy's parse tree of an expression."""
    return _compile(tree["children"][0])


def _compile(node: dict[str, Any]) -> Fn:
    handler = _HANDLERS.get(node["type"])
    if handler is None:
        raise Unsupported(f"{node['type']} is not compiled")
    return handler(node)


def _only_child(node: dict[str, Any]) -> Fn:
    children = node.get("children") or []
    if len(children) != 1:
        raise Unsupported(f"{node['type']} with {len(children)} children")
    return _compile(children[0])


def _string_literal(text: str) -> str:
    body = text[1:-1]
    escapes = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

    def unescape(m: re.Match[str]) -> str:
        e = m.group(1)
        if e.startswith("u"):
            return chr(int(e[1:], 16))
        return escapes.get(e, e)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", unescape, body)


def _literal(node: dict[str, Any]) -> Fn:
    child = node["children"][0]
    kind = child["type"]
    value: Any
    if kind == "StringLiteral":
        value = _string_literal(child["text"])
    elif kind == "BooleanLiteral":
        value = child["text"] == "true"
    elif kind == "NumberLiteral":
        if not child["text"].isdigit():
            raise Unsupported("decimal literal")
        value = int(child["text"])
    elif kind == "NullLiteral":
        return lambda focus, env: []
    else:
        raise Unsupported(f"{kind} is not compiled")
    return lambda focus, env: [value]


def _external_constant(node: dict[str, Any]) -> Fn:
    ident = node["children"][0]["children"][0]
    if ident["type"] != "Identifier":
        raise Unsupported("quoted variable name")
    name = ident["text"].strip('"').replace("`", "")
    if name not in ("resource", "rootResource"):
        raise Unsupported(f"%{name}")

    def variable(focus: list[Any], env: Env) -> list[Any]:
        value = env.get(name)
        if value is None:
            raise Unsupported(f"%{name} is not given")
        return [value]

    return variable


def _member_name(node: dict[str, Any]) -> str:
    ident = node["children"][0]
    if ident["type"] != "Identifier":
        raise Unsupported("member name")
    return str(ident["text"]).strip('"').replace("`", "")


def _navigate(key: str) -> Callable[[list[Any]], list[Any]]:
    twin = "_" + key
    choice = key in _choice_names()
    capital = key[:1].isupper()

    def step(items: list[Any]) -> list[Any]:
        if capital:
            if all(isinstance(i, dict) for i in items):
                return [i for i in items if i.get("resourceType") == key]
            raise Unsupported("type-name navigation")
        if len(items) == 1 and type(items[0]) is dict:  # the loop below on one object (most steps)
            one = items[0]  # not ``item``: mypy would type it dict, and the loop below reuses it
            if twin in one:
                raise Unsupported("a primitive's extension twin")
            value = one.get(key)
            if value is None:
                if choice and _choice_held(one, key):
                    raise Unsupported("a choice element")
                return []
            if type(value) is list:
                return list(value) if None not in value else [v for v in value if v is not None]
            return [value]
        out: list[Any] = []
        for item in items:
            if type(item) is dict:
                if twin in item:
                    raise Unsupported("a primitive's extension twin")
                value = item.get(key)
                if value is None:
                    if choice and _choice_held(item, key):
                        raise Unsupported("a choice element")
                    continue
                if type(value) is list:
                    out.extend(value if None not in value else [v for v in value if v is not None])
                else:
                    out.append(value)
            elif key == "length":
                raise Unsupported("navigation from a primitive")
        return out

    return step


def _choice_held(item: dict[str, Any], key: str) -> bool:
    """Whether the choice element ``key`` is held by a typed name (``valueString``)."""
    if not any(map(str.startswith, item, repeat(key))):  # most objects: no key starts so
        return False
    n = len(key)
    return any(k.startswith(key) and k[n : n + 1].isupper() for k in item)


def _member(node: dict[str, Any]) -> Fn:
    step = _navigate(_member_name(node))
    return lambda focus, env: step(focus)


def _this(node: dict[str, Any]) -> Fn:
    return lambda focus, env: focus


def _invocation_expression(node: dict[str, Any]) -> Fn:
    left_node, right_node = node["children"]
    left = _compile(left_node)
    kind = right_node["type"]
    if kind == "MemberInvocation":
        step = _navigate(_member_name(right_node))
        return lambda focus, env: step(left(focus, env))
    if kind == "FunctionInvocation":
        fused = _fused_existence(left_node, left, right_node)
        if fused is not None:
            return fused
        fn = _function(right_node)
        return lambda focus, env: fn(left(focus, env), focus, env)
    raise Unsupported(f"{kind} is not compiled")


def _focus_member(node: dict[str, Any]) -> str | None:
    """The name when ``node`` is a plain member of the focus (``code`` in ``code.exists()``)."""
    while node["type"] in ("TermExpression", "InvocationTerm") and len(node.get("children") or []) == 1:
        node = node["children"][0]
    if node["type"] == "MemberInvocation":
        try:
            return _member_name(node)
        except Unsupported:
            return None
    return None


def _fused_existence(left_node: dict[str, Any], left: Fn, right_node: dict[str, Any]) -> Fn | None:
    """``x.exists()`` / ``x.empty()`` as one closure (the same values as the general form: the
    most frequent shape of core invariants, called millions of times on a package)."""
    functn = right_node["children"][0]
    if len(functn["children"]) > 1 and functn["children"][1].get("children"):
        return None  # with parameters
    name = functn["children"][0].get("text")
    if name not in ("exists", "empty"):
        return None
    member = _focus_member(left_node)
    if member is not None:
        step = _navigate(member)
        if name == "exists":
            return lambda focus, env: [bool(step(focus))]
        return lambda focus, env: [not step(focus)]
    if name == "exists":
        return lambda focus, env: [bool(left(focus, env))]
    return lambda focus, env: [not left(focus, env)]


def _focus_function(node: dict[str, Any]) -> Fn:
    """A function invoked on the focus itself: ``exists()`` inside ``where(...)``."""
    fn = _function(node)
    return lambda focus, env: fn(focus, focus, env)


def _is_true(result: list[Any]) -> bool:
    return len(result) == 1 and result[0] is True


def _keep(result: list[Any]) -> bool:
    """fhirpathpy's where(): the criterion's first value, read as truthy."""
    if not result:
        return False
    first = result[0]
    return first if isinstance(first, bool) else True


def _single_string(items: list[Any]) -> str:
    if len(items) == 1 and type(items[0]) is str:
        return str(items[0])
    raise Unsupported("a string function on something other than one string")


def _param_string(fn: Fn, focus: list[Any], env: Env) -> str | None:
    got = fn(focus, env)
    if not got:
        return None
    if len(got) == 1 and type(got[0]) is str:
        return str(got[0])
    raise Unsupported("a string parameter that is not one string")


def _function(node: dict[str, Any]) -> Func:  # noqa: C901 - one table of small closures
    functn = node["children"][0]
    name = functn["children"][0]["text"]
    params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
    n = len(params)
    if name in ("where", "exists", "all", "select") and n == 1:
        crit = _compile(params[0])
        if name == "select":

            def select(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
                out: list[Any] = []
                for item in items:
                    out.extend(crit([item], env))
                return out

            return select
        if name == "all":

            def all_(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
                for i in items:  # all(_is_true(...)), inline
                    r = crit([i], env)
                    if not (len(r) == 1 and r[0] is True):
                        return [False]
                return [True]

            return all_

        def where(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
            return [i for i in items if _keep(crit([i], env))]

        if name == "where":
            return where

        def exists(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
            for i in items:  # any(_keep(...)), inline
                r = crit([i], env)
                if r and (r[0] if isinstance(r[0], bool) else True):
                    return [True]
            return [False]

        return exists
    if name == "trace" and n in (1, 2):
        if n == 2:
            raise Unsupported("trace() with a projection")
        return lambda items, focus, env: items
    if name == "iif" and n in (2, 3):
        cond = _compile(params[0])
        then = _compile(params[1])
        other = _compile(params[2]) if n == 3 else None

        def iif(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
            if len(items) > 1:
                raise Unsupported("iif() on a collection")
            c = cond(items or focus, env)
            if _is_true(c):
                return then(items or focus, env)
            return other(items or focus, env) if other is not None else []

        return iif
    if name in ("combine", "union") and n == 1:
        other_fn = _compile(params[0])
        if name == "combine":
            return lambda items, focus, env: items + other_fn(focus, env)
        return lambda items, focus, env: _distinct(items + other_fn(focus, env))
    if name == "replaceMatches" and n == 2:
        return _replace_matches(_compile(params[0]), _compile(params[1]))
    if name in ("startsWith", "endsWith", "contains", "matches") and n == 1:
        lit = _string_literal_of(params[0])
        if lit is not None:
            return _string_test_literal(name, lit)
        arg = _compile(params[0])
        return _string_test(name, arg)
    if n:
        raise Unsupported(f"{name}() with parameters")
    simple = _SIMPLE.get(name)
    if simple is None:
        raise Unsupported(f"{name}() is not compiled")
    return lambda items, focus, env: simple(items)


def _string_test(name: str, arg: Fn) -> Func:
    regexes: dict[str, re.Pattern[str]] = {}

    def test(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
        p = _param_string(arg, focus, env)
        if p is None or not items:
            return []
        s = _single_string(items)
        if name == "startsWith":
            return [s.startswith(p)]
        if name == "endsWith":
            return [s.endswith(p)]
        if name == "contains":
            return [p in s]
        rx = regexes.get(p)
        if rx is None:
            try:
                rx = regexes[p] = re.compile(p, re.DOTALL)
            except re.error as exc:
                raise Unsupported(f"regex: {exc}") from None
        return [rx.search(s) is not None]

    return test


def _string_test_literal(name: str, p: str) -> Func:
    """:func:`_string_test` with a string literal for its parameter (most of them)."""
    if name == "matches":
        try:
            rx = re.compile(p, re.DOTALL)
        except re.error:
            return _string_test(name, lambda focus, env: [p])  # Unsupported when evaluated
        search = rx.search

        def matches(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
            if not items:
                return []
            return [search(_single_string(items)) is not None]

        return matches

    def test(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
        if not items:
            return []
        s = _single_string(items)
        if name == "startsWith":
            return [s.startswith(p)]
        if name == "endsWith":
            return [s.endswith(p)]
        return [p in s]

    return test


def _replace_matches(regex: Fn, substitution: Fn) -> Func:
    """fhirpathpy's replaceMatches(): ``$1`` in the substitution is a group, re.sub on one string."""
    compiled: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {}

    def replace(items: list[Any], focus: list[Any], env: Env) -> list[Any]:
        s = _single_string(items)
        rx, repl = _param_string(regex, focus, env), _param_string(substitution, focus, env)
        if rx is None or repl is None:
            raise Unsupported("replaceMatches() without its parameters")
        hit = compiled.get((rx, repl))
        if hit is None:
            try:
                hit = compiled[(rx, repl)] = (re.compile(rx), re.sub(r"\$(\d+)", r"\\\1", repl))
            except re.error as exc:
                raise Unsupported(f"regex: {exc}") from None
        try:
            return [hit[0].sub(hit[1], s)]
        except (re.error, IndexError) as failure:  # not ``exc``: see procfhir.native
            raise Unsupported(f"replaceMatches(): {failure}") from None

    return replace


def _not(items: list[Any]) -> list[Any]:
    if len(items) != 1:
        return []
    v = items[0]
    if isinstance(v, bool):
        return [not v]
    raise Unsupported("not() of a non-boolean")


def _distinct(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i in items:
        if not any(_equal_item(i, o) for o in out):
            out.append(i)
    return out


def _is_distinct(items: list[Any]) -> list[Any]:
    if all(type(i) is str for i in items):
        return [len(set(items)) == len(items)]
    return [len(_distinct(items)) == len(items)]


def _children(items: list[Any], with_twins: bool = False) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if type(item) is dict:
            for k, v in item.items():
                if k[:1] == "_" and not with_twins:
                    continue
                if type(v) is list:
                    out.extend(v)
                else:
                    out.append(v)
    return out


def _descendants(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    level = _children(items, True)
    while level:
        out.extend(level)
        level = _children(level, True)
    return out


def _has_value(items: list[Any]) -> list[Any]:
    return [len(items) == 1 and items[0] is not None and not isinstance(items[0], dict | list)]


def _length(items: list[Any]) -> list[Any]:
    if not items:
        return []
    return [len(_single_string(items))]


_INTEGER = re.compile(r"[+-]?\d+")  # (compiled once: eld-3's toInteger() runs on every element)


def _to_integer(items: list[Any]) -> list[Any]:
    if not items:
        return []
    if len(items) != 1:
        raise Unsupported("toInteger() of a collection")
    v = items[0]
    if type(v) is int:
        return [v]
    if type(v) is str and _INTEGER.fullmatch(v):
        return [int(v)]
    raise Unsupported("toInteger() of something else")


_SIMPLE: dict[str, Callable[[list[Any]], list[Any]]] = {
    "exists": lambda items: [bool(items)],
    "empty": lambda items: [not items],
    "count": lambda items: [len(items)],
    "first": lambda items: items[:1],
    "last": lambda items: items[-1:],
    "tail": lambda items: items[1:],
    "not": _not,
    "distinct": _distinct,
    "isDistinct": _is_distinct,
    "children": _children,
    "descendants": _descendants,
    "hasValue": _has_value,
    "length": _length,
    "toInteger": _to_integer,
}


# ---------------------------------------------------------------- operators
def _equal_item(x: Any, y: Any) -> bool:
    tx, ty = type(x), type(y)
    if tx is bool or ty is bool:
        return tx is ty and x == y
    if tx in (int, float) and ty in (int, float):
        return bool(x == y)
    if tx is str and ty is str:
        return bool(x == y)
    if tx is dict and ty is dict:
        return bool(x == y)  # fhirpathpy's deep equality of objects (JSON equality)
    if tx is list or ty is list:
        raise Unsupported("equality of arrays")
    return False


def _equal(a: list[Any], b: list[Any]) -> list[Any]:
    if not a or not b:
        return []
    if len(a) != len(b):
        return [False]
    return [all(_equal_item(x, y) for x, y in zip(a, b, strict=True))]


def _unequal(a: list[Any], b: list[Any]) -> list[Any]:
    r = _equal(a, b)
    return [not r[0]] if r else r


_DATELIKE = re.compile(r"^\d{4}(-|$)|^\d\d:\d\d")


def _ordering(compare: Callable[[Any, Any], bool]) -> Callable[[list[Any], list[Any]], list[Any]]:
    def ordered(a: list[Any], b: list[Any]) -> list[Any]:
        if not a or not b:
            return []
        if len(a) != 1 or len(b) != 1:
            raise Unsupported("a comparison of collections")
        x, y = a[0], b[0]
        if type(x) in (int, float) and type(y) in (int, float):
            return [compare(x, y)]
        if type(x) is str and type(y) is str and not (_DATELIKE.match(x) or _DATELIKE.match(y)):
            return [compare(x, y)]
        raise Unsupported("a comparison of other types")

    return ordered


def _bool_operand(items: list[Any]) -> bool | None:
    if not items:
        return None
    if len(items) == 1 and isinstance(items[0], bool):
        return bool(items[0])
    raise Unsupported("a logical operator on a non-boolean")


def _and(a: list[Any], b: list[Any]) -> list[Any]:
    x, y = _bool_operand(a), _bool_operand(b)
    if x is False or y is False:
        return [False]
    if x is None or y is None:
        return []
    return [True]


def _or(a: list[Any], b: list[Any]) -> list[Any]:
    x, y = _bool_operand(a), _bool_operand(b)
    if x is True or y is True:
        return [True]
    if x is None or y is None:
        return []
    return [False]


def _xor(a: list[Any], b: list[Any]) -> list[Any]:
    x, y = _bool_operand(a), _bool_operand(b)
    if x is None or y is None:
        return []
    return [x != y]


def _implies(a: list[Any], b: list[Any]) -> list[Any]:
    x, y = _bool_operand(a), _bool_operand(b)
    if x is False:
        return [True]
    if x is None:
        return [True] if y is True else []
    return [True] if y is True else ([False] if y is False else [])


def _union(a: list[Any], b: list[Any]) -> list[Any]:
    return _distinct(a + b)


def _concat(a: list[Any], b: list[Any]) -> list[Any]:
    x = _single_string(a) if a else ""
    y = _single_string(b) if b else ""
    return [x + y]


def _plus(a: list[Any], b: list[Any]) -> list[Any]:
    if not a or not b:
        return []
    if len(a) != 1 or len(b) != 1:
        raise Unsupported("+ of collections")
    x, y = a[0], b[0]
    if type(x) is str and type(y) is str:
        return [x + y]
    if type(x) is int and type(y) is int:
        return [x + y]
    raise Unsupported("+ of other types")


def _membership(item_first: bool) -> Callable[[list[Any], list[Any]], list[Any]]:
    def member(a: list[Any], b: list[Any]) -> list[Any]:
        one, many = (a, b) if item_first else (b, a)
        if not one:
            return []
        if len(one) != 1:
            raise Unsupported("in/contains of a collection")
        return [any(_equal_item(one[0], m) for m in many)]

    return member


_OPERATORS: dict[str, Callable[[list[Any], list[Any]], list[Any]]] = {
    "=": _equal,
    "!=": _unequal,
    "<": _ordering(lambda x, y: x < y),
    "<=": _ordering(lambda x, y: x <= y),
    ">": _ordering(lambda x, y: x > y),
    ">=": _ordering(lambda x, y: x >= y),
    "and": _and,
    "or": _or,
    "xor": _xor,
    "implies": _implies,
    "|": _union,
    "&": _concat,
    "+": _plus,
    "in": _membership(True),
    "contains": _membership(False),
}


def _binary(node: dict[str, Any]) -> Fn:
    op = node["terminalNodeText"][0]
    impl = _OPERATORS.get(op)
    if impl is None:
        raise Unsupported(f"operator {op} is not compiled")
    left_node, right_node = node["children"]
    left = _compile(left_node)
    if op in ("and", "or", "implies"):  # short-circuit where the result is settled
        return _logical(op, left, _lazy(right_node))
    lit = _string_literal_of(right_node)
    if lit is not None and op in ("=", "!="):
        return _equal_literal(left, lit, op == "!=")
    right = _compile(right_node)
    return lambda focus, env: impl(left(focus, env), right(focus, env))


def _string_literal_of(node: dict[str, Any]) -> str | None:
    """The value of a string literal term (``'Reference'`` in ``code = 'Reference'``), else None."""
    if node["type"] != "TermExpression" or len(node.get("children") or []) != 1:
        return None
    term = node["children"][0]
    if term["type"] != "LiteralTerm" or len(term.get("children") or []) != 1:
        return None
    child = term["children"][0]
    return _string_literal(child["text"]) if child["type"] == "StringLiteral" else None


def _equal_literal(left: Fn, lit: str, negated: bool) -> Fn:
    """``x = 'text'`` / ``x != 'text'``: :func:`_equal` / :func:`_unequal` against one string."""

    def equal(focus: list[Any], env: Env) -> list[Any]:
        a = left(focus, env)
        if not a:
            return []
        if len(a) != 1:
            return [negated]
        x = a[0]
        if type(x) is str:
            same = x == lit
        elif type(x) is list:
            raise Unsupported("equality of arrays")
        else:
            same = False
        return [same != negated]

    return equal


def _operand(items: list[Any]) -> bool | None:
    """:func:`_bool_operand`: None for empty, the boolean of a single boolean, else Unsupported."""
    if not items:
        return None
    if len(items) == 1:
        v = items[0]
        if v is True or v is False:
            return bool(v)
    raise Unsupported("a logical operator on a non-boolean")


def _logical(op: str, left: Fn, right: Fn) -> Fn:
    """and / or / implies with FHIRPath's three-valued logic (:func:`_and`, :func:`_or`,
    :func:`_implies`), the right operand evaluated only when the left does not settle it."""
    if op == "and":

        def land(focus: list[Any], env: Env) -> list[Any]:
            a = left(focus, env)  # _operand(a), inline: a list of one boolean, the most frequent
            x = a[0] if len(a) == 1 and (a[0] is True or a[0] is False) else _operand(a)
            if x is False:
                return [False]
            b = right(focus, env)
            y = b[0] if len(b) == 1 and (b[0] is True or b[0] is False) else _operand(b)
            if y is False:
                return [False]
            return [] if x is None or y is None else [True]

        return land
    if op == "or":

        def lor(focus: list[Any], env: Env) -> list[Any]:
            a = left(focus, env)
            x = a[0] if len(a) == 1 and (a[0] is True or a[0] is False) else _operand(a)
            if x is True:
                return [True]
            b = right(focus, env)
            y = b[0] if len(b) == 1 and (b[0] is True or b[0] is False) else _operand(b)
            if y is True:
                return [True]
            return [] if x is None or y is None else [False]

        return lor

    def limplies(focus: list[Any], env: Env) -> list[Any]:
        x = _operand(left(focus, env))
        if x is False:
            return [True]
        y = _operand(right(focus, env))
        if y is True:
            return [True]
        if x is None:
            return []
        return [False] if y is False else []

    return limplies


def _lazy(node: dict[str, Any]) -> Fn:
    """The right operand of a logical operator; outside the subset, a closure that raises
    :class:`Unsupported` only when it is evaluated (``type = 'document' implies
    entry.first().resource.is(Composition)`` is settled by its left side on most bundles)."""
    try:
        return _compile(node)
    except Unsupported as exc:
        why = str(exc)

        def unsupported(focus: list[Any], env: Env) -> list[Any]:
            raise Unsupported(why)

        return unsupported


_HANDLERS: dict[str, Callable[[dict[str, Any]], Fn]] = {
    "TermExpression": _only_child,
    "ParenthesizedTerm": _only_child,
    "InvocationTerm": _only_child,
    "LiteralTerm": _literal,
    "ExternalConstantTerm": _external_constant,
    "MemberInvocation": _member,
    "ThisInvocation": _this,
    "FunctionInvocation": _focus_function,
    "InvocationExpression": _invocation_expression,
    "EqualityExpression": _binary,
    "InequalityExpression": _binary,
    "AndExpression": _binary,
    "OrExpression": _binary,
    "ImpliesExpression": _binary,
    "UnionExpression": _binary,
    "AdditiveExpression": _binary,
    "MembershipExpression": _binary,
}
