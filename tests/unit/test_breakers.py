"""Rule breakers, the pure part: the share arithmetic, the window's buckets, demotion in the pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from service.domain import EventKind, Outcome, Reason, ScreenRequest
from service.pipeline.breakers import (
    BUCKETS,
    Breaker,
    BreakerWatch,
    blocked_by,
    demote,
    length_text,
    share_text,
    tripped,
    window_buckets,
)
from service.pipeline.screening import Observation, Screener
from service.redis.keys import KeyHasher
from service.redis.mux import pack_command
from service.redis.pipeline import DirectPipeline
from service.riskdata.breakers import RuleBreakers
from service.riskdata.records import entry_document
from tests.unit.test_facts import EVENTS, OUTLET
from tests.unit.test_screening import RiskData, Rules, Session

TWO_PERCENT = Breaker(share_ppm=20_000, window_seconds=600, min_events=200)


def test_a_breaker_trips_strictly_above_its_share_and_only_with_enough_events() -> None:
    assert not tripped(blocks=4, events=200, breaker=TWO_PERCENT)  # exactly 2 %
    assert tripped(blocks=5, events=200, breaker=TWO_PERCENT)  # 2.5 %
    assert not tripped(blocks=199, events=199, breaker=TWO_PERCENT)  # 100 %, but 199 < min_events
    assert tripped(blocks=200, events=200, breaker=TWO_PERCENT)
    assert not tripped(blocks=0, events=10_000, breaker=TWO_PERCENT)
    # Whole-number arithmetic: no float rounding at the edge (1 in 3 against 33.3333 %).
    third = Breaker(share_ppm=333_333, window_seconds=60, min_events=3)
    assert tripped(blocks=1, events=3, breaker=third)
    assert not tripped(blocks=1, events=3, breaker=Breaker(share_ppm=333_334, window_seconds=60, min_events=3))
    # 100 % never trips: a rule cannot block more decisions than there are.
    everything = Breaker(share_ppm=1_000_000, window_seconds=60, min_events=1)
    assert not tripped(blocks=10, events=10, breaker=everything)


def test_the_window_is_twenty_buckets_ending_with_the_current_one() -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    buckets = window_buckets(now_ms, TWO_PERCENT)
    assert len(buckets) == BUCKETS == 20
    assert TWO_PERCENT.bucket_ms == 30_000
    assert buckets[-1] == now_ms // 30_000
    # A decision one window later falls in a bucket the window no longer holds.
    assert buckets[-1] not in window_buckets(now_ms + 600_000, TWO_PERCENT)
    assert buckets[-1] in window_buckets(now_ms + 600_000 - 30_000, TWO_PERCENT)


@pytest.mark.parametrize(
    ("breaker", "problem"),
    [
        ({"share_ppm": 0, "window_seconds": 600, "min_events": 1}, "share_ppm"),
        ({"share_ppm": 1_000_001, "window_seconds": 600, "min_events": 1}, "share_ppm"),
        ({"share_ppm": 1, "window_seconds": 59, "min_events": 1}, "window_seconds"),
        ({"share_ppm": 1, "window_seconds": 86_401, "min_events": 1}, "window_seconds"),
        ({"share_ppm": 1, "window_seconds": 60, "min_events": 0}, "min_events"),
    ],
)
def test_a_breaker_out_of_bounds_cannot_be_made(breaker: dict[str, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Breaker(**breaker)


def test_texts_as_rule_files_write_them() -> None:
    shares = [share_text(p) for p in (20_000, 5_000, 1, 1_000_000, 123_400)]
    assert shares == ["2%", "0.5%", "0.0001%", "100%", "12.34%"]
    assert [length_text(s) for s in (60, 600, 3600, 5400, 86_400, 90)] == ["1m", "10m", "1h", "90m", "1d", "90s"]
    assert str(TWO_PERCENT) == "max_block_share 2%, window 10m, min_events 200"


BLOCK = Reason("T15", Outcome.BLOCK, "涉诈", "fraud")
WARN = Reason("T19", Outcome.WARN, "跑分", "mule")
SHADOW_BLOCK = Reason("T99", Outcome.BLOCK, "试行", "trial", shadow=True)


def test_only_enforced_blocks_count_as_the_rules_blocks() -> None:
    assert blocked_by([BLOCK, WARN, SHADOW_BLOCK]) == frozenset({"T15"})
    assert blocked_by([]) == frozenset()


def test_demote_turns_only_the_demoted_rules_shadow() -> None:
    demoted = demote([BLOCK, WARN, SHADOW_BLOCK], frozenset({"T15", "T99"}))
    assert [(r.rule_id, r.shadow) for r in demoted] == [("T15", True), ("T19", False), ("T99", True)]
    assert demoted[0].message_zh == BLOCK.message_zh and demoted[0].outcome is Outcome.BLOCK
    assert demote([BLOCK], frozenset()) == [BLOCK]


class _Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return 1.0


def _screener(risk: RiskData) -> Screener:
    @contextmanager
    def session() -> Iterator[Session]:
        yield Session(Rules(), risk)

    return Screener(session, _Clock(), new_id=lambda: "decision-1")


async def test_a_demoted_rule_fires_as_shadow_and_no_longer_decides() -> None:
    hits = {("fraud_accounts", "transfer.payee_account"): True}
    transfer = ScreenRequest("r-1", OUTLET, datetime.now(UTC), EVENTS["transfer"])
    enforced = await _screener(RiskData(Observation(list_hits=hits))).screen(transfer)
    assert enforced.outcome is Outcome.BLOCK
    risk = RiskData(Observation(list_hits=hits, counters={"payers_in_1h": 6}, demoted=frozenset({"T15"})))
    decision = await _screener(risk).screen(transfer)
    assert decision.outcome is Outcome.WARN  # T19 decides; T15 is reported, as shadow
    assert [(r.rule_id, r.shadow) for r in decision.reasons] == [("T15", True), ("T19", False)]
    assert risk.recorded == [decision]


def test_the_log_entry_document_lists_the_demoted_rules() -> None:
    document = entry_document("1-0", {b"rules": b"~T15,T19", b"demoted": b"T15"})
    assert document["rules"] == ["~T15", "T19"] and document["demoted"] == ["T15"]
    assert entry_document("1-0", {"rules": ""})["demoted"] == []


def test_the_prepared_call_is_the_command_redis_py_would_send() -> None:
    watches = tuple(
        BreakerWatch(f"R{i}", f"R{i}@{i:012x}", frozenset({EventKind.TRANSFER}), TWO_PERCENT) for i in range(3)
    )
    breakers = RuleBreakers(object(), KeyHasher(b"k" * 32))
    (call,) = breakers.prepare(watches).calls
    flags = [0, 1, 0]
    args = call.args(breakers.sha, 1_234_567, flags)
    assert args[:6] == ["EVALSHA", breakers.sha, 3, "rg:brk:{R0@000000000000}", "rg:brk:{R1@000000000001}",
                        "rg:brk:{R2@000000000002}"]  # fmt: skip
    assert call.packed(1_234_567, flags) == pack_command(args)
    pipe = DirectPipeline(lambda packed, count: None, None)  # type: ignore[arg-type, return-value]
    calls = breakers.queue(pipe, breakers.prepare(watches), frozenset({"R1"}), 1_234_567)
    assert calls is not None and calls.flags == ([0, 1, 0],) and len(pipe) == 1
    assert breakers.queue(pipe, breakers.prepare(()), frozenset(), 1) is None
