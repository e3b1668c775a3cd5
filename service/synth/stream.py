"""The stream: ordinary events and planted fraud interleaved over a window, in ``occurred_at`` order.

`generate` yields ``(ScreenRequest, Label | None)`` pairs one at a time (memory does not grow with
the number of events). The same seed, clock and options give the same stream, byte for byte,
request ids included (``syn{seed}-{start epoch}-{n}``), so a replay of a fixed-``start`` stream is
an idempotent retry to the service.

**The merge.** The window holds exactly ``events`` slots, spread over it with the daily rhythm
(`rhythm.Timeline`). Each slot carries an ordinary event (`ordinary`) unless a planted event is
due by then, which takes the slot instead. After each ordinary event a planted pattern may start
(`patterns.trigger_rates`, per local hour); its events wait for their time. A pattern that would
not end inside the window is dropped, so the realised rate is somewhat below the nominal one: the
labels are the truth.

**Time.** Without ``start``, the stream ends one minute before ``now`` (an injected clock) and
starts ``days`` earlier, but never more than 23 h 45 min before ``now``: the service refuses
events more than 24 hours old by default, and the quarter of an hour leaves room to replay the
stream. ``end`` moves that end (up to 5 minutes ahead of ``now``, the service's default skew; the
same seed and end give the same stream), and the stream then starts at most 23 h 45 min before
it. A stream whose events span S is accepted for 24 h - S after its end: the default day for a
quarter of an hour, a quarter of a day for 18 hours. Longer streams need ``start`` and a server
with ``RISKGATE_MAX_EVENT_AGE_SECONDS`` raised.
Counters start empty when a stream is replayed into a fresh store, so "first payment to this
payee" and "no night activity in 90 days" are true of every first occurrence: warm a backtest up
with an earlier stretch of the stream before measuring.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.pipeline.validate import DEFAULT_TIME_BOUNDS
from service.synth.ordinary import OrdinaryTraffic
from service.synth.patterns import Patterns, trigger_rates
from service.synth.population import MAX_POPULATION, MIN_POPULATION, Population
from service.synth.requests import RequestBuilder
from service.synth.rhythm import Timeline, local_hour

END_LAG: Final = timedelta(minutes=1)
"""Without a start, the stream ends this long before now."""
MAX_DEFAULT_AGE: Final = timedelta(hours=23, minutes=45)
"""Without a start, no event is older than this (the service's default limit is 24 hours)."""


@dataclass(frozen=True, slots=True)
class Label:
    """Why an event was planted: the pattern, which instance of it, and the event's part in it."""

    pattern: str  # one of PATTERNS
    instance: str  # e.g. "money_mule-3": the events of one planted case share it
    role: str  # e.g. "inflow", "payout", "applicant"


Labelled = tuple[pb.ScreenRequest, Label | None]


def stream_window(
    now: datetime, days: float, start: datetime | None = None, end: datetime | None = None
) -> tuple[datetime, datetime]:
    """The (start, end) of a stream of `days` (see "Time" in the module docstring).

    `start` fixes the window's start, `end` its end (not both). An end further ahead of `now`
    than the service's default skew is refused: the stream's last events would be too.
    """
    if any(t is not None and t.utcoffset() is None for t in (now, start, end)):
        raise ValueError("now, start and end must be timezone-aware")
    if not (math.isfinite(days) and days > 0):
        raise ValueError("days must be positive")
    span = timedelta(days=days)
    if start is not None:
        if end is not None:
            raise ValueError("give a start or an end, not both")
        return start.astimezone(UTC), (start + span).astimezone(UTC)
    if end is None:
        end = (now - END_LAG).astimezone(UTC).replace(microsecond=0)
        earliest = (now - MAX_DEFAULT_AGE).astimezone(UTC).replace(microsecond=0)
    else:
        _check_not_ahead(end, now)
        end = end.astimezone(UTC)
        earliest = end - MAX_DEFAULT_AGE
    if end - span >= earliest:
        return end - span, end
    if days > 1:
        raise ValueError(
            "a stream longer than a day needs a start time: the service refuses events older than 24 hours"
            " unless RISKGATE_MAX_EVENT_AGE_SECONDS is raised"
        )
    return earliest, end


def _check_not_ahead(end: datetime, now: datetime) -> None:
    skew = DEFAULT_TIME_BOUNDS.max_future_skew_seconds
    ahead = (end - now).total_seconds()
    if ahead > skew:
        raise ValueError(
            f"the end is {ahead:.0f} s ahead of now: the service refuses events more than {skew:g} s in the"
            " future (RISKGATE_MAX_FUTURE_SKEW_SECONDS)"
        )


def valid_until(window_start: datetime) -> datetime:
    """Until when the service, at its default age limit, accepts every event of a stream starting then.

    The first event must be newer than now - 24 h when it is sent; no event is older than the window.
    """
    return window_start + timedelta(seconds=DEFAULT_TIME_BOUNDS.max_age_seconds)


def generate(
    seed: int,
    events: int,
    days: float,
    now: datetime,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    population: int | None = None,
    fraud_scale: float = 1.0,
) -> Iterator[Labelled]:
    """`events` requests with their labels (None for ordinary events), in occurred_at order.

    `now` is the clock (injected, timezone-aware); `start` or `end` fixes the window for replays
    (see `stream_window`); `population` defaults to twice the events (at least 10,000);
    `fraud_scale` multiplies `PATTERN_RATES`.
    """
    if events < 0:
        raise ValueError("events must not be negative")
    if not (math.isfinite(fraud_scale) and fraud_scale >= 0):
        raise ValueError("fraud_scale must be a non-negative number")
    size = population if population is not None else min(max(2 * events, 10_000), MAX_POPULATION)
    if not MIN_POPULATION <= size <= MAX_POPULATION:
        raise ValueError(f"population must be {MIN_POPULATION:,} to {MAX_POPULATION:,}")
    window = stream_window(now, days, start, end)
    return _Generator(seed, events, window, size, fraud_scale).run()


class _Generator:
    """The merge of ordinary slots and planted events (see "The merge" in the module docstring)."""

    def __init__(
        self, seed: int, events: int, window: tuple[datetime, datetime], size: int, fraud_scale: float
    ) -> None:
        self.seed = seed
        self.events = events
        self.start, self.end = window[0].timestamp(), window[1].timestamp()
        self.timeline = Timeline(self.start, self.end)
        self.rng = random.Random(f"{seed}/stream")
        self.people = Population(seed, size, self.start)
        self.id_prefix = f"syn{seed}-{int(self.start)}-"
        self.triggers = trigger_rates(fraud_scale)
        requests = RequestBuilder(self.rng)
        self.ordinary = OrdinaryTraffic(self.rng, self.people, requests, self.start)
        self.variants = Patterns(self.rng, self.people, requests, self.end).variants
        self.instances: Counter[str] = Counter()
        # Planted events waiting for their time: (ms, tie-breaker, request, label).
        self.pending: list[tuple[int, int, pb.ScreenRequest, Label]] = []
        self.pending_latest = 0
        self.pushed = 0

    def slot_floor(self, k: int) -> float:
        """The earliest time slot `k` can have."""
        return self.timeline.at(k / self.events)

    def run(self) -> Iterator[Labelled]:
        for k in range(self.events):
            t = self.timeline.at((k + self.rng.random()) / self.events)
            t_ms = int(t * 1000)
            if self.pending and self.pending[0][0] <= t_ms:
                # A planted event is due: it takes this slot, so the count stays exact.
                at_ms, _, request, label = heapq.heappop(self.pending)
                yield self._stamp(request, k, at_ms), label
            else:
                yield self._stamp(self.ordinary.event(t), k, t_ms), None
                triggers = self.triggers[local_hour(t)]
                draw = self.rng.random()
                if draw < triggers[-1]:
                    self._plant(k, t, bisect.bisect_right(triggers, draw))
        if self.pending:  # unreachable: _plant only admits what the remaining slots can carry
            raise RuntimeError("planted events left over")

    def _stamp(self, request: pb.ScreenRequest, n: int, at_ms: int) -> pb.ScreenRequest:
        request.request_id = f"{self.id_prefix}{n:08d}"
        request.occurred_at.seconds = at_ms // 1000
        request.occurred_at.nanos = at_ms % 1000 * 1_000_000
        return request

    def _plant(self, k: int, t: float, variant: int) -> None:
        pattern, build = self.variants[variant]
        planned = build(t)
        if not planned:
            return
        t_ms = int(t * 1000)
        times = [int(at * 1000) for at, _, _ in planned]
        waiting = len(self.pending) + len(planned)
        # Every planted event must be due before the last `waiting` slots begin, so that those
        # slots can carry it; and none may precede the slot that planted it.
        latest_slot = self.events - 1 - waiting
        if latest_slot <= k or min(times) <= t_ms:
            return
        latest = max(*times, self.pending_latest if self.pending else 0)
        if latest > int(self.slot_floor(latest_slot) * 1000):
            return
        self.instances[pattern] += 1
        instance = f"{pattern}-{self.instances[pattern]}"
        for at_ms, (_, request, role) in zip(times, planned, strict=True):
            self.pushed += 1
            heapq.heappush(self.pending, (at_ms, self.pushed, request, Label(pattern, instance, role)))
        self.pending_latest = latest
