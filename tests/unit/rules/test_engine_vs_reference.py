"""The engine (durable_rules) and the pure-Python reference evaluator must agree on every request.

The ruleset (tests/fixtures/rules/rich) uses every operator of the condition
language; requests are random, with absent optional values, boundary
numbers, and strings with quotes, backslashes, line breaks and Chinese.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import EventKind
from service.pipeline.facts import FIELDS, FieldType, Scalar
from service.rules.engine import CompiledRuleset
from service.rules.model import RuleSet
from tests.reference_evaluator import fired_rules
from tests.unit.rules.conftest import COUNTER_NAMES, NUMBERS, STRINGS, random_request

Request = tuple[dict[str, Scalar], dict[str, int | float], dict[tuple[str, str], bool]]


def _disagreement(ruleset: RuleSet, compiled: CompiledRuleset, request: Request) -> str | None:
    facts, counters, hits = request
    engine = {reason.rule_id for reason in compiled.evaluate(facts, counters, hits)}
    reference = fired_rules(ruleset, facts, counters, hits)
    if engine == reference:
        return None
    return (
        f"engine only: {sorted(engine - reference)}, reference only: {sorted(reference - engine)}\n"
        f"facts={facts}\ncounters={counters}\nlist_hits={hits}"
    )


def test_rich_ruleset_covers_several_shards(rich: tuple[RuleSet, CompiledRuleset]) -> None:
    _, compiled = rich
    assert compiled.shard_count >= 3


def test_twenty_thousand_seeded_requests_agree(rich: tuple[RuleSet, CompiledRuleset]) -> None:
    ruleset, compiled = rich
    rng = random.Random(20240601)
    fired_any: set[str] = set()
    for _ in range(20_000):
        request = random_request(rng, compiled.list_checks_for)
        problem = _disagreement(ruleset, compiled, request)
        assert problem is None, problem
        fired_any |= fired_rules(ruleset, *request)
    # The requests are rich enough to fire every enabled rule at least once.
    assert fired_any == {r.id for r in ruleset.enabled_rules}


_NUMBER = st.one_of(
    st.sampled_from(NUMBERS),
    st.integers(min_value=-(10**7), max_value=10**16),
    st.floats(min_value=-1e15, max_value=1e15, allow_nan=False),
)
_TEXT = st.one_of(st.sampled_from(STRINGS), st.text(alphabet='a4.x中"\\\n_-', max_size=5))
_BY_TYPE = {FieldType.NUMBER: _NUMBER, FieldType.BOOL: st.booleans(), FieldType.STRING: _TEXT}


def requests(kind: EventKind, list_checks: frozenset[tuple[str, str]]) -> st.SearchStrategy[Request]:
    fields = {
        name: _BY_TYPE[spec.type]
        for name, spec in FIELDS.items()
        if kind in spec.kinds and name != "event" and spec.type is not FieldType.IDENTIFIER
    }
    facts = st.fixed_dictionaries({"event": st.just(kind.value)}, optional=fields)
    counters = st.fixed_dictionaries({}, optional=dict.fromkeys(COUNTER_NAMES, _NUMBER))
    hits = st.fixed_dictionaries({}, optional=dict.fromkeys(sorted(list_checks), st.booleans()))
    return st.tuples(facts, counters, hits)


@settings(
    max_examples=2_500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), kind=st.sampled_from(list(EventKind)))
def test_hypothesis_requests_agree(rich: tuple[RuleSet, CompiledRuleset], data: st.DataObject, kind: EventKind) -> None:
    ruleset, compiled = rich
    request = data.draw(requests(kind, compiled.list_checks_for(kind)))
    problem = _disagreement(ruleset, compiled, request)
    assert problem is None, problem
