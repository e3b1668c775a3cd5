"""The console's tallies against a real redis-server: written by the decision log's own script,
exactly once, read back by minute, day and hour; the flagged stream filtered; dispositions
tallied by rule."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.dispositions import Disposition
from service.domain import Decision, Outcome, Reason
from service.pipeline.facts import facts, identifiers
from service.pipeline.validate import screen_request
from service.redis.keys import KeyHasher
from service.riskdata.decision_log import LOG_ONCE, DecisionLog, DecisionLogConfig, LogEntry
from service.riskdata.dispositions import DispositionStore
from service.riskdata.monitoring import Monitor
from service.riskdata.records import history_ids, log_entry
from service.riskdata.tallies import clerk_ref, local_day
from tests import samples

pytestmark = pytest.mark.integration

STREAM = "rg:log:decisions"
HASHER = KeyHasher(b"k" * 32)


class _Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def monotonic(self) -> float:
        return 0.0

    def now(self) -> datetime:
        return self.at


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    await connection.flushall()
    yield connection
    await connection.aclose()


def _entry(message: Any, outcome: Outcome, rules: tuple[str, ...], decided_at: datetime) -> LogEntry:
    request = screen_request(message, now=decided_at)
    request_facts, ids = facts(request), identifiers(request)
    reasons = tuple(
        Reason(rule.lstrip("~"), outcome, f"规则 {rule}", f"rule {rule}", (("count", "3"),), rule.startswith("~"))
        for rule in rules
    )
    decision = Decision(
        request.request_id,
        str(uuid.uuid4()),
        outcome,
        reasons,
        "rev@1",
        False,
        decided_at,
        timedelta(0),
        kind=request.kind,
    )
    fields = log_entry(
        request,
        decision,
        subject_hash=HASHER.identifier("person.id_number", ids["person.id_number"]),
        counters={},
        list_hits={},
        facts=request_facts,
        id_hashes=history_ids(ids, request_facts, HASHER.identifier),
        clerk_ref=clerk_ref(HASHER.identifier, request.outlet.clerk_id),
    )
    return LogEntry.of(fields, int(decided_at.timestamp() * 1000))


async def _write(client: aioredis.Redis, log: DecisionLog, entry: LogEntry, copies: int = 1) -> list[Any]:
    return [await client.eval(LOG_ONCE, *log._args(entry)) for _ in range(copies)]


async def test_tallies_count_each_logged_decision_once_and_read_back(client: aioredis.Redis) -> None:
    clock = _Clock()
    log = DecisionLog(client, DecisionLogConfig(stream_key=STREAM), clock)
    monitor = Monitor(client, STREAM, clock)
    at = clock.at - timedelta(seconds=1)
    warned = _entry(samples.transfer("TX-1"), Outcome.WARN, ("T18", "~T19"), at)
    assert await _write(client, log, warned, copies=3) == [1, 0, 0]  # a write and its retries: once
    await _write(client, log, _entry(samples.transfer("TX-2"), Outcome.ALLOW, (), at))
    await _write(client, log, _entry(samples.card_opening("CO-1", at=at), Outcome.BLOCK, ("C05",), at))

    minutes = await monitor.minutes(timedelta(hours=3))
    assert len(minutes) == 180 and minutes == sorted(minutes, key=lambda m: m.start)
    last = minutes[-1].counts
    assert last["n:transfer:warn"] == 1 and last["n:transfer:allow"] == 1 and last["n:card_opening:block"] == 1
    assert last["r:T18"] == 1 and last["s:T19"] == 1 and last["r:C05"] == 1 and last["v:rev@1"] == 3
    assert all(not m.counts for m in minutes[:-2])

    day = await monitor.day(local_day(int(at.timestamp() * 1000)))
    assert day["n:transfer:warn"] == 1 and day["p:31:warn"] == 1 and day["c:310115:warn"] == 1
    assert day["i:BANK_A:allow"] == 1 and "c:310115:allow" not in day

    hours = await monitor.hours(24)
    assert len(hours) == 24
    openings = hours[-1].counts
    assert openings["o:BANK_A/" + samples.outlet().outlet_id] == 1
    assert sum(v for k, v in openings.items() if k.startswith("c:")) == 1

    page = await monitor.flagged(limit=10)
    assert [f.outcome for f in page.items] == ["block", "warn"] and page.next_before is None and page.scanned == 2
    warn = page.items[1]
    assert warn.decision_id == warned.decision_id and warn.rules == ("T18", "~T19")
    assert [r.rule_id for r in warn.reasons] == ["T18", "T19"] and warn.reasons[1].shadow
    assert warn.reasons[0].evidence == (("count", "3"),) and warn.disposition is None
    assert warn.clerk and warn.clerk not in samples.outlet().clerk_id


async def test_the_flagged_list_filters_and_pages(client: aioredis.Redis) -> None:
    clock = _Clock()
    log = DecisionLog(client, DecisionLogConfig(stream_key=STREAM), clock)
    monitor = Monitor(client, STREAM, clock)
    at = clock.at - timedelta(seconds=1)
    entries = [
        _entry(samples.transfer(f"TX-{n}"), Outcome.WARN, ("T18",) if n % 2 else ("~T19",), at) for n in range(7)
    ]
    for entry in entries:
        await _write(client, log, entry)
    first = await monitor.flagged(limit=3)
    assert [f.decision_id for f in first.items] == [e.decision_id for e in reversed(entries)][:3]
    assert first.next_before is not None
    rest = await monitor.flagged(limit=10, before=first.next_before)
    assert [f.decision_id for f in rest.items] == [e.decision_id for e in reversed(entries)][3:]
    assert rest.next_before is None
    shadow = await monitor.flagged(rule="T19")
    assert len(shadow.items) == 4
    assert len((await monitor.flagged(region="31")).items) == 7
    assert (await monitor.flagged(region="44")).items == []
    assert (await monitor.flagged(institution="BANK_B")).items == []
    bounded = await monitor.flagged(region="44", scan_limit=5)
    assert bounded.scanned == 5 and bounded.next_before is not None
    with pytest.raises(ValueError, match="disposition"):
        await monitor.flagged(disposition="fraud")
    with pytest.raises(ValueError, match="region"):
        await monitor.flagged(region="31x")


async def test_a_disposition_is_tallied_by_rule_and_shows_as_the_decisions_status(client: aioredis.Redis) -> None:
    clock = _Clock()
    log = DecisionLog(client, DecisionLogConfig(stream_key=STREAM), clock)
    monitor = Monitor(client, STREAM, clock)
    store = DispositionStore(client, STREAM, clock, retention_seconds=90 * 86_400)
    at = clock.at - timedelta(seconds=1)
    fraud = _entry(samples.transfer("TX-1"), Outcome.WARN, ("T18", "~T19"), at)
    other = _entry(samples.transfer("TX-2"), Outcome.WARN, ("T18",), at)
    for entry in (fraud, other):
        await _write(client, log, entry)
    record = await store.report(fraud.decision_id, Disposition.CONFIRMED_FRAUD, "", reported_by="c", identity="t")
    assert record.request_id == "TX-1"  # read back from the index value, rules after it
    again = await store.report(fraud.decision_id, Disposition.CONFIRMED_FRAUD, "", reported_by="c", identity="t")
    assert again.already_recorded
    day = await monitor.day(local_day(int(clock.at.timestamp() * 1000)))
    assert day["d:confirmed_fraud"] == 1  # the retry is not counted again
    assert day["dr:T18:confirmed_fraud"] == 1 and day["ds:T19:confirmed_fraud"] == 1
    assert (await store.history(fraud.decision_id))[0] == "TX-1"
    none = await monitor.flagged(disposition="none")
    assert [f.decision_id for f in none.items] == [other.decision_id]
    done = await monitor.flagged(disposition="confirmed_fraud")
    assert [f.decision_id for f in done.items] == [fraud.decision_id]
    assert done.items[0].disposition == "confirmed_fraud"
    assert (await monitor.decision(fraud.decision_id)) == done.items[0]
    assert (await monitor.decision(str(uuid.uuid4()))) is None


async def test_an_entry_written_after_its_tallies_expired_is_logged_but_not_tallied(client: aioredis.Redis) -> None:
    clock = _Clock()
    log = DecisionLog(client, DecisionLogConfig(stream_key=STREAM), clock)
    old = clock.at - timedelta(hours=50)
    entry = _entry(samples.transfer("TX-old"), Outcome.WARN, ("T18",), old)
    now_ms = int(clock.at.timestamp() * 1000)
    assert await client.eval(LOG_ONCE, *log._args(entry, now_ms)) == 1
    assert await client.xlen(STREAM) == 1
    assert await client.keys(f"{{{STREAM}}}:m:*") == [] and await client.keys(f"{{{STREAM}}}:k:*") == []
    assert await client.keys(f"{{{STREAM}}}:t:*") != []  # the day's tallies are kept for months
