"""The risk-data store's pure parts, with an injected clock: the circuit breaker, the budgets, the
request-id checks, and waiting for another attempt's decision (over a fake Redis client).

Nothing here sleeps to move time: the clock is a fake that the test advances. (Against a real
redis-server: tests/integration/test_riskdata_store.py.)
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from service.domain import Decision, EventKind
from service.errors import InFlight, RequestIdReused, StoreUnavailable
from service.pipeline.outcome import decide
from service.redis.keys import KeyHasher
from service.riskdata.records import encode_record
from service.riskdata.store import BREAKER_FAILURES, BREAKER_OPEN_SECONDS, CircuitBreaker, RiskDataConfig, RiskDataStore

SECRET = bytes.fromhex("5f" * 32)
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


class FakeClock:
    """Monotonic time that moves only when told to: by `advance`, or by `step` on every read."""

    def __init__(self, at: float = 1000.0) -> None:
        self.at = at
        self.step = 0.0

    def now(self) -> datetime:
        return AT

    def monotonic(self) -> float:
        at = self.at
        self.at += self.step
        return at

    def advance(self, seconds: float) -> None:
        self.at += seconds


class FakeRedis:
    """What `await_other_attempt` asks of the client: GET, answering from a script of replies."""

    def __init__(self, replies: list[bytes | None]) -> None:
        self.replies = replies
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return self.replies[min(self.gets, len(self.replies)) - 1]


def make_store(client: Any = None, clock: FakeClock | None = None, **config: Any) -> tuple[RiskDataStore, list[int]]:
    reused: list[int] = []
    store = RiskDataStore(
        client=client,
        hasher=KeyHasher(SECRET),
        clock=clock or FakeClock(),
        config=RiskDataConfig(**config),
        max_future_skew_seconds=300,
        on_request_id_reused=lambda: reused.append(1),
    )
    return store, reused


def a_decision(request_id: str = "req-1") -> Decision:
    return decide(
        request_id=request_id,
        decision_id="dec-1",
        kind=EventKind.TRANSFER,
        reasons=[],
        ruleset_revision="test@1",
        degraded=False,
        decided_at=AT,
        evaluation_time=timedelta(0),
    )


# --- the circuit breaker ------------------------------------------------------------------


def test_the_breaker_stays_closed_below_its_failure_count() -> None:
    breaker = CircuitBreaker(FakeClock())
    for _ in range(BREAKER_FAILURES - 1):
        breaker.failure()
    assert breaker.allow() and not breaker.tripped


def test_the_breaker_opens_after_n_failures_in_a_row_and_half_opens_after_its_open_time() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock)
    for _ in range(BREAKER_FAILURES):
        breaker.failure()
    assert breaker.tripped and not breaker.allow()
    clock.advance(BREAKER_OPEN_SECONDS / 2)
    assert not breaker.allow()
    clock.advance(BREAKER_OPEN_SECONDS / 2)
    assert breaker.allow() and breaker.allow()  # half-open: every request may probe ...
    assert breaker.tripped  # ... and it counts as failing until one succeeds
    breaker.success()
    assert breaker.allow() and not breaker.tripped


def test_a_failed_probe_opens_the_breaker_for_another_open_time() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failures=2, open_seconds=5.0)
    breaker.failure()
    breaker.failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    clock.advance(4.5)
    assert not breaker.allow()
    clock.advance(0.5)
    assert breaker.allow()


def test_a_success_between_failures_keeps_the_breaker_closed() -> None:
    breaker = CircuitBreaker(FakeClock())
    for _ in range(5):
        for _ in range(BREAKER_FAILURES - 1):
            breaker.failure()
        breaker.success()
    assert breaker.allow() and not breaker.tripped


def test_the_store_breaker_uses_the_injected_clock() -> None:
    clock = FakeClock()
    store, _ = make_store(clock=clock)
    for _ in range(BREAKER_FAILURES):
        store.breaker.failure()
    assert not store.breaker.allow()
    clock.advance(BREAKER_OPEN_SECONDS)
    assert store.breaker.allow()


# --- budgets --------------------------------------------------------------------------------


def test_the_budget_is_the_configured_one_without_a_deadline_or_with_a_distant_one() -> None:
    clock = FakeClock()
    store, _ = make_store(clock=clock, budget_seconds=0.010)
    assert store.budget(None) == 0.010
    assert store.budget(clock.monotonic() + 60) == 0.010


def test_the_budget_is_cut_to_leave_room_to_answer_before_the_deadline() -> None:
    clock = FakeClock()
    store, _ = make_store(clock=clock, budget_seconds=0.010)
    assert store.budget(clock.monotonic() + 0.007) == pytest.approx(0.005)
    assert store.budget(clock.monotonic() + 0.001) == 0.0  # never negative
    assert store.budget(clock.monotonic() - 5) == 0.0  # a deadline already past


async def _answer(value: int) -> int:
    await asyncio.sleep(0)
    return value


async def _fail(error: BaseException) -> NoReturn:
    await asyncio.sleep(0)
    raise error


@pytest.mark.parametrize(
    "error",
    [RedisConnectionError("refused"), ConnectionResetError("reset"), TimeoutError(), ResponseError("LOADING")],
    ids=["redis-py", "OSError", "timeout", "error reply"],
)
async def test_a_failed_round_trip_is_store_unavailable_and_feeds_the_breaker(error: BaseException) -> None:
    store, _ = make_store()
    with pytest.raises(StoreUnavailable, match=f"redis: {type(error).__name__}"):
        await store.bounded(_fail(error), None)
    assert store.breaker.allow()
    for _ in range(BREAKER_FAILURES - 1):
        with pytest.raises(StoreUnavailable):
            await store.bounded(_fail(error), None)
    assert store.breaker.tripped


async def test_a_store_unavailable_from_the_work_passes_through_and_counts() -> None:
    store, _ = make_store()
    reason = StoreUnavailable("redis: NOSCRIPT twice")
    with pytest.raises(StoreUnavailable) as raised:
        await store.bounded(_fail(reason), None)
    assert raised.value is reason
    for _ in range(BREAKER_FAILURES - 1):
        with pytest.raises(StoreUnavailable):
            await store.bounded(_fail(StoreUnavailable("again")), None)
    assert store.breaker.tripped


async def test_work_that_never_answers_ends_at_its_budget() -> None:
    clock = FakeClock()
    store, _ = make_store(clock=clock, budget_seconds=3600.0)
    never = asyncio.Event()
    async with asyncio.timeout(60):  # a hang fails here, not at pytest's timeout
        with pytest.raises(StoreUnavailable, match="redis: TimeoutError"):
            await store.bounded(never.wait(), clock.monotonic())  # the deadline leaves no budget


async def test_the_open_breaker_sends_nothing_and_a_probe_after_the_open_time_closes_it() -> None:
    clock = FakeClock()
    store, _ = make_store(clock=clock)
    for _ in range(BREAKER_FAILURES):
        with pytest.raises(StoreUnavailable):
            await store.bounded(_fail(OSError("down")), None)
    ran: list[str] = []

    async def work() -> int:
        ran.append("sent")
        return 7

    with pytest.raises(StoreUnavailable, match="circuit open"):
        await store.bounded(work(), None)  # closed, never run: no "never awaited" warning either
    assert ran == []
    clock.advance(BREAKER_OPEN_SECONDS)
    assert await store.bounded(work(), None) == 7
    assert ran == ["sent"] and not store.breaker.tripped


async def test_a_success_resets_the_failure_count() -> None:
    store, _ = make_store()
    for _ in range(BREAKER_FAILURES - 1):
        with pytest.raises(StoreUnavailable):
            await store.bounded(_fail(OSError("down")), None)
    assert await store.bounded(_answer(1), None) == 1
    with pytest.raises(StoreUnavailable):
        await store.bounded(_fail(OSError("down")), None)
    assert not store.breaker.tripped


# --- the request id ---------------------------------------------------------------------------


def test_attempt_marks_carry_the_fingerprint_and_differ_per_attempt() -> None:
    store, _ = make_store()
    other, _ = make_store()
    marks = {store.attempt_mark(b"fp") for _ in range(100)} | {other.attempt_mark(b"fp")}
    assert len(marks) == 101
    assert all(mark.startswith(b"\x00pending:fp:") for mark in marks)


def test_the_same_fingerprint_or_a_legacy_record_passes() -> None:
    store, reused = make_store()
    store.check_same(b"fp", b"fp")
    store.check_same(None, b"fp")  # stored before fingerprints were kept
    assert reused == []


def test_a_different_fingerprint_is_request_id_reused_and_counted() -> None:
    store, reused = make_store()
    with pytest.raises(RequestIdReused, match="request_id was already used for a different request"):
        store.check_same(b"other", b"fp")
    assert reused == [1]


async def test_a_retry_waiting_for_another_attempt_gets_its_decision() -> None:
    store, _ = make_store()
    client = FakeRedis([b"\x00pending:fp:x:1", b"\x00pending:fp:x:1", encode_record(b"fp", a_decision())])
    store.client = client
    decision = await store.await_other_attempt("rg:r:{k}", b"fp", None)
    assert decision.decision_id == "dec-1" and decision.replayed
    assert client.gets == 3


async def test_a_retry_waiting_for_another_attempt_refuses_a_different_request() -> None:
    store, reused = make_store()
    store.client = FakeRedis([encode_record(b"other", a_decision())])
    with pytest.raises(RequestIdReused):
        await store.await_other_attempt("rg:r:{k}", b"fp", None)
    assert reused == [1]


async def test_a_retry_gives_up_with_in_flight_after_its_wait() -> None:
    clock = FakeClock()
    store, _ = make_store(clock=clock, budget_seconds=0.010)
    client = FakeRedis([b"\x00pending:fp:x:1"])  # the other attempt never decides
    store.client = client
    clock.step = 0.2  # give_up = start + 0.5 s: two polls, then InFlight
    with pytest.raises(InFlight, match="still in progress; retry shortly"):
        await store.await_other_attempt("rg:r:{k}", b"fp", None)
    assert client.gets == 2


async def test_a_retry_gives_up_early_enough_to_answer_before_its_deadline() -> None:
    clock = FakeClock()
    store, _ = make_store(clock=clock, budget_seconds=1.0)  # without a deadline it would wait 50 s
    client = FakeRedis([b"\x00pending:fp:x:1"])
    store.client = client
    clock.step = 1 / 64  # exact in binary: the comparisons below are exact
    deadline = clock.at + 0.25  # gives up 50 ms before it, at 0.2 s
    with pytest.raises(InFlight):
        await store.await_other_attempt("rg:r:{k}", b"fp", deadline)
    # Each poll reads the clock twice (the loop's check, the poll's budget): checks at 1/64,
    # 3/64, ... 11/64 s poll; the one at 13/64 s (past 0.2 s) gives up.
    assert client.gets == 6


async def test_waiting_for_another_attempt_stops_when_the_breaker_is_open() -> None:
    clock = FakeClock()
    store, _ = make_store(clock=clock)
    for _ in range(BREAKER_FAILURES):
        store.breaker.failure()
    store.client = FakeRedis([encode_record(b"fp", a_decision())])
    with pytest.raises(StoreUnavailable, match="circuit open"):
        await store.await_other_attempt("rg:r:{k}", b"fp", None)
