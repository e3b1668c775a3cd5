"""`riskgate decisions archive` against a real Redis stream: exactly once, resumable, trimmed entries named."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from service.domain import Decision, EventKind, Outcome
from service.pipeline.facts import facts, identifiers
from service.pipeline.validate import screen_request
from service.redis.keys import KeyHasher
from service.riskdata.history import read_history
from service.riskdata.records import history_ids, log_entry
from service.tools.archive import Archive, DrainReport, drain
from tests import samples

pytestmark = pytest.mark.integration

KEY = "rg:log:decisions"
HASHER = KeyHasher(b"k" * 32)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    connection = Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def _log(client: Redis, count: int, first: int = 0, maxlen: int | None = None, *, together: bool = False) -> None:
    """Log `count` decisions; `together`: in one MULTI, so that no reader sees one before the last."""
    now = datetime.now(UTC)
    request = screen_request(samples.transfer("r-arch"), now=now)
    request_facts, ids = facts(request), identifiers(request)
    pipe = client.pipeline(transaction=True)
    for i in range(first, first + count):
        decision = Decision(
            f"r-{i}", f"d-{i}", Outcome.ALLOW, (), "rev", False, now, timedelta(0), kind=EventKind.TRANSFER
        )
        fields = log_entry(
            request,
            decision,
            subject_hash="S",
            counters={},
            list_hits={},
            facts=request_facts,
            id_hashes=history_ids(ids, request_facts, HASHER.identifier),
        )
        if together:
            pipe.xadd(KEY, fields, maxlen=maxlen, approximate=False)  # type: ignore[arg-type]
        else:
            await client.xadd(KEY, fields, maxlen=maxlen, approximate=False)  # type: ignore[arg-type]
    if together:
        await pipe.execute()


async def _drain(client: Redis, root: Path, **options: Any) -> DrainReport:
    with Archive(root) as archive:
        return await drain(client, KEY, archive, **options)


def _archived(root: Path) -> list[str]:
    return [d["decision_id"] for d in read_history(root)]


async def test_each_entry_is_archived_once_across_drains(client: Redis, tmp_path: Path) -> None:
    await _log(client, 25)
    report = await _drain(client, tmp_path, batch=10)
    assert (report.entries, report.files, report.lost) == (25, 3, 0)
    again = await _drain(client, tmp_path, batch=10)
    assert again.entries == 0
    await _log(client, 5, first=25)
    await _drain(client, tmp_path, batch=10)
    assert _archived(tmp_path) == [f"d-{i}" for i in range(30)]


async def test_entries_trimmed_before_the_drain_are_counted(client: Redis, tmp_path: Path) -> None:
    await _log(client, 5)
    await _drain(client, tmp_path)
    await _log(client, 20, first=5, maxlen=8)  # 12 of them trimmed unread
    with Archive(tmp_path) as archive:
        report = await drain(client, KEY, archive)
    assert report.lost == 12
    assert report.entries == 8
    assert archive.checkpoint.entries == 13


async def test_following_drain_commits_what_arrived_when_stopped(client: Redis, tmp_path: Path) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(_drain(client, tmp_path, follow=True, batch=1000, flush_seconds=60, stop=stop))
    await _log(client, 7)
    await asyncio.sleep(1.5)  # one blocking read returns them
    stop.set()
    report = await asyncio.wait_for(task, timeout=5)
    assert report.entries == 7
    assert _archived(tmp_path) == [f"d-{i}" for i in range(7)]


async def test_a_new_archive_begins_at_the_oldest_entry_left_without_counting_earlier_trims_as_lost(
    client: Redis, tmp_path: Path
) -> None:
    await _log(client, 20, maxlen=6)  # 14 trimmed before any archive existed
    with Archive(tmp_path) as archive:
        report = await drain(client, KEY, archive)
        assert (report.before, report.lost, report.entries) == (14, 0, 6)
        assert archive.checkpoint.before == 14
    await _log(client, 3, first=20, maxlen=6)
    again = await _drain(client, tmp_path)
    assert (again.before, again.lost, again.entries) == (0, 0, 3)  # recorded once, in the checkpoint


async def test_a_following_drain_counts_what_the_log_trimmed_while_it_followed(client: Redis, tmp_path: Path) -> None:
    await _log(client, 3)
    stop = asyncio.Event()
    with Archive(tmp_path) as archive:
        task = asyncio.create_task(drain(client, KEY, archive, follow=True, batch=1000, flush_seconds=60, stop=stop))
        await asyncio.sleep(0.5)  # the first read took the 3
        await _log(client, 20, first=3, maxlen=5, together=True)  # 15 trimmed before the drain could read them
        await asyncio.sleep(1.5)
        stop.set()
        report = await asyncio.wait_for(task, timeout=5)
    assert report.lost == 15 and report.entries == 8
    assert _archived(tmp_path) == [f"d-{i}" for i in (0, 1, 2, *range(18, 23))]
