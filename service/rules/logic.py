"""Negation and disjunctive normal forms of conditions, and what they cost the engine.

durable_rules has no general `not`, and it expands every `$or` inside a rule
into separate paths (disjunctive normal form), firing the rule once per true
path. So the compiler first pushes `not` down to the tests (De Morgan, and
each test's own negation: `not (x > 5)` is `x <= 5`), then expands the
condition into a list of conjunctions of primitive tests, one durable path
each.

Negating the test rather than the truth value keeps the rule that a test on
an absent value is false, under `not` too; this is exactly SQL's
three-valued logic (a test on an absent value is *unknown*, `not unknown` is
unknown, `unknown and false` is false, `unknown or true` is true, and a rule
fires only when its condition is *true*), which the reference evaluator
implements directly on the original condition.
"""

from __future__ import annotations

from typing import TypeAlias

from service.errors import NegatedPatternError
from service.rules.model import (
    And,
    Atom,
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
    Text,
    TextCompare,
    TextIn,
    operands,
)


def nnf(condition: Condition, negate: bool = False) -> Condition:
    """`condition` (negated if `negate`) with no `Not` left: negations live in the tests."""
    if isinstance(condition, Not):
        return nnf(condition.item, not negate)
    if isinstance(condition, And | Or):
        items = tuple(nnf(item, negate) for item in condition.items)
        use_and = isinstance(condition, And) != negate
        flat: list[Condition] = []
        for item in items:
            if (use_and and isinstance(item, And)) or (not use_and and isinstance(item, Or)):
                flat.extend(item.items)
            else:
                flat.append(item)
        return And(tuple(flat)) if use_and else Or(tuple(flat))
    if not negate:
        return condition
    if isinstance(condition, NumCompare):
        return NumCompare(condition.left, condition.op.negated(), condition.right)
    if isinstance(condition, TextCompare):
        return TextCompare(condition.left, condition.op.negated(), condition.right)
    if isinstance(condition, Flag):
        return Flag(condition.field, not condition.value)
    if isinstance(condition, NumIn):
        return NumIn(condition.ref, condition.values, not condition.negated)
    if isinstance(condition, TextIn):
        return TextIn(condition.ref, condition.values, not condition.negated)
    if isinstance(condition, ListIn):
        return ListIn(condition.ref, condition.list_name, not condition.negated)
    raise NegatedPatternError(
        f"'not' cannot apply to '{condition.pattern.kind.value}' "
        "(durable_rules has no negated pattern match): rewrite the condition without it"
    )


# A primitive test: one durable condition (plus guards for the values it reads on its right side).
Test: TypeAlias = NumCompare | TextCompare | Flag | ListIn | Match | TextIn
Conjunction: TypeAlias = tuple[Test, ...]


def refs_of(expr: NumExpr | Text | FieldRef) -> list[FieldRef | CounterRef]:
    """The fields and counters an expression reads, in order, without duplicates."""
    out: list[FieldRef | CounterRef] = []
    for leaf in operands(expr):
        if isinstance(leaf, FieldRef | CounterRef) and leaf not in out:
            out.append(leaf)
    return out


def guards_of(test: Test) -> list[FieldRef | CounterRef]:
    """Values on a test's right side, which need an existence guard in durable.

    durable treats an absent field on the left of a test as no match, but an
    absent one on the right (`x > {"$m": "y"}` with no y) is compared as
    something, and can match: each is guarded with `$ex`.
    """
    if isinstance(test, NumCompare):
        return refs_of(test.right)
    if isinstance(test, TextCompare) and isinstance(test.right, FieldRef):
        return [test.right]
    return []


def _text_in_is_one_test(condition: TextIn) -> bool:
    # A positive string list compiles to one `$mt` alternation; an empty
    # string cannot be an alternative, so such a list expands into `$or`.
    return len(condition.values) > 1 and all(condition.values)


def expand_atom(atom: Atom) -> list[Conjunction]:
    """The DNF of one test (list expansions included)."""
    if isinstance(atom, NumIn):
        if atom.negated:
            return [tuple(NumCompare(atom.ref, CmpOp.NE, Number(v)) for v in atom.values)]
        return [(NumCompare(atom.ref, CmpOp.EQ, Number(v)),) for v in atom.values]
    if isinstance(atom, TextIn):
        if atom.negated:
            return [tuple(TextCompare(atom.ref, CmpOp.NE, Text(v)) for v in atom.values)]
        if _text_in_is_one_test(atom):
            return [(atom,)]
        return [(TextCompare(atom.ref, CmpOp.EQ, Text(v)),) for v in atom.values]
    return [(atom,)]


def dnf(condition: Condition) -> list[Conjunction]:
    """Disjunctive normal form of an NNF condition: a list of conjunctions of tests."""
    if isinstance(condition, Or):
        out: list[Conjunction] = []
        for item in condition.items:
            out.extend(dnf(item))
        return out
    if isinstance(condition, And):
        result: list[Conjunction] = [()]
        for item in condition.items:
            result = [left + right for left in result for right in dnf(item)]
        return result
    if isinstance(condition, Not):
        raise ValueError("dnf() needs a condition in negation normal form")
    return expand_atom(condition)


def _atom_size(atom: Atom) -> tuple[int, int]:
    conjunctions = expand_atom(atom) if isinstance(atom, NumIn | TextIn) else [(atom,)]
    tests = sum(sum(1 + len(guards_of(t)) for t in conj) for conj in conjunctions)
    return len(conjunctions), tests


def dnf_size(condition: Condition) -> tuple[int, int]:
    """(number of conjunctions, total tests over all conjunctions incl. guards) of an NNF condition.

    Computed without expanding, so a condition that would expand to millions
    of paths is measured (and rejected) without building them.
    """
    if isinstance(condition, Or):
        sizes = [dnf_size(item) for item in condition.items]
        return sum(n for n, _ in sizes), sum(t for _, t in sizes)
    if isinstance(condition, And):
        sizes = [dnf_size(item) for item in condition.items]
        count = 1
        for n, _ in sizes:
            count *= n
        tests = 0
        for i, (_, t) in enumerate(sizes):
            others = 1
            for j, (n, _) in enumerate(sizes):
                if j != i:
                    others *= n
            tests += t * others
        return count, tests
    if isinstance(condition, Not):
        raise ValueError("dnf_size() needs a condition in negation normal form")
    return _atom_size(condition)


def cost_per_kind(condition: Condition) -> int:
    """Condition tests one event kind of a rule costs in a durable ruleset.

    Each DNF path is the event-kind test followed by the path's tests and
    guards. `condition` must be in negation normal form.
    """
    count, tests = dnf_size(condition)
    return count + tests
