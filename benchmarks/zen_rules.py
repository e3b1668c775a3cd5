"""The loaded ruleset as a GoRules ZEN decision (JDM), built from the typed rule model, for a fair peer.

`to_jdm(ruleset)` writes one decision table with hit policy "collect": one row per enabled rule,
whose single cell is the rule's condition as a ZEN expression and whose output is the rule id. So
ZEN evaluates exactly the rules durable_rules evaluates, and answers which fired.

The condition is translated from the same model the durable compiler reads (service.rules.model),
with the same semantics:

* `not` is pushed into the tests first (`service.rules.logic.nnf`, De Morgan), so that, as in
  durable, a test on an absent value is simply false: every test on a field or counter is guarded
  with `x != null` (ZEN refuses to compare null with a number), values read on the right-hand side
  of a comparison too (as the compiler's `$ex` guards);
* `in [..]` and `not in [..]` keep their list form (ZEN has `in`);
* yes/no fields and list hits compare with `== true` / `== false` (absent: neither);
* `startswith` and `matches` use ZEN's `startsWith` and `matches` with the pattern's Python form
  (`Pattern.python`, anchored; the pattern subset is chosen so that regex engines agree);
* the rule's event kinds are a test on the event field.

Inputs are flat, under the names the durable compiler uses (`f_transfer__amount_fen`, `c_banks_30d`,
`l_fraud_accounts__transfer__payee_account`), holding only what the rules read for the event's kind,
as the durable message does. Numbers are plain JSON numbers (ZEN computes in decimals, durable in
doubles: a threshold exactly at a double's rounding edge could differ; the equivalence check in
`benchmarks.rules_bench` would show it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from service.domain import EventKind
from service.pipeline.facts import Scalar
from service.rules.compiler import counter_key, field_key, list_key
from service.rules.logic import nnf
from service.rules.model import (
    And,
    Arith,
    Condition,
    CounterRef,
    FieldRef,
    Flag,
    ListCheck,
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
    atoms,
    operands,
)

EVENT_KEY = field_key("event")


class TranslationError(ValueError):
    """A condition this translator does not know how to express."""


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # constants hold no quotes or backslashes (loader)


def _ref(ref: FieldRef | CounterRef) -> str:
    return counter_key(ref.name) if isinstance(ref, CounterRef) else field_key(ref.name)


def _refs(expr: NumExpr) -> list[str]:
    if isinstance(expr, FieldRef | CounterRef):
        return [_ref(expr)]
    if isinstance(expr, Arith):
        return _refs(expr.left) + _refs(expr.right)
    return []


def _arith(expr: NumExpr) -> str:
    if isinstance(expr, Number):
        return _number(expr.value)
    if isinstance(expr, FieldRef | CounterRef):
        return _ref(expr)
    return f"({_arith(expr.left)} {expr.op.value} {_arith(expr.right)})"


def _guarded(names: list[str], test: str) -> str:
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return "(" + " and ".join([f"{n} != null" for n in seen] + [test]) + ")"


def expression(condition: Condition) -> str:
    """A ZEN expression for a condition in negation normal form."""
    if isinstance(condition, And | Or):
        joiner = " and " if isinstance(condition, And) else " or "
        return "(" + joiner.join(expression(item) for item in condition.items) + ")"
    if isinstance(condition, Not):
        raise TranslationError("expression() needs a condition in negation normal form")
    if isinstance(condition, NumCompare):
        left = _ref(condition.left)
        return _guarded([left, *_refs(condition.right)], f"{left} {condition.op.value} {_arith(condition.right)}")
    if isinstance(condition, TextCompare):
        left = field_key(condition.left.name)
        if isinstance(condition.right, Text):
            return _guarded([left], f"{left} {condition.op.value} {_text(condition.right.value)}")
        right = field_key(condition.right.name)
        return _guarded([left, right], f"{left} {condition.op.value} {right}")
    if isinstance(condition, Flag):
        return f"{field_key(condition.field.name)} == {'true' if condition.value else 'false'}"
    if isinstance(condition, NumIn | TextIn):
        name = _ref(condition.ref)
        if isinstance(condition, NumIn):
            values = ", ".join(_number(v) for v in condition.values)
        else:
            values = ", ".join(_text(v) for v in condition.values)
        test = f"{name} in [{values}]"
        return _guarded([name], f"not ({test})" if condition.negated else test)
    if isinstance(condition, ListIn):
        return f"{list_key(condition.check)} == {'false' if condition.negated else 'true'}"
    if isinstance(condition, Match):
        name = field_key(condition.ref.name)
        if condition.pattern.kind is PatternKind.STARTSWITH:
            return _guarded([name], f"startsWith({name}, {_text(condition.pattern.source)})")
        return _guarded([name], f"matches({name}, {_text('^(?s:' + condition.pattern.python + ')$')})")
    raise TranslationError(f"cannot translate {type(condition).__name__}")


def rule_expression(rule: Rule) -> str:
    kinds = ", ".join(_text(kind.value) for kind in rule.on)
    return f"{EVENT_KEY} in [{kinds}] and {expression(nnf(rule.when))}"


def to_jdm(ruleset: RuleSet) -> dict[str, Any]:
    """The enabled rules of `ruleset` as a JDM decision: input → decision table (collect) → output."""
    rows = [
        {"_id": f"r{n}", "_description": rule.id, "when": rule_expression(rule), "rule": _text(rule.id)}
        for n, rule in enumerate(ruleset.enabled_rules)
    ]
    table = {
        "hitPolicy": "collect",
        "inputs": [{"id": "when", "name": "condition", "field": ""}],
        "outputs": [{"id": "rule", "name": "rule id", "field": "rule"}],
        "rules": rows,
    }
    return {
        "contentType": "application/vnd.gorules.decision",
        "nodes": [
            {"id": "in", "type": "inputNode", "name": "request", "position": {"x": 0, "y": 0}},
            {
                "id": "rules",
                "type": "decisionTableNode",
                "name": f"riskgate {ruleset.revision}",
                "position": {"x": 300, "y": 0},
                "content": table,
            },
            {"id": "out", "type": "outputNode", "name": "fired", "position": {"x": 600, "y": 0}},
        ],
        "edges": [
            {"id": "e1", "sourceId": "in", "targetId": "rules", "type": "edge"},
            {"id": "e2", "sourceId": "rules", "targetId": "out", "type": "edge"},
        ],
    }


class ZenInputs:
    """Builds the flat ZEN input of an event: the facts, counters and list hits the rules read for its kind."""

    def __init__(self, ruleset: RuleSet) -> None:
        fields: dict[EventKind, set[str]] = {}
        counters: dict[EventKind, set[str]] = {}
        lists: dict[EventKind, set[tuple[str, str]]] = {}
        for rule in ruleset.enabled_rules:
            names, counter_names, checks = _reads(rule.when)
            for kind in rule.on:
                fields.setdefault(kind, set()).update(names)
                counters.setdefault(kind, set()).update(counter_names)
                lists.setdefault(kind, set()).update(checks)
        self._fields = {k: tuple((n, field_key(n)) for n in sorted(v)) for k, v in fields.items()}
        self._counters = {k: tuple((n, counter_key(n)) for n in sorted(v)) for k, v in counters.items()}
        self._lists = {k: tuple((c, list_key(ListCheck(*c))) for c in sorted(v)) for k, v in lists.items()}

    def build(
        self,
        facts: Mapping[str, Scalar],
        counters: Mapping[str, int | float],
        list_hits: Mapping[tuple[str, str], bool],
    ) -> dict[str, Scalar]:
        kind = EventKind(str(facts["event"]))
        out: dict[str, Scalar] = {EVENT_KEY: kind.value}
        for name, key in self._fields.get(kind, ()):
            value = facts.get(name)
            if value is not None:
                out[key] = value
        for name, key in self._counters.get(kind, ()):
            count = counters.get(name)
            if count is not None:
                out[key] = count
        for check, key in self._lists.get(kind, ()):
            hit = list_hits.get(check)
            if hit is not None:
                out[key] = hit
        return out


def _reads(condition: Condition) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    fields: set[str] = set()
    counters: set[str] = set()
    checks: set[tuple[str, str]] = set()

    def num(expr: NumExpr) -> None:
        for leaf in operands(expr):
            if isinstance(leaf, FieldRef):
                fields.add(leaf.name)
            elif isinstance(leaf, CounterRef):
                counters.add(leaf.name)

    for atom in atoms(condition):
        if isinstance(atom, NumCompare):
            num(atom.left)
            num(atom.right)
        elif isinstance(atom, TextCompare):
            fields.add(atom.left.name)
            if isinstance(atom.right, FieldRef):
                fields.add(atom.right.name)
        elif isinstance(atom, Flag):
            fields.add(atom.field.name)
        elif isinstance(atom, NumIn | TextIn):
            num(atom.ref)
        elif isinstance(atom, ListIn):
            checks.add((atom.list_name, atom.ref.name))
        elif isinstance(atom, Match):
            fields.add(atom.ref.name)
    return fields, counters, checks
