"""Watchlists against a real redis-server: add, check, expire, remove, and no clear identifiers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.errors import InvalidValue, SourceError, UnknownList
from service.redis.keys import KeyHasher
from service.riskdata.lists import ListKind, load_lists
from service.riskdata.watchlists import Watchlists
from tests.conftest import REPO
from tests.redis_dump import dump_everything
from tests.samples import resident_id

pytestmark = pytest.mark.integration

# Redis keeps its own clock and expires keys at absolute times (PEXPIREAT): entries are added
# "now" on the clock Redis shares with this machine, never at a calendar date.
NOW = datetime.now(UTC).replace(microsecond=0)
ACCOUNT = "6217000010002000300"


@pytest.fixture
async def lists(redis_url: str) -> AsyncIterator[Watchlists]:
    client = aioredis.Redis.from_url(redis_url)
    yield Watchlists(client, KeyHasher(b"s" * 32), load_lists(REPO / "rules"))
    await client.aclose()


def test_shipped_lists_load() -> None:
    specs = load_lists(REPO / "rules")
    assert specs["fraud_accounts"].kind is ListKind.ACCOUNT
    assert specs["police_warned"].default_ttl == timedelta(hours=72)
    assert {"punished_persons", "vulnerable_persons", "high_risk_regions", "allowlist"} <= set(specs)


async def test_add_check_remove(lists: Watchlists) -> None:
    entry = await lists.add(
        "fraud_accounts", ACCOUNT, reason="notice 2026-118", added_by="centre-sh", expires_at=None, now=NOW
    )
    assert entry.expires_at is None
    found = await lists.check("fraud_accounts", ACCOUNT, at=NOW + timedelta(days=400))
    assert found is not None
    assert found.reason == "notice 2026-118"
    assert found.added_by == "centre-sh"
    assert await lists.check("allowlist", ACCOUNT, at=NOW) is None
    assert (await lists.sizes(at=NOW))["fraud_accounts"] == 1
    assert await lists.remove("fraud_accounts", ACCOUNT, now=NOW)
    assert not await lists.remove("fraud_accounts", ACCOUNT, now=NOW)
    assert await lists.check("fraud_accounts", ACCOUNT, at=NOW) is None


async def test_entries_stop_matching_after_their_expiry(lists: Watchlists) -> None:
    person = resident_id()
    await lists.add("police_warned", person, reason="call 96110", added_by="centre", expires_at=None, now=NOW)
    assert await lists.check("police_warned", person, at=NOW + timedelta(hours=71)) is not None
    assert await lists.check("police_warned", person, at=NOW + timedelta(hours=73)) is None
    assert (await lists.sizes(at=NOW + timedelta(hours=73)))["police_warned"] == 0


async def test_screening_lookups_group_by_entity(lists: Watchlists, redis_url: str) -> None:
    await lists.add("fraud_accounts", ACCOUNT, reason="r", added_by="a", expires_at=None, now=NOW)
    checks = [("fraud_accounts", "transfer.payee_account"), ("allowlist", "transfer.payee_account")]
    plan = lists.plan(checks, {"transfer.payee_account": ACCOUNT})
    assert len(plan) == 1  # both lists are read from the one entity key
    client = aioredis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    lists.queue_lookups(pipe, plan)
    hits = lists.read_lookups(plan, await pipe.execute(), NOW)
    await client.aclose()
    assert hits == {checks[0]: True, checks[1]: False}
    assert lists.plan(checks, {}) == {}


async def test_values_are_validated_by_kind(lists: Watchlists) -> None:
    with pytest.raises(InvalidValue, match="check digit mismatch"):
        await lists.add(
            "punished_persons", resident_id()[:-1] + "0", reason="r", added_by="a", expires_at=None, now=NOW
        )
    with pytest.raises(UnknownList, match="unknown list 'fraud_acounts'"):
        await lists.add("fraud_acounts", ACCOUNT, reason="r", added_by="a", expires_at=None, now=NOW)
    with pytest.raises(InvalidValue, match="required"):
        await lists.add("fraud_accounts", ACCOUNT, reason=" ", added_by="a", expires_at=None, now=NOW)


async def test_no_clear_identifier_reaches_redis(lists: Watchlists, redis_url: str) -> None:
    person = resident_id()
    await lists.add("punished_persons", person, reason="sold 3 cards", added_by="a", expires_at=None, now=NOW)
    await lists.add("fraud_accounts", ACCOUNT, reason="r", added_by="a", expires_at=None, now=NOW)
    client = aioredis.Redis.from_url(redis_url)
    blob = await dump_everything(client)
    await client.aclose()
    assert person.encode() not in blob
    assert ACCOUNT.encode() not in blob


def test_bad_lists_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "lists.yaml").write_text("lists:\n  - name: x\n    kind: passport\n  - name: x\n    kind: account\n")
    with pytest.raises(SourceError) as raised:
        load_lists(tmp_path)
    assert [str(p) for p in raised.value.problems] == [
        f"{tmp_path / 'lists.yaml'}:3: list 'x': 'kind' must be one of id_number, account, phone, device, region",
        f"{tmp_path / 'lists.yaml'}:4: duplicate list 'x' (first at line 2)",
    ]
