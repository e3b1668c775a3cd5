"""Rules evaluated over columns of events with NumPy: what durable_rules fires, for whole batches.

A backtest evaluates two rulesets on every event of a history; through durable_rules that costs
14-30 µs per event per ruleset (the message built, asserted, drained, retracted). Here each rule
is compiled once from the same typed model (`service.rules.model`) into NumPy operations over a
batch of events of one kind (`Columns`), and answers for the whole batch at once.

What it fires is what the durable adapter (`service.rules.engine`) fires, by the construction the
compiler (`service.rules.compiler`) uses, not by a twin of the reference evaluator:

* A rule's condition is put in negation normal form by the compiler's own `logic.nnf`: a `not`
  becomes the negated test (`not (x < y)` is `x >= y`, false when y is NaN, as in durable), never
  the complement of a result. `in [..]` lists are expanded by the compiler's `logic.expand_atom`.
* Each test is true only where every value it reads is present: durable does not match a test on
  an absent value, and the compiler guards each value read on a test's right side with `$ex`.
  The tree of `and`/`or` is then plain boolean algebra over these masks: a rule fires when one of
  its DNF paths is wholly true, which is the NNF tree's value. A rule fires only for the event
  kinds of its `on` (a batch is one kind).
* Numbers are IEEE doubles (float64), as the adapter sends them: an int as its nearest double
  (Python's `float(int)`, which NumPy's conversions match), arithmetic in the tree's order,
  comparisons as C compares doubles (NaN equals nothing, `!=` everything), as durable does.
* Strings: `==` and `!=` as equality of the text (durable compares the JSON-escaped bytes, and that
  escaping is one-to-one), answered once per distinct string of the batch. Patterns
  (`startswith`, `matches`, and the one-test alternation a string `in [..]` compiles to) are
  answered by durable itself, once per distinct string (`_Patterns`): durable's pattern automaton
  and Python's `re` disagree on some patterns the loader accepts (`.*a.?` does not match "aab"
  in durable), so no translation could be exact.
* A test whose value holds arithmetic on constants alone never matches (durable's behaviour; the
  checker folds constants, so loaded rules have none).
* An input durable refuses raises the same `EvaluationError` here: a value of the wrong type
  (a bool where a number is read, a number where a string is), a NaN or an infinity, an integer
  beyond the doubles, a string of more than 65,535 bytes or of invalid Unicode; and an event of
  another kind than the batch's.

Tested against durable itself (tests/unit/test_backtest_vector.py): the shipped rules and a
candidate on a synth stream of every kind, with counters on and around every threshold and
perturbed facts, and random rulesets using every construct, with 0 disagreements.

Costs, measured on 100,000 transfers of the shipped rules (15 rules; 2-core VM, noisy): evaluating
~0.05 µs per event (~20 M events/s) once the columns exist, ~0.01 µs for a second ruleset on the
same columns (tests shared by rules, or by two rulesets on one `Columns`, are computed once per
batch and kept in `Columns.memo`, one byte per event per distinct test); `Fired.sets()` ~0.15 µs.
Building the columns dominates: ~3 µs per event from per-event dicts (`Columns.from_rows`, a
Python pass per value read), ~0.2 µs from arrays the backtest already holds (`Columns.from_arrays`,
e.g. `service.backtest.events.Column`s and `Replayed.columns`). A VectorRuleset whose rules have
patterns holds a small durable ruleset: close it (or use it as a context manager).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, TypeVar, cast

import numpy as np
import numpy.typing as npt

from service.domain import EventKind, Outcome
from service.errors import EvaluationError, NegatedPatternError, RiskgateError
from service.pipeline.facts import FieldType
from service.rules.compiler import compile_ruleset
from service.rules.engine import CompiledRuleset, _check_string, build_ruleset
from service.rules.logic import expand_atom, nnf
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
    Number,
    NumCompare,
    NumExpr,
    NumIn,
    Or,
    Pattern,
    Rule,
    RuleSet,
    Text,
    TextCompare,
    TextIn,
    operands,
)
from service.rules.patterns import alternatives_pattern
from service.rules.templates import parse_template

Mask: TypeAlias = npt.NDArray[np.bool_]
Floats: TypeAlias = npt.NDArray[np.float64]
Codes: TypeAlias = npt.NDArray[np.intp]
ListCheck: TypeAlias = tuple[str, str]  # (list name, field name), as `CompiledRuleset.list_checks_for`
Row: TypeAlias = Mapping[Any, object]

EVENT = "event"
_NONE = type(None)
_NUMBER_TYPES = frozenset({int, float, _NONE})
_FLAG_TYPES = frozenset({bool, _NONE})
_NAN = math.nan

_T = TypeVar("_T")


class UnsupportedCondition(RiskgateError):
    """A rule this evaluator cannot compute exactly as durable_rules does: evaluate it with durable."""


class ColumnLike(Protocol):
    """Values and a present mask over events (`service.backtest.events.Column` is one)."""

    @property
    def values(self) -> np.ndarray[Any, Any]: ...

    @property
    def present(self) -> np.ndarray[Any, Any]: ...


class CodedColumnLike(ColumnLike, Protocol):
    """Text as dictionary codes: `uniques[codes[i]]`, `codes[i]` -1 where absent."""

    @property
    def codes(self) -> np.ndarray[Any, Any]: ...

    @property
    def uniques(self) -> np.ndarray[Any, Any]: ...


# ------------------------------------------------------------------------------ columns


@dataclass(frozen=True, slots=True)
class NumberColumn:
    """A number over the events: `values[i]` (float64) means something only where `present[i]`."""

    values: Floats
    present: Mask


@dataclass(frozen=True, slots=True)
class FlagColumn:
    """A yes/no field or a list hit over the events."""

    values: Mask
    present: Mask


@dataclass(frozen=True, slots=True)
class TextColumn:
    """A string over the events, factorised: `uniques[codes[i]]`, `codes[i]` -1 where absent."""

    codes: Codes
    uniques: tuple[str, ...]

    @property
    def present(self) -> Mask:
        return self.codes >= 0

    def lookup(self, table: Sequence[bool] | Mask) -> Mask:
        """`table[codes[i]]` per event (False where absent): a per-unique answer spread over the events."""
        padded = np.zeros(len(self.uniques) + 1, dtype=np.bool_)
        padded[: len(self.uniques)] = table
        result: Mask = padded[self.codes]  # code -1 reads the padding's False
        return result


Column: TypeAlias = NumberColumn | FlagColumn | TextColumn
_C = TypeVar("_C", NumberColumn, FlagColumn, TextColumn)


class Columns:
    """One batch of events of one kind, as columns: what `VectorRuleset` evaluates.

    Columns are built on first use, once, for the values some rule reads (so one `Columns` serves
    two rulesets, and a value no rule reads is never converted); the tests the rulesets compute
    are kept here too (`memo`), so that a test two rules or two rulesets share is computed once.
    Build with `from_rows` (per-event mappings) or `from_arrays` (columns already held).
    """

    __slots__ = (
        "_cache",
        "_counter_arrays",
        "_counter_rows",
        "_fact_arrays",
        "_fact_rows",
        "_hit_arrays",
        "_hit_rows",
        "_index",
        "kind",
        "memo",
        "n",
    )

    def __init__(
        self,
        kind: EventKind,
        n: int,
        *,
        fact_rows: Sequence[Row] | None = None,
        counter_rows: Sequence[Row] | None = None,
        hit_rows: Sequence[Row] | None = None,
        fact_arrays: Mapping[str, ColumnLike] | None = None,
        counter_arrays: Mapping[str, ColumnLike] | None = None,
        hit_arrays: Mapping[ListCheck, ColumnLike] | None = None,
        index: npt.NDArray[np.integer[Any]] | None = None,
    ) -> None:
        self.kind = kind
        self.n = n
        self._fact_rows = fact_rows
        self._counter_rows = counter_rows
        self._hit_rows = hit_rows
        self._fact_arrays = fact_arrays
        self._counter_arrays = counter_arrays
        self._hit_arrays = hit_arrays
        self._index = index
        self._cache: dict[tuple[str, Any], Column] = {}
        self.memo: dict[object, Any] = {}

    @classmethod
    def from_rows(
        cls,
        kind: EventKind,
        facts_rows: Sequence[Mapping[str, object]],
        counter_rows: Sequence[Mapping[str, object]] | None = None,
        list_hit_rows: Sequence[Mapping[ListCheck, object]] | None = None,
    ) -> Columns:
        """Columns of events given as what `CompiledRuleset.fired(facts, counters, list_hits)` takes,
        one mapping per event (None: no counters / no list hits for any event). Every event's
        "event" fact must be `kind`. A value missing from its mapping (or None) is absent."""
        n = len(facts_rows)
        for rows, what in ((counter_rows, "counter rows"), (list_hit_rows, "list hit rows")):
            if rows is not None and len(rows) != n:
                raise ValueError(f"{len(rows)} {what} for {n} events")
        events = [row.get(EVENT) for row in facts_rows]
        if events.count(kind.value) != n or not set(map(type, events)) <= {str}:
            bad = next(e for e in events if type(e) is not str or e != kind.value)
            raise EvaluationError(f"event: {bad!r} in a batch of {kind.value} events")
        return cls(kind, n, fact_rows=facts_rows, counter_rows=counter_rows, hit_rows=list_hit_rows)

    @classmethod
    def from_arrays(
        cls,
        kind: EventKind,
        n: int,
        *,
        facts: Mapping[str, ColumnLike] | None = None,
        counters: Mapping[str, ColumnLike] | None = None,
        list_hits: Mapping[ListCheck, ColumnLike] | None = None,
        index: npt.NDArray[np.integer[Any]] | None = None,
    ) -> Columns:
        """Columns of `n` events of `kind` from arrays (values and present masks) already held, e.g.
        `Events.facts` and `Replayed.columns`: numbers of any integer or float dtype (converted to
        doubles), yes/no as bool arrays, strings as object arrays or as dictionary codes (a column with
        `codes` and `uniques`, `CodedColumnLike`: no string is made per event). With `index`, the batch is those
        rows of the arrays (only the columns read are taken). A name with no array is absent; the
        "event" fact is `kind`."""
        if index is not None and len(index) != n:
            raise ValueError(f"an index of {len(index)} rows for {n} events")
        return cls(
            kind, n, fact_arrays=facts or {}, counter_arrays=counters or {}, hit_arrays=list_hits or {}, index=index
        )

    # ----------------------------------------------------------------- values, built once

    def number(self, name: str) -> NumberColumn:
        """The number fact `name`."""
        return self._column(
            ("n", name), name, self._fact_rows, self._fact_arrays, _numbers_from_list, _numbers_from_arrays
        )

    def counter(self, name: str) -> NumberColumn:
        return self._column(
            ("c", name),
            f"counter {name}",
            self._counter_rows,
            self._counter_arrays,
            _numbers_from_list,
            _numbers_from_arrays,
        )

    def flag(self, name: str) -> FlagColumn:
        """The yes/no fact `name`."""
        return self._column(("b", name), name, self._fact_rows, self._fact_arrays, _flags_from_list, _flags_from_arrays)

    def hit(self, check: ListCheck) -> FlagColumn:
        """Whether the field's value is on the list, where it was looked up."""
        return self._column(
            ("l", check),
            f"{check[1]} in list.{check[0]}",
            self._hit_rows,
            self._hit_arrays,
            _flags_from_list,
            _flags_from_arrays,
        )

    def text(self, name: str) -> TextColumn:
        """The string fact `name`."""
        if name == EVENT:  # from_rows checked it; arrays hold the kind apart
            cached = self._cache.get(("s", name))
            if not isinstance(cached, TextColumn):
                cached = self._cache[("s", name)] = TextColumn(np.zeros(self.n, dtype=np.intp), (self.kind.value,))
            return cached
        if self._fact_rows is None and self._fact_arrays is not None:
            source = self._fact_arrays.get(name)
            if getattr(source, "codes", None) is not None and ("s", name) not in self._cache:
                # Text held as dictionary codes (`service.backtest.events.Column`): no string per event.
                coded = cast(CodedColumnLike, source)
                codes = coded.codes if self._index is None else coded.codes[self._index]
                self._cache[("s", name)] = _texts_from_codes(name, np.asarray(codes), coded.uniques)
        return self._column(("s", name), name, self._fact_rows, self._fact_arrays, _texts_from_list, _texts_from_arrays)

    def _column(
        self,
        key: tuple[str, Any],
        name: str,
        rows: Sequence[Row] | None,
        arrays: Mapping[Any, ColumnLike] | None,
        from_list: Callable[[str, list[object]], _C],
        from_arrays: Callable[[str, np.ndarray[Any, Any], Mask], _C],
    ) -> _C:
        cached = self._cache.get(key)
        if cached is not None:
            return cast(_C, cached)
        source_key = key[1]
        if rows is not None:
            built = from_list(name, [row.get(source_key) for row in rows])
        else:
            source = arrays.get(source_key) if arrays is not None else None
            if source is None:
                built = from_list(name, [None] * self.n)
            else:
                values, present = np.asarray(source.values), np.asarray(source.present, dtype=np.bool_)
                if self._index is not None:
                    values, present = values[self._index], present[self._index]
                if len(values) != self.n or len(present) != self.n:
                    raise ValueError(f"{name}: {len(values)} values for {self.n} events")
                built = from_arrays(name, values, present)
        self._cache[key] = built
        return built


def _numbers_from_list(name: str, values: list[object]) -> NumberColumn:
    n = len(values)
    types = set(map(type, values))
    if not types <= _NUMBER_TYPES:
        bad = next(v for v in values if type(v) not in _NUMBER_TYPES)
        raise EvaluationError(f"{name}: expected a number, got {type(bad).__name__}")
    has_none = _NONE in types
    filled = [_NAN if v is None else v for v in values] if has_none else values
    try:
        array = np.array(filled, dtype=np.float64)
    except OverflowError:
        raise EvaluationError(f"{name}: a value is too large for a double") from None
    if not has_none and float not in types:
        return NumberColumn(array, np.ones(n, dtype=np.bool_))
    present = np.isfinite(array)
    if float in types and n - int(np.count_nonzero(present)) != (values.count(None) if has_none else 0):
        bad = next(v for v in values if type(v) is float and not math.isfinite(v))
        raise EvaluationError(f"{name}: {bad} is not a finite number")
    return NumberColumn(array, present)


def _numbers_from_arrays(name: str, values: np.ndarray[Any, Any], present: Mask) -> NumberColumn:
    dtype = values.dtype.kind
    if dtype == "O":
        return _numbers_from_list(
            name, [v if p else None for v, p in zip(values.tolist(), present.tolist(), strict=True)]
        )
    if dtype not in "iuf":
        raise EvaluationError(f"{name}: expected numbers, got an array of {values.dtype}")
    array = values.astype(np.float64)
    if dtype == "f" and not np.isfinite(array[present]).all():
        bad = array[present & ~np.isfinite(array)][0]
        raise EvaluationError(f"{name}: {bad} is not a finite number")
    return NumberColumn(array, present)


def _flags_from_list(name: str, values: list[object]) -> FlagColumn:
    types = set(map(type, values))
    if not types <= _FLAG_TYPES:
        bad = next(v for v in values if type(v) not in _FLAG_TYPES)
        raise EvaluationError(f"{name}: expected true or false, got {type(bad).__name__}")
    if _NONE not in types:
        return FlagColumn(np.array(values, dtype=np.bool_), np.ones(len(values), dtype=np.bool_))
    n = len(values)
    return FlagColumn(
        np.fromiter((v is True for v in values), dtype=np.bool_, count=n),
        np.fromiter((v is not None for v in values), dtype=np.bool_, count=n),
    )


def _flags_from_arrays(name: str, values: np.ndarray[Any, Any], present: Mask) -> FlagColumn:
    if values.dtype.kind == "O":
        return _flags_from_list(
            name, [v if p else None for v, p in zip(values.tolist(), present.tolist(), strict=True)]
        )
    if values.dtype.kind != "b":
        raise EvaluationError(f"{name}: expected true or false, got an array of {values.dtype}")
    return FlagColumn(values.astype(np.bool_), present)


def _texts_from_list(name: str, values: list[object]) -> TextColumn:
    index: dict[object, int] = {}
    setdefault = index.setdefault
    codes = np.array([setdefault(v, len(index)) for v in values], dtype=np.intp)
    return _factorised(name, codes, list(index))


def _texts_from_arrays(name: str, values: np.ndarray[Any, Any], present: Mask) -> TextColumn:
    codes = np.full(len(values), -1, dtype=np.intp)
    index: dict[object, int] = {}
    setdefault = index.setdefault
    codes[present] = [setdefault(v, len(index)) for v in values[present].tolist()]
    return _factorised(name, codes, list(index))


def _texts_from_codes(name: str, codes: np.ndarray[Any, Any], uniques: np.ndarray[Any, Any]) -> TextColumn:
    """A TextColumn from dictionary codes (-1 where absent) into `uniques`, the distinct strings
    (only those the batch has are kept and checked)."""
    if len(codes) != 0 and int(codes.max()) >= len(uniques):
        raise ValueError(f"{name}: a code beyond the {len(uniques)} strings")
    present = codes >= 0
    used = np.flatnonzero(np.bincount(codes[present], minlength=len(uniques)))
    table = np.full(len(uniques) + 1, -1, dtype=np.intp)  # the last: code -1
    table[used] = np.arange(len(used))
    keys = [str(u) for u in uniques[used].tolist()]
    try:
        for key in keys:
            _check_string(name, key)
    except EvaluationError:
        # Name the first refused string in event order, as `_texts_from_arrays` does.
        return _texts_from_arrays(name, np.asarray(uniques, dtype=object)[np.maximum(codes, 0)], present)
    return TextColumn(table[codes], tuple(keys))


def _factorised(name: str, codes: Codes, keys: list[object]) -> TextColumn:
    """A TextColumn from codes into `keys` (None among them meaning absent), every string checked as
    the durable adapter checks it."""
    if None in keys:
        absent = keys.index(None)
        table = np.arange(-1, len(keys) - 1, dtype=np.intp)
        table[:absent] += 1
        table[absent] = -1
        codes = np.where(codes >= 0, table[np.maximum(codes, 0)], -1)
        keys.pop(absent)
    for key in keys:
        _check_string(name, key)
    return TextColumn(codes, tuple(str(k) for k in keys))


# ---------------------------------------------------------------------- compiled rules

_Eval: TypeAlias = Callable[[Columns], Mask]
# A number expression's values and where they are present (None: everywhere).
_NumValue: TypeAlias = tuple["Floats | np.float64", "Mask | None"]
_NumEval: TypeAlias = Callable[[Columns], _NumValue]

_COMPARE: Mapping[CmpOp, Callable[[Any, Any], Mask]] = {
    CmpOp.EQ: np.equal,
    CmpOp.NE: np.not_equal,
    CmpOp.LT: np.less,
    CmpOp.LE: np.less_equal,
    CmpOp.GT: np.greater,
    CmpOp.GE: np.greater_equal,
}
_ARITH: Mapping[ArithOp, Callable[[Any, Any], Floats]] = {
    ArithOp.ADD: np.add,
    ArithOp.SUB: np.subtract,
    ArithOp.MUL: np.multiply,
    ArithOp.DIV: np.divide,
}


def _memoised(key: object, compute: Callable[[Columns], _T]) -> Callable[[Columns], _T]:
    """`compute`, asked once per `Columns` for `key` (a test or an expression, compared by value)."""

    def cached(columns: Columns) -> _T:
        memo = columns.memo
        if key in memo:
            found: _T = memo[key]
            return found
        value = compute(columns)
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared by every rule reading it
        memo[key] = value
        return value

    return cached


def _both(a: Mask | None, b: Mask | None) -> Mask | None:
    if a is None:
        return b
    if b is None:
        return a
    result: Mask = a & b
    return result


@dataclass(slots=True)
class _Reads:
    fields: dict[str, FieldType] = field(default_factory=dict)
    counters: set[str] = field(default_factory=set)
    checks: set[ListCheck] = field(default_factory=set)


class _Patterns:
    """durable's own answers to the pattern tests (`$mt`), asked once per distinct string.

    durable's pattern automaton differs from Python's `re` on some patterns the loader accepts
    (measured: `.*a.?` does not match "aab", nor `.*中.?` "中中a"), so patterns are not
    translated: each distinct pattern is a rule of one small durable ruleset, built by the same
    compiler and adapter, and each distinct string is asked once (the answers are kept).
    """

    _FIELD = FieldRef("outlet.region_code", FieldType.STRING)  # any string field: only its value is sent

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}  # durable pattern text -> rule id
        self._rules: list[Rule] = []
        self._compiled: CompiledRuleset | None = None
        self._answers: dict[str, frozenset[str]] = {}

    def register(self, pattern: Pattern) -> str:
        """The id under which `matched` reports `pattern`."""
        rule_id = self._ids.get(pattern.durable)
        if rule_id is None:
            rule_id = self._ids[pattern.durable] = f"p{len(self._ids)}"
            when = Match(self._FIELD, pattern)
            text = parse_template("-")
            self._rules.append(
                Rule(rule_id, (EventKind.TRANSFER,), when, pattern.source, Outcome.WARN, text, text, (self._FIELD,))
            )
        return rule_id

    def build(self) -> None:
        if self._rules:
            self._compiled = build_ruleset(compile_ruleset(RuleSet("patterns", tuple(self._rules), ())))

    def matched(self, text: str) -> frozenset[str]:
        """The ids of the patterns `text` matches, as durable matches them."""
        found = self._answers.get(text)
        if found is None:
            assert self._compiled is not None
            found = self._compiled.fired({EVENT: EventKind.TRANSFER.value, self._FIELD.name: text}, {}, {})
            self._answers[text] = found
        return found

    def close(self) -> None:
        if self._compiled is not None:
            self._compiled.close()


class _Compiler:
    """One rule's condition (in negation normal form) into a function of the columns."""

    def __init__(self, rule: Rule, reads: _Reads, patterns: _Patterns) -> None:
        self.rule = rule
        self.reads = reads
        self.patterns = patterns

    def unsupported(self, what: str) -> UnsupportedCondition:
        return UnsupportedCondition(
            f"{self.rule.location}: rule '{self.rule.id}': {what}: cannot be vectorised, evaluate it with durable_rules"
        )

    def field_ref(self, ref: FieldRef, wanted: FieldType) -> str:
        if not isinstance(ref, FieldRef) or ref.type is not wanted:
            raise self.unsupported(f"{ref} read as a {wanted.value}")
        known = self.reads.fields.setdefault(ref.name, ref.type)
        if known is not ref.type:
            raise self.unsupported(f"{ref.name} read both as a {known.value} and as a {ref.type.value}")
        return ref.name

    def compile(self) -> _Eval:
        try:
            condition = nnf(self.rule.when)
        except NegatedPatternError as exc:
            raise self.unsupported(str(exc)) from None
        return self.condition(condition)

    def condition(self, node: Condition) -> _Eval:
        return self._condition(node)

    def _condition(self, node: object) -> _Eval:
        if isinstance(node, And | Or):
            items = [self.condition(item) for item in node.items]
            if not items:
                raise self.unsupported(f"an empty {type(node).__name__}")
            combine = np.logical_and if isinstance(node, And) else np.logical_or

            def combined(columns: Columns) -> Mask:
                result = items[0](columns)
                for item in items[1:]:
                    result = combine(result, item(columns))
                return result

            return combined
        if isinstance(node, NumCompare):
            return _memoised(node, self.num_compare(node))
        if isinstance(node, TextCompare):
            return _memoised(node, self.text_compare(node))
        if isinstance(node, Flag):
            return _memoised(node, self.flag(node))
        if isinstance(node, NumIn):
            return _memoised(node, self.num_in(node))
        if isinstance(node, TextIn | Match):
            return _memoised(node, self.text_test(node))
        if isinstance(node, ListIn):
            return _memoised(node, self.list_in(node))
        raise self.unsupported(f"a {type(node).__name__} condition")

    # ------------------------------------------------------------------------ numbers

    def number(self, expr: NumExpr) -> _NumEval:
        return self._number(expr)

    def _number(self, expr: object) -> _NumEval:
        if isinstance(expr, Number):
            if not math.isfinite(expr.value):
                raise self.unsupported(f"the constant {expr.value!r}")
            constant = np.float64(expr.value)
            return lambda columns: (constant, None)
        if isinstance(expr, CounterRef):
            name = expr.name
            self.reads.counters.add(name)

            def counter(columns: Columns) -> _NumValue:
                column = columns.counter(name)
                return column.values, column.present

            return counter
        if isinstance(expr, FieldRef):
            field_name = self.field_ref(expr, FieldType.NUMBER)

            def number_field(columns: Columns) -> _NumValue:
                column = columns.number(field_name)
                return column.values, column.present

            return number_field
        if isinstance(expr, Arith):
            left, right, apply = self.number(expr.left), self.number(expr.right), _ARITH[expr.op]

            def arithmetic(columns: Columns) -> _NumValue:
                a, a_present = left(columns)
                b, b_present = right(columns)
                return apply(a, b), _both(a_present, b_present)

            return _memoised(expr, arithmetic)
        raise self.unsupported(f"a {type(expr).__name__} value")

    def num_compare(self, node: NumCompare) -> _Eval:
        left, right, compare = self.number(node.left), self.number(node.right), _COMPARE[node.op]
        if _constant_arithmetic(node.right):
            # durable never matches a test whose value holds arithmetic on constants alone (the
            # checker folds such constants, so loaded rules have none; measured: every operator,
            # any values, `!=` too).
            return lambda columns: np.zeros(columns.n, dtype=np.bool_)

        def num_compare(columns: Columns) -> Mask:
            a, a_present = left(columns)
            b, b_present = right(columns)
            result: Mask = compare(a, b)
            present = _both(a_present, b_present)
            return result if present is None else result & present

        return num_compare

    def num_in(self, node: NumIn) -> _Eval:
        ref = self.number(node.ref)
        values = np.array(node.values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise self.unsupported(f"the list {node.values!r}")
        negated = node.negated

        def num_in(columns: Columns) -> Mask:
            a, present = ref(columns)
            found = np.isin(a, values)
            result: Mask = ~found if negated else found
            return result if present is None else result & present

        return num_in

    # -------------------------------------------------------------------------- flags

    def flag(self, node: Flag) -> _Eval:
        name, wanted = self.field_ref(node.field, FieldType.BOOL), node.value

        def flag(columns: Columns) -> Mask:
            column = columns.flag(name)
            result: Mask = (column.values if wanted else ~column.values) & column.present
            return result

        return flag

    def list_in(self, node: ListIn) -> _Eval:
        check = (node.list_name, node.ref.name)
        self.reads.checks.add(check)
        negated = node.negated

        def list_in(columns: Columns) -> Mask:
            column = columns.hit(check)
            result: Mask = (~column.values if negated else column.values) & column.present
            return result

        return list_in

    # -------------------------------------------------------------------------- strings

    def text_compare(self, node: TextCompare) -> _Eval:
        if node.op not in (CmpOp.EQ, CmpOp.NE):
            raise self.unsupported(f"strings compared with '{node.op.value}'")
        name = self.field_ref(node.left, FieldType.STRING)
        equal = node.op is CmpOp.EQ
        if isinstance(node.right, Text):
            constant = node.right.value

            def against_constant(columns: Columns) -> Mask:
                column = columns.text(name)
                return column.lookup([(u == constant) is equal for u in column.uniques])

            return against_constant
        other = self.field_ref(node.right, FieldType.STRING)

        def against_field(columns: Columns) -> Mask:
            left, right = columns.text(name), columns.text(other)
            codes = {u: i for i, u in enumerate(left.uniques)}
            # The right side's codes in the left side's numbering (-2: a string the left never has).
            table = np.array([codes.get(u, -2) for u in right.uniques] + [-3], dtype=np.intp)
            same: Mask = left.codes == table[right.codes]
            result: Mask = (same if equal else ~same) & left.present & right.present
            return result

        return against_field

    def text_test(self, node: TextIn | Match) -> _Eval:
        """A test of one string field against constants, answered once per distinct string."""
        name = self.field_ref(node.ref, FieldType.STRING)
        test = self.string_predicate(node)

        def per_unique(columns: Columns) -> Mask:
            column = columns.text(name)
            return column.lookup([test(u) for u in column.uniques])

        return per_unique

    def pattern_predicate(self, pattern: Pattern) -> Callable[[str], bool]:
        rule_id, matched = self.patterns.register(pattern), self.patterns.matched
        return lambda text: rule_id in matched(text)

    def string_predicate(self, node: TextIn | Match | TextCompare) -> Callable[[str], bool]:
        """The test on one string, as the compiler writes it for durable (compiler.test_json)."""
        if isinstance(node, Match):
            return self.pattern_predicate(node.pattern)
        if isinstance(node, TextCompare):
            if not isinstance(node.right, Text) or node.op not in (CmpOp.EQ, CmpOp.NE):
                raise self.unsupported(f"the test {node}")
            constant, equal = node.right.value, node.op is CmpOp.EQ
            return lambda text: (text == constant) is equal
        expansion = expand_atom(node)
        if expansion == [(node,)]:  # compiled as one test: a pattern alternation on durable's pattern copy
            return self.pattern_predicate(alternatives_pattern(node.values))
        paths: list[list[Callable[[str], bool]]] = []
        for conjunction in expansion:
            tests: list[Callable[[str], bool]] = []
            for test in conjunction:
                if not isinstance(test, TextCompare):
                    raise self.unsupported(f"the expansion of {node}")
                tests.append(self.string_predicate(test))
            paths.append(tests)
        return lambda text: any(all(test(text) for test in path) for path in paths)


def _constant_arithmetic(expr: NumExpr) -> bool:
    """Whether an arithmetic node of `expr` has no field or counter under it."""
    if not isinstance(expr, Arith):
        return False
    if not any(isinstance(leaf, FieldRef | CounterRef) for leaf in operands(expr)):
        return True
    return _constant_arithmetic(expr.left) or _constant_arithmetic(expr.right)


@dataclass(frozen=True, slots=True)
class Fired:
    """Which rules fired on which events of a batch: `matrix[r, i]` for rule `rule_ids[r]`, event i."""

    rule_ids: tuple[str, ...]
    matrix: Mask  # (len(rule_ids), events), bool

    @property
    def n(self) -> int:
        return int(self.matrix.shape[1])

    def of(self, rule_id: str) -> Mask:
        row: Mask = self.matrix[self.rule_ids.index(rule_id)]
        return row

    def combos(self) -> tuple[Codes, tuple[frozenset[str], ...]]:
        """Each event's fired set as a code into the distinct sets (code 0: nothing fired).

        A batch has few distinct fired sets: whatever an outcome depends on can be worked out
        once per set and spread over the events with `codes`."""
        rules, n = self.matrix.shape
        codes = np.zeros(n, dtype=np.intp)
        sets: list[frozenset[str]] = [frozenset()]
        fired = np.flatnonzero(self.matrix.any(axis=0)) if rules else np.zeros(0, dtype=np.intp)
        if len(fired) == 0:
            return codes, tuple(sets)
        packed = np.packbits(self.matrix[:, fired], axis=0, bitorder="little")  # (bytes, events)
        if rules <= 64:
            keys = np.zeros(len(fired), dtype=np.uint64)
            for byte in range(packed.shape[0]):
                keys |= packed[byte].astype(np.uint64) << np.uint64(8 * byte)
            distinct, inverse = np.unique(keys, return_inverse=True)
            patterns = [
                np.unpackbits(np.array([int(k)], dtype="<u8").view(np.uint8), bitorder="little")[:rules]
                for k in distinct
            ]
        else:
            rows, inverse = np.unique(packed.T, axis=0, return_inverse=True)
            patterns = [np.unpackbits(row, bitorder="little")[:rules] for row in rows]
        for bits in patterns:
            sets.append(frozenset(self.rule_ids[i] for i in np.flatnonzero(bits)))
        codes[fired] = inverse.reshape(-1) + 1
        return codes, tuple(sets)

    def sets(self) -> list[frozenset[str]]:
        """The fired rule ids of every event, as `CompiledRuleset.fired` gives them."""
        codes, sets = self.combos()
        return [sets[code] for code in codes.tolist()]


@dataclass(frozen=True, slots=True)
class Reads:
    """What a ruleset's rules read on one event kind: the columns a batch of that kind needs."""

    fields: Mapping[str, FieldType]
    counters: frozenset[str]
    list_checks: frozenset[ListCheck]


@dataclass(frozen=True, slots=True)
class _KindPlan:
    rule_ids: tuple[str, ...]
    conditions: tuple[_Eval, ...]
    reads: Reads


class VectorRuleset:
    """The enabled rules of a `RuleSet`, compiled for batches of events; raises UnsupportedCondition
    (naming the rule) if one cannot be computed exactly as durable_rules does.

        vector = VectorRuleset(load_directory(path).ruleset)
        columns = Columns.from_rows(EventKind.TRANSFER, facts_rows, counter_rows, hit_rows)
        fired = vector.evaluate(EventKind.TRANSFER, columns)   # Fired: rule ids x events
        fired.sets()                                           # [frozenset of rule ids] per event
    """

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.revision = ruleset.revision
        self._patterns = _Patterns()
        compiled: dict[str, tuple[_Eval, _Reads]] = {}
        for rule in ruleset.enabled_rules:
            reads = _Reads(fields={EVENT: FieldType.STRING})
            compiled[rule.id] = (_Compiler(rule, reads, self._patterns).compile(), reads)
        self._plans: dict[EventKind, _KindPlan] = {}
        for kind in EventKind:
            on_kind = [rule for rule in ruleset.enabled_rules if kind in rule.on]
            fields: dict[str, FieldType] = {}
            counters: set[str] = set()
            checks: set[ListCheck] = set()
            for rule in on_kind:
                reads = compiled[rule.id][1]
                for name, ftype in reads.fields.items():
                    if fields.setdefault(name, ftype) is not ftype:
                        raise UnsupportedCondition(
                            f"{rule.location}: rule '{rule.id}': {name} is read as a {ftype.value} here and as a "
                            f"{fields[name].value} by another rule: evaluate the ruleset with durable_rules"
                        )
                counters |= reads.counters
                checks |= reads.checks
            self._plans[kind] = _KindPlan(
                rule_ids=tuple(rule.id for rule in on_kind),
                conditions=tuple(compiled[rule.id][0] for rule in on_kind),
                reads=Reads(fields, frozenset(counters), frozenset(checks)),
            )

        self._patterns.build()

    def close(self) -> None:
        """Delete the durable ruleset that answers pattern tests (if the rules have patterns)."""
        self._patterns.close()

    def __enter__(self) -> VectorRuleset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def rule_ids(self, kind: EventKind) -> tuple[str, ...]:
        """The enabled rules on `kind`, in file order: the rows of `evaluate`'s matrix."""
        return self._plans[kind].rule_ids

    def reads(self, kind: EventKind) -> Reads:
        return self._plans[kind].reads

    def counters_for(self, kind: EventKind) -> frozenset[str]:
        return self._plans[kind].reads.counters

    def list_checks_for(self, kind: EventKind) -> frozenset[ListCheck]:
        return self._plans[kind].reads.list_checks

    def fired(self, kind: EventKind, columns: Columns) -> dict[str, Mask]:
        """For each enabled rule on `kind`, where it fires over the batch (read-only arrays)."""
        plan = self._plan(kind, columns)
        out: dict[str, Mask] = {}
        with np.errstate(all="ignore"):  # an overflow is inf and inf - inf is NaN, as in durable
            for rule_id, condition in zip(plan.rule_ids, plan.conditions, strict=True):
                mask = out[rule_id] = condition(columns)
                mask.flags.writeable = False  # it may be a test's mask, shared with other rules
        return out

    def evaluate(self, kind: EventKind, columns: Columns) -> Fired:
        """Which rules fire on which events of the batch, as one matrix."""
        plan = self._plan(kind, columns)
        matrix = np.zeros((len(plan.rule_ids), columns.n), dtype=np.bool_)
        with np.errstate(all="ignore"):
            for row, condition in enumerate(plan.conditions):
                matrix[row] = condition(columns)
        return Fired(plan.rule_ids, matrix)

    def _plan(self, kind: EventKind, columns: Columns) -> _KindPlan:
        if columns.kind is not kind:
            raise ValueError(f"a batch of {columns.kind.value} events evaluated as {kind.value} events")
        return self._plans[kind]
