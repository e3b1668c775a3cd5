"""µs per evaluation for a 25-rule set shaped like DOMAIN.md's starting rules.

Prints one summary line (see it with `pytest -s`); the bound asserted is
loose on purpose, as these machines are shared and noisy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.domain import EventKind
from service.rules.engine import CompiledRuleset, load_compiled
from service.rules.model import counters_from_names
from tests.unit.rules.conftest import FIXTURES, LISTS

BENCH_COUNTERS = counters_from_names(
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
Request = tuple[dict[str, Any], dict[str, int | float], dict[tuple[str, str], bool]]
QUIET_COUNTERS: dict[str, int | float] = {name: 0 for name in BENCH_COUNTERS}
QUIET_COUNTERS |= {"payee_paid_before": 1, "night_tx_90d": 3}


@pytest.fixture(scope="module")
def bench() -> Iterator[CompiledRuleset]:
    compiled = load_compiled(FIXTURES / "bench25", counters=BENCH_COUNTERS, lists=LISTS)
    yield compiled
    compiled.close()


def _median_us(ruleset: CompiledRuleset, request: Request, repeat: int = 5, number: int = 3_000) -> float:
    facts, counters, list_hits = request
    for _ in range(300):
        ruleset.evaluate(facts, counters, list_hits)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            ruleset.evaluate(facts, counters, list_hits)
        runs.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(runs)


def test_microseconds_per_event(bench: CompiledRuleset) -> None:
    assert len(bench.rules) == 25
    hits = dict.fromkeys(bench.list_checks_for(EventKind.TRANSFER), False)
    quiet: Request = (TRANSFER, QUIET_COUNTERS, hits)
    busy: Request = (
        {**TRANSFER, "transfer.amount_fen": 6_000_000, "payer.age": 65, "person.age": 65},
        QUIET_COUNTERS | {"payee_paid_before": 0, "inflow_fen_30m": 100_000, "outflow_fen_30m": 90_000},
        hits,
    )
    opening: Request = (OPENING, QUIET_COUNTERS | {"banks_30d": 4}, {})
    assert [len(bench.evaluate(*r)) for r in (quiet, busy, opening)] == [0, 2, 3]
    timings = {
        name: _median_us(bench, request) for name, request in (("quiet", quiet), ("busy", busy), ("opening", opening))
    }
    print(
        f"\nrules engine, 25 rules, {bench.shard_count} durable ruleset(s): "
        f"transfer firing nothing {timings['quiet']:.1f} µs, transfer firing 2 {timings['busy']:.1f} µs, "
        f"opening firing 3 {timings['opening']:.1f} µs per evaluation (median of 5)"
    )
    assert all(t < 250 for t in timings.values()), timings
