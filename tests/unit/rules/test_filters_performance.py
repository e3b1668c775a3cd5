"""µs per request for the counters' `where` filters: Python closures (used) against durable_rules (measured, not used).

Prints one summary line (see it with `pytest -s`). The durable variant puts
one rule per filter in a durable ruleset and evaluates it once per request,
which is the best durable can do for a per-counter predicate; the closures
answer each `counters_to_update` call directly. The bound asserted is loose
on purpose, as these machines are shared and noisy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from service.domain import EventKind, Outcome
from service.pipeline.facts import Scalar
from service.riskdata.counters.spec import CounterSpec, Filter, counters_to_update, load_counters
from service.rules.check import collect_reads
from service.rules.compiler import compile_ruleset
from service.rules.engine import build_ruleset
from service.rules.filters import compile_filters
from service.rules.model import Rule, RuleSet
from service.rules.templates import parse_template
from tests.unit.rules.conftest import REPO

TRANSFER: dict[str, Scalar] = {
    "event": "transfer",
    "outlet.institution_id": "ICBC",
    "outlet.outlet_id": "440101001",
    "outlet.clerk_id": "",
    "outlet.region_code": "440101",
    "outlet.province": "44",
    "local_hour": 2,
    "weekday": 3,
    "payer.age": 45,
    "person.age": 45,
    "transfer.amount_fen": 4_800_000,
    "transfer.channel": "mobile",
    "transfer.currency": "CNY",
}


def _median_us(call: Callable[[], object], number: int) -> float:
    for _ in range(number // 10):
        call()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            call()
        runs.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(runs)


def _durable_filters(spec: CounterSpec) -> tuple[RuleSet, dict[Filter, str]]:
    filters = compile_filters(spec)
    rules, ids = [], {}
    for index, (condition, checked) in enumerate(filters.conditions.items()):
        kinds = {k for counter in spec.counters for k, f in counter.where if f == condition}
        ids[condition] = f"where_{index}"
        rules.append(
            Rule(
                id=f"where_{index}",
                on=tuple(k for k in EventKind if k in kinds),
                when=checked,
                when_text=condition.text,
                outcome=Outcome.WARN,
                reason_zh=parse_template("-"),
                reason_en=parse_template("-"),
                reads=collect_reads(checked),
            )
        )
    return RuleSet("filters", tuple(rules), ("counters.yaml",)), ids


def test_microseconds_per_request_for_the_shipped_filters() -> None:
    spec = load_counters(REPO / "rules" / "counters.yaml")
    closures = compile_filters(spec)
    expected = counters_to_update(spec, EventKind.TRANSFER, TRANSFER, closures)
    assert any(counter.where_for(EventKind.TRANSFER) for counter in spec.counters)

    ruleset, ids = _durable_filters(spec)
    compiled = build_ruleset(compile_ruleset(ruleset))
    try:

        def with_durable() -> frozenset[str]:
            fired = {reason.rule_id for reason in compiled.evaluate(TRANSFER, {}, {})}
            return counters_to_update(spec, EventKind.TRANSFER, TRANSFER, lambda f, _: ids[f] in fired)

        assert with_durable() == expected
        timings = {
            "no filter": _median_us(
                lambda: counters_to_update(spec, EventKind.TRANSFER, TRANSFER, lambda f, _: True), 20_000
            ),
            "closures": _median_us(lambda: counters_to_update(spec, EventKind.TRANSFER, TRANSFER, closures), 20_000),
            "durable": _median_us(with_durable, 3_000),
        }
    finally:
        compiled.close()
    some_filter = next(iter(closures.conditions))
    one_call = _median_us(lambda: closures(some_filter, TRANSFER), 50_000)
    print(
        f"\ncounter filters ({len(closures)} where filters in rules/counters.yaml): counters_to_update on a "
        f"transfer {timings['no filter']:.1f} µs with no filter, {timings['closures']:.1f} µs with closures "
        f"({one_call:.2f} µs per predicate call), {timings['durable']:.1f} µs with one durable evaluation"
    )
    assert timings["closures"] < timings["durable"]
    assert one_call < 20
