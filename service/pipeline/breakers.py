"""Rule breakers, the pure part: what a breaker is, its arithmetic, and demoting a rule to shadow.

A block rule may declare a breaker (`breaker: {max_block_share: 2%, window: 10m, min_events: 200}`
in its rule file, or once at the top of the file for its block rules; service.rules.loader reads
it). Over a sliding window it sees every decision of the event kinds the rule screens, and which
of them the rule BLOCKed enforced. Once the window holds at least `min_events` decisions and the
rule blocked more than `max_block_share` of them, the rule is *demoted*: it still evaluates and is
still reported, but as shadow (`Reason.shadow`), so it no longer changes outcomes, on every replica
sharing the Redis. Counting and tripping live in Redis (service.riskdata.breakers); this module
holds what the request path needs without Redis: `Breaker`, `BreakerWatch`, `tripped`, `demote`.

The window slides in `BUCKETS` steps: its counts are those of the bucket the decision falls in and
the `BUCKETS - 1` before it, so it covers between `window - window / BUCKETS` and `window` of the
past (10m: 9.5 to 10 minutes, in 30-second steps). The share is checked at each enforced block
(only a block can raise it), in whole numbers: `blocks * 1,000,000 > share_ppm * events`.

Demotion is keyed by the rule's `identity`: its id and a hash of its definition (event kinds,
condition, outcome, breaker). Changing the rule re-arms it (a new identity starts with an empty
window); editing another rule, a comment or counters.yaml does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from decimal import Decimal

from service.domain import EventKind, Outcome, Reason

BUCKETS = 20
MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 24 * 3600
MAX_MIN_EVENTS = 10_000_000
PPM = 1_000_000  # shares are kept in millionths: 2% is 20,000, 0.0001% is 1

_UNITS = ((86400, "d"), (3600, "h"), (60, "m"))


@dataclass(frozen=True, slots=True)
class Breaker:
    """A rule's breaker: demote it once it blocked more than `share_ppm` millionths of at least
    `min_events` decisions within `window_seconds`."""

    share_ppm: int
    window_seconds: int
    min_events: int

    def __post_init__(self) -> None:
        if not 0 < self.share_ppm <= PPM:
            raise ValueError(f"share_ppm must be in (0, {PPM}], got {self.share_ppm}")
        if not MIN_WINDOW_SECONDS <= self.window_seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(f"window_seconds must be {MIN_WINDOW_SECONDS}..{MAX_WINDOW_SECONDS}")
        if not 1 <= self.min_events <= MAX_MIN_EVENTS:
            raise ValueError(f"min_events must be 1..{MAX_MIN_EVENTS}")

    @property
    def bucket_ms(self) -> int:
        """The length of one of the window's `BUCKETS` buckets, in milliseconds."""
        return self.window_seconds * 1000 // BUCKETS

    @property
    def share_text(self) -> str:
        return share_text(self.share_ppm)

    @property
    def window_text(self) -> str:
        return length_text(self.window_seconds)

    def __str__(self) -> str:
        return f"max_block_share {self.share_text}, window {self.window_text}, min_events {self.min_events}"


def share_text(ppm: int) -> str:
    """Millionths as a percentage, as rule files write it: 20000 -> '2%', 5000 -> '0.5%'."""
    text = format(Decimal(ppm) / 10_000, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


def length_text(seconds: int) -> str:
    """Seconds as rule files write a length of time: 600 -> '10m', 86400 -> '1d' (90 -> '90s')."""
    for unit, suffix in _UNITS:
        if seconds % unit == 0:
            return f"{seconds // unit}{suffix}"
    return f"{seconds}s"


def tripped(blocks: int, events: int, breaker: Breaker) -> bool:
    """Whether a window holding `events` decisions, `blocks` of them the rule's enforced blocks,
    trips `breaker`: at least `min_events`, and strictly more than the share (exactly 2% does not)."""
    return events >= breaker.min_events and blocks * PPM > breaker.share_ppm * events


def window_buckets(now_ms: int, breaker: Breaker) -> range:
    """The bucket numbers the window ending at `now_ms` sums (the current one last)."""
    current = now_ms // breaker.bucket_ms
    return range(current - BUCKETS + 1, current + 1)


@dataclass(frozen=True, slots=True)
class BreakerWatch:
    """A rule with a breaker, as the risk data counts it: `identity` is `<rule id>@<12 hex of its
    definition's hash>` (service.rules.model.rule_identity), so a changed rule is a new one."""

    rule_id: str
    identity: str
    kinds: frozenset[EventKind]
    breaker: Breaker


def blocked_by(reasons: Iterable[Reason]) -> frozenset[str]:
    """The rules that BLOCKed enforced among `reasons` (what a breaker counts as its rule's block)."""
    return frozenset(r.rule_id for r in reasons if r.outcome is Outcome.BLOCK and not r.shadow)


def demote(reasons: Iterable[Reason], demoted: Collection[str]) -> list[Reason]:
    """`reasons` with those of `demoted` rules turned shadow: still reported, never counted in the
    outcome (service.pipeline.outcome.outcome_of)."""
    return [dataclasses.replace(r, shadow=True) if r.rule_id in demoted and not r.shadow else r for r in reasons]
