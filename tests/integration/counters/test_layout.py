"""How counters sit in Redis: TTLs, bounded memory, one round trip, flat cost, no clear identifiers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.domain import Carrier, EventKind
from service.errors import StoreUnavailable
from service.redis.embedded import EmbeddedRedis, RedisOptions, free_port
from service.redis.keys import KeyHasher, counter_tag
from service.redis.mux import Multiplexer
from service.riskdata.counters.loader import parse_counters
from service.riskdata.counters.model import Counter, CounterSpec
from service.riskdata.counters.store import CounterStore
from tests.integration.counters.conftest import SECRET
from tests.integration.counters.events import opening, screen, sim_closure, sim_sale, transfer

pytestmark = pytest.mark.integration

MakeStore = Callable[[CounterSpec | str], CounterStore]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

BUSY = """
counters:
  - name: sends
    on: transfer
    key: transfer.payer_account
    aggregate: count
    windows: [1h, 24h]
  - name: sent
    on: transfer
    key: transfer.payer_account
    aggregate: sum(transfer.amount_fen)
    windows: [30m, 24h, all]
  - name: payees
    on: transfer
    key: transfer.payer_account
    aggregate: distinct(transfer.payee_account)
    windows: [24h]
    exact_up_to: 64
"""


def _send(store: CounterStore, at: datetime, payee: int, amount: int = 100) -> Any:
    return store.observe(
        occurred_at=at,
        kind=EventKind.TRANSFER,
        facts={"transfer.amount_fen": amount},
        ids={"transfer.payer_account": "6222020200112233445", "transfer.payee_account": f"6217{payee:015d}"},
        updates={"sends", "sent", "payees"},
    )


def _inner_calls(sync_client: redis.Redis) -> int:
    """Commands run inside scripts since the last CONFIG RESETSTAT."""
    stats = sync_client.info("commandstats")
    skip = ("cmdstat_evalsha", "cmdstat_config|resetstat", "cmdstat_info", "cmdstat_script|load")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in skip)


def _counter_ttl(counter: Counter) -> int:
    if counter.aggregate.value == "idle_days":
        return counter.retain_seconds + 86400  # refreshed once a day
    if any(w.all_time for w in counter.windows):
        return counter.retain_seconds
    return max(w.seconds + w.granularity + 300 for w in counter.windows)


def _max_ttl(spec: CounterSpec, sync_client: redis.Redis, key: str) -> int:
    if key.endswith("}"):  # an entity's hash: as long as the longest-lived counter it holds needs
        tags = {field[:2] for field in sync_client.hkeys(key)}
        return max(_counter_ttl(c) for c in spec.counters if counter_tag(c.name) in tags)
    return _counter_ttl(spec.counter(key.split("}:", 1)[1].split(":", 1)[0]))


async def test_every_key_has_a_ttl_that_matches_its_longest_window(
    make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    for i in range(70):  # pushes payers_in of one payee past its exact cap into HyperLogLogs
        await screen(
            store, shipped_spec, transfer(T0 + timedelta(seconds=i), f"6222{i:015d}", "6217000010002000300", 99)
        )
    await screen(store, shipped_spec, opening(T0, "110105199003071234", phone="13812345678", device="PAD-1"))
    await screen(store, shipped_spec, sim_sale(T0, "110105199003071234", Carrier.CHINA_MOBILE, 2))
    await screen(store, shipped_spec, sim_closure(T0, "110105199003071234", "13812345678"))
    keys = [k.decode() for k in sync_client.scan_iter(count=1000)]
    # window 1 is the longest (24h, hourly buckets), window 2 the 1h one (minute buckets)
    assert any(k.endswith(":payers_in:1:" + str(int(T0.timestamp()) // 3600)) for k in keys)
    assert any(k.endswith(":payers_in:2:" + str(int(T0.timestamp()) // 60)) for k in keys)
    for key in keys:
        ttl = sync_client.ttl(key)
        assert 0 < ttl <= _max_ttl(shipped_spec, sync_client, key), key


async def test_memory_per_entity_stays_bounded_as_events_pile_up(
    make_store: MakeStore, sync_client: redis.Redis
) -> None:
    store = make_store(BUSY)
    peak: dict[str, int] = {}
    for i in range(3000):  # three days, one event every ~86 s, 50 different payees
        await _send(store, T0 + timedelta(seconds=86 * i), i % 50)
        if i % 100 == 99:
            for key in sync_client.scan_iter(count=1000):
                name = key.decode().rsplit("}", 1)[1] or "hash"
                peak[name] = max(peak.get(name, 0), int(sync_client.memory_usage(key) or 0))
    # sends' and sent's 42 + 24 + 21 + 24 live ring slots, heads and totals in one listpack hash;
    # 50 hashed payees in a zset
    assert peak["hash"] <= 1600, peak
    assert peak[":payees"] <= 2000, peak


async def test_distinct_above_its_cap_is_bounded_by_hyperloglog_size(
    make_store: MakeStore, sync_client: redis.Redis
) -> None:
    store = make_store(BUSY)
    for i in range(3000):  # 3000 different payees within two hours
        await _send(store, T0 + timedelta(seconds=2 * i), i)
    keys = list(sync_client.scan_iter(match="*:payees*", count=1000))
    assert 1 < len(keys) <= 1 + 24  # the mode hash and at most one HyperLogLog per hour bucket
    # a dense HyperLogLog is 12,304 bytes, which the allocator rounds up to a 16 KB size class
    assert max(int(sync_client.memory_usage(k) or 0) for k in keys) <= 16_384 + 100


async def test_one_round_trip_per_request_one_script_call_per_entity(
    make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(shipped_spec)
    await store.load_script()
    sends: list[int] = []
    original = Multiplexer.exchange

    async def counting(self: Multiplexer, packed: bytes, count: int) -> list[Any]:
        sends.append(count)
        return await original(self, packed, count)

    monkeypatch.setattr(Multiplexer, "exchange", counting)
    sync_client.config_resetstat()
    values = await screen(store, shipped_spec, transfer(T0, "6222020200112233445", "6217000010002000300", 100))
    assert sends == [1]  # one exchange of one command: the replies read back in one go
    # payee account, payer account, payer person, (payer, payee) pair: four entities in one
    # script call on a single Redis (one call per entity on a cluster)
    assert sync_client.info("commandstats")["cmdstat_evalsha"]["calls"] == 1
    assert len(values) == len(store.value_names(EventKind.TRANSFER))


async def test_redis_work_per_request_does_not_grow_with_a_full_window(
    make_store: MakeStore, sync_client: redis.Redis
) -> None:
    store = make_store(BUSY)
    await store.load_script()
    start = T0 + timedelta(seconds=30)

    async def cost(offset: int) -> tuple[float, float]:
        sync_client.config_resetstat()
        for i in range(20):
            await _send(store, start + timedelta(seconds=offset + i % 2), i % 40)
        stats = sync_client.info("commandstats")
        return _inner_calls(sync_client) / 20, float(stats["cmdstat_evalsha"]["usec_per_call"])

    empty_calls, empty_usec = await cost(0)
    for i in range(2000):  # fill this minute's window buckets with 2000 events and 40 payees
        await _send(store, start + timedelta(seconds=i % 2), i % 40)
    full_calls, full_usec = await cost(0)
    assert full_calls <= empty_calls  # commands per request do not grow
    assert full_usec < 3 * empty_usec + 30


async def test_no_clear_identifier_anywhere_in_redis(
    make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    person_ids = ["110105199003071234", "310115198512120019", "44010619800101001X"]
    phones = ["13812345678", "13900001111"]
    accounts = ["6222020200112233445", "6217000010002000300", "6228480000000000001"]
    devices = ["PAD-7731-XYZ", "IMEI-86012345678901"]
    address = "上海市浦东新区世纪大道100号"
    for i, id_number in enumerate(person_ids):
        at = T0 + timedelta(minutes=i)
        await screen(
            store,
            shipped_spec,
            opening(
                at, id_number, phone=phones[i % 2], address=address, device=devices[i % 2], companion=person_ids[0]
            ),
        )
        await screen(store, shipped_spec, sim_sale(at, id_number, quantity=2, phone=phones[0], device=devices[0]))
        await screen(store, shipped_spec, sim_closure(at, id_number, phones[1]))
        await screen(store, shipped_spec, transfer(at, accounts[i], accounts[(i + 1) % 3], 4_900_000, id_number))
    for i in range(80):  # one account past its exact distinct cap, into HyperLogLogs
        await screen(store, shipped_spec, transfer(T0, f"62220000{i:011d}", accounts[1], 100, person_ids[0]))

    secrets_in_clear = [*person_ids, *phones, *accounts, *devices, address]
    secrets_in_clear += [f"62220000{i:011d}" for i in range(80)]
    # also telling fragments: birth dates and the long account tails
    secrets_in_clear += [p[6:14] for p in person_ids] + [a[-10:] for a in accounts]
    # not identifiers, but hashed all the same
    secrets_in_clear += ["SH-PD-001", "C042", "BANK_A", "china_mobile", "CMCC-SH"]
    needles = [s.encode() for s in secrets_in_clear]

    dumped = 0
    raw: Any = sync_client  # redis-py types replies as bytes | str; this client returns bytes
    for key in raw.scan_iter(count=1000):
        kind = raw.type(key)
        blobs: list[bytes] = [key]
        if kind == b"hash":
            for field, value in raw.hgetall(key).items():
                blobs += [field, value]
        elif kind == b"zset":
            blobs += [member for member, _ in raw.zrange(key, 0, -1, withscores=True)]
        elif kind == b"string":
            blobs.append(raw.get(key) or b"")
        else:
            pytest.fail(f"unexpected key type {kind!r} for {key!r}")
        blobs.append(raw.dump(key) or b"")
        for blob in blobs:
            for needle in needles:
                assert needle not in blob, (key, needle)
        dumped += 1
    assert dumped > 40


async def test_noscript_is_handled_by_reloading_and_counts_once(
    make_store: MakeStore, sync_client: redis.Redis
) -> None:
    store = make_store(BUSY)
    assert (await _send(store, T0, 1))["sends_1h"] == 1  # the very first call loads the script
    sync_client.script_flush()
    assert (await _send(store, T0, 2))["sends_1h"] == 2
    assert (await _send(store, T0, 3))["sends_1h"] == 3


async def test_unreachable_redis_raises_store_unavailable() -> None:
    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    store = CounterStore(client, parse_counters(BUSY, "b.yaml"), KeyHasher(SECRET))
    with pytest.raises(StoreUnavailable, match="redis"):
        await _send(store, T0, 1)
    with pytest.raises(StoreUnavailable):
        await store.load_script()
    await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "r", RedisOptions(persistent=False, port=0))
    server.start()
    yield server
    server.stop()


async def test_a_redis_that_dies_mid_run_raises_store_unavailable(private_redis: EmbeddedRedis) -> None:
    client = Redis.from_url(
        private_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    store = CounterStore(client, parse_counters(BUSY, "b.yaml"), KeyHasher(SECRET))
    assert (await _send(store, T0, 1))["sends_1h"] == 1
    private_redis.kill()
    with pytest.raises(StoreUnavailable):
        await _send(store, T0, 2)
    await client.aclose()


async def test_keys_of_the_first_layout_are_left_alone(
    make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    # The first layout kept one key per counter under rg:c: (an approximate distinct one as a
    # hash); this one lives under rg:c2:, so data written before an upgrade cannot get in the way.
    entity = KeyHasher(SECRET).entity([("account", "6217000010002000300")])
    old = f"rg:c:{{{entity}}}:payers_in"
    sync_client.hset(old, "h", 1)
    sync_client.expire(old, 600)
    store = make_store(shipped_spec)
    values = await screen(store, shipped_spec, transfer(T0, "6222020200112233445", "6217000010002000300", 100))
    assert values["payers_in_1h"] == 1 and values["inflow_30m"] == 100
    assert sync_client.hgetall(old) == {b"h": b"1"}
