"""Counter `where` filters: checked with the rules language, evaluated as small Python closures.

A counter's `where` (rules/counters.yaml, kept as text by
`service.riskdata.counters.model.Filter`) is a condition in the same language as a
rule's `when`, restricted to request fields: no counters (they are what is
being updated) and no lists. It is parsed and type-checked by the same code
as rules (`service.rules.check`), for every event kind it applies to, and
problems are reported as `counters-file:line: counter 'NAME': where: problem`.

Semantics are the rules' three-valued logic: a test on an absent field is
unknown, and an event is counted only when the filter is *true* (unknown is
not counted), exactly as a rule fires only when its condition is true.

Why closures and not durable_rules: a filter is asked per counter per
request (`service.riskdata.counters.model.counters_to_update` calls the predicate once
for each counter with a `where`), and the closure tree answers in about half
a microsecond, while one durable evaluation of every filter costs several
microseconds (durable's per-fact overhead plus JSON encoding): 2.9 against
7.9 us per synth event, measured by `python -m benchmarks.run --only rules`. A property test
(tests/unit/rules/test_filters.py) holds the closures to the reference
evaluator (tests/reference_evaluator.py) on random conditions and events.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from service.domain import EventKind
from service.errors import ConditionSyntaxError, EvaluationError, SourceError, SourceProblem
from service.pipeline.facts import Scalar
from service.rules import expr as ast
from service.rules.check import check_condition
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
    Text,
    TextCompare,
    TextIn,
)

if TYPE_CHECKING:
    from service.riskdata.counters.model import CounterSpec, Filter

Facts = Mapping[str, Scalar]
# A compiled condition: True, False, or None for unknown.
Tri = Callable[[Facts], bool | None]
_Num = Callable[[Facts], float | None]

_COMPARE: Mapping[CmpOp, Callable[[Any, Any], bool]] = {
    CmpOp.EQ: operator.eq,
    CmpOp.NE: operator.ne,
    CmpOp.LT: operator.lt,
    CmpOp.LE: operator.le,
    CmpOp.GT: operator.gt,
    CmpOp.GE: operator.ge,
}
_ARITH: Mapping[ArithOp, Callable[[float, float], float]] = {
    ArithOp.ADD: operator.add,
    ArithOp.SUB: operator.sub,
    ArithOp.MUL: operator.mul,
    ArithOp.DIV: operator.truediv,
}


# ------------------------------------------------------------ closures


def compile_condition(condition: Condition) -> Tri:
    """A closure computing `condition` over request facts with three-valued logic (None: unknown).

    Fields only: a condition reading a counter or a list raises ValueError
    (the checker's fields-only mode rejects those first).
    """
    if isinstance(condition, And):
        return _all([compile_condition(item) for item in condition.items])
    if isinstance(condition, Or):
        return _any([compile_condition(item) for item in condition.items])
    if isinstance(condition, Not):
        return _not(compile_condition(condition.item))
    if isinstance(condition, NumCompare):
        return _num_compare(condition)
    if isinstance(condition, TextCompare):
        return _text_compare(condition)
    if isinstance(condition, Flag):
        return _flag(condition.field.name, condition.value)
    if isinstance(condition, NumIn):
        return _num_in(_field_name(condition.ref), frozenset(condition.values), condition.negated)
    if isinstance(condition, TextIn):
        return _text_in(condition.ref.name, frozenset(condition.values), condition.negated)
    if isinstance(condition, Match):
        return _match(condition)
    assert isinstance(condition, ListIn)
    raise ValueError(f"a filter cannot test a list ({condition.check})")


def _field_name(ref: FieldRef | CounterRef) -> str:
    if isinstance(ref, CounterRef):
        raise ValueError(f"a filter cannot read a counter ({ref.name})")
    return ref.name


def _all(items: Sequence[Tri]) -> Tri:
    if len(items) == 2:  # the common case, without a loop
        first, second = items

        def both(facts: Facts) -> bool | None:
            a = first(facts)
            if a is False:
                return False
            b = second(facts)
            if b is False:
                return False
            return None if a is None or b is None else True

        return both

    def every(facts: Facts) -> bool | None:
        unknown = False
        for item in items:
            result = item(facts)
            if result is False:
                return False
            if result is None:
                unknown = True
        return None if unknown else True

    return every


def _any(items: Sequence[Tri]) -> Tri:
    def some(facts: Facts) -> bool | None:
        unknown = False
        for item in items:
            result = item(facts)
            if result is True:
                return True
            if result is None:
                unknown = True
        return None if unknown else False

    return some


def _not(item: Tri) -> Tri:
    def negation(facts: Facts) -> bool | None:
        result = item(facts)
        return None if result is None else not result

    return negation


def _number(expr: NumExpr) -> _Num:
    if isinstance(expr, Number):
        constant = float(expr.value)
        return lambda facts: constant
    if isinstance(expr, FieldRef | CounterRef):
        name = _field_name(expr)

        def read(facts: Facts) -> float | None:
            value = facts.get(name)
            return None if value is None else float(value)

        return read
    assert isinstance(expr, Arith)
    left, right, apply = _number(expr.left), _number(expr.right), _ARITH[expr.op]

    def arithmetic(facts: Facts) -> float | None:
        a = left(facts)
        if a is None:
            return None
        b = right(facts)
        return None if b is None else apply(a, b)

    return arithmetic


def _num_compare(condition: NumCompare) -> Tri:
    name = _field_name(condition.left)
    compare = _COMPARE[condition.op]
    if isinstance(condition.right, Number):
        constant = float(condition.right.value)

        def against_constant(facts: Facts) -> bool | None:
            value = facts.get(name)
            return None if value is None else compare(float(value), constant)

        return against_constant
    right = _number(condition.right)

    def against_expression(facts: Facts) -> bool | None:
        value = facts.get(name)
        if value is None:
            return None
        other = right(facts)
        return None if other is None else compare(float(value), other)

    return against_expression


def _text_compare(condition: TextCompare) -> Tri:
    name = condition.left.name
    compare = _COMPARE[condition.op]
    if isinstance(condition.right, Text):
        constant = condition.right.value

        def against_constant(facts: Facts) -> bool | None:
            value = facts.get(name)
            return None if value is None else compare(str(value), constant)

        return against_constant
    other_name = condition.right.name

    def against_field(facts: Facts) -> bool | None:
        value = facts.get(name)
        other = facts.get(other_name)
        return None if value is None or other is None else compare(str(value), str(other))

    return against_field


def _flag(name: str, wanted: bool) -> Tri:
    def flag(facts: Facts) -> bool | None:
        value = facts.get(name)
        return None if value is None else value == wanted

    return flag


def _num_in(name: str, values: frozenset[float], negated: bool) -> Tri:
    def number_in(facts: Facts) -> bool | None:
        value = facts.get(name)
        return None if value is None else (float(value) in values) != negated

    return number_in


def _text_in(name: str, values: frozenset[str], negated: bool) -> Tri:
    def text_in(facts: Facts) -> bool | None:
        value = facts.get(name)
        return None if value is None else (str(value) in values) != negated

    return text_in


def _match(condition: Match) -> Tri:
    name = condition.ref.name
    pattern = condition.pattern
    if pattern.kind is PatternKind.STARTSWITH:
        prefix = pattern.source

        def starts(facts: Facts) -> bool | None:
            value = facts.get(name)
            return None if value is None else str(value).startswith(prefix)

        return starts
    compiled = re.compile(pattern.python, re.DOTALL)

    def matches(facts: Facts) -> bool | None:
        value = facts.get(name)
        return None if value is None else compiled.fullmatch(str(value)) is not None

    return matches


# ------------------------------------------------------------- filters


class CounterFilters:
    """The compiled `where` of every counter in a CounterSpec: a `service.riskdata.counters.model.Predicate`.

    `filters(condition, facts)` is True when the event should be counted
    (the condition is true; unknown and false are not counted).
    """

    __slots__ = ("_by_filter", "_by_id", "conditions")

    def __init__(self, conditions: Mapping[Filter, Condition]) -> None:
        self.conditions: Mapping[Filter, Condition] = dict(conditions)
        self._by_filter: dict[Filter, Tri] = {f: compile_condition(c) for f, c in self.conditions.items()}
        # Hashing a Filter (a dataclass of three fields) costs more than the filter itself: the
        # spec's own Filter objects are found by identity. They stay alive as keys of
        # `conditions`, so no other object can have one of these ids.
        self._by_id: dict[int, Tri] = {id(f): compiled for f, compiled in self._by_filter.items()}

    def __call__(self, condition: Filter, facts: Mapping[str, Scalar]) -> bool:
        compiled = self._by_id.get(id(condition))
        if compiled is None:
            try:
                compiled = self._by_filter[condition]
            except KeyError:
                raise EvaluationError(
                    f"{condition.file}:{condition.line}: this where was not compiled with the counters in use"
                ) from None
        return compiled(facts) is True

    def __len__(self) -> int:
        return len(self._by_filter)


def _filter_kinds(spec: CounterSpec) -> dict[Filter, tuple[str, list[EventKind]]]:
    """Each distinct filter, with its counter's name and every event kind it applies to."""
    out: dict[Filter, tuple[str, list[EventKind]]] = {}
    for counter in spec.counters:
        for kind, condition in counter.where:
            _, kinds = out.setdefault(condition, (counter.name, []))
            if kind not in kinds:
                kinds.append(kind)
    return out


def compile_filters(spec: CounterSpec) -> CounterFilters:
    """Check and compile every counter's `where`; raises SourceError listing every problem.

    Each filter is checked for all the event kinds it applies to (a `where`
    written as one string applies to every kind that updates the counter).
    """
    problems: list[SourceProblem] = []
    conditions: dict[Filter, Condition] = {}
    for condition, (counter, kinds) in _filter_kinds(spec).items():
        prefix = f"counter '{counter}': where: "
        try:
            tree = ast.parse_condition(condition.text)
        except ConditionSyntaxError as exc:
            problems.append(
                SourceProblem(
                    condition.file, condition.line, f"{prefix}syntax error at column {exc.column}: {exc.message}"
                )
            )
            continue
        ordered = [k for k in EventKind if k in kinds]
        result = check_condition(tree, ordered, {}, {}, fields_only=True)
        if result.condition is None:
            problems.extend(SourceProblem(condition.file, condition.line, prefix + p) for p in result.problems)
            continue
        conditions[condition] = result.condition
    if problems:
        raise SourceError(sorted(problems, key=lambda p: (p.file, p.line)))
    return CounterFilters(conditions)
