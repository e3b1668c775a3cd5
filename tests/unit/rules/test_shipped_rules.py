"""The shipped rules directory (rules/): `riskgate rules check` and `rules test` pass, the ruleset keeps its
promises (coverage of DOMAIN.md's starting rules, basis, appeal routes, shadow trials), and the engine
agrees with the reference evaluator on thousands of random events over the whole of it.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain import EventKind, Outcome
from service.pipeline.facts import FIELDS, FieldType, Scalar
from service.rules.directory import RulesDirectory, load_directory
from service.rules.model import (
    Condition,
    Number,
    NumCompare,
    NumIn,
    Rule,
    atoms,
    operands,
)
from service.rules.reload import ActiveRules, build
from service.tools.rules import run_check, run_test
from tests.reference_evaluator import fired_rules
from tests.unit.rules.conftest import REPO, Request, random_request

SHIPPED = REPO / "rules"
ID = re.compile(r"(K|S|KS|T)(\d\d)_[a-z0-9_]+")


@pytest.fixture(scope="module")
def shipped() -> Iterator[tuple[RulesDirectory, ActiveRules]]:
    directory = load_directory(SHIPPED)
    active = build(directory)
    yield directory, active
    active.ruleset.close()


def test_rules_check_passes_without_notes() -> None:
    out = io.StringIO()
    assert run_check(SHIPPED, out=out) == 0, out.getvalue()
    breakers, summary = out.getvalue().splitlines()  # no "note: no 'basis'" line
    assert breakers.startswith("breakers: ")  # every file guards its block rules (README, "A breaker ...")
    assert summary.startswith("ok: ")


def test_rules_test_passes_with_a_firing_case_and_a_near_miss_for_every_rule() -> None:
    out = io.StringIO()
    assert run_test(SHIPPED, out=out) == 0, out.getvalue()
    [summary] = out.getvalue().splitlines()  # no "note: no case fires" / "no near-miss" line
    assert re.fullmatch(r"(\d+) cases: \1 passed, 0 failed", summary)


def _rules(shipped: tuple[RulesDirectory, ActiveRules]) -> tuple[Rule, ...]:
    return shipped[0].ruleset.rules


def test_at_least_twenty_starting_rules_are_covered(shipped: tuple[RulesDirectory, ActiveRules]) -> None:
    covered = set()
    for rule in _rules(shipped):
        match = ID.fullmatch(rule.id)
        assert match, f"{rule.id}: ids look like K05_multi_bank_openings"
        covered.add(int(match.group(2)))
    assert len(covered) >= 20 and covered <= set(range(1, 26)), sorted(covered)


def test_every_rule_has_a_basis_and_every_block_says_how_to_appeal(
    shipped: tuple[RulesDirectory, ActiveRules],
) -> None:
    for rule in _rules(shipped):
        assert rule.basis and "法" in rule.basis and "Art" in rule.basis, rule.id
        if rule.outcome is Outcome.BLOCK:
            assert "如有异议" in rule.reason_zh.source and "申诉" in rule.reason_zh.source, rule.id
            assert "appeal" in rule.reason_en.source, rule.id


def test_list_hits_are_shown_only_as_identified_by_police(shipped: tuple[RulesDirectory, ActiveRules]) -> None:
    for rule in _rules(shipped):
        reads_a_list = any(str(read).find(" in list.") > 0 for read in rule.reads)
        reads_allowlist_only = all(
            "list.allowlist" in str(read) for read in rule.reads if str(read).find(" in list.") > 0
        )
        if reads_a_list and not reads_allowlist_only:
            assert "公安机关认定" in rule.reason_zh.source, rule.id
            assert "identified by police" in rule.reason_en.source, rule.id


def test_some_rules_are_shadow_trials(shipped: tuple[RulesDirectory, ActiveRules]) -> None:
    trials = [rule for rule in _rules(shipped) if rule.shadow]
    assert trials and all(rule.id.endswith("_trial") for rule in trials)


def test_non_local_is_never_a_refusal(shipped: tuple[RulesDirectory, ActiveRules]) -> None:
    for rule in _rules(shipped):
        if "non_local" in rule.when_text:
            assert rule.outcome is Outcome.WARN, rule.id


# ------------------------------------------------------------ engine vs reference


def _constants(condition: Condition) -> set[float]:
    out: set[float] = set()
    for atom in atoms(condition):
        if isinstance(atom, NumCompare):
            out.update(leaf.value for leaf in operands(atom.right) if isinstance(leaf, Number))
        elif isinstance(atom, NumIn):
            out.update(atom.values)
    return out


def _boundaries(rules: tuple[Rule, ...]) -> tuple[int | float, ...]:
    """Every threshold of the ruleset, with its neighbours and the values a ratio rule (0.8 x) sits on."""
    numbers: set[int | float] = {0, 1, -1, 0.5}
    for rule in rules:
        for constant in _constants(rule.when):
            if constant.is_integer():
                whole = int(constant)
                numbers.update({whole - 1, whole, whole + 1, whole * 2, int(whole * 1.25)})
            else:
                numbers.update({constant, constant * 2})
    return tuple(sorted(numbers))


def _disagreement(directory: RulesDirectory, active: ActiveRules, request: Request) -> str | None:
    facts, counters, hits = request
    engine = {reason.rule_id for reason in active.evaluate(facts, counters, hits)}
    reference = fired_rules(directory.ruleset, facts, counters, hits)
    if engine == reference:
        return None
    return (
        f"engine only: {sorted(engine - reference)}, reference only: {sorted(reference - engine)}\n"
        f"facts={facts}\ncounters={counters}\nlist_hits={hits}"
    )


def test_ten_thousand_random_events_agree_over_the_whole_ruleset(
    shipped: tuple[RulesDirectory, ActiveRules],
) -> None:
    directory, active = shipped
    counter_names = sorted(directory.ruleset.counters)
    numbers = _boundaries(directory.ruleset.rules)
    rng = random.Random(20240601)
    fired_any: set[str] = set()
    for _ in range(10_000):
        request = random_request(rng, active.ruleset.list_checks_for, counter_names=counter_names, numbers=numbers)
        problem = _disagreement(directory, active, request)
        assert problem is None, problem
        fired_any |= fired_rules(directory.ruleset, *request)
    # The events are rich enough to fire every rule.
    assert fired_any == {rule.id for rule in directory.ruleset.enabled_rules}


_TEXTS = ("", "CN", "HK", "44", "440101", "中国", 'a"b', "a\\b")
_STRATEGIES: dict[EventKind, st.SearchStrategy[Request]] = {}


def _events(directory: RulesDirectory, active: ActiveRules, kind: EventKind) -> st.SearchStrategy[Request]:
    """Random events of `kind`: any field, counter or list lookup may be absent (built once per kind)."""
    if kind in _STRATEGIES:
        return _STRATEGIES[kind]
    number = st.one_of(
        st.sampled_from(_boundaries(directory.ruleset.rules)),
        st.integers(min_value=-10, max_value=10**9),
        st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    )
    fields: dict[str, st.SearchStrategy[Scalar]] = {}
    for name, spec in FIELDS.items():
        if kind not in spec.kinds or name == "event" or spec.type is FieldType.IDENTIFIER:
            continue
        if spec.type is FieldType.NUMBER:
            fields[name] = number
        elif spec.type is FieldType.BOOL:
            fields[name] = st.booleans()
        else:
            pool = sorted(spec.choices or ()) + list(_TEXTS)
            fields[name] = st.sampled_from(pool) | st.text(max_size=4)
    kind_counters = sorted(n for n, info in directory.ruleset.counters.items() if kind in info.kinds)
    checks = sorted(active.ruleset.list_checks_for(kind))
    strategy = st.tuples(
        st.fixed_dictionaries({"event": st.just(kind.value)}, optional=fields),
        st.fixed_dictionaries({}, optional=dict.fromkeys(kind_counters, number)),
        st.fixed_dictionaries({}, optional=dict.fromkeys(checks, st.booleans())),
    )
    _STRATEGIES[kind] = strategy
    return strategy


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), kind=st.sampled_from(list(EventKind)))
def test_hypothesis_events_agree_over_the_whole_ruleset(
    shipped: tuple[RulesDirectory, ActiveRules], data: st.DataObject, kind: EventKind
) -> None:
    directory, active = shipped
    request = data.draw(_events(directory, active, kind))
    problem = _disagreement(directory, active, request)
    assert problem is None, problem
