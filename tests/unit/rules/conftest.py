"""Shared pieces of the rules tests: the counters and lists they declare, fixture paths, random requests."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.domain import EventKind
from service.errors import SourceError
from service.pipeline.facts import FIELDS, FieldType, Scalar
from service.riskdata.lists import ListKind, ListSpec
from service.rules.compiler import compile_ruleset
from service.rules.engine import CompiledRuleset, build_ruleset
from service.rules.loader import SourceText, load_rules, load_sources
from service.rules.model import CounterInfo, RuleSet, counters_from_names

REPO = Path(__file__).resolve().parents[3]

FIXTURE_ROOT = REPO  # tests that name fixtures by relative path run here
FIXTURES = REPO / "tests" / "fixtures" / "rules"
COUNTER_NAMES = (
    "banks_30d",
    "ids_per_phone_30d",
    "payers_into_1h",
    "inflow_fen_30m",
    "outflow_fen_30m",
    "cards_per_id_30d",
)
COUNTERS: dict[str, CounterInfo] = counters_from_names(COUNTER_NAMES)
# The watchlists the test rule files may name (as rules/lists.yaml declares them).
LISTS: dict[str, ListSpec] = {
    spec.name: spec
    for spec in (
        ListSpec("fraud_accounts", ListKind.ACCOUNT),
        ListSpec("punished_persons", ListKind.ID_NUMBER),
        ListSpec("vulnerable_persons", ListKind.ID_NUMBER),
        ListSpec("police_warned", ListKind.ID_NUMBER),
        ListSpec("high_risk_regions", ListKind.REGION),
        ListSpec("allowlist", ListKind.ACCOUNT),
        ListSpec("device_blocklist", ListKind.DEVICE),
    )
}


def load_fixture(name: str) -> RuleSet:
    return load_rules(FIXTURES / name, counters=COUNTERS, lists=LISTS)


def load_text(text: str, name: str = "t.rules.yaml") -> RuleSet:
    """Load one rule file given as text (problems name it `name`)."""
    return load_sources([SourceText(name, text, name)], counters=COUNTERS, lists=LISTS)


def problems_of(text: str) -> list[str]:
    """The problems loading `text` reports, without the 't.rules.yaml:' prefix of each."""
    try:
        load_text(text)
    except SourceError as exc:
        return [str(p).removeprefix("t.rules.yaml:") for p in exc.problems]
    return []


def rule_text(when: str, on: str = "[transfer]", rule_id: str = "r1", extra: str = "") -> str:
    """A one-rule file with condition `when` (reason without placeholders)."""
    return (
        f"rules:\n  - id: {rule_id}\n    on: {on}\n    when: '{when}'\n    outcome: warn\n"
        f"    reason: {{zh: 原因, en: reason}}\n{extra}"
    )


@contextmanager
def built(text: str) -> Iterator[CompiledRuleset]:
    """The compiled, built ruleset of one rule file; closed afterwards."""
    compiled = build_ruleset(compile_ruleset(load_text(text)))
    try:
        yield compiled
    finally:
        compiled.close()


@pytest.fixture
def rich() -> Iterator[tuple[RuleSet, CompiledRuleset]]:
    ruleset = load_fixture("rich")
    compiled = build_ruleset(compile_ruleset(ruleset))
    yield ruleset, compiled
    compiled.close()


# Values chosen to sit on and around the thresholds the test rulesets use.
NUMBERS: tuple[int | float, ...] = (
    0,
    1,
    -1,
    2,
    2.5,
    3,
    4,
    5,
    6,
    7,
    8,
    10,
    16,
    17,
    18,
    20,
    25,
    29,
    30,
    59,
    60,
    61,
    65,
    70,
    71,
    100,
    999,
    1000,
    1001,
    6000,
    50_000,
    100_000,
    100_001,
    1_000_000,
    4_999_999,
    5_000_000,
    5_000_001,
    0.1,
    0.8,
    1e15,
    -1e15,
    123456789.125,
)
STRINGS: tuple[str, ...] = (
    "",
    "11",
    "31",
    "44",
    "4401",
    "440101",
    "450102",
    "45",
    "4",
    "CN",
    "HK",
    "US",
    "CNY",
    "USD",
    "ICBC",
    "abc",
    "ABC",
    "Abc",
    "c1",
    "ab.x",
    "abcd.",
    "cd.x",
    ".",
    "中国",
    "中",
    "中x",
    "I",
    "II",
    "III",
    "atm",
    "online",
    "counter",
    "mobile",
    "passed",
    "invalid",
    "relative",
    "non_relative",
    "female",
    "male",
    "sim",
    "bank_account",
    "china_mobile",
    "china_unicom",
    "china_telecom",
    '"',
    'a"b',
    "\\",
    "a\\b",
    "a\nb",
    "\n",
    "\ufffd",
    "x\u0001",
    "😀",
    "4401\n",
)


Request = tuple[dict[str, Scalar], dict[str, int | float], dict[tuple[str, str], bool]]


def random_request(
    rng: random.Random,
    list_checks: Callable[[EventKind], Collection[tuple[str, str]]] = lambda kind: (),
    kind: EventKind | None = None,
    *,
    counter_names: Sequence[str] = COUNTER_NAMES,
    numbers: Sequence[int | float] = NUMBERS,
    strings: Sequence[str] = STRINGS,
) -> Request:
    """A random request of a random kind: facts (some absent), counters (some absent), list hits.

    `list_checks(kind)`: the (list, field) lookups to give a random hit or miss (or leave absent).
    """
    kind = kind or rng.choice(list(EventKind))
    facts: dict[str, Scalar] = {"event": kind.value}
    for name, spec in FIELDS.items():
        if kind not in spec.kinds or name == "event" or spec.type is FieldType.IDENTIFIER:
            continue
        if rng.random() < (0.35 if spec.optional else 0.08):
            continue
        if spec.type is FieldType.NUMBER:
            facts[name] = rng.choice(numbers) if rng.random() < 0.85 else rng.randint(-10, 10**7)
        elif spec.type is FieldType.BOOL:
            facts[name] = rng.random() < 0.5
        elif spec.choices is not None and rng.random() < 0.8:
            facts[name] = rng.choice(sorted(spec.choices))
        else:
            facts[name] = rng.choice(strings) if rng.random() < 0.9 else "".join(rng.choices('a4.中"x', k=3))
    counters: dict[str, int | float] = {}
    for name in counter_names:
        if rng.random() < 0.8:
            counters[name] = rng.choice(numbers) if rng.random() < 0.85 else rng.random() * 10**7
    hits = {check: rng.random() < 0.5 for check in sorted(list_checks(kind)) if rng.random() < 0.8}
    return facts, counters, hits
