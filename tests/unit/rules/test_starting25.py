"""A 25-rule set shaped like DOMAIN.md's starting rules (two files, both event kinds, 16 counters,
watchlists, a shadow rule): it compiles, and fires exactly the rules its conditions name.

What it costs per evaluation is measured by `benchmarks.rules_bench` (on the shipped ruleset, by
event kind and by whether a rule fired), never here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from service.domain import EventKind, Outcome
from service.rules.engine import CompiledRuleset, load_compiled
from service.rules.model import counters_from_names
from tests.unit.rules.conftest import FIXTURES, LISTS

COUNTERS = counters_from_names(
    [
        "class1_same_bank",
        "banks_30d",
        "applicants_outlet_2h",
        "ids_per_phone_30d",
        "closures_90d",
        "active_sims_carrier",
        "new_sims_24h",
        "sims_outlet_1h",
        "payee_paid_before",
        "payers_into_24h",
        "payers_into_1h",
        "outflow_fen_30m",
        "inflow_fen_30m",
        "night_tx_90d",
        "dormant_days",
        "inflow_fen_24h",
    ]
)
OUTLET = {
    "outlet.institution_id": "ICBC",
    "outlet.outlet_id": "440101001",
    "outlet.clerk_id": "c17",
    "outlet.region_code": "440101",
    "outlet.province": "44",
    "local_hour": 14,
    "weekday": 3,
}


def _person(role: str, age: int, non_local: bool) -> dict[str, Any]:
    values = {
        "age": age,
        "sex": "female",
        "province": "44",
        "region_code": "440101",
        "region_known": True,
        "non_local": non_local,
        "has_phone": True,
        "has_address": True,
    }
    return {f"{prefix}.{k}": v for prefix in (role, "person") for k, v in values.items()}


TRANSFER = {
    "event": "transfer",
    **OUTLET,
    **_person("payer", 45, False),
    "transfer.payee_bank": "ABC",
    "transfer.amount_fen": 250_000,
    "transfer.currency": "CNY",
    "transfer.channel": "mobile",
    "transfer.payee_account_age_days": 400,
    "transfer.payee_country": "CN",
    "transfer.cross_border": False,
    "transfer.same_bank": False,
}
OPENING = {
    "event": "card_opening",
    **OUTLET,
    **_person("applicant", 22, True),
    "card_opening.account_class": "I",
    "card_opening.has_companion": False,
    "card_opening.companion_relation": "unspecified",
    "card_opening.requested_daily_limit_fen": 10_000_000,
    "card_opening.limited_function": False,
    "card_opening.identity_check": "passed",
    "card_opening.has_local_tie": False,
    "card_opening.has_device": True,
}
QUIET_COUNTERS: dict[str, int | float] = {name: 0 for name in COUNTERS}
QUIET_COUNTERS |= {"payee_paid_before": 1, "night_tx_90d": 3}


@pytest.fixture(scope="module")
def starting25() -> Iterator[CompiledRuleset]:
    compiled = load_compiled(FIXTURES / "starting25", counters=COUNTERS, lists=LISTS)
    yield compiled
    compiled.close()


def test_all_25_rules_compile_with_their_list_checks(starting25: CompiledRuleset) -> None:
    assert len(starting25.rules) == 25
    assert sorted(starting25.list_checks_for(EventKind.TRANSFER)) == [
        ("fraud_accounts", "transfer.payee_account"),
        ("high_risk_regions", "transfer.ip_region_code"),
        ("police_warned", "payer.id_number"),
        ("vulnerable_persons", "payer.id_number"),
    ]


def test_a_quiet_transfer_fires_nothing(starting25: CompiledRuleset) -> None:
    hits = dict.fromkeys(starting25.list_checks_for(EventKind.TRANSFER), False)
    assert starting25.evaluate(TRANSFER, QUIET_COUNTERS, hits) == ()


def test_an_elderly_payers_rapid_transfer_fires_those_two_rules(starting25: CompiledRuleset) -> None:
    hits = dict.fromkeys(starting25.list_checks_for(EventKind.TRANSFER), False)
    busy = {**TRANSFER, "transfer.amount_fen": 6_000_000, "payer.age": 65, "person.age": 65}
    counters = QUIET_COUNTERS | {"payee_paid_before": 0, "inflow_fen_30m": 100_000, "outflow_fen_30m": 90_000}
    reasons = starting25.evaluate(busy, counters, hits)
    assert [(r.rule_id, r.outcome, r.shadow) for r in reasons] == [
        ("T17_elderly", Outcome.WARN, False),
        ("T20_rapid", Outcome.WARN, False),
    ]


def test_a_young_non_local_applicant_at_four_banks_fires_three_rules(starting25: CompiledRuleset) -> None:
    reasons = starting25.evaluate(OPENING, QUIET_COUNTERS | {"banks_30d": 4}, {})
    assert [(r.rule_id, r.outcome) for r in reasons] == [
        ("K05_many_banks", Outcome.WARN),
        ("K08_non_local", Outcome.WARN),
        ("K09_young_high_limit", Outcome.WARN),
    ]
