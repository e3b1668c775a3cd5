"""A pure-Python evaluator of the typed rule model: the engine's twin in the tests.

It shares nothing with the compiler or durable_rules: it walks each rule's
condition as written (no negation normal form, no DNF, no mangled names)
with SQL's three-valued logic, where a test on an absent value is unknown
(None) and a rule fires only when its condition is True. Numbers are IEEE
doubles, as in the engine. If the engine ever disagrees with this, one of
durable_rules' silent traps (or a compiler bug) is showing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.domain import EventKind
from service.pipeline.facts import Scalar
from service.rules.model import (
    And,
    Arith,
    ArithOp,
    CmpOp,
    Condition,
    CounterRef,
    FieldRef,
    Flag,
    ListIn,
    Match,
    Not,
    Number,
    NumCompare,
    NumExpr,
    NumIn,
    Or,
    PatternKind,
    Rule,
    RuleSet,
    Text,
    TextCompare,
    TextIn,
)

Tri = bool | None


class _Inputs:
    def __init__(
        self,
        facts: Mapping[str, Scalar],
        counters: Mapping[str, int | float],
        list_hits: Mapping[tuple[str, str], bool],
    ) -> None:
        self.facts = facts
        self.counters = counters
        self.list_hits = list_hits

    def number(self, expr: NumExpr) -> float | None:
        if isinstance(expr, Number):
            return expr.value
        if isinstance(expr, FieldRef):
            value = self.facts.get(expr.name)
            return None if value is None else float(value)
        if isinstance(expr, CounterRef):
            count = self.counters.get(expr.name)
            return None if count is None else float(count)
        return self.arith(expr)

    def arith(self, expr: Arith) -> float | None:
        left = self.number(expr.left)
        right = self.number(expr.right)
        if left is None or right is None:
            return None
        if expr.op is ArithOp.ADD:
            return left + right
        if expr.op is ArithOp.SUB:
            return left - right
        if expr.op is ArithOp.MUL:
            return left * right
        return left / right

    def text(self, expr: Text | FieldRef) -> str | None:
        if isinstance(expr, Text):
            return expr.value
        value = self.facts.get(expr.name)
        return None if value is None else str(value)


def _compare(op: CmpOp, left: float | str, right: float | str) -> bool:
    if op is CmpOp.EQ:
        return left == right
    if op is CmpOp.NE:
        return left != right
    assert isinstance(left, float) and isinstance(right, float)
    if op is CmpOp.LT:
        return left < right
    if op is CmpOp.LE:
        return left <= right
    if op is CmpOp.GT:
        return left > right
    return left >= right


def evaluate_condition(condition: Condition, inputs: _Inputs) -> Tri:
    if isinstance(condition, And):
        results = [evaluate_condition(c, inputs) for c in condition.items]
        if any(r is False for r in results):
            return False
        return None if any(r is None for r in results) else True
    if isinstance(condition, Or):
        results = [evaluate_condition(c, inputs) for c in condition.items]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if isinstance(condition, Not):
        inner = evaluate_condition(condition.item, inputs)
        return None if inner is None else not inner
    if isinstance(condition, NumCompare):
        left = inputs.number(condition.left)
        right = inputs.number(condition.right)
        if left is None or right is None:
            return None
        return _compare(condition.op, left, right)
    if isinstance(condition, TextCompare):
        left_text = inputs.text(condition.left)
        right_text = inputs.text(condition.right)
        if left_text is None or right_text is None:
            return None
        return _compare(condition.op, left_text, right_text)
    if isinstance(condition, Flag):
        flag = inputs.facts.get(condition.field.name)
        return None if flag is None else flag == condition.value
    if isinstance(condition, NumIn):
        number = inputs.number(condition.ref)
        if number is None:
            return None
        return (number in condition.values) != condition.negated
    if isinstance(condition, TextIn):
        value = inputs.text(condition.ref)
        if value is None:
            return None
        return (value in condition.values) != condition.negated
    if isinstance(condition, ListIn):
        hit = inputs.list_hits.get((condition.list_name, condition.ref.name))
        return None if hit is None else hit != condition.negated
    assert isinstance(condition, Match)
    subject = inputs.text(condition.ref)
    if subject is None:
        return None
    if condition.pattern.kind is PatternKind.STARTSWITH:
        return subject.startswith(condition.pattern.source)
    return re.fullmatch(condition.pattern.python, subject, re.DOTALL) is not None


def evaluate(
    condition: Condition,
    facts: Mapping[str, Scalar],
    counters: Mapping[str, int | float] | None = None,
    list_hits: Mapping[tuple[str, str], bool] | None = None,
) -> Tri:
    """`condition` over these inputs: True, False or None (unknown)."""
    return evaluate_condition(condition, _Inputs(facts, counters or {}, list_hits or {}))


def rule_fires(
    rule: Rule,
    facts: Mapping[str, Scalar],
    counters: Mapping[str, int | float],
    list_hits: Mapping[tuple[str, str], bool],
) -> bool:
    kind = EventKind(str(facts["event"]))
    if not rule.enabled or kind not in rule.on:
        return False
    return evaluate_condition(rule.when, _Inputs(facts, counters, list_hits)) is True


def fired_rules(
    ruleset: RuleSet,
    facts: Mapping[str, Scalar],
    counters: Mapping[str, int | float],
    list_hits: Mapping[tuple[str, str], bool],
) -> set[str]:
    """Ids of the enabled rules of `ruleset` whose condition is true for this request."""
    return {rule.id for rule in ruleset.rules if rule_fires(rule, facts, counters, list_hits)}
