"""When events happen: the share of each kind, the shape of the day in China time, a stream's times.

Transfers run all day but few between 01:00 and 06:00; card openings and closures keep counter
hours (the few at night are mobile-app openings); SIM sales keep shop hours. Kinds are drawn in
the proportions of `EVENT_SHARES`, weighted by the hour's rhythm (`HOURLY_KIND_CUM`), and a
`Timeline` spreads a stream's events over its window in proportion to the hour's total intensity.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from itertools import accumulate
from types import MappingProxyType
from typing import Final

EVENT_SHARES: Final[Mapping[str, float]] = MappingProxyType(
    {"transfer": 0.935, "card_opening": 0.03, "sim_sale": 0.025, "closure": 0.01}
)
"""The share of each event kind among the ordinary events."""


def _local_seconds_of_day(t: float) -> float:
    return (t + 8 * 3600) % 86400


def local_hour(t: float) -> int:
    return int(_local_seconds_of_day(t) // 3600)


def within_hours(t: float, opens: float, closes: float, rng: random.Random) -> float:
    """`t` if it falls between local hours `opens` and `closes`, else a moment soon after the next opening."""
    of_day = _local_seconds_of_day(t)
    if opens * 3600 <= of_day < closes * 3600:
        return t
    wait = opens * 3600 - of_day if of_day < opens * 3600 else 86400 - of_day + opens * 3600
    return t + wait + rng.uniform(0, min(5400.0, (closes - opens) * 1200))


# Relative hourly activity (China local hour 0-23) of each kind of event.
_TRANSFER_RHYTHM: Final = (0.35, 0.2, 0.12, 0.08, 0.08, 0.15, 0.35, 0.65, 0.95, 1.2, 1.35, 1.35,
                           1.2, 1.15, 1.25, 1.3, 1.3, 1.25, 1.2, 1.2, 1.25, 1.15, 0.9, 0.6)  # fmt: skip
_COUNTER_RHYTHM: Final = (0.02, 0.02, 0.01, 0.01, 0.01, 0.01, 0.02, 0.05, 0.3, 1.4, 1.4, 1.4,
                          0.9, 1.0, 1.4, 1.4, 1.4, 0.5, 0.1, 0.1, 0.08, 0.06, 0.04, 0.03)  # fmt: skip
_SHOP_RHYTHM: Final = (0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.02, 0.2, 0.8, 1.2, 1.2,
                       1.2, 1.1, 1.2, 1.2, 1.2, 1.2, 1.4, 1.4, 1.4, 0.6, 0.1, 0.02)  # fmt: skip
KINDS: Final = ("transfer", "card_opening", "sim_sale", "closure")
_RHYTHMS: Final = (_TRANSFER_RHYTHM, _COUNTER_RHYTHM, _SHOP_RHYTHM, _COUNTER_RHYTHM)


def _hourly_weights() -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """Per local hour: the total event intensity, and the cumulative weights of each kind."""
    totals: list[float] = []
    cums: list[tuple[float, ...]] = []
    for hour in range(24):
        weights = [
            EVENT_SHARES[kind] * rhythm[hour] / (sum(rhythm) / 24) for kind, rhythm in zip(KINDS, _RHYTHMS, strict=True)
        ]
        totals.append(sum(weights))
        cums.append(tuple(accumulate(weights)))
    return tuple(totals), tuple(cums)


HOURLY_INTENSITY, HOURLY_KIND_CUM = _hourly_weights()


class Timeline:
    """Event times over [start, end] following the daily rhythm: the inverse of cumulative intensity."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self._bounds: list[float] = []
        self._cum: list[float] = []
        self._rates: list[float] = []
        t, total = start, 0.0
        while t < end:
            of_day = _local_seconds_of_day(t)
            boundary = min(end, t + 3600 - of_day % 3600)
            rate = HOURLY_INTENSITY[int(of_day // 3600)]
            self._bounds.append(t)
            self._cum.append(total)
            self._rates.append(rate)
            total += rate * (boundary - t)
            t = boundary
        self.total = total

    def at(self, fraction: float) -> float:
        """The time by which `fraction` of the stream's events have happened."""
        target = min(max(fraction, 0.0), 1.0) * self.total
        i = max(bisect.bisect_right(self._cum, target) - 1, 0)
        return min(self._bounds[i] + (target - self._cum[i]) / self._rates[i], self.end)
