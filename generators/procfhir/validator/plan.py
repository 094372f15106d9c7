"""Compiled checks: what the validator does at an element, worked out once per (element, type).

The walk meets the same element definitions millions of times (on the R4 examples: 2.8 million
values, under a few thousand distinct elements). What depends only on the definitions is decided
here, once, and kept on the :class:`~procfhir.validator.definitions.Node`:

- a :class:`Plan` per type code: the rules of the type's table (:func:`rules.table_for`) that
  can report something at this element (a rule declares in :data:`rules.INERT` when it cannot:
  no binding, no fixed value or pattern, no limits), the element whose children the value's
  properties are matched to, and the invariants to evaluate there, prepared
  (:meth:`Invariants.prepare`);
- a :class:`Table` per element with children: each child's position (issues keep the
  definitions' order) and the children that matter when absent (a minimum cardinality, slices).

Plans depend on the definitions: :meth:`Planner.check` drops them all when definitions were added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procfhir.validator import rules
from procfhir.validator.definitions import Node

if TYPE_CHECKING:
    from procfhir.validator.engine import Validator
    from procfhir.validator.invariants import Prepared

PRIMITIVE, COMPLEX, RESOURCE = 0, 1, 2
_RESOURCE_TYPES = ("Resource", "DomainResource")


class Plan:
    """The checks of a value of one type at one element."""

    __slots__ = ("kind", "rules", "parent", "is_root", "constraints")

    def __init__(
        self,
        kind: int,
        rules_: tuple[rules.Rule, ...],
        parent: Node | None,
        is_root: bool,
        constraints: tuple[Prepared, ...],
    ) -> None:
        self.kind = kind
        self.rules = rules_
        self.parent = parent  # whose children a complex value's properties are (None: type unknown)
        self.is_root = is_root
        self.constraints = constraints


class Table:
    """An element's children: positions (definition order) and those checked when absent."""

    __slots__ = ("keymap", "order", "absent")

    def __init__(self, parent: Node) -> None:
        self.keymap = parent.keymap()
        self.order = {name: i for i, name in enumerate(parent.children)}
        self.absent = tuple(
            (i, name)
            for i, (name, child) in enumerate(parent.children.items())
            if child.min > 0 or child.slices
        )


class Planner:
    """A validator's plans: built on demand, dropped when its definitions change."""

    def __init__(self, v: Validator) -> None:
        self.v = v
        self.generation = v.defs.generation
        self.nodes: list[Node] = []  # nodes holding plans or a table
        self._tables: dict[tuple[str, bool], tuple[rules.Rule, ...]] = {}

    def check(self) -> None:
        """Drop every plan when definitions were added since they were made."""
        if self.v.defs.generation != self.generation:
            for node in self.nodes:
                node.plans = {}
                node.table = None
            self.nodes = []
            self.generation = self.v.defs.generation

    def table(self, parent: Node) -> Table:
        table = parent.table
        if table is None:
            table = parent.table = Table(parent)
            if not parent.plans:
                self.nodes.append(parent)
        return table

    def plan(self, node: Node, tcode: str) -> Plan:
        v = self.v
        if not node.plans and node.table is None:
            self.nodes.append(node)
        if node is not node.sd.root and (tcode in _RESOURCE_TYPES or tcode in v.defs.resource_types):
            plan = node.plans[tcode] = Plan(RESOURCE, (), None, False, ())
            return plan
        primitive = tcode[:1].islower()
        table = self._tables.get((tcode, primitive))
        if table is None:
            table = self._tables[(tcode, primitive)] = rules.table_for(tcode, primitive)
        kept = tuple(
            rules.primitive_rule(v, tcode) if r is rules.primitive_value else r
            for r in table
            if not (r in rules.INERT and rules.INERT[r](node))
        )
        parent: Node | None = None
        is_root = False
        if primitive:
            constraints = (
                self._prepared(rules.effective_constraints(v, node, None)) if node.constraints else ()
            )
            if not constraints:
                kept = tuple(r for r in kept if r is not rules.primitive_invariants)
            plan = Plan(PRIMITIVE, kept, None, False, constraints)
        else:
            tsd = v.type_sd(node, tcode)
            constraints = self._prepared(
                rules.effective_constraints(v, node, tsd.root if tsd is not None else None)
            )
            if node.children:
                parent = node
            elif node.content_ref:
                target = node.sd.node_for_ref(node.content_ref)
                parent = target if target is not None else node
            elif tsd is not None:
                parent = tsd.root
            is_root = node is node.sd.root and node.sd.kind == "resource"
            plan = Plan(COMPLEX, kept, parent, is_root, constraints)
        node.plans[tcode] = plan
        return plan

    def _prepared(self, constraints: list[dict[str, Any]]) -> tuple[Prepared, ...]:
        return tuple(self.v.invariants.prepare(c) for c in constraints)
