"""Dispositions against a real redis-server (and a real Redis Cluster): the decision log's script
indexes the decisions a disposition can follow, exactly when it logs them; a report finds its
decision, is recorded once whatever the retries, keeps a history, expires with the index, and
ends within its budget when Redis does not answer."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.dispositions import Disposition
from service.errors import StoreUnavailable, UnknownDecision
from service.redis.connection import make_client
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.riskdata.decision_log import LOG_ONCE, DecisionLog, DecisionLogConfig, LogEntry
from service.riskdata.dispositions import BUDGET_SECONDS, DispositionStore

pytestmark = pytest.mark.integration

STREAM = "rg:log:decisions"
RETENTION = 90 * 86_400.0


class _Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def _log(client: Any, **config: Any) -> DecisionLog:
    return DecisionLog(client, DecisionLogConfig(stream_key=STREAM, **config), _Clock())


def _store(client: Any, retention: float = RETENTION) -> DispositionStore:
    return DispositionStore(client, STREAM, _Clock(), retention_seconds=retention)


def _decision(outcome: str = "warn", rules: str = "T18_new_payee_account", at: datetime | None = None) -> LogEntry:
    moment = at or datetime.now(UTC)
    decision_id = str(uuid.uuid4())
    fields = {"decision_id": decision_id, "request_id": f"TX-{decision_id[:8]}", "outcome": outcome, "rules": rules}
    return LogEntry.of(fields, int(moment.timestamp() * 1000))


async def _logged(client: Any, log: DecisionLog, entry: LogEntry) -> None:
    assert await client.eval(LOG_ONCE, *log._args(entry)) == 1


async def _report(store: DispositionStore, entry: LogEntry, disposition: Disposition, note: str = "") -> Any:
    return await store.report(
        entry.decision_id, disposition, note, reported_by="branch-counters", identity="cert:c17.counter.bank.example"
    )


async def test_warned_blocked_and_fired_decisions_are_indexed_and_quiet_allows_are_not(client: aioredis.Redis) -> None:
    log, store = _log(client), _store(client)
    warned, blocked = _decision("warn"), _decision("block", "T15_fraud_payee")
    shadow, quiet = _decision("allow", "~T19_trial"), _decision("allow", "")
    for entry in (warned, blocked, shadow, quiet):
        await _logged(client, log, entry)
    for entry in (warned, blocked, shadow):
        request_id, history = await store.history(entry.decision_id)
        assert (request_id, history) == (f"TX-{entry.decision_id[:8]}", [])
    with pytest.raises(UnknownDecision):
        await store.history(quiet.decision_id)
    with pytest.raises(UnknownDecision, match="RISKGATE_DISPOSITION_DAYS"):
        await _report(store, quiet, Disposition.CONFIRMED_FRAUD)
    every = _log(client, index_every=True)
    also = _decision("allow", "")
    await _logged(client, every, also)
    assert (await store.history(also.decision_id))[0] == f"TX-{also.decision_id[:8]}"


async def test_a_decision_is_indexed_exactly_when_it_is_logged(client: aioredis.Redis) -> None:
    log = _log(client)
    entries = [_decision() for _ in range(20)]
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        for _ in range(3):  # a write, its retry, a late copy
            pipe.execute_command("EVAL", LOG_ONCE, *log._args(entry))
    assert await pipe.execute() == [1, 0, 0] * 20
    key = log.index_key(entries[0].decided_ms)
    assert await client.hlen(key) == await client.xlen(STREAM) == 20
    day_end = (entries[0].decided_ms // 86_400_000 + 1) * 86_400_000
    assert abs(await client.pexpiretime(key) - (day_end + int(RETENTION * 1000))) <= 1


async def test_a_report_is_recorded_once_and_later_ones_make_a_history(client: aioredis.Redis) -> None:
    log, store = _log(client), _store(client)
    entry = _decision("block", "T15_fraud_payee")
    await _logged(client, log, entry)
    first = await _report(store, entry, Disposition.APPEAL_FILED, "desk 3")
    assert (first.already_recorded, first.reported_by, first.request_id) == (
        False,
        "branch-counters",
        f"TX-{entry.decision_id[:8]}",
    )
    again = await _report(store, entry, Disposition.APPEAL_FILED, "desk 3")
    assert again.already_recorded and again.reported_at == first.reported_at
    upheld = await _report(store, entry, Disposition.APPEAL_UPHELD, "notice 118")
    assert not upheld.already_recorded
    # The first one again, after another: news (a second appeal), not a retry.
    refiled = await _report(store, entry, Disposition.APPEAL_FILED, "desk 3")
    assert not refiled.already_recorded
    _, history = await store.history(entry.decision_id)
    assert [(r.disposition, r.note) for r in history] == [
        (Disposition.APPEAL_FILED, "desk 3"),
        (Disposition.APPEAL_UPHELD, "notice 118"),
        (Disposition.APPEAL_FILED, "desk 3"),
    ]
    assert history[0] == first
    exported: Any = await client.xrange(store.stream_key)
    assert [fields[b"disposition"] for _, fields in exported] == [b"appeal_filed", b"appeal_upheld", b"appeal_filed"]
    assert exported[0][1][b"request_id"] == f"TX-{entry.decision_id[:8]}".encode()
    index = log.index_key(entry.decided_ms)
    dispositions = index.replace(":i:", ":d:")
    assert abs(await client.pexpiretime(dispositions) - await client.pexpiretime(index)) <= 1


async def test_concurrent_copies_of_one_report_record_one(client: aioredis.Redis) -> None:
    log, store = _log(client), _store(client)
    entry = _decision()
    await _logged(client, log, entry)
    answers = await asyncio.gather(
        *(_report(store, entry, Disposition.CUSTOMER_DISSUADED, "gave up") for _ in range(16))
    )
    assert sorted(a.already_recorded for a in answers) == [False] + [True] * 15
    assert len({a.reported_at for a in answers}) == 1
    assert len((await store.history(entry.decision_id))[1]) == 1
    assert await client.xlen(store.stream_key) == 1


async def test_a_decision_older_than_the_retention_takes_no_disposition(client: aioredis.Redis) -> None:
    """Its day's index has expired (PEXPIREAT in the past deletes it at once)."""
    log = _log(client, index_seconds=86_400)
    old = _decision(at=datetime.now(UTC) - timedelta(days=3))
    recent = _decision(at=datetime.now(UTC) - timedelta(hours=1))
    await _logged(client, log, old)
    await _logged(client, log, recent)
    store = _store(client, retention=86_400)
    with pytest.raises(UnknownDecision, match="more than 1 days ago"):
        await _report(store, old, Disposition.CONFIRMED_FRAUD)
    assert not (await _report(store, recent, Disposition.CONFIRMED_FRAUD)).already_recorded
    # A decision made yesterday is found in yesterday's index.
    yesterday = _decision(at=datetime.now(UTC) - timedelta(days=1))
    await _logged(client, _log(client), yesterday)
    assert (await _store(client).history(yesterday.decision_id))[0]


async def test_the_backlog_writes_a_late_entry_without_indexing_it(client: aioredis.Redis) -> None:
    """An entry spooled past its day's index (an outage of days) is logged, and its index is not
    recreated (nor deleted: a PEXPIREAT in the past would drop the whole day)."""
    log = _log(client, index_seconds=86_400)
    fresh_on_that_day = _decision(at=datetime.now(UTC) - timedelta(days=3))
    log.defer(fresh_on_that_day, sent=False)
    assert await log.flush_once() == 1
    assert await client.xlen(STREAM) == 1
    assert await client.exists(log.index_key(fresh_on_that_day.decided_ms)) == 0


async def test_a_report_ends_within_its_budget_when_redis_is_stopped(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", RedisOptions(persistent=False, port=0))
    server.start()
    client = make_client(server.url, cluster=False)
    try:
        log, store = _log(client), _store(client)
        entry = _decision()
        await _logged(client, log, entry)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # a silent peer: connected, never answering
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="did not answer"):
                await _report(store, entry, Disposition.FALSE_ALARM)
            assert time.monotonic() - started < BUDGET_SECONDS + 0.5
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.report(
                    entry.decision_id, Disposition.FALSE_ALARM, "", reported_by="p", identity="i",
                    deadline=time.monotonic() + 0.2,
                )  # fmt: skip
            assert time.monotonic() - started < 0.5  # the caller's deadline, when sooner
        finally:
            os.kill(server.pid, signal.SIGCONT)
        await client.aclose()
        client = make_client(server.url, cluster=False)
        store = _store(client)
        answer = await _report(store, entry, Disposition.FALSE_ALARM)  # its retry
        assert answer.disposition is Disposition.FALSE_ALARM
        assert len((await store.history(entry.decision_id))[1]) == 1
        server.stop()
        with pytest.raises(StoreUnavailable, match="redis"):
            await _report(store, entry, Disposition.FALSE_ALARM)
    finally:
        await client.aclose()
        server.stop()


async def test_the_index_and_dispositions_work_on_a_cluster(redis_cluster_url: str) -> None:
    cluster = RedisCluster.from_url(redis_cluster_url, retry=Retry(NoBackoff(), 0))
    try:
        log, store = _log(cluster), _store(cluster)
        entry = _decision()
        log.defer(entry, sent=False)
        assert await log.flush_once() == 1
        assert not (await _report(store, entry, Disposition.STOP_PAYMENT_REQUESTED, "notice 9")).already_recorded
        assert (await _report(store, entry, Disposition.STOP_PAYMENT_REQUESTED, "notice 9")).already_recorded
        slots = {cluster.keyslot(key) async for key in cluster.scan_iter(match="*rg:log:decisions*")}
        assert slots == {cluster.keyslot(STREAM)}
    finally:
        await cluster.aclose()
