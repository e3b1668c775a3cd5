"""Bulk watchlist import and decision-log export against a real redis-server."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.errors import InvalidValue
from service.redis.keys import KeyHasher
from service.riskdata.lists import load_lists
from service.riskdata.watchlists import Watchlists
from service.tools.admin import export_decisions, import_list, parse_expiry, tail_stream
from tests.conftest import REPO
from tests.samples import resident_id

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)  # Redis expires list keys on its own clock


@pytest.fixture
async def lists(redis_url: str) -> AsyncIterator[Watchlists]:
    client = aioredis.Redis.from_url(redis_url)
    yield Watchlists(client, KeyHasher(b"k" * 32), load_lists(REPO / "rules"))
    await client.aclose()


async def test_import_counts_and_names_rejected_lines(lists: Watchlists, tmp_path: Path) -> None:
    good = [resident_id(birth=date(1960, 1, 1) + timedelta(days=n)) for n in range(2500)]
    bad_check = good[0][:-1] + ("0" if good[0][-1] != "0" else "1")
    lines = ["value,expires_at,reason", *good[:1200], bad_check, "not-an-id", *good[1200:], f"{good[5]},2020-01-01,"]
    path = tmp_path / "punished.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    err = io.StringIO()
    imported, rejected = await import_list(
        lists,
        "punished_persons",
        path,
        reason="joint punishment notice 2026-7",
        added_by="ops",
        default_expiry=None,
        now=NOW,
        err=err,
        progress=True,
    )
    assert (imported, rejected) == (2500, 3)
    messages = [line for line in err.getvalue().splitlines() if line.startswith(str(path))]
    assert messages == [
        f"{path}:1202: check digit mismatch",
        f"{path}:1203: must be 18 characters",
        f"{path}:2504: expires_at: must be in the future",
    ]
    assert "2500 imported" in err.getvalue()
    entry = await lists.check("punished_persons", good[2000], at=NOW)
    assert entry is not None
    assert entry.reason == "joint punishment notice 2026-7"
    assert entry.expires_at == NOW + timedelta(days=3 * 365)  # the list's default_ttl
    assert bad_check not in err.getvalue() and good[5] not in err.getvalue()


def test_expiry_formats() -> None:
    assert parse_expiry("2027-06-30") == datetime(2027, 6, 30, 16, 0, tzinfo=UTC)
    assert parse_expiry("2027-06-30T18:00:00+08:00") == datetime(2027, 6, 30, 10, 0, tzinfo=UTC)
    with pytest.raises(InvalidValue, match="needs a UTC offset"):
        parse_expiry("2027-06-30T18:00:00")


async def test_export_writes_json_lines_across_batches(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    for n in range(2500):
        await client.xadd("rg:log:decisions", {"decision_id": f"d{n}", "rules": "A,~B", "counters": "{}"})
    out = io.StringIO()
    written = await export_decisions(client, "rg:log:decisions", out, "-", "+")
    await client.aclose()
    documents = [json.loads(line) for line in out.getvalue().splitlines()]
    assert written == len(documents) == 2500
    assert documents[0]["decision_id"] == "d0"
    assert documents[-1]["decision_id"] == "d2499"
    assert documents[0]["rules"] == ["A", "~B"]


class _AppendsWhenStarted:
    """The real client, appending one entry to `key` the moment the tail has found where to start:
    the entry lands before the tail's first wait, where a tail that waited from `$` missed it."""

    def __init__(self, client: aioredis.Redis, key: str) -> None:
        self._client, self._key = client, key

    async def xrevrange(self, key: str, count: int) -> object:
        newest = await self._client.xrevrange(key, count=count)
        await self._client.xadd(self._key, {"decision_id": "d-gap"})
        return newest

    async def xread(self, streams: dict[str, str], block: int, count: int) -> object:
        return await self._client.xread(streams, block=block, count=count)  # type: ignore[arg-type]


async def test_a_tail_shows_an_entry_appended_between_its_start_and_its_first_wait(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    key = "rg:test:tail-gap"
    try:
        await client.delete(key)
        await client.xadd(key, {"decision_id": "d-before"})  # there before the tail: not shown
        tail = tail_stream(
            _AppendsWhenStarted(client, key), key, from_start=False, count=1, document=lambda i, f: {"id": i}
        )
        await asyncio.wait_for(tail, timeout=5)
        (line,) = capsys.readouterr().out.splitlines()
        newest: list[tuple[bytes, object]] = await client.xrevrange(key, count=1)  # type: ignore[assignment]
        assert json.loads(line) == {"id": newest[0][0].decode()}
    finally:
        await client.delete(key)
        await client.aclose()
