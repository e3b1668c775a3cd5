"""Clients served in turn (service.pipeline.turns): the order lanes are woken in, a lone task, a
cancelled one, a slice waiting behind the callbacks ready (for at most DEFER passes), and the
per-lane limit on batches deciding at once."""

from __future__ import annotations

import asyncio

import pytest

from service.pipeline.turns import DEFER, LANE, SLICE, Lanes, share_loop, turns


async def _worker(lane: str, name: str, slices: int, order: list[str]) -> None:
    LANE.set(lane)
    for _ in range(slices):
        await share_loop(0)
        order.append(name)


def test_lanes_take_turns_one_task_per_turn() -> None:
    """A lane with three tasks parked and a lane with one, parked after them: the lone one is
    served second, not last."""

    async def main() -> list[str]:
        order: list[str] = []
        greedy = [asyncio.create_task(_worker("greedy", f"g{i}", 1, order)) for i in range(3)]
        victim = asyncio.create_task(_worker("victim", "v", 1, order))
        await asyncio.gather(*greedy, victim)
        return order

    assert asyncio.run(main()) == ["g0", "v", "g1", "g2"]


def test_a_lane_that_parks_again_goes_to_the_back() -> None:
    async def main() -> list[str]:
        order: list[str] = []
        await asyncio.gather(_worker("a", "a", 3, order), _worker("b", "b", 3, order))
        return order

    assert asyncio.run(main()) == ["a", "b"] * 3


def test_a_lone_task_waits_one_pass_and_others_run_meanwhile() -> None:
    async def main() -> list[str]:
        order: list[str] = []

        async def other() -> None:
            order.append("other")

        task = asyncio.create_task(_worker("a", "parked", 1, order))
        await asyncio.sleep(0)  # parked now; `other` becomes ready after it parked
        await asyncio.gather(task, other())
        assert turns().parked() == 0
        return order

    assert asyncio.run(main()) == ["other", "parked"]


async def _steps(name: str, count: int, order: list[str]) -> None:
    """A call's steps, one per pass: each is ready when the one before it ends."""
    for step in range(count):
        order.append(f"{name}{step}")
        await asyncio.sleep(0)


def test_a_slice_waits_while_other_callbacks_are_ready() -> None:
    """A call's next steps run before a parked slice, as long as they keep the loop busy for fewer
    than DEFER passes; without the wait the slice would run after the call's first step."""

    async def main() -> list[str]:
        order: list[str] = []
        parked = asyncio.create_task(_worker("stream", "slice", 1, order))
        await asyncio.sleep(0)  # parked now
        await asyncio.gather(parked, _steps("call", 3, order))
        return order

    order = asyncio.run(main())
    assert order == ["call0", "call1", "call2", "slice"]


def test_a_busy_loop_delays_a_slice_by_at_most_defer_passes() -> None:
    async def main() -> int:
        order: list[str] = []
        busy = asyncio.create_task(_steps("busy", 10 * DEFER, order))
        await asyncio.sleep(0)
        before = len(order)
        await _worker("stream", "slice", 1, order)  # parks while `busy` always has a step ready
        passes = order.index("slice") - before  # busy's steps run meanwhile, one per pass
        busy.cancel()
        return passes

    passes = asyncio.run(main())
    assert DEFER <= passes <= DEFER + 2


def test_share_loop_parks_only_every_slice() -> None:
    async def main() -> list[int]:
        seen: list[int] = []
        for done in range(2 * SLICE + 1):
            waiting = asyncio.create_task(share_loop(done))
            await asyncio.sleep(0)  # the task ran to its first suspension
            seen.append(turns().parked())
            await waiting
        return seen

    parked = asyncio.run(main())
    assert [done for done, count in enumerate(parked) if count] == [0, SLICE, 2 * SLICE]


def test_a_cancelled_parked_task_is_skipped() -> None:
    async def main() -> list[str]:
        order: list[str] = []
        doomed = asyncio.create_task(_worker("a", "doomed", 1, order))
        kept = asyncio.create_task(_worker("b", "kept", 1, order))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.gather(doomed, kept, return_exceptions=True)
        assert turns().parked() == 0
        return order

    assert asyncio.run(main()) == ["kept"]


def test_a_lane_has_at_most_running_batches_and_lanes_are_independent() -> None:
    async def main() -> tuple[dict[str, int], int]:
        lanes = Lanes(running=2)
        inside = {"a": 0, "b": 0}
        most = {"a": 0, "b": 0}

        async def batch(lane: str) -> None:
            async with lanes.slot(lane):
                inside[lane] += 1
                most[lane] = max(most[lane], inside[lane])
                await asyncio.sleep(0.001)
                inside[lane] -= 1

        await asyncio.gather(*(batch("a") for _ in range(6)), *(batch("b") for _ in range(2)))
        return most, len(lanes)

    most, left = asyncio.run(main())
    assert most == {"a": 2, "b": 2}
    assert left == 0  # no lane kept once its batches are done


def test_a_lane_is_dropped_when_its_waiting_batch_is_cancelled() -> None:
    async def main() -> int:
        lanes = Lanes(running=1)
        release = asyncio.Event()

        async def batch() -> None:
            async with lanes.slot("a"):
                await release.wait()

        holder = asyncio.create_task(batch())
        waiter = asyncio.create_task(batch())
        await asyncio.sleep(0)
        waiter.cancel()
        release.set()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        return len(lanes)

    assert asyncio.run(main()) == 0


def test_lanes_need_a_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Lanes(running=0)
