"""Clients served in turn, so that a greedy client does not take a neighbour's share of the loop or
of Redis (`benchmarks.fairness`: a victim's unary p99 beside a greedy streamer).

A *lane* is one client: a ScreenStream's connection (`LANE`, set by its handler: every stream on
one connection is one lane; over a Unix socket every connection has the same peer, so all
streams there are one lane), or the Screen calls, which `service.pipeline.gather` screens together
in batches mixing their callers. Two things are shared out by lane:

* **The loop** (`share_loop`, `Turns`): a batch's CPU work (planning, rules, log entries) is cut
  into slices of `SLICE` events; between slices a task parks in its lane's queue, and the lanes
  with a task parked take turns, one task woken per pass of the event loop, with everything else
  the loop has ready (gRPC's reads and writes, Redis replies, a Screen call's own steps) run in
  between. A client with many streams gets one slice per pass, not one per stream. And a slice
  comes after what else is ready: while the loop has other callbacks waiting (a reply to read,
  an answer to write, the next step of someone's call), waking the next slice waits a pass, for
  at most `DEFER` passes. A task alone parks for at least one pass, as `asyncio.sleep(0)` would.
* **Redis** (`Lanes`): a lane has at most `RUNNING` batches deciding at once, as all Screen calls
  together have (`gather.RUNNING`). Redis runs one client's pipeline at a time, so a neighbour's
  exchange waits behind the greedy client's two batches at most, not behind one per stream.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# The lane of the task that runs: a stream's handler sets its connection's peer; Screen calls keep
# the default.
LANE: ContextVar[str] = ContextVar("riskgate_lane", default="screen")

# A batch's work goes to the back of the turns every this many events.
SLICE = 4
# Batches of one lane deciding at once. Measured beside a greedy streamer (4 streams, 32 in flight,
# one connection): the victim's Redis exchanges took p50 2.2 ms with no limit, 1.5 with 2, 1.0
# with 1, against 0.5 alone; with 1 the server's loop was no longer busy while the greedy client
# waited (not work-conserving), with 2 the greedy client's events/s was no lower. Its cost: a
# client alone streaming 64 deep on 16 streams over 2 connections, ~15 % fewer events/s
# (`benchmarks.paired --mode stream`, with the turns).
RUNNING = 2
# Passes the next slice waits at most while other callbacks are ready. Measured beside a greedy
# streamer (`benchmarks.fairness`' two scenarios, 3 rounds of 4 s, the working tree with and
# without it, interleaved; the victim's latency in the server's handler): the victim's p50 x3.35
# and x2.96 its solo figure without it, x1.35 and x1.50 with 8; its p99 x3.47 and x2.72 against
# x1.99 and x1.43 (32 passes: x2.07 p99, x1.99 p50, one run). Its cost: a client alone streaming
# 64 deep on 16 streams over 2 connections, 5-7 % fewer events/s (`benchmarks.paired --mode
# stream`, three runs); unary calls at saturation and at 700/s the same within noise.
DEFER = 8


class Turns:
    """The lanes with a task parked, in the order they are served, on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lanes: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._serving = False  # a `_serve` is scheduled
        self._deferred = 0  # passes the next wake has waited for the others' callbacks

    async def wait(self, lane: str) -> None:
        """Park until `lane`'s turn comes."""
        turn: asyncio.Future[None] = self._loop.create_future()
        parked = self._lanes.get(lane)
        if parked is None:
            parked = self._lanes[lane] = deque()
        parked.append(turn)
        if not self._serving:
            self._serving = True
            self._loop.call_soon(self._serve)
        await turn  # a cancelled task's turn is skipped by `_serve`

    def _serve(self) -> None:
        """Wake the first task of the lane first in line (that lane goes to the back), once the
        other callbacks ready have run or `DEFER` passes have gone by."""
        if self._deferred < DEFER and _others_ready(self._loop):
            self._deferred += 1
            self._loop.call_soon(self._serve)
            return
        self._deferred = 0
        while self._lanes:
            lane, parked = next(iter(self._lanes.items()))
            turn = parked.popleft()
            if parked:
                self._lanes.move_to_end(lane)
            else:
                del self._lanes[lane]
            if not turn.done():
                turn.set_result(None)
                break
        if self._lanes:
            self._loop.call_soon(self._serve)  # after what the woken task and the others do now
        else:
            self._serving = False

    def parked(self) -> int:
        """Tasks waiting for their turn."""
        return sum(len(parked) for parked in self._lanes.values())


def _others_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether callbacks wait in `loop`'s ready queue (the running one is not in it). asyncio's
    own loops keep them in the deque `_ready` (so since Python 3.4, though not public); a loop
    without it (uvloop) is taken to have none, and is served one slice per pass."""
    return bool(getattr(loop, "_ready", None))


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Turns] = weakref.WeakKeyDictionary()


def turns() -> Turns:
    """The running loop's turns."""
    loop = asyncio.get_running_loop()
    served = _TURNS.get(loop)
    if served is None:
        served = _TURNS[loop] = Turns(loop)
    return served


async def share_loop(done: int) -> None:
    """At every `SLICE`-th of a batch's events (`done` of them so far, 0 at its start), wait for the
    lane's turn: the other clients' slices run first."""
    if done % SLICE == 0:
        await turns().wait(LANE.get())


@dataclass(slots=True)
class _Lane:
    slots: asyncio.Semaphore
    users: int = 0  # batches holding or waiting for a slot


class Lanes:
    """At most `running` batches of each lane deciding at once. A lane is kept only while one of
    its batches holds or waits for a slot: connections come and go."""

    def __init__(self, running: int = RUNNING) -> None:
        if running < 1:
            raise ValueError(f"running must be at least 1, not {running}")
        self._running = running
        self._lanes: dict[str, _Lane] = {}

    @asynccontextmanager
    async def slot(self, lane: str) -> AsyncIterator[None]:
        entry = self._lanes.get(lane)
        if entry is None:
            entry = self._lanes[lane] = _Lane(asyncio.Semaphore(self._running))
        entry.users += 1
        try:
            async with entry.slots:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._lanes[lane]

    def __len__(self) -> int:
        """Lanes with a batch deciding or waiting."""
        return len(self._lanes)
