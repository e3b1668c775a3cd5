"""The split API: counters in a pipeline the caller shares with its own commands; NOSCRIPT; skew."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from service.domain import EventKind, ScreenRequest
from service.errors import StoreUnavailable, Unsupported
from service.pipeline.facts import facts, identifiers
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.redis.keys import KeyHasher
from service.redis.mux import Multiplexer
from service.redis.pipeline import DirectPipeline
from service.riskdata.counters.loader import parse_counters
from service.riskdata.counters.model import CounterSpec, counters_to_update
from service.riskdata.counters.store import CounterPlan, CounterStore
from tests.integration.counters.conftest import SECRET
from tests.integration.counters.events import opening, transfer, where

pytestmark = pytest.mark.integration

MakeStore = Callable[[CounterSpec | str], CounterStore]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PAYER, PAYEE = "6222020200112233445", "6217000010002000300"
# One counter on transfers only: a SIM sale has none.
SENDS = """
counters:
  - name: sends
    on: transfer
    key: transfer.payer_account
    aggregate: count
    windows: [1h]
"""


def _plan(store: CounterStore, spec: CounterSpec, request: ScreenRequest) -> CounterPlan:
    request_facts = facts(request)
    return store.prepare(
        occurred_at=request.occurred_at,
        kind=request.kind,
        facts=request_facts,
        ids=identifiers(request),
        updates=counters_to_update(spec, request.kind, request_facts, where),
    )


async def _shared_round_trip(
    client: Redis | RedisCluster, store: CounterStore, plan: CounterPlan
) -> tuple[dict[str, int | float], list[Any]]:
    """What the screening does: foreign commands before and after the counters, one execute."""
    pipe = client.pipeline(transaction=False)
    pipe.set("watch:{a}", "x")
    pipe.hmget("watch:{b}", ["fraud_accounts", "punished"])
    n = store.queue(pipe, plan)
    pipe.get("watch:{a}")
    pipe.incr("watch:{c}")
    replies = await pipe.execute(raise_on_error=False)
    mine = await store.retry_noscript(plan, replies[2 : 2 + n])
    return store.read(plan, mine), [*replies[:2], *replies[2 + n :]]


async def test_a_shared_pipeline_gives_what_observe_gives(
    client: Redis, make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    await store.load_script()
    requests = [
        transfer(T0 + timedelta(minutes=i), PAYER if i % 2 else PAYEE, PAYEE if i % 2 else PAYER, 1000 * (i + 1))
        for i in range(6)
    ]
    shared: list[dict[str, int | float]] = []
    for request in requests:
        sync_client.config_resetstat()
        values, foreign = await _shared_round_trip(client, store, _plan(store, shipped_spec, request))
        assert foreign == [True, [None, None], b"x", len(shared) + 1]
        assert sync_client.info("commandstats")["cmdstat_evalsha"]["calls"] == 1  # all entities, one call
        shared.append(values)
    sync_client.flushall()
    alone = [await store.observe(**_event(shipped_spec, request)) for request in requests]
    assert shared == alone
    assert shared[-1]["pair_payments_all"] == 3 and shared[-1]["inflow_30m"] == 2000 + 4000 + 6000


def _event(spec: CounterSpec, request: ScreenRequest) -> dict[str, Any]:
    request_facts = facts(request)
    return {
        "occurred_at": request.occurred_at,
        "kind": request.kind,
        "facts": request_facts,
        "ids": identifiers(request),
        "updates": counters_to_update(spec, request.kind, request_facts, where),
    }


async def test_noscript_in_a_shared_pipeline_is_sent_again_and_counts_once(
    client: Redis, make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    first, _ = await _shared_round_trip(client, store, _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 100)))
    assert first["outflow_30m"] == 100
    sync_client.script_flush()
    plan = _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 200))
    pipe = client.pipeline(transaction=False)
    pipe.incr("watch:{n}")
    n = store.queue(pipe, plan)
    replies = await pipe.execute(raise_on_error=False)
    assert isinstance(replies[1], NoScriptError)
    with pytest.raises(StoreUnavailable, match="NOSCRIPT"):
        store.read(plan, replies[1 : 1 + n])
    values = store.read(plan, await store.retry_noscript(plan, replies[1 : 1 + n]))
    assert values["outflow_30m"] == 300 and values["pair_payments_all"] == 2
    assert replies[0] == 1  # the foreign command ran once, and is not sent again
    third = await store.observe(**_event(shipped_spec, transfer(T0, PAYER, PAYEE, 400)))
    assert third["outflow_30m"] == 700 and third["pair_payments_all"] == 3


async def test_retry_noscript_without_noscript_does_nothing(make_store: MakeStore, shipped_spec: CounterSpec) -> None:
    store = make_store(shipped_spec)
    plan = _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 100))
    replies: list[Any] = [[1, 2, 3]]
    assert await store.retry_noscript(plan, replies) == replies  # no connection needed, none made


async def test_an_event_without_counters_queues_nothing(client: Redis, make_store: MakeStore) -> None:
    store = make_store(SENDS)
    plan = store.prepare(occurred_at=T0, kind=EventKind.SIM_SALE, facts={}, ids={}, updates=())
    pipe = client.pipeline(transaction=False)
    assert store.queue(pipe, plan) == 0
    assert store.read(plan, []) == {}
    assert await store.run(plan) == {}


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url, retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


async def test_a_shared_cluster_pipeline_with_noscript(cluster: RedisCluster, shipped_spec: CounterSpec) -> None:
    store = CounterStore(cluster, shipped_spec, KeyHasher(SECRET))
    plan = _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 100))
    values, foreign = await _shared_round_trip(cluster, store, plan)
    assert foreign == [True, [None, None], b"x", 1]
    assert values["outflow_30m"] == 100 and values["pair_payments_all"] == 1
    pipe = cluster.pipeline(transaction=False)
    assert store.queue(pipe, plan) == len(plan.calls) == 4  # one EVALSHA per entity, each in its slot
    await cluster.script_flush()
    values, foreign = await _shared_round_trip(
        cluster, store, _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 5))
    )
    assert foreign == [True, [None, None], b"x", 2]
    assert values["outflow_30m"] == 105 and values["pair_payments_all"] == 2
    again = await store.observe(**_event(shipped_spec, transfer(T0, PAYER, PAYEE, 1)))
    assert again["outflow_30m"] == 106 and again["pair_payments_all"] == 3


async def test_max_future_skew_goes_into_the_ttls(client: Redis, sync_client: redis.Redis) -> None:
    spec = parse_counters(
        """
counters:
  - name: sends
    on: transfer
    key: transfer.payer_account
    aggregate: count
    windows: [1h]
""",
        "s.yaml",
    )
    ttls = []
    for skew in (0, 300, 3600):
        sync_client.flushall()
        store = CounterStore(client, spec, KeyHasher(SECRET), max_future_skew_seconds=skew)
        await store.observe(
            occurred_at=T0, kind=EventKind.TRANSFER, facts={}, ids={"transfer.payer_account": PAYER}, updates={"sends"}
        )
        (key,) = sync_client.keys("rg:c2:*")
        ttls.append(sync_client.ttl(key))
    # 1h window in minute buckets: 3600 + 60 + skew
    assert [3660 - 2, 3960 - 2, 7260 - 2] <= ttls <= [3660, 3960, 7260]
    with pytest.raises(ValueError, match="max_future_skew_seconds"):
        CounterStore(client, spec, KeyHasher(SECRET), max_future_skew_seconds=-1)


async def test_opening_without_key_fields_reads_nothing_for_them(
    make_store: MakeStore, shipped_spec: CounterSpec
) -> None:
    store = make_store(shipped_spec)
    plan = _plan(store, shipped_spec, opening(T0, "110105199003071234", clerk=""))
    values = await store.run(plan)
    assert "clerk_openings_1h" not in values and values["banks_30d"] == 1


async def test_the_direct_pipeline_carries_foreign_commands_and_recovers_from_noscript(
    client: Redis, make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    pipe = store.pipeline()
    assert isinstance(pipe, DirectPipeline)
    values, foreign = await _shared_round_trip_on(
        pipe, store, _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 7))
    )
    assert values["outflow_30m"] == 7
    assert foreign == [b"OK", [None, None], b"x", 1]  # as the server sends them: SET gives b"OK"
    sync_client.script_flush()
    values, foreign = await _shared_round_trip_on(
        pipe, store, _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 8))
    )
    assert values["outflow_30m"] == 15 and values["pair_payments_all"] == 2
    assert foreign[3] == 2
    pipe.execute_command("HSET", "h", "f", 1).hmget("h", "f")
    assert len(pipe) == 2 and await pipe.execute() == [1, [b"1"]] and len(pipe) == 0
    pipe.execute_command("INCR", "h")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await pipe.execute()
    assert await pipe.execute() == []


async def _shared_round_trip_on(
    pipe: DirectPipeline, store: CounterStore, plan: CounterPlan
) -> tuple[dict[str, int | float], list[Any]]:
    pipe.execute_command("SET", "watch:{a}", "x")
    pipe.hmget("watch:{b}", ["fraud_accounts", "punished"])
    n = store.queue(pipe, plan)
    pipe.execute_command("GET", "watch:{a}")
    pipe.execute_command("INCR", "watch:{c}")
    replies = await pipe.execute(raise_on_error=False)
    mine = await store.retry_noscript(plan, replies[2 : 2 + n])
    return store.read(plan, mine), [*replies[:2], *replies[2 + n :]]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "r", RedisOptions(persistent=False, port=0))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("connection", ["multiplexed", "held"])
async def test_a_hung_redis_times_out_and_the_connection_recovers(
    private_redis: EmbeddedRedis, connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection == "held":  # what a TLS client uses

        def unsupported(client: Redis) -> Multiplexer:
            raise Unsupported("as for TLS")

        monkeypatch.setattr(Multiplexer, "for_client", unsupported)
    client = Redis.from_url(private_redis.url, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    spec = parse_counters(SENDS, "s.yaml")
    store = CounterStore(client, spec, KeyHasher(SECRET))

    async def send() -> int | float:
        values = await store.observe(
            occurred_at=T0, kind=EventKind.TRANSFER, facts={}, ids={"transfer.payer_account": PAYER}, updates={"sends"}
        )
        return values["sends_1h"]

    assert await send() == 1
    assert private_redis.pid is not None
    os.kill(private_redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await send()
        assert time.monotonic() - started < 1.0  # bounded by socket_timeout, though the send has no timeout
        # a caller's own deadline cancels the exchange; the connection is dropped, not left dirty
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(send(), 0.05)
    finally:
        os.kill(private_redis.pid, signal.SIGCONT)
    # The timed-out calls may or may not have run before the stop: the count is 2 to 4 now,
    # and the next answer is this call's own, not a stale reply left on a connection.
    assert await send() in (2, 3, 4)
    assert await send() == (await send()) - 1
    if connection == "multiplexed":
        assert store._held is None and store._mux is not None
        assert CounterStore(client, spec, KeyHasher(SECRET))._mux is store._mux  # one per client
        await store.aclose()  # the connection is the client's: it stays
        assert await send() >= 5
        await client.aclose()
        assert store._mux._link is None  # closed with the client
        return
    assert store._held is not None
    held = list(store._held.taken)
    other = CounterStore(client, spec, KeyHasher(SECRET))
    assert other._held is store._held  # one set per client: a dropped store leaves nothing behind
    await store.aclose()
    assert held and all(connection.socket_timeout == 0.3 for connection in held)
    assert store._held.taken == []
    assert await send() >= 5  # and takes connections again when used
    await client.aclose()


# --- the claim folded into the counter script (single Redis) ------------------------------------

CLAIM_KEY = b"rg:r:{request-1}"


async def _claimed_round_trip(
    store: CounterStore, plan: CounterPlan
) -> tuple[bytes | None, dict[str, int | float] | None, Any]:
    pipe = store.pipeline()
    n = store.queue(pipe, plan)
    pipe.execute_command("GET", "watch:{a}")
    replies = await pipe.execute(raise_on_error=False)
    mine = await store.retry_noscript(plan, replies[:n])
    stored = store.stored_claim(plan, mine)
    return stored, (None if stored is not None else store.read(plan, mine)), replies[n]


async def test_a_claim_counts_once_and_a_second_attempt_finds_the_mark(
    make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    assert store.folds_claim
    plan = _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 100))
    first = store.with_claim(plan, key=CLAIM_KEY, mark=b"\x00pending:a|b", px=10_000)
    sync_client.config_resetstat()
    stored, values, foreign = await _claimed_round_trip(store, first)
    assert stored is None and values is not None and values["outflow_30m"] == 100
    assert foreign is None  # the caller's other commands ride along
    assert sync_client.get(CLAIM_KEY) == b"\x00pending:a|b"  # '|' in the mark is kept: it comes last
    assert 9_000 < sync_client.pttl(CLAIM_KEY) <= 10_000
    assert sync_client.info("commandstats")["cmdstat_evalsha"]["calls"] == 1  # claim and counters: one call
    # Another attempt of the same request: the mark comes back, and nothing is counted.
    again = store.with_claim(plan, key=CLAIM_KEY, mark=b"\x00pending:other", px=10_000)
    stored, values, _ = await _claimed_round_trip(store, again)
    assert stored == b"\x00pending:a|b" and values is None
    with pytest.raises(ValueError, match="stored_claim"):
        store.read(again, [stored])
    # A decided request answers its decision; a fresh request id counts on.
    sync_client.set(CLAIM_KEY, b'{"decision": 1}')
    stored, _, _ = await _claimed_round_trip(store, again)
    assert stored == b'{"decision": 1}'
    fresh = store.with_claim(plan, key=b"rg:r:{request-2}", mark=b"m", px=10_000)
    stored, values, _ = await _claimed_round_trip(store, fresh)
    assert stored is None and values is not None and values["outflow_30m"] == 200


async def test_a_claim_after_noscript_is_sent_again_and_claims_once(
    make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    sync_client.script_flush()
    plan = store.with_claim(
        _plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 5)), key=CLAIM_KEY, mark=b"mine", px=10_000
    )
    pipe = store.pipeline()
    n = store.queue(pipe, plan)
    replies = await pipe.execute(raise_on_error=False)
    assert n == 1 and isinstance(replies[0], NoScriptError)
    assert sync_client.get(CLAIM_KEY) is None  # a NOSCRIPT call did not run
    mine = await store.retry_noscript(plan, replies)
    assert store.stored_claim(plan, mine) is None and store.read(plan, mine)["outflow_30m"] == 5
    assert sync_client.get(CLAIM_KEY) == b"mine"


async def test_a_claim_is_sent_for_an_event_without_counters(make_store: MakeStore, sync_client: redis.Redis) -> None:
    store = make_store(SENDS)
    plan = store.with_claim(
        store.prepare(occurred_at=T0, kind=EventKind.SIM_SALE, facts={}, ids={}, updates=()),
        key=CLAIM_KEY,
        mark=b"mine",
        px=10_000,
    )
    stored, values, _ = await _claimed_round_trip(store, plan)
    assert stored is None and values == {}
    assert sync_client.get(CLAIM_KEY) == b"mine"
    with pytest.raises(ValueError, match="pipeline"):
        await store.run(plan)


async def test_a_claim_is_a_call_of_its_own_on_a_cluster(cluster: RedisCluster, shipped_spec: CounterSpec) -> None:
    store = CounterStore(cluster, shipped_spec, KeyHasher(SECRET))
    assert not store.folds_claim
    with pytest.raises(ValueError, match="Cluster"):
        store.with_claim(_plan(store, shipped_spec, transfer(T0, PAYER, PAYEE, 1)), key=CLAIM_KEY, mark=b"m", px=1)
