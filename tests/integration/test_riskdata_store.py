"""The risk-data store against real redis-servers: the request-id claim, budgets, the circuit
breaker and the decision log's backlog, with the shipped rules and counters.

Time that the store's logic reads (the breaker's open time, how long a retry waits for another
attempt) comes from an injected clock that the tests move; nothing sleeps to make time pass, and
nothing asserts how long anything took. A Redis that does not answer is a listening socket nobody
accepts on, or a redis-server of the test's own, SIGSTOPped.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.domain import Decision, Outcome, ScreenRequest
from service.errors import InFlight, RequestIdReused
from service.pipeline import validate
from service.pipeline.facts import facts, identifiers
from service.pipeline.outcome import UNAVAILABLE_RULE_ID, decide
from service.pipeline.screening import Observation, Screener
from service.redis.connection import make_client
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.redis.keys import KeyHasher
from service.riskdata.store import (
    BREAKER_FAILURES,
    BREAKER_OPEN_SECONDS,
    PENDING_CLAIM_MS,
    BoundRiskData,
    RiskDataConfig,
    RiskDataStore,
)
from service.rules.reload import ActiveRules, RulesManager
from tests import samples
from tests.conftest import REPO

pytestmark = pytest.mark.integration

SECRET = bytes.fromhex("5f" * 32)
AMOUNT_FEN = 123_45
# Generous: a shared, busy machine must not make a healthy Redis look over budget.
HEALTHY_BUDGET = 2.0
# Short: spent waiting on a Redis that does not answer.
SHORT_BUDGET = 0.2
BOUND = 30.0  # a hang fails the test within this many seconds instead of at pytest's timeout
T = TypeVar("T")


class Clock:
    """Wall time fixed at the test's start; monotonic time moves when the test says (`advance`, or
    `step` on every read)."""

    def __init__(self) -> None:
        self.wall = datetime.now(UTC)
        self.at = 1000.0
        self.step = 0.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        at = self.at
        self.at += self.step
        return at

    def advance(self, seconds: float) -> None:
        self.at += seconds


@pytest.fixture(scope="module")
def active() -> Iterator[ActiveRules]:
    manager = RulesManager(REPO / "rules")
    yield manager.load()
    manager.close()


@dataclass
class Harness:
    """A RiskDataStore over one Redis and the shipped rules, and the steps of a screening."""

    store: RiskDataStore
    bound: BoundRiskData
    active: ActiveRules
    clock: Clock
    reused: list[int] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def transfer(self, request_id: str, payer: str, amount_fen: int = AMOUNT_FEN) -> ScreenRequest:
        message = samples.transfer(request_id, amount_fen=amount_fen)
        message.transfer.payer_account = payer
        return self.validated(message)

    def validated(self, message: pb.ScreenRequest) -> ScreenRequest:
        return validate.screen_request(message, now=self.clock.now(), bounds=validate.TimeBounds())

    async def observe(self, request: ScreenRequest, deadline: float | None = None) -> Observation:
        request_facts = facts(request, self.active.rates)
        checks = self.active.list_checks_for(request.kind)
        return await self.bound.observe(request, request_facts, identifiers(request), checks, deadline)

    def decision(self, request: ScreenRequest, observation: Observation) -> Decision:
        """What the rules decide on `observation` (as the screener does)."""
        request_facts = facts(request, self.active.rates)
        return decide(
            request_id=request.request_id,
            decision_id=f"dec-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
            kind=request.kind,
            reasons=self.active.evaluate(request_facts, observation.counters, observation.list_hits),
            ruleset_revision=self.active.revision,
            degraded=observation.degraded,
            decided_at=self.clock.now(),
            evaluation_time=timedelta(0),
        )

    async def record(self, request: ScreenRequest, decision: Decision, observation: Observation) -> None:
        await self.bound.record(request, decision, observation, identifiers(request))

    async def screen(self, request: ScreenRequest) -> Decision:
        """The whole screening, through the production screener."""

        @contextmanager
        def session() -> Iterator[Any]:
            yield self

        screener = Screener(
            session=session, clock=self.clock, fail_outcome=Outcome.WARN, new_id=lambda: f"dec-{uuid.uuid4()}"
        )
        return await screener.screen(request)

    # `Screener` leases a session: the harness is one (rules and risk data).
    @property
    def rules(self) -> ActiveRules:
        return self.active

    @property
    def risk_data(self) -> BoundRiskData:
        return self.bound

    async def logged(self) -> list[str]:
        """The decision ids in the decision log stream, in order."""
        entries: Any = await self.store.client.xrange(self.store.log_key)
        return [fields[b"decision_id"].decode() for _, fields in entries]


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(redis_url: str, active: ActiveRules) -> AsyncIterator[MakeHarness]:
    """Harnesses over the session's redis-server (flushed), or over `url`; closed at the end. With
    `warm`, scripts are loaded first, as the server's warm-up does (a Redis that does not answer
    cannot be warmed up)."""
    made: list[Harness] = []

    async def make(url: str | None = None, *, warm: bool = True, **config: Any) -> Harness:
        clock = Clock()
        config.setdefault("budget_seconds", HEALTHY_BUDGET)
        reused: list[int] = []
        store = RiskDataStore(
            client=make_client(url or redis_url, cluster=False),
            hasher=KeyHasher(SECRET),
            clock=clock,
            config=RiskDataConfig(**config),
            max_future_skew_seconds=300,
            on_request_id_reused=lambda: reused.append(1),
        )
        bound = store.for_rules(
            key=active.content_hash, counter_spec=active.counter_spec, where=active.where, lists=active.lists
        )
        harness = Harness(store, bound, active, clock, reused)
        made.append(harness)
        if warm:
            await bound.warm_up()
        return harness

    yield make
    for harness in made:
        harness.store.log.release()
        await harness.store.client.aclose()


def a_payer() -> str:
    """An account nobody else in the session pays from: its counters start at zero."""
    return "6222" + str(uuid.uuid4().int)[:15]


async def bounded(work: Awaitable[T]) -> T:
    async with asyncio.timeout(BOUND):
        return await work


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait for `condition` (checked every 5 ms), within BOUND."""
    async with asyncio.timeout(BOUND):
        while not await condition():
            await asyncio.sleep(0.005)


# --- the claim ------------------------------------------------------------------------------


async def test_the_first_attempt_counts_and_a_retry_gets_the_stored_decision(make_harness: MakeHarness) -> None:
    h = await make_harness()
    payer = a_payer()
    request = h.transfer("claim-1", payer)
    first = await h.screen(request)
    assert not first.degraded and not first.replayed
    retry = await h.screen(request)
    assert retry.replayed and retry.decision_id == first.decision_id and retry.outcome is first.outcome
    # The terminal re-stamps a retry with the time it sends it: still the same request.
    restamped = samples.transfer("claim-1", amount_fen=AMOUNT_FEN)
    restamped.transfer.payer_account = payer
    restamped.occurred_at.CopyFrom(samples.timestamp(h.clock.now() - timedelta(seconds=20)))
    assert (await h.screen(h.validated(restamped))).decision_id == first.decision_id
    # Counted once: the next request of this payer sees two transfers, not four.
    after = await h.observe(h.transfer("claim-2", payer))
    assert after.counters["outflow_24h"] == 2 * AMOUNT_FEN
    assert await h.logged() == [first.decision_id]
    assert h.reused == []


async def test_a_concurrent_retry_waits_for_the_first_attempts_decision(
    make_harness: MakeHarness, redis_url: str
) -> None:
    h = await make_harness()
    payer = a_payer()
    request = h.transfer("concurrent-1", payer)
    first = await h.observe(request)  # claimed: the mark is pending until the decision is recorded
    assert first.previous is None and not first.degraded
    stats = redis.Redis.from_url(redis_url)
    try:
        stats.config_resetstat()
        retry = asyncio.create_task(h.screen(request))

        async def polling() -> bool:  # the retry has found the pending mark and polls for a decision
            return int(stats.info("commandstats").get("cmdstat_get", {}).get("calls", 0)) > 0

        await until(polling)
    finally:
        stats.close()
    assert not retry.done()
    decision = h.decision(request, first)
    await h.record(request, decision, first)
    answered = await bounded(retry)
    assert answered.replayed and answered.decision_id == decision.decision_id
    after = await h.observe(h.transfer("concurrent-2", payer))
    assert after.counters["outflow_24h"] == 2 * AMOUNT_FEN  # the retry counted nothing


async def test_a_concurrent_retry_sees_in_flight_when_the_first_attempt_does_not_decide(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    payer = a_payer()
    request = h.transfer("in-flight-1", payer)
    first = await h.observe(request)
    h.clock.step = 30.0  # the retry waits up to 50 budgets (100 s): at 30 s per clock read, a few polls
    with pytest.raises(InFlight):
        await bounded(h.observe(request))
    h.clock.step = 0.0
    decision = h.decision(request, first)
    await h.record(request, decision, first)  # the first attempt still holds its claim
    assert (await h.screen(request)).decision_id == decision.decision_id
    after = await h.observe(h.transfer("in-flight-2", payer))
    assert after.counters["outflow_24h"] == 2 * AMOUNT_FEN


async def test_a_different_request_under_a_decided_request_id_is_refused(make_harness: MakeHarness) -> None:
    h = await make_harness()
    payer, other_payer = a_payer(), a_payer()
    first = await h.screen(h.transfer("reused-1", payer))
    with pytest.raises(RequestIdReused):
        await h.screen(h.transfer("reused-1", payer, amount_fen=AMOUNT_FEN * 1000))
    with pytest.raises(RequestIdReused):
        await h.screen(h.transfer("reused-1", other_payer))
    assert h.reused == [1, 1]
    # Nothing was counted for the refused requests; the id still answers its own request.
    assert (await h.observe(h.transfer("reused-2", other_payer))).counters["outflow_24h"] == AMOUNT_FEN
    assert (await h.observe(h.transfer("reused-3", payer))).counters["outflow_24h"] == 2 * AMOUNT_FEN
    assert (await h.screen(h.transfer("reused-1", payer))).decision_id == first.decision_id
    assert await h.logged() == [first.decision_id]


async def test_a_different_request_under_a_request_id_in_flight_is_refused_without_waiting(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    payer, other_payer = a_payer(), a_payer()
    await h.observe(h.transfer("reused-in-flight-1", payer))
    with pytest.raises(RequestIdReused):  # the clock does not move: waiting would hang (BOUND)
        await bounded(h.observe(h.transfer("reused-in-flight-1", other_payer)))
    assert h.reused == [1]
    assert (await h.observe(h.transfer("reused-in-flight-2", other_payer))).counters["outflow_24h"] == AMOUNT_FEN


async def test_a_pending_mark_expires_so_a_crashed_attempt_does_not_block_retries(
    make_harness: MakeHarness, redis_url: str
) -> None:
    h = await make_harness()
    request = h.transfer("crashed-1", a_payer())
    crashed = await h.observe(request)  # and never records: its process died
    key = h.store.request_key(request)
    sync = redis.Redis.from_url(redis_url)
    try:
        assert 0 < int(sync.pttl(key)) <= PENDING_CLAIM_MS
        assert sync.get(key) == crashed.claim
        sync.pexpire(key, 1)  # its TTL runs out (Redis expires it; nothing is deleted by hand)

        async def expired() -> bool:
            return not sync.exists(key)

        await until(expired)
    finally:
        sync.close()
    retry = await h.observe(request)
    assert retry.previous is None and not retry.degraded and retry.claim != crashed.claim
    late = h.decision(request, crashed)
    await h.record(request, late, crashed)  # the crashed attempt's record, arriving after all
    decided = h.decision(request, retry)
    await h.record(request, decided, retry)
    # The retry's decision is the one kept for retries (the late one did not take its claim).
    assert (await h.screen(request)).decision_id == decided.decision_id


# --- budgets --------------------------------------------------------------------------------


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


async def test_a_redis_that_never_answers_gives_a_degraded_observation(
    make_harness: MakeHarness, silent_url: str
) -> None:
    h = await make_harness(silent_url, warm=False, budget_seconds=SHORT_BUDGET)
    request = h.transfer("silent-1", a_payer())
    observation = await bounded(h.observe(request))
    assert observation.degraded and observation.counters == {} and observation.list_hits == {}
    assert observation.previous is None and observation.claim  # record() may still keep it
    decision = await bounded(h.screen(h.transfer("silent-2", a_payer())))
    assert decision.degraded
    assert UNAVAILABLE_RULE_ID in [reason.rule_id for reason in decision.reasons]
    assert h.store.log.backlog == 1  # its log entry waits for Redis to answer


async def test_the_callers_deadline_cuts_the_budget(make_harness: MakeHarness, silent_url: str) -> None:
    h = await make_harness(silent_url, warm=False, budget_seconds=3600.0)  # alone, the budget would never end
    request = h.transfer("deadline-1", a_payer())
    observation = await bounded(h.observe(request, deadline=h.clock.monotonic() + SHORT_BUDGET))
    assert observation.degraded


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, to SIGSTOP; never left stopped."""
    server = EmbeddedRedis(tmp_path / "redis", RedisOptions(persistent=False, port=0))
    server.start()
    yield server
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGCONT)
    server.stop()


@contextmanager
def stopped(server: EmbeddedRedis) -> Iterator[None]:
    """`server` SIGSTOPped: it keeps its connections and reads nothing until it is continued."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_the_breaker_opens_after_repeated_failures_and_half_opens_after_its_open_time(
    make_harness: MakeHarness, own_redis: EmbeddedRedis
) -> None:
    h = await make_harness(own_redis.url, budget_seconds=SHORT_BUDGET)

    def tripped() -> bool:
        return h.store.breaker.tripped

    assert not (await h.observe(h.transfer("warm", a_payer()))).degraded  # connected
    with stopped(own_redis):
        for n in range(BREAKER_FAILURES):
            assert not tripped()
            assert (await bounded(h.observe(h.transfer(f"stopped-{n}", a_payer())))).degraded
    assert tripped()
    # Redis answers again, but the breaker is open: requests do not ask it.
    payer = a_payer()
    assert (await h.observe(h.transfer("open-1", payer))).degraded
    h.clock.advance(BREAKER_OPEN_SECONDS / 2)
    assert (await h.observe(h.transfer("open-2", payer))).degraded
    h.clock.advance(BREAKER_OPEN_SECONDS / 2)
    probe = await bounded(h.observe(h.transfer("probe", payer)))  # half-open: this one asks
    assert not probe.degraded and not tripped()
    # Only the probe reached Redis: the payer's first two transfers were never counted.
    assert probe.counters["outflow_24h"] == AMOUNT_FEN


# --- the decision log's backlog -------------------------------------------------------------


async def test_entries_held_back_by_the_open_breaker_reach_the_log_later_once(
    make_harness: MakeHarness, tmp_path: Path
) -> None:
    spool = tmp_path / "decision-log.spool"
    h = await make_harness(log_spool=spool)
    for _ in range(BREAKER_FAILURES):
        h.store.breaker.failure()  # as after three round trips that failed
    decisions = [await h.screen(h.transfer(f"held-{n}", a_payer())) for n in range(3)]
    assert all(decision.degraded for decision in decisions)
    assert await h.logged() == []  # nothing was sent
    assert h.store.log.backlog == 3 and len(spool.read_bytes().splitlines()) == 3
    writer = asyncio.create_task(h.store.log.run())  # the background writer the server runs
    try:

        async def written() -> bool:
            return h.store.log.backlog == 0

        await until(written)
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
    assert sorted(await h.logged()) == sorted(decision.decision_id for decision in decisions)
    assert h.store.log.written_later == 3
    assert spool.read_bytes() == b""  # emptied once the backlog is written
    assert await h.store.close() == 0


async def test_a_record_sent_to_a_stopped_redis_reaches_the_log_once(
    make_harness: MakeHarness, own_redis: EmbeddedRedis
) -> None:
    h = await make_harness(own_redis.url, budget_seconds=SHORT_BUDGET)
    requests = [h.transfer(f"stopped-record-{n}", a_payer()) for n in range(2)]
    observations = [await h.observe(request) for request in requests]
    assert not any(observation.degraded for observation in observations)
    decisions = [h.decision(request, observation) for request, observation in zip(requests, observations, strict=True)]
    with stopped(own_redis):
        for request, decision, observation in zip(requests, decisions, observations, strict=True):
            await bounded(h.record(request, decision, observation))  # over budget: deferred, sent
        assert h.store.log.backlog == 2
    # Redis reads the writes it held when it resumes; the backlog writes them again; LOG_ONCE
    # keeps one copy of each, whichever lands first.
    assert await bounded(h.store.close(budget_seconds=BOUND)) == 0
    assert sorted(await h.logged()) == sorted(decision.decision_id for decision in decisions)
    assert h.store.log.written_later + h.store.log.copies_skipped == 2


async def test_the_fold_claim_seam_claims_in_a_round_trip_of_its_own(make_harness: MakeHarness, redis_url: str) -> None:
    """`RiskDataConfig.fold_claim=False` (what `benchmarks.experiments` measures): the claim is an
    EVAL of its own before the counters' call, and the answers are the same."""
    folded, separate = await make_harness(), await make_harness(fold_claim=False)
    stats = redis.Redis.from_url(redis_url)

    def evals() -> int:
        return int(stats.info("commandstats").get("cmdstat_eval", {}).get("calls", 0))

    try:
        stats.config_resetstat()
        await folded.observe(folded.transfer("folded-1", a_payer()))
        assert evals() == 0
        await separate.observe(separate.transfer("separate-0", a_payer()))
        assert evals() == 1
    finally:
        stats.close()
    h = separate
    payer = a_payer()
    request = h.transfer("separate-1", payer)
    first = await h.screen(request)
    assert (await h.screen(request)).decision_id == first.decision_id
    with pytest.raises(RequestIdReused):
        await h.screen(h.transfer("separate-1", a_payer()))
    assert (await h.observe(h.transfer("separate-2", payer))).counters["outflow_24h"] == 2 * AMOUNT_FEN
