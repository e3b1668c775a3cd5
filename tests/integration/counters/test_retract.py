"""Active counts exclude blocked openings: a BLOCK's retract undoes exactly the event's increments
of `decrement_on` counters, against a real redis-server (and a cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.domain import AccountClass, Carrier, ScreenRequest
from service.pipeline.facts import facts, identifiers
from service.redis.keys import KeyHasher
from service.riskdata.counters.model import CounterSpec, counters_to_update
from service.riskdata.counters.store import CounterPlan, CounterStore
from tests.integration.counters.conftest import SECRET
from tests.integration.counters.events import account_closure, opening, screen, sim_closure, sim_sale, transfer, where

pytestmark = pytest.mark.integration

MakeStore = Callable[[CounterSpec | str], CounterStore]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ID_A = "110105199003071234"
CM, CU = Carrier.CHINA_MOBILE, Carrier.CHINA_UNICOM


async def _observe(
    store: CounterStore, spec: CounterSpec, request: ScreenRequest
) -> tuple[CounterPlan, dict[str, int | float]]:
    request_facts = facts(request)
    plan = store.prepare(
        occurred_at=request.occurred_at,
        kind=request.kind,
        facts=request_facts,
        ids=identifiers(request),
        updates=counters_to_update(spec, request.kind, request_facts, where),
    )
    return plan, await store.run(plan)


def _class1(at: datetime, bank: str = "BANK_A") -> ScreenRequest:
    return opening(at, ID_A, bank, account_class=AccountClass.I)


async def test_a_blocked_opening_leaves_active_counts_and_keeps_attempts(
    make_store: MakeStore, shipped_spec: CounterSpec
) -> None:
    store = make_store(shipped_spec)
    assert (await screen(store, shipped_spec, _class1(T0)))["class1_accounts_all"] == 1
    blocked, values = await _observe(store, shipped_spec, _class1(T0 + timedelta(minutes=10)))
    assert values["class1_accounts_all"] == 2  # "this would be the 2nd class-I account here"
    assert values["banks_30d"] == 1 and values["outlet_openings_1h"] == 2
    assert await store.retract(store.prepare_retract(blocked)) == {"class1_accounts_all": 1}
    after = await screen(store, shipped_spec, _class1(T0 + timedelta(minutes=20), "BANK_B"))
    assert after["banks_30d"] == 2  # the blocked attempt at BANK_A still counts as an attempt
    again = await screen(store, shipped_spec, _class1(T0 + timedelta(minutes=30)))
    assert again["class1_accounts_all"] == 2
    assert again["outlet_openings_1h"] == 3  # and as an opening the BANK_A outlet handled


async def test_a_blocked_sim_sale_gives_back_its_quantity_and_only_that(
    make_store: MakeStore, shipped_spec: CounterSpec
) -> None:
    store = make_store(shipped_spec)
    await screen(store, shipped_spec, sim_sale(T0, ID_A, CM, 2))
    await screen(store, shipped_spec, sim_sale(T0, ID_A, CU, 1))
    blocked, values = await _observe(store, shipped_spec, sim_sale(T0 + timedelta(minutes=5), ID_A, CM, 3))
    assert values["sims_active_all"] == 5 and values["sims_24h"] == 6
    assert await store.retract(store.prepare_retract(blocked)) == {"sims_active_all": 2}
    later = await screen(store, shipped_spec, sim_sale(T0 + timedelta(minutes=6), ID_A, CU, 1))
    assert later["sims_active_all"] == 2  # China Unicom: untouched by the China Mobile retract
    assert later["sims_24h"] == 7  # SIMs sold (attempted) in 24 h keep the blocked three


async def test_retract_with_a_token_is_idempotent_without_one_it_is_not(
    make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    for minute in range(3):
        await screen(store, shipped_spec, sim_sale(T0 + timedelta(minutes=minute), ID_A, CM, 2))
    blocked, values = await _observe(store, shipped_spec, sim_sale(T0 + timedelta(minutes=9), ID_A, CM, 2))
    assert values["sims_active_all"] == 8
    retract = store.prepare_retract(blocked, token="BANK_A/request-42")
    assert await store.retract(retract) == {"sims_active_all": 6}
    assert await store.retract(retract) == {"sims_active_all": 6}  # sent twice, undone once
    marks = sync_client.keys("rg:c2:*:u:*")
    assert len(marks) == 1 and 0 < sync_client.ttl(marks[0]) <= 48 * 3600
    assert b"request-42" not in marks[0]  # the token is hashed too
    untokened = store.prepare_retract(blocked)
    assert await store.retract(untokened) == {"sims_active_all": 4}
    assert await store.retract(untokened) == {"sims_active_all": 2}  # each send subtracts again
    assert await store.retract(untokened) == {"sims_active_all": 0}
    assert await store.retract(untokened) == {"sims_active_all": 0}  # never below 0


async def test_nothing_to_retract_for_other_events(make_store: MakeStore, shipped_spec: CounterSpec) -> None:
    store = make_store(shipped_spec)
    for request in (
        opening(T0, ID_A, account_class=AccountClass.II),  # where: class I only
        sim_closure(T0, ID_A, "13812345678", CM),  # a decrement, not an increment
        account_closure(T0, ID_A, "6222020200112233445"),
    ):
        plan, _ = await _observe(store, shipped_spec, request)
        retract = store.prepare_retract(plan, token="t")
        assert retract.calls == [] and await store.retract(retract) == {}


async def test_a_blocked_transfer_takes_back_only_its_payment_to_the_payee(
    make_store: MakeStore, shipped_spec: CounterSpec
) -> None:
    """pair_payments has undo_on_block: a blocked transfer was never paid; the attempt counters
    (payers into the payee, amounts out) keep it."""
    store = make_store(shipped_spec)
    plan, values = await _observe(store, shipped_spec, transfer(T0, "6222020200112233445", "6217000010002000300", 100))
    assert values["pair_payments_all"] == 1
    retract = store.prepare_retract(plan, token="t")
    assert await store.retract(retract) == {"pair_payments_all": 0}
    _, again = await _observe(store, shipped_spec, transfer(T0, "6222020200112233445", "6217000010002000300", 100))
    assert again["pair_payments_all"] == 1  # still the first payment


async def test_retract_in_the_post_decision_pipeline_leaves_an_expired_entity_alone(
    client: Redis, make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    blocked, _ = await _observe(store, shipped_spec, _class1(T0))
    retract = store.prepare_retract(blocked, token="r1")
    pipe = client.pipeline(transaction=False)
    pipe.set("rg:r:{decision}", "BLOCK")
    n = store.queue_retract(pipe, retract)
    replies = await pipe.execute(raise_on_error=False)
    assert store.read_retract(retract, await store.retry_noscript(retract, replies[1 : 1 + n])) == {
        "class1_accounts_all": 0
    }
    sync_client.flushall()  # the entity expired (or was evicted) in between
    assert await store.retract(store.prepare_retract(blocked)) == {"class1_accounts_all": 0}
    assert sync_client.keys("rg:c2:*") == []  # not created again, and no key without a TTL


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url, retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


async def test_retract_on_a_cluster(cluster: RedisCluster, shipped_spec: CounterSpec) -> None:
    store = CounterStore(cluster, shipped_spec, KeyHasher(SECRET))
    await _observe(store, shipped_spec, sim_sale(T0, ID_A, CM, 2))
    blocked, values = await _observe(store, shipped_spec, sim_sale(T0, ID_A, CM, 1))
    assert values["sims_active_all"] == 3
    retract = store.prepare_retract(blocked, token="x")
    pipe = cluster.pipeline(transaction=False)
    n = store.queue_retract(pipe, retract)
    await cluster.script_flush()
    replies = await pipe.execute(raise_on_error=False)
    assert store.read_retract(retract, await store.retry_noscript(retract, replies[:n])) == {"sims_active_all": 2}
    assert await store.retract(retract) == {"sims_active_all": 2}
