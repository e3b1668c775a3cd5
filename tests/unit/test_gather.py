"""Gather: concurrent calls screened in batches, each answered with its own decision or error
(pure asyncio; the batch function is a recorder, not the pipeline)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from service.domain import Decision, EventKind, Outcome, ScreenRequest
from service.errors import RequestIdReused, RiskgateError
from service.pipeline.gather import Gather
from service.pipeline.validate import screen_request
from tests import samples


def _request(n: int) -> ScreenRequest:
    return screen_request(samples.transfer(f"req-{n}"), now=datetime.now(UTC))


def _decision(request: ScreenRequest) -> Decision:
    return Decision(
        request_id=request.request_id,
        decision_id=f"d-{request.request_id}",
        kind=EventKind.TRANSFER,
        outcome=Outcome.ALLOW,
        reasons=(),
        ruleset_revision="r",
        degraded=False,
        decided_at=datetime.now(UTC),
        evaluation_time=timedelta(0),
    )


class Recorder:
    """screen_many that records its batches and answers each request (an error for ids in `refuse`)."""

    def __init__(self, refuse: frozenset[str] = frozenset(), hold: asyncio.Event | None = None) -> None:
        self.batches: list[tuple[list[str], float | None]] = []
        self.refuse = refuse
        self.hold = hold
        self.running = 0
        self.most_running = 0

    async def __call__(
        self, requests: Sequence[ScreenRequest], deadline: float | None
    ) -> list[Decision | RiskgateError]:
        self.batches.append(([r.request_id for r in requests], deadline))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            await asyncio.sleep(0)
        finally:
            self.running -= 1
        return [RequestIdReused("reused") if r.request_id in self.refuse else _decision(r) for r in requests]


async def test_calls_arriving_together_are_one_batch_each_answered_with_its_own() -> None:
    recorder = Recorder()
    gather = Gather(recorder, limit=32)
    requests = [_request(n) for n in range(5)]
    decisions = await asyncio.gather(*(gather.screen(r) for r in requests))
    assert [d.request_id for d in decisions] == [r.request_id for r in requests]
    assert recorder.batches == [([r.request_id for r in requests], None)]


async def test_a_batch_takes_at_most_limit_and_at_most_running_batches_decide() -> None:
    hold = asyncio.Event()
    recorder = Recorder(hold=hold)
    gather = Gather(recorder, limit=3, running=2)
    calls = [asyncio.ensure_future(gather.screen(_request(n))) for n in range(8)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert [ids for ids, _ in recorder.batches] == [["req-0", "req-1", "req-2"], ["req-3", "req-4", "req-5"]]
    hold.set()
    decisions = await asyncio.gather(*calls)
    assert [d.request_id for d in decisions] == [f"req-{n}" for n in range(8)]
    assert [ids for ids, _ in recorder.batches][2] == ["req-6", "req-7"]
    assert recorder.most_running == 2


async def test_what_arrives_while_a_batch_decides_is_the_next_batch() -> None:
    hold = asyncio.Event()
    recorder = Recorder(hold=hold)
    gather = Gather(recorder, limit=32, running=1)
    first = asyncio.ensure_future(gather.screen(_request(0)))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(gather.screen(_request(n))) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    assert [ids for ids, _ in recorder.batches] == [["req-0"]]
    hold.set()
    await asyncio.gather(first, *later)
    assert [ids for ids, _ in recorder.batches] == [["req-0"], ["req-1", "req-2", "req-3"]]


async def test_a_refused_request_raises_its_own_error_and_the_others_are_answered() -> None:
    gather = Gather(Recorder(refuse=frozenset({"req-1"})), limit=32)
    results = await asyncio.gather(*(gather.screen(_request(n)) for n in range(3)), return_exceptions=True)
    assert isinstance(results[1], RequestIdReused)
    assert [r.request_id for r in results if isinstance(r, Decision)] == ["req-0", "req-2"]


async def test_a_failing_batch_fails_each_of_its_callers() -> None:
    async def broken(requests: Sequence[ScreenRequest], deadline: float | None) -> list[Decision | RiskgateError]:
        raise RuntimeError("pipeline bug")

    gather = Gather(broken, limit=32)
    results = await asyncio.gather(*(gather.screen(_request(n)) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError, match="pipeline bug"):  # and the next batch again
        await gather.screen(_request(9))


async def test_the_batch_waits_until_the_earliest_deadline() -> None:
    recorder = Recorder()
    gather = Gather(recorder, limit=32)
    await asyncio.gather(gather.screen(_request(0), 9.0), gather.screen(_request(1)), gather.screen(_request(2), 4.0))
    assert recorder.batches == [(["req-0", "req-1", "req-2"], 4.0)]


async def test_a_caller_going_away_does_not_stop_the_batch() -> None:
    hold = asyncio.Event()
    recorder = Recorder(hold=hold)
    gather = Gather(recorder, limit=32)
    gone = asyncio.ensure_future(gather.screen(_request(0)))
    stays = asyncio.ensure_future(gather.screen(_request(1)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gone.cancel()
    hold.set()
    assert (await stays).request_id == "req-1"
    assert gone.cancelled()
    assert recorder.batches == [(["req-0", "req-1"], None)]


async def test_limit_one_screens_each_call_by_itself() -> None:
    recorder = Recorder(refuse=frozenset({"req-1"}))
    gather = Gather(recorder, limit=1)
    results = await asyncio.gather(*(gather.screen(_request(n)) for n in range(3)), return_exceptions=True)
    assert recorder.batches == [(["req-0"], None), (["req-1"], None), (["req-2"], None)]
    assert isinstance(results[1], RequestIdReused)


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Gather(Recorder(), limit=0)
