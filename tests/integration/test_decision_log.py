"""The decision log's writes against a real redis-server: copies of a write append once, in any
order; the backlog is written in chunks, once; a restart of the process writes what its spool held."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.riskdata.decision_log import LOG_ONCE, DecisionLog, DecisionLogConfig, LogEntry

pytestmark = pytest.mark.integration

STREAM = "rg:log:decisions"


class _Clock:
    def monotonic(self) -> float:
        return 0.0

    def now(self) -> datetime:
        return datetime.now(UTC)


def _entry(n: int) -> LogEntry:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    return LogEntry.of({"decision_id": f"dec-{n}", "outcome": "warn"}, now_ms)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def _log(client: aioredis.Redis, spool: Path | None = None, **config: Any) -> DecisionLog:
    return DecisionLog(client, DecisionLogConfig(stream_key=STREAM, spool_path=spool, **config), _Clock())


async def _ids(client: aioredis.Redis) -> list[str]:
    entries: Any = await client.xrange(STREAM)
    return [fields[b"decision_id"].decode() for _, fields in entries]


async def test_copies_of_one_write_append_once(client: aioredis.Redis) -> None:
    log = _log(client)
    entry = _entry(1)
    pipe = client.pipeline(transaction=False)
    for _ in range(3):  # a write, its retry, and a late copy from a connection Redis read after resuming
        pipe.execute_command("EVAL", LOG_ONCE, *log._args(entry))
    assert await pipe.execute() == [1, 0, 0]
    assert await _ids(client) == ["dec-1"]
    ttl = await client.pttl(log.marker_key(entry.decided_ms))
    assert 3_600_000 < ttl <= 3_660_000  # the minute's end plus the dedupe horizon


async def test_the_backlog_is_written_in_chunks_exactly_once(client: aioredis.Redis) -> None:
    log = _log(client, chunk=7)
    await client.eval(LOG_ONCE, *log._args(_entry(3)))  # one of them landed before its reply was lost
    for n in range(20):
        log.defer(_entry(n), sent=True)
    written = [await log.flush_once() for _ in range(3)]
    assert written == [7, 7, 6] and log.backlog == 0
    assert log.copies_skipped == 1
    assert sorted(await _ids(client)) == sorted(f"dec-{n}" for n in range(20))


async def test_a_new_process_writes_what_the_spool_held(client: aioredis.Redis, tmp_path: Path) -> None:
    spool = tmp_path / "decision-log.spool"
    first = _log(client, spool)
    for n in range(5):
        first.defer(_entry(n), sent=False)
    first.release()  # killed before it wrote anything
    second = _log(client, spool)
    assert second.backlog == 5
    assert await second.close(budget_seconds=5) == 0
    assert sorted(await _ids(client)) == [f"dec-{n}" for n in range(5)]
    assert spool.read_bytes() == b""  # emptied once written
    third = _log(client, spool)
    assert third.backlog == 0
    await third.close(budget_seconds=1)
