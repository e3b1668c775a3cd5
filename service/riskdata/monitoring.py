"""Reading the console's tallies and flagged decisions (`service.riskdata.tallies` says what they are).

Every read is a handful of round trips, whatever the size of the log: the last three hours
are 180 small hashes read in one pipeline, a day one hash, the latest warnings pages of the
flagged stream and their dispositions. Each call has a budget (`BUDGET_SECONDS`);
Redis trouble is `StoreUnavailable`, never a hang.

The flagged stream is read newest first, `PAGE` entries at a time, until `limit` decisions
match the filters or `scan_limit` entries were looked at (`FlaggedPage.scanned` says how many,
`next_before` where to go on): a filter that matches little costs a bounded scan, not the log.
A decision's disposition status is its latest disposition (`service.riskdata.dispositions`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, TypeVar

from redis.exceptions import RedisError

from service.clock import Clock
from service.dispositions import Disposition
from service.errors import StoreUnavailable
from service.riskdata.decision_log import day_of, index_field, index_key
from service.riskdata.dispositions import history_key
from service.riskdata.records import decode_reasons
from service.riskdata.tallies import (
    FLAGGED_FIELDS,
    HOUR_MS,
    HOURS_KEPT,
    MINUTE_MS,
    MINUTES_KEPT,
    day_key,
    flagged_key,
    hour_key,
    minute_key,
)

BUDGET_SECONDS: Final = 1.0
PAGE: Final = 500
T = TypeVar("T")
_SHORT_TO_NAME: Final = {short: name for name, short in FLAGGED_FIELDS.items()}
DISPOSITION_FILTERS: Final = ("none", "any", *(d.value for d in Disposition))


@dataclass(frozen=True, slots=True)
class Minute:
    """One minute's (or hour's) tallies, from `start`."""

    start: datetime
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ShownReason:
    rule_id: str
    outcome: str
    message_zh: str
    message_en: str
    evidence: tuple[tuple[str, str], ...]
    shadow: bool


@dataclass(frozen=True, slots=True)
class Flagged:
    """A WARN or BLOCK decision as the console lists it: no clear identifier in it."""

    stream_id: str  # the decision log entry's id
    decision_id: str
    request_id: str
    decided_at: datetime
    kind: str
    institution_id: str
    outlet_id: str
    region_code: str
    outcome: str
    rules: tuple[str, ...]  # shadow ones prefixed `~`
    clerk: str  # a short keyed-hash reference ("" for self-service)
    reasons: tuple[ShownReason, ...]
    disposition: str | None  # the latest disposition, if any


@dataclass(frozen=True, slots=True)
class FlaggedPage:
    items: list[Flagged]
    scanned: int  # flagged entries looked at
    next_before: str | None  # the flagged stream id to go on from (older entries), None at the end


@dataclass(frozen=True, slots=True)
class FlaggedFilter:
    """What the warnings list is narrowed to; None: anything."""

    institution: str | None = None
    outlet: str | None = None
    region: str | None = None  # a prefix of the outlet's region code: 2 digits a province, 4 a city
    rule: str | None = None  # a rule id, fired enforced or in shadow
    disposition: str | None = None  # "none", "any", or a disposition (the latest)

    def __post_init__(self) -> None:
        if self.disposition is not None and self.disposition not in DISPOSITION_FILTERS:
            raise ValueError(f"disposition: expected one of {', '.join(DISPOSITION_FILTERS)}")
        if self.region is not None and not (self.region.isdigit() and 1 <= len(self.region) <= 6):
            raise ValueError("region: expected 1 to 6 digits of a region code")

    def matches_summary(self, summary: Mapping[str, str]) -> bool:
        if self.institution is not None and summary.get("institution_id") != self.institution:
            return False
        if self.outlet is not None and summary.get("outlet_id") != self.outlet:
            return False
        if self.region is not None and not summary.get("region_code", "").startswith(self.region):
            return False
        if self.rule is not None:
            fired = {r.lstrip("~") for r in summary.get("rules", "").split(",") if r}
            if self.rule not in fired:
                return False
        return True

    def matches_disposition(self, disposition: str | None) -> bool:
        if self.disposition is None:
            return True
        if self.disposition == "none":
            return disposition is None
        if self.disposition == "any":
            return disposition is not None
        return disposition == self.disposition


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _counts(raw: Mapping[Any, Any] | None) -> dict[str, int]:
    return {_text(k): int(v) for k, v in (raw or {}).items()}


def latest_disposition(held: str) -> str | None:
    """The latest disposition of a decision's stored list (JSON, oldest first), or None."""
    if not held:
        return None
    records = json.loads(held)
    return str(records[-1]["disposition"]) if records else None


class Monitor:
    """The console's reads: tallies by minute, day and hour, and the latest flagged decisions."""

    def __init__(self, client: Any, log_stream_key: str, clock: Clock) -> None:
        self._client = client
        self._key = log_stream_key
        self._clock = clock

    async def _bounded(self, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(BUDGET_SECONDS):
                return await work
        except TimeoutError:
            raise StoreUnavailable(f"console: redis did not answer within {BUDGET_SECONDS:g} s") from None
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"console: redis: {type(error).__name__}: {error}") from error

    async def _hashes(self, keys: Sequence[str]) -> list[dict[str, int]]:
        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return list(await pipe.execute())

        return [_counts(raw) for raw in await self._bounded(read())]

    async def _buckets(self, span: timedelta, width_ms: int, kept: timedelta, key_of: Any) -> list[Minute]:
        now_ms = int(self._clock.now().timestamp() * 1000)
        count = max(1, min(int(span / timedelta(milliseconds=width_ms)), int(kept / timedelta(milliseconds=width_ms))))
        last = now_ms // width_ms
        starts = [(last - back) * width_ms for back in range(count - 1, -1, -1)]
        counts = await self._hashes([key_of(self._key, start) for start in starts])
        return [Minute(datetime.fromtimestamp(s / 1000, UTC), c) for s, c in zip(starts, counts, strict=True)]

    async def minutes(self, span: timedelta) -> list[Minute]:
        """Every minute of the last `span` (at most 48 hours) up to now, oldest first."""
        return await self._buckets(span, MINUTE_MS, MINUTES_KEPT, minute_key)

    async def hours(self, span_hours: int) -> list[Minute]:
        """Openings by clerk and outlet in each of the last `span_hours` hours (at most 48), oldest first."""
        return await self._buckets(timedelta(hours=span_hours), HOUR_MS, HOURS_KEPT, hour_key)

    async def day(self, day: date) -> Mapping[str, int]:
        """One local (UTC+8) day's tallies."""
        return (await self._hashes([day_key(self._key, day)]))[0]

    async def flagged(
        self,
        *,
        limit: int = 50,
        before: str | None = None,
        institution: str | None = None,
        outlet: str | None = None,
        region: str | None = None,
        rule: str | None = None,
        disposition: str | None = None,
        scan_limit: int = 20_000,
    ) -> FlaggedPage:
        """The latest WARN and BLOCK decisions, newest first, that match; ValueError for a bad filter."""
        wanted = FlaggedFilter(institution, outlet, region, rule, disposition)
        found: list[tuple[str, dict[str, str]]] = []
        scanned, cursor, more = 0, before, True
        while more and len(found) < limit and scanned < scan_limit:
            count = min(PAGE, scan_limit - scanned)
            high = f"({cursor}" if cursor else "+"
            batch = await self._bounded(self._client.xrevrange(flagged_key(self._key), max=high, min="-", count=count))
            more = len(batch) == count
            matching: list[tuple[str, dict[str, str]]] = []
            for entry_id, fields in batch:
                scanned += 1
                cursor = _text(entry_id)
                summary = {_SHORT_TO_NAME.get(_text(k), _text(k)): _text(v) for k, v in fields.items()}
                if wanted.matches_summary(summary):
                    matching.append((cursor, summary))
            if wanted.disposition is not None and matching:
                held = await self._dispositions([s for _, s in matching])
                matching = [m for m, h in zip(matching, held, strict=True) if wanted.matches_disposition(h)]
            for item in matching:
                if len(found) == limit:
                    more, cursor = True, found[-1][0]
                    break
                found.append(item)
        items = await self._details([summary for _, summary in found])
        next_before = (found[-1][0] if len(found) == limit else cursor) if more else None
        return FlaggedPage(items, scanned, next_before)

    async def decision(self, decision_id: str) -> Flagged | None:
        """One flagged decision by its id, if the flagged stream still holds it (looked for among
        the latest `scan` entries)."""
        scanned, cursor = 0, None
        while scanned < 100_000:
            high = f"({cursor}" if cursor else "+"
            batch = await self._bounded(self._client.xrevrange(flagged_key(self._key), max=high, min="-", count=PAGE))
            for entry_id, fields in batch:
                scanned += 1
                cursor = _text(entry_id)
                summary = {_SHORT_TO_NAME.get(_text(k), _text(k)): _text(v) for k, v in fields.items()}
                if summary.get("decision_id") == decision_id:
                    return (await self._details([summary]))[0]
            if len(batch) < PAGE:
                return None
        return None

    async def _dispositions(self, summaries: Sequence[Mapping[str, str]]) -> list[str | None]:
        """Each decision's latest disposition, read beside the decision index of its UTC day."""

        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for summary in summaries:
                decided = datetime.fromisoformat(summary.get("decided_at", ""))
                day = day_of(int(decided.timestamp() * 1000))
                index = index_key(self._key, day)
                pipe.hget(history_key(self._key, index), index_field(summary.get("decision_id", "")))
            return list(await pipe.execute())

        return [latest_disposition(_text(raw)) if raw else None for raw in await self._bounded(read())]

    async def _details(self, summaries: Sequence[dict[str, str]]) -> list[Flagged]:
        """The summaries with their dispositions."""
        if not summaries:
            return []
        held = await self._dispositions(summaries)
        out: list[Flagged] = []
        for summary, disposition in zip(summaries, held, strict=True):
            reasons = tuple(
                ShownReason(**{**r, "evidence": tuple(r["evidence"])})
                for r in decode_reasons(summary.get("reasons", ""))
            )
            out.append(
                Flagged(
                    stream_id=summary.get("e", ""),
                    decision_id=summary.get("decision_id", ""),
                    request_id=summary.get("request_id", ""),
                    decided_at=datetime.fromisoformat(summary.get("decided_at", "")),
                    kind=summary.get("kind", ""),
                    institution_id=summary.get("institution_id", ""),
                    outlet_id=summary.get("outlet_id", ""),
                    region_code=summary.get("region_code", ""),
                    outcome=summary.get("outcome", ""),
                    rules=tuple(r for r in summary.get("rules", "").split(",") if r),
                    clerk=summary.get("clerk", ""),
                    reasons=reasons,
                    disposition=disposition,
                )
            )
        return out
