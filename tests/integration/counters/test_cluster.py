"""The same store on a real 3-master Redis Cluster: one script per entity, each in its own slot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.domain import EventKind
from service.redis.keys import KeyHasher
from service.riskdata.counters.loader import parse_counters
from service.riskdata.counters.model import CounterSpec
from service.riskdata.counters.store import CounterStore
from tests.integration.counters.conftest import SECRET
from tests.integration.counters.events import opening, screen, transfer

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url, retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


async def test_shipped_counters_work_on_a_cluster(cluster: RedisCluster, shipped_spec: CounterSpec) -> None:
    store = CounterStore(cluster, shipped_spec, KeyHasher(SECRET))
    banks = [
        await screen(store, shipped_spec, opening(T0 + timedelta(days=i), "110105199003071234", bank))
        for i, bank in enumerate(["BANK_A", "BANK_B", "BANK_C"])
    ]
    assert [v["banks_30d"] for v in banks] == [1, 2, 3]
    mule = "6222020200112233445"
    for i in range(70):  # past the exact cap: HyperLogLog keys created inside the script, same slot
        await screen(store, shipped_spec, transfer(T0 + timedelta(seconds=i), f"6217{i:015d}", mule, 1000))
    sent = await screen(store, shipped_spec, transfer(T0 + timedelta(minutes=5), mule, "6228480000000000001", 5000))
    assert abs(sent["payers_into_payer_1h"] - 70) <= 2
    assert sent["inflow_to_payer_30m"] == 70_000
    assert sent["pair_payments_all"] == 1
    keys = [key async for key in cluster.scan_iter(match="rg:c2:*", count=1000)]
    nodes = {getattr(cluster.get_node_from_key(key), "name", None) for key in keys}
    assert len(nodes) == 3  # entities spread over all masters
    for key in keys:
        tag = key.split(b"{", 1)[1].split(b"}", 1)[0]
        assert cluster.keyslot(key) == cluster.keyslot(b"{" + tag + b"}")


async def test_cluster_script_reload_after_flush(cluster: RedisCluster) -> None:
    spec = parse_counters(
        """
counters:
  - name: sends
    on: transfer
    key: transfer.payer_account
    aggregate: count
    windows: [1h]
""",
        "c.yaml",
    )
    store = CounterStore(cluster, spec, KeyHasher(SECRET))

    async def send(account: str) -> int | float:
        values = await store.observe(
            occurred_at=T0,
            kind=EventKind.TRANSFER,
            facts={},
            ids={"transfer.payer_account": account, "transfer.payee_account": "1"},
            updates={"sends"},
        )
        return values["sends_1h"]

    assert await send("a") == 1
    await cluster.script_flush()
    assert [await send(account) for account in ("a", "b", "c", "a")] == [2, 1, 1, 3]
