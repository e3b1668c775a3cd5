"""Counter `where` filters: checked like rules, evaluated by closures that agree with the reference evaluator."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import EventKind
from service.errors import EvaluationError, SourceError
from service.pipeline.facts import FieldType, Scalar
from service.riskdata.counters.loader import load_counters, parse_counters
from service.riskdata.counters.model import Filter, Predicate, counters_to_update
from service.rules.check import collect_reads
from service.rules.filters import CounterFilters, compile_condition, compile_filters
from service.rules.model import (
    And,
    Arith,
    ArithOp,
    CmpOp,
    Condition,
    FieldRef,
    Flag,
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
)
from service.rules.patterns import matches_pattern, startswith_pattern
from tests.reference_evaluator import evaluate
from tests.unit.rules.conftest import REPO, load_fixture, random_request

SHIPPED = REPO / "rules" / "counters.yaml"


def test_the_shipped_counters_filters_compile() -> None:
    spec = load_counters(SHIPPED)
    filters = compile_filters(spec)
    assert len(filters) == sum(len({f for _, f in c.where}) for c in spec.counters) > 0


def test_the_shipped_filters_choose_the_counters_the_reference_evaluator_does() -> None:
    """Random events of every kind: `counters_to_update` through the closures counts exactly the
    counters whose `where` the reference evaluator finds true (each filter seen true and false)."""
    spec = load_counters(SHIPPED)
    closures = compile_filters(spec)

    def reference(condition: Filter, facts: Mapping[str, Scalar]) -> bool:
        return evaluate(closures.conditions[condition], facts) is True

    seen: dict[Filter, set[bool]] = {condition: set() for condition in closures.conditions}
    rng = random.Random(11)
    for kind in EventKind:
        mine = [c for c in (counter.where_for(kind) for counter in spec.counters) if c is not None]
        drawn = 0
        # At least 1,000 events of the kind, more (up to 50,000) until each of its filters was seen
        # both ways: a filter of two conditions (currency CNY and an amount band) holds rarely.
        while drawn < 1_000 or (drawn < 50_000 and not all(seen[c] == {True, False} for c in mine)):
            drawn += 1
            facts, _, _ = random_request(rng, kind=kind)
            expected = counters_to_update(spec, kind, facts, reference)
            assert counters_to_update(spec, kind, facts, closures) == expected, (kind, facts)
            for counter in spec.counters:
                condition = counter.where_for(kind)
                if condition is not None:
                    seen[condition].add(closures(condition, facts))
    assert all(outcomes == {True, False} for outcomes in seen.values()), seen


def test_broken_filters_are_reported_with_file_line_and_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    file = "tests/fixtures/rules/filters/counters.yaml"
    with pytest.raises(SourceError) as caught:
        compile_filters(load_counters(file))
    assert [str(p).removeprefix(f"{file}:") for p in caught.value.problems] == [
        "7: counter 'typo': where: unknown field 'card_opening.account_clas', "
        "did you mean 'card_opening.account_class'?",
        "13: counter 'reads_a_counter': where: 'banks_30d' is not a field "
        "(a counter's where reads request fields only)",
        "19: counter 'reads_a_list': where: a counter's where cannot use lists ('list.fraud_accounts'): "
        "it reads request fields only",
        "25: counter 'not_on_every_kind': where: field 'card_opening.account_class' does not exist on sim_sale events "
        "(only on card_opening): give 'where' per event kind (a mapping of event kind to condition)",
        "32: counter 'never_holds': where: field 'applicant.age' does not exist on closure events "
        "(only on card_opening): the where can never hold; use 'person.age'",
        "38: counter 'bad_syntax': where: syntax error at column 24: expected a value, found 'and'",
        "44: counter 'bad_value': where: 'account' is not a value of closure.target, did you mean 'bank_account'?",
    ]


SPEC_TEXT = """\
counters:
  - name: class1
    on: card_opening
    decrement_on: closure
    key: [person.id_number, outlet.institution_id]
    aggregate: count
    where:
      card_opening: card_opening.account_class == "I"
      closure: closure.target == "bank_account" and closure.account_class == "I"
    windows: [all]
  - name: night
    on: [transfer]
    key: transfer.payer_account
    aggregate: count
    where: not (local_hour >= 5) and transfer.amount_fen >= 0.5 * 1_000_000
    windows: [90d]
  - name: plain
    on: transfer
    key: transfer.payer_account
    aggregate: count
    windows: [1h]
"""


def test_the_predicate_counts_only_when_the_filter_is_true() -> None:
    spec = parse_counters(SPEC_TEXT, "counters.yaml")
    where: Predicate = compile_filters(spec)
    opening = {"event": "card_opening", "card_opening.account_class": "I"}
    assert counters_to_update(spec, EventKind.CARD_OPENING, opening, where) == {"class1"}
    assert counters_to_update(spec, EventKind.CARD_OPENING, {**opening, "card_opening.account_class": "II"}, where) == (
        frozenset()
    )
    closed = {"event": "closure", "closure.target": "bank_account", "closure.account_class": "I"}
    assert counters_to_update(spec, EventKind.CLOSURE, closed, where) == {"class1"}
    # An absent value makes the filter unknown: not counted (closure.account_class is optional).
    assert counters_to_update(spec, EventKind.CLOSURE, {"closure.target": "bank_account"}, where) == frozenset()
    night = {"local_hour": 2, "transfer.amount_fen": 500_000}
    assert counters_to_update(spec, EventKind.TRANSFER, night, where) == {"night", "plain"}
    assert counters_to_update(spec, EventKind.TRANSFER, {**night, "local_hour": 5}, where) == {"plain"}
    assert counters_to_update(spec, EventKind.TRANSFER, {"transfer.amount_fen": 500_000}, where) == {"plain"}


def test_an_equal_filter_from_another_load_is_found_and_a_foreign_one_refused() -> None:
    spec = parse_counters(SPEC_TEXT, "counters.yaml")
    where = compile_filters(spec)
    again = parse_counters(SPEC_TEXT, "counters.yaml").counter("night").where_for(EventKind.TRANSFER)
    assert again is not None and where(again, {"local_hour": 1, "transfer.amount_fen": 10**6})
    with pytest.raises(EvaluationError, match=r"counters\.yaml:3: this where was not compiled"):
        where(Filter("local_hour < 5", "counters.yaml", 3), {})
    assert len(CounterFilters({})) == 0


# ------------------------------------------------- closures vs reference

NUMBER_FIELDS = ("transfer.amount_fen", "local_hour", "payer.age", "transfer.payee_account_age_days")
TEXT_FIELDS = ("transfer.channel", "transfer.payee_country", "outlet.region_code", "transfer.ip_region_code")
BOOL_FIELDS = ("transfer.cross_border", "payer.non_local")
FIELD_TYPES = {
    **dict.fromkeys(NUMBER_FIELDS, FieldType.NUMBER),
    **dict.fromkeys(TEXT_FIELDS, FieldType.STRING),
    **dict.fromkeys(BOOL_FIELDS, FieldType.BOOL),
}
PATTERNS = (
    startswith_pattern("44"),
    startswith_pattern("a"),
    matches_pattern("44%d%d%d%d|45%d+"),
    matches_pattern("[a-z]+"),
    matches_pattern(".*中.?"),
)
_NUMBERS = st.sampled_from((0, 1, 2, 3, 5, 7, 60, 0.8, 100, 1_000_000, 5_000_000, -1, 2.5))
_TEXTS = st.sampled_from(("", "atm", "online", "CN", "HK", "44", "440101", "450102", "中国", "a.b"))


def _field(names: tuple[str, ...]) -> st.SearchStrategy[FieldRef]:
    return st.sampled_from(names).map(lambda n: FieldRef(n, FIELD_TYPES[n]))


def _num_exprs() -> st.SearchStrategy[NumExpr]:
    leaves: st.SearchStrategy[NumExpr] = st.one_of(_NUMBERS.map(lambda v: Number(float(v))), _field(NUMBER_FIELDS))
    return st.recursive(
        leaves,
        lambda inner: (
            st.builds(Arith, st.sampled_from([ArithOp.ADD, ArithOp.SUB, ArithOp.MUL]), inner, inner)
            | st.builds(Arith, st.just(ArithOp.DIV), inner, st.sampled_from((2.0, 4.0, -0.5)).map(Number))
        ),
        max_leaves=4,
    )


def _atoms() -> st.SearchStrategy[Condition]:
    text_ops = st.sampled_from([CmpOp.EQ, CmpOp.NE])
    return st.one_of(
        st.builds(NumCompare, _field(NUMBER_FIELDS), st.sampled_from(list(CmpOp)), _num_exprs()),
        st.builds(TextCompare, _field(TEXT_FIELDS), text_ops, _TEXTS.map(Text) | _field(TEXT_FIELDS)),
        st.builds(Flag, _field(BOOL_FIELDS), st.booleans()),
        st.builds(
            NumIn,
            _field(NUMBER_FIELDS),
            st.lists(_NUMBERS.map(float), min_size=1, max_size=3).map(tuple),
            st.booleans(),
        ),
        st.builds(TextIn, _field(TEXT_FIELDS), st.lists(_TEXTS, min_size=1, max_size=3).map(tuple), st.booleans()),
        st.builds(Match, _field(TEXT_FIELDS), st.sampled_from(PATTERNS)),
    )


CONDITIONS: st.SearchStrategy[Condition] = st.recursive(
    _atoms(),
    lambda inner: st.one_of(
        inner.map(Not),
        st.lists(inner, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
        st.lists(inner, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
    ),
    max_leaves=8,
)


_POOLS: dict[FieldType, tuple[Scalar, ...]] = {
    FieldType.NUMBER: (0, 1, 2, 3, 5, 7, 60, 0.8, 100, 1_000_000, 5_000_000, -1, 2.5),
    FieldType.STRING: ("", "atm", "online", "CN", "HK", "44", "440101", "450102", "中国", "a.b"),
    FieldType.BOOL: (True, False),
}


def _facts(rng: random.Random) -> dict[str, Scalar]:
    """Each field absent a quarter of the time, else a value from its pool (thresholds, patterns' texts)."""
    return {name: rng.choice(_POOLS[ftype]) for name, ftype in FIELD_TYPES.items() if rng.random() < 0.75}


@settings(
    max_examples=600, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(condition=CONDITIONS, seed=st.integers(min_value=0, max_value=2**32))
def test_closures_agree_with_the_reference_evaluator(condition: Condition, seed: int) -> None:
    """Random conditions (every construct, nested), each on 20 random events: the same True/False/unknown."""
    compiled = compile_condition(condition)
    rng = random.Random(seed)
    for _ in range(20):
        facts = _facts(rng)
        assert compiled(facts) == evaluate(condition, facts), (condition, facts)


def test_closures_agree_on_every_field_only_rule_of_the_rich_ruleset() -> None:
    ruleset = load_fixture("rich")
    field_only = [r for r in ruleset.rules if all(isinstance(read, FieldRef) for read in collect_reads(r.when))]
    assert len(field_only) >= 10
    compiled = [(r, compile_condition(r.when)) for r in field_only]
    rng = random.Random(7)
    for _ in range(3_000):
        facts, _, _ = random_request(rng, kind=EventKind.TRANSFER)
        for rule, closure in compiled:
            assert closure(facts) == evaluate(rule.when, facts), (rule.id, facts)


def test_a_filter_cannot_read_counters_or_lists() -> None:
    ruleset = load_fixture("rich")
    with pytest.raises(ValueError, match="cannot read a counter"):
        compile_condition(ruleset.rule("counters_in").when)
    with pytest.raises(ValueError, match="cannot test a list"):
        compile_condition(ruleset.rule("lists").when)
