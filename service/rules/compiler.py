"""Compile a validated `RuleSet` into durable_rules rulesets (JSON), sharded to stay inside its limits.

What the JSON looks like, and why (see /work/shared/DURABLE_RULES.md):

* One durable rule per rule, named by the rule id: `{id: {"all": [{"m": C}]}}`
  where C is one `$and` path, or `{"$or": [path, ...]}`: `not` pushed into
  the tests, `or` and `in [..]` expanded (durable would expand them itself,
  firing once per true path; the engine de-duplicates).
* Every path starts with a positive test of the event kind, so a rule never
  fires on another kind and never on durable's own state record.
* `$neq`, never `$ne` (accepted, never matches); no `$in` (does not exist).
* A value read on a test's right side (`x > 0.8 * {"$m": y}`) gets an `$ex`
  guard: durable does not treat an absent right side as "no match".
* Names are mangled so durable never sees a dot (it means nesting) and field,
  counter and list namespaces cannot meet: `transfer.amount_fen` is
  `f_transfer__amount_fen`, counter `banks_30d` is `c_banks_30d`, the list
  check `transfer.payee_account in list.fraud_accounts` is
  `l_fraud_accounts__transfer__payee_account` (a boolean), and the copy of a
  string field that patterns read is `p_...` (see engine.py). Names and rule
  ids are checked for 32-bit hash collisions, which durable would conflate.
* Numbers are written as decimals with a fraction (`3.0`): durable then does
  all arithmetic and comparisons in doubles, as the reference evaluator does
  (integer `$div` would truncate), and it rejects exponents (`1e+16`).
* Rules are packed first-fit, in load order, into shards (separate durable
  rulesets) so that the tests one event kind can reach in a shard stay
  within MAX_TESTS_PER_SHARD: durable's traversal stack holds 64 entries and
  overflows (error 303, depending on the data) beyond that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeAlias

from service.domain import EventKind
from service.errors import CompileError, SourceError, SourceProblem
from service.pipeline.facts import FieldType
from service.rules.logic import Conjunction, Test, cost_per_kind, dnf, guards_of, nnf
from service.rules.model import (
    CmpOp,
    CounterRef,
    FieldRef,
    Flag,
    ListCheck,
    ListIn,
    Match,
    Number,
    NumCompare,
    NumExpr,
    Rule,
    RuleSet,
    Text,
    TextCompare,
)
from service.rules.patterns import alternatives_pattern

MAX_TESTS_PER_SHARD = 48
MAX_MESSAGE_VALUES = 200
EVENT_FIELD = "event"

_OPS = {
    CmpOp.EQ: "$eq",
    CmpOp.NE: "$neq",
    CmpOp.LT: "$lt",
    CmpOp.LE: "$lte",
    CmpOp.GT: "$gt",
    CmpOp.GE: "$gte",
}
_ARITH = {"+": "$add", "-": "$sub", "*": "$mul", "/": "$div"}
_RESERVED = ("sid", "id", "$s")


# ----------------------------------------------------------------- names


def field_key(name: str) -> str:
    return "f_" + name.replace(".", "__")


def pattern_key(name: str) -> str:
    return "p_" + name.replace(".", "__")


def counter_key(name: str) -> str:
    return "c_" + name


def list_key(check: ListCheck) -> str:
    return f"l_{check.list_name}__{check.field.replace('.', '__')}"


def durable_hash(name: str) -> int:
    """durable_rules' 32-bit name hash (djb2), which it matches names by."""
    h = 5381
    for byte in name.encode("utf-8"):
        h = (h * 33 + byte) & 0xFFFFFFFF
    return h


# ------------------------------------------------------------------ JSON


def number_text(value: float) -> str:
    """A double as JSON text durable parses back to the same double: a fraction, no exponent."""
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {value!r}")
    text = repr(x)
    if "e" in text or "E" in text:
        text = format(Decimal(x), "f")
        if "." not in text:
            text += ".0"
    return text


JsonValue: TypeAlias = dict[str, "JsonValue"] | list["JsonValue"] | str | bool | int | float


def write_json(value: JsonValue) -> str:
    """JSON text with raw UTF-8 (never \\u escapes: durable compares bytes) and numbers as number_text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, list):
        return "[" + ",".join(write_json(v) for v in value) + "]"
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{write_json(v)}" for k, v in value.items()) + "}"


# ----------------------------------------------------------------- tests


def _ref_key(ref: FieldRef | CounterRef) -> str:
    return counter_key(ref.name) if isinstance(ref, CounterRef) else field_key(ref.name)


def _operand(expr: NumExpr) -> JsonValue:
    if isinstance(expr, Number):
        return float(expr.value)
    if isinstance(expr, FieldRef | CounterRef):
        return {"$m": _ref_key(expr)}
    return {_ARITH[expr.op.value]: {"$l": _operand(expr.left), "$r": _operand(expr.right)}}


def test_json(test: Test) -> JsonValue:
    if isinstance(test, NumCompare):
        return {_OPS[test.op]: {_ref_key(test.left): _operand(test.right)}}
    if isinstance(test, TextCompare):
        right: JsonValue = test.right.value if isinstance(test.right, Text) else {"$m": field_key(test.right.name)}
        return {_OPS[test.op]: {field_key(test.left.name): right}}
    if isinstance(test, Flag):
        return {"$eq": {field_key(test.field.name): test.value}}
    if isinstance(test, ListIn):
        return {"$eq": {list_key(test.check): not test.negated}}
    if isinstance(test, Match):
        return {"$mt": {pattern_key(test.ref.name): test.pattern.durable}}
    return {"$mt": {pattern_key(test.ref.name): alternatives_pattern(test.values).durable}}


def path_json(kind: EventKind, conjunction: Conjunction) -> JsonValue:
    items: list[JsonValue] = [{"$eq": {field_key(EVENT_FIELD): kind.value}}]
    guarded: set[str] = set()
    for test in conjunction:
        for ref in guards_of(test):
            key = _ref_key(ref)
            if key not in guarded:
                guarded.add(key)
                items.append({"$ex": {key: 1}})
        items.append(test_json(test))
    return {"$and": items}


def rule_json(rule: Rule) -> JsonValue:
    conjunctions = dnf(nnf(rule.when))
    paths = [path_json(kind, conj) for kind in rule.on for conj in conjunctions]
    condition: JsonValue = paths[0] if len(paths) == 1 else {"$or": paths}
    return {"all": [{"m": condition}]}


# ------------------------------------------------------------ what is read


def _keys_of_test(test: Test) -> list[str]:
    if isinstance(test, NumCompare):
        return [_ref_key(test.left)] + [_ref_key(r) for r in guards_of(test)]
    if isinstance(test, TextCompare):
        return [field_key(test.left.name)] + [_ref_key(r) for r in guards_of(test)]
    if isinstance(test, Flag):
        return [field_key(test.field.name)]
    if isinstance(test, ListIn):
        return [list_key(test.check)]
    return [pattern_key(test.ref.name)]


def rule_keys(rule: Rule) -> set[str]:
    """Every message property the rule's compiled tests read, the event field included."""
    keys = {field_key(EVENT_FIELD)}
    for conj in dnf(nnf(rule.when)):
        for test in conj:
            keys.update(_keys_of_test(test))
    return keys


def values_read_on(rule: Rule, kind: EventKind) -> set[str]:
    """Message properties the rule needs on `kind` events (empty if the rule is not on `kind`)."""
    return rule_keys(rule) if kind in rule.on else set()


# ----------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class ShardPlan:
    index: int
    rule_ids: tuple[str, ...]
    kinds: frozenset[EventKind]
    tests: Mapping[EventKind, int]  # upper bound of tests reachable per kind
    definition: str  # JSON for durable_rules_engine.create_ruleset


@dataclass(frozen=True, slots=True)
class KindInputs:
    """What to put in the durable message for one event kind, as (name, message key) pairs."""

    fields: tuple[tuple[str, str, FieldType], ...]
    patterns: tuple[tuple[str, str], ...]
    counters: tuple[tuple[str, str], ...]
    lists: tuple[tuple[ListCheck, str], ...]
    shards: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    ruleset: RuleSet
    shards: tuple[ShardPlan, ...]
    inputs: Mapping[EventKind, KindInputs]
    rule_json: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _OpenShard:
    rules: list[Rule]
    tests: dict[EventKind, int]
    hashes: set[int]


def _fits(shard: _OpenShard, rule: Rule, cost: int) -> bool:
    if durable_hash(rule.id) in shard.hashes:
        return False
    return all(shard.tests.get(kind, 0) + cost <= MAX_TESTS_PER_SHARD for kind in rule.on)


def pack(rules: Sequence[Rule]) -> list[list[Rule]]:
    """First-fit packing of rules into shards by their per-kind test cost."""
    shards: list[_OpenShard] = []
    for rule in rules:
        cost = cost_per_kind(nnf(rule.when))
        if cost > MAX_TESTS_PER_SHARD:  # the loader rejects these
            raise ValueError(f"rule '{rule.id}' needs {cost} tests, more than a shard holds")
        target = next((s for s in shards if _fits(s, rule, cost)), None)
        if target is None:
            target = _OpenShard([], {}, set())
            shards.append(target)
        target.rules.append(rule)
        target.hashes.add(durable_hash(rule.id))
        for kind in rule.on:
            target.tests[kind] = target.tests.get(kind, 0) + cost
    return [s.rules for s in shards]


def _check_keys(keys: set[str]) -> None:
    seen: dict[int, str] = {durable_hash(r): r for r in _RESERVED}
    for key in sorted(keys):
        h = durable_hash(key)
        if h in seen:
            raise CompileError(key, seen[h])
        seen[h] = key


def _collision_problem(ruleset: RuleSet, error: CompileError) -> SourceProblem:
    """Blame the first rule that reads one of the two colliding names."""
    names = [_display_name(key) for key in error.keys]
    for rule in ruleset.enabled_rules:
        if rule_keys(rule) & set(error.keys):
            return SourceProblem(
                rule.file,
                rule.line,
                f"'{names[0]}' and '{names[1]}' collide in durable_rules' 32-bit name hash: rename one of them",
            )
    first = ruleset.rules[0]
    return SourceProblem(first.file, first.line, f"'{names[0]}' and '{names[1]}' collide in durable_rules' name hash")


def _display_name(key: str) -> str:
    kind, _, rest = key.partition("_")
    if kind == "l":
        list_name, _, field_name = rest.partition("__")
        return f"list.{list_name} of {field_name.replace('__', '.')}"
    return rest.replace("__", ".")


def compile_ruleset(ruleset: RuleSet) -> CompiledPlan:
    """The durable rulesets for the enabled rules of `ruleset`, and the inputs each event kind needs."""
    rules = ruleset.enabled_rules
    texts = {rule.id: write_json(rule_json(rule)) for rule in rules}
    shards: list[ShardPlan] = []
    for index, members in enumerate(pack(rules)):
        tests: dict[EventKind, int] = {}
        for rule in members:
            cost = cost_per_kind(nnf(rule.when))
            for kind in rule.on:
                tests[kind] = tests.get(kind, 0) + cost
        definition = "{" + ",".join(f'"{rule.id}":{texts[rule.id]}' for rule in members) + "}"
        shards.append(
            ShardPlan(
                index=index,
                rule_ids=tuple(r.id for r in members),
                kinds=frozenset(tests),
                tests=tests,
                definition=definition,
            )
        )
    all_keys: set[str] = set()
    inputs: dict[EventKind, KindInputs] = {}
    for kind in EventKind:
        on_kind = [r for r in rules if kind in r.on]
        keys: set[str] = set()
        for rule in on_kind:
            keys |= rule_keys(rule)
        all_keys |= keys
        inputs[kind] = _inputs_for(kind, on_kind, keys, shards)
    try:
        _check_keys(all_keys)
    except CompileError as exc:
        raise SourceError([_collision_problem(ruleset, exc)]) from None
    return CompiledPlan(ruleset=ruleset, shards=tuple(shards), inputs=inputs, rule_json=texts)


def _inputs_for(kind: EventKind, rules: Sequence[Rule], keys: set[str], shards: Sequence[ShardPlan]) -> KindInputs:
    fields: dict[str, tuple[str, str, FieldType]] = {}
    patterns: dict[str, tuple[str, str]] = {}
    counters: dict[str, tuple[str, str]] = {}
    lists: dict[ListCheck, tuple[ListCheck, str]] = {}
    fields[EVENT_FIELD] = (EVENT_FIELD, field_key(EVENT_FIELD), FieldType.STRING)
    for rule in rules:
        for read in rule.reads:
            if isinstance(read, FieldRef) and field_key(read.name) in keys:
                fields.setdefault(read.name, (read.name, field_key(read.name), read.type))
            if isinstance(read, FieldRef) and pattern_key(read.name) in keys:
                patterns.setdefault(read.name, (read.name, pattern_key(read.name)))
            elif isinstance(read, CounterRef):
                counters.setdefault(read.name, (read.name, counter_key(read.name)))
            elif isinstance(read, ListCheck):
                lists.setdefault(read, (read, list_key(read)))
    return KindInputs(
        fields=tuple(fields.values()),
        patterns=tuple(patterns.values()),
        counters=tuple(counters.values()),
        lists=tuple(lists.values()),
        shards=tuple(s.index for s in shards if kind in s.kinds),
    )
