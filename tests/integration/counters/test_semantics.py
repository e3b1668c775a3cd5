"""What a counter value means, against a real redis-server with injected event times."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis

from service.domain import AccountClass, Carrier, EventKind
from service.redis.keys import counter_tag
from service.riskdata.counters.model import CounterSpec
from service.riskdata.counters.store import CounterStore
from tests.integration.counters.events import (
    account_closure,
    opening,
    screen,
    sim_closure,
    sim_sale,
    transfer,
)

pytestmark = pytest.mark.integration

MakeStore = Callable[[CounterSpec | str], CounterStore]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # on a minute, hour and day boundary
ID_A = "110105199003071234"
ID_B = "310115198512120019"

WINDOWS = """
counters:
  - name: sends
    on: transfer
    key: transfer.payer_account
    aggregate: count
    windows: [30m, 24h]
  - name: sent
    on: transfer
    key: transfer.payer_account
    aggregate: sum(transfer.amount_fen)
    windows: [30m]
"""


async def _send(store: CounterStore, at: datetime, amount: int = 100, update: bool = True) -> dict[str, int | float]:
    return await store.observe(
        occurred_at=at,
        kind=EventKind.TRANSFER,
        facts={"transfer.amount_fen": amount},
        ids={"transfer.payer_account": "6222020200112233445", "transfer.payee_account": "6217000010002000300"},
        updates={"sends", "sent"} if update else set(),
    )


async def test_windows_slide_bucket_by_bucket_and_include_the_current_event(make_store: MakeStore) -> None:
    store = make_store(WINDOWS)
    minute = timedelta(minutes=1)
    assert await _send(store, T0, 100) == {"sends_30m": 1, "sends_24h": 1, "sent_30m": 100}
    assert (await _send(store, T0 + 10 * minute, 250))["sent_30m"] == 350
    # 29m59s later the first event's bucket is still the window's oldest
    assert (await _send(store, T0 + 29 * minute + timedelta(seconds=59), 1))["sends_30m"] == 3
    # at +30m the window is buckets +1m..+30m: the first event dropped out
    assert await _send(store, T0 + 30 * minute, 2) == {"sends_30m": 3, "sends_24h": 4, "sent_30m": 253}
    # reads (no update) slide too, and change nothing
    assert await _send(store, T0 + 40 * minute, update=False) == {"sends_30m": 2, "sends_24h": 4, "sent_30m": 3}
    assert await _send(store, T0 + 70 * minute, update=False) == {"sends_30m": 0, "sends_24h": 4, "sent_30m": 0}
    assert (await _send(store, T0 + 30 * minute, update=False))["sends_30m"] == 3
    # a day and a bucket later everything is gone, and a new event starts afresh
    assert await _send(store, T0 + timedelta(hours=25), 7) == {"sends_30m": 1, "sends_24h": 1, "sent_30m": 7}


async def test_error_bound_is_one_bucket(make_store: MakeStore) -> None:
    store = make_store(WINDOWS)
    await _send(store, T0 + timedelta(seconds=59))  # last second of bucket T0
    # 30 minutes and 1 second later the event is 29m02s old, yet its bucket has left the window
    assert (await _send(store, T0 + timedelta(minutes=30), update=False))["sends_30m"] == 0
    assert (await _send(store, T0 + timedelta(minutes=29, seconds=59), update=False))["sends_30m"] == 1


async def test_late_events_count_while_their_bucket_is_in_the_window(make_store: MakeStore) -> None:
    store = make_store(WINDOWS)
    await _send(store, T0 + timedelta(minutes=30))  # window: +1m .. +30m
    late = await _send(store, T0 + timedelta(minutes=5))
    assert late["sends_30m"] == 2  # counted, and included in its own value
    too_late = await _send(store, T0 - timedelta(minutes=10))
    assert too_late["sends_30m"] == 2  # older than the whole 30m window: dropped there ...
    assert too_late["sends_24h"] == 3  # ... but inside the 24h one


async def test_distinct_is_exact_up_to_the_cap_then_hyperloglog(
    make_store: MakeStore, sync_client: redis.Redis
) -> None:
    store = make_store("""
counters:
  - name: payers
    on: transfer
    key: transfer.payee_account
    aggregate: distinct(transfer.payer_account)
    windows: [1h, all]
    exact_up_to: 5
""")

    async def pay(payer: int, at: datetime, update: bool = True) -> dict[str, int | float]:
        return await store.observe(
            occurred_at=at,
            kind=EventKind.TRANSFER,
            facts={},
            ids={"transfer.payer_account": f"62220202{payer:011d}", "transfer.payee_account": "6217000010002000300"},
            updates={"payers"} if update else (),
        )

    for payer in range(5):
        assert await pay(payer, T0 + timedelta(seconds=payer)) == {"payers_1h": payer + 1, "payers_all": payer + 1}
    assert await pay(0, T0 + timedelta(seconds=10)) == {"payers_1h": 5, "payers_all": 5}  # seen before
    (key,) = sync_client.keys("rg:c2:*:payers")
    assert sync_client.type(key) == b"zset"
    assert await pay(5, T0 + timedelta(seconds=11)) == {"payers_1h": 6, "payers_all": 6}
    assert sync_client.type(key) == b"none"  # approximate from here on: HyperLogLogs only
    name = key.decode() if isinstance(key, bytes) else key
    assert sync_client.exists(f"{name}:a") and sync_client.keys(f"{name}:1:*")
    for payer in range(6, 400):
        values = await pay(payer, T0 + timedelta(seconds=payer))
    assert abs(values["payers_1h"] - 400) <= 12 and abs(values["payers_all"] - 400) <= 12
    repeat = await pay(7, T0 + timedelta(seconds=500))
    assert repeat == values
    later = await pay(1, T0 + timedelta(hours=2), update=False)
    assert later["payers_1h"] == 0
    assert abs(later["payers_all"] - 400) <= 12


async def test_distinct_window_counts_a_member_by_its_newest_occurrence(make_store: MakeStore) -> None:
    store = make_store("""
counters:
  - name: payers
    on: transfer
    key: transfer.payee_account
    aggregate: distinct(transfer.payer_account)
    windows: [1h]
""")

    async def pay(payer: str, at: datetime) -> int | float:
        values = await store.observe(
            occurred_at=at,
            kind=EventKind.TRANSFER,
            facts={},
            ids={"transfer.payer_account": payer, "transfer.payee_account": "6217000010002000300"},
            updates={"payers"},
        )
        return values["payers_1h"]

    assert await pay("1111", T0) == 1
    assert await pay("2222", T0 + timedelta(minutes=30)) == 2
    assert await pay("1111", T0 + timedelta(minutes=50)) == 2  # seen again: still one member
    assert await pay("3333", T0 + timedelta(minutes=70)) == 3  # 1111 counts by its newest time
    assert await pay("3333", T0 + timedelta(minutes=89)) == 3  # window +30m .. +89m
    assert await pay("3333", T0 + timedelta(minutes=90)) == 2  # 2222 (at +30m) has left
    assert await pay("3333", T0 + timedelta(minutes=110)) == 1  # and 1111 (newest at +50m)


async def test_current_event_included_third_bank_reads_three(make_store: MakeStore, shipped_spec: CounterSpec) -> None:
    store = make_store(shipped_spec)
    values = [
        await screen(store, shipped_spec, opening(T0 + timedelta(days=day), ID_A, bank))
        for day, bank in enumerate(["BANK_A", "BANK_B", "BANK_C"])
    ]
    assert [v["banks_30d"] for v in values] == [1, 2, 3]
    # another opening at a bank already counted does not add a bank
    again = await screen(store, shipped_spec, opening(T0 + timedelta(days=3), ID_A, "BANK_B"))
    assert again["banks_30d"] == 3
    # someone else's ID is another entity
    assert (await screen(store, shipped_spec, opening(T0, ID_B, "BANK_A")))["banks_30d"] == 1
    # 30 days after the first opening, BANK_A has left the window
    later = await screen(store, shipped_spec, opening(T0 + timedelta(days=30), ID_A, "BANK_D"))
    assert later["banks_30d"] == 3


async def test_active_counts_are_decremented_by_closures(make_store: MakeStore, shipped_spec: CounterSpec) -> None:
    store = make_store(shipped_spec)
    cm, cu = Carrier.CHINA_MOBILE, Carrier.CHINA_UNICOM
    assert (await screen(store, shipped_spec, sim_sale(T0, ID_A, cm, 2)))["sims_active_all"] == 2
    assert (await screen(store, shipped_spec, sim_sale(T0, ID_A, cm, 1)))["sims_active_all"] == 3
    assert (await screen(store, shipped_spec, sim_sale(T0, ID_A, cu, 1)))["sims_active_all"] == 1
    closed = await screen(store, shipped_spec, sim_closure(T0 + timedelta(days=3), ID_A, "13812345678", cm))
    assert closed["sims_active_all"] == 2
    for _ in range(4):
        closed = await screen(store, shipped_spec, sim_closure(T0 + timedelta(days=4), ID_A, "13812345678", cm))
    assert closed["sims_active_all"] == 0  # never below zero
    assert (await screen(store, shipped_spec, sim_sale(T0 + timedelta(days=5), ID_A, cu, 1)))["sims_active_all"] == 2
    # an account closure does not touch SIM counts (its key has no carrier)
    assert "sims_active_all" not in await screen(store, shipped_spec, account_closure(T0, ID_A, "6222020200112233445"))

    first = await screen(store, shipped_spec, opening(T0, ID_B, "BANK_A", account_class=AccountClass.I))
    assert first["class1_accounts_all"] == 1
    second = await screen(store, shipped_spec, opening(T0, ID_B, "BANK_A", account_class=AccountClass.I))
    assert second["class1_accounts_all"] == 2  # rule 4: a second class-I account at the same bank
    assert (await screen(store, shipped_spec, opening(T0, ID_B, "BANK_B", account_class=AccountClass.I)))[
        "class1_accounts_all"
    ] == 1
    closed = await screen(store, shipped_spec, account_closure(T0, ID_B, "6222020200112233445", "BANK_A"))
    assert closed["class1_accounts_all"] == 1
    assert closed["closures_90d"] == 1
    class2 = await screen(store, shipped_spec, opening(T0, ID_B, "BANK_A", account_class=AccountClass.II))
    assert class2["class1_accounts_all"] == 1 and class2["closures_90d"] == 1


async def test_read_as_reads_the_payers_own_inflow_without_storing_twice(
    make_store: MakeStore, shipped_spec: CounterSpec, sync_client: redis.Redis
) -> None:
    store = make_store(shipped_spec)
    mule = "6222020200112233445"
    for i, amount in enumerate((300_000, 500_000, 200_000)):
        received = await screen(
            store, shipped_spec, transfer(T0 + timedelta(minutes=i), f"62170000{i:011d}", mule, amount)
        )
    assert received["inflow_30m"] == 1_000_000 and received["payers_in_1h"] == 3
    sent = await screen(store, shipped_spec, transfer(T0 + timedelta(minutes=10), mule, "6228480000000000001", 900_000))
    assert sent["inflow_to_payer_30m"] == 1_000_000  # what came INTO the account now sending
    assert sent["payers_into_payer_1h"] == 3
    assert sent["outflow_30m"] == 900_000
    assert sent["inflow_30m"] == 900_000  # the payee's own inflow
    assert sent["payees_out_24h"] == 1
    # inflow fields in the hash of each account that received money, none for the read
    tag = counter_tag("inflow")
    hashes = [key for key in sync_client.keys("rg:c2:*") if sync_client.type(key) == b"hash"]
    holders = [key for key in hashes if any(f[:2] == tag for f in sync_client.hkeys(key))]
    assert len(holders) == 2
    # 31 minutes after the inflow it no longer counts for rapid in-out
    later = await screen(store, shipped_spec, transfer(T0 + timedelta(minutes=32), mule, "6228480000000000001", 1))
    assert later["inflow_to_payer_30m"] == 0 and later["inflow_to_payer_24h"] == 1_000_000


async def test_where_and_absent_keys(make_store: MakeStore, shipped_spec: CounterSpec) -> None:
    store = make_store(shipped_spec)
    # 04:00 in Beijing is 20:00 UTC: a night transfer
    night = await screen(store, shipped_spec, transfer(datetime(2026, 1, 1, 20, tzinfo=UTC), "1111", "2222", 600_000))
    day = await screen(store, shipped_spec, transfer(datetime(2026, 1, 2, 4, tzinfo=UTC), "1111", "2222", 600_000))
    assert night["night_transfers_90d"] == 1 and day["night_transfers_90d"] == 1
    assert night["pair_payments_all"] == 1 and day["pair_payments_all"] == 2  # first-time payee = 1
    near = [
        await screen(store, shipped_spec, transfer(T0, "1111", "3333", amount)) for amount in (4_800_000, 4_999_999)
    ]
    assert [v["near_threshold_7d"] for v in near] == [1, 2]
    assert (await screen(store, shipped_spec, transfer(T0, "1111", "3333", 5_000_000)))["near_threshold_7d"] == 2
    # no companion: no companion counter; no clerk (self-service): no clerk counter
    alone = await screen(store, shipped_spec, opening(T0, ID_A, clerk=""))
    assert "companion_applicants_2h" not in alone and "clerk_openings_1h" not in alone
    assert "phone_applicants_2h" not in alone  # no phone given
    assert alone["outlet_openings_1h"] == 1


async def test_applicants_per_companion_phone_and_device_at_one_outlet(
    make_store: MakeStore, shipped_spec: CounterSpec
) -> None:
    store = make_store(shipped_spec)
    leader = "440106198001010015"
    ids = ["110105199003071234", "310115198512120019", "320102199512120016", "110105199003071234"]
    values = [
        await screen(
            store,
            shipped_spec,
            opening(T0 + timedelta(minutes=i), id_number, companion=leader, phone="13900000000", device="PAD-1"),
        )
        for i, id_number in enumerate(ids)
    ]
    assert [v["companion_applicants_2h"] for v in values] == [1, 2, 3, 3]
    assert [v["phone_applicants_2h"] for v in values] == [1, 2, 3, 3]
    assert [v["device_applicants_2h"] for v in values] == [1, 2, 3, 3]
    assert [v["phone_ids_30d"] for v in values] == [1, 2, 3, 3]
    # the same device at a SIM shop is another outlet, but the same device for device_ids_30d
    sim = await screen(store, shipped_spec, sim_sale(T0, "440106199901010012", device="PAD-1"))
    assert sim["device_applicants_2h"] == 1 and sim["device_ids_30d"] == 4
    other_outlet = await screen(store, shipped_spec, opening(T0, ID_B, companion=leader, outlet_id="SH-PD-002"))
    assert other_outlet["companion_applicants_2h"] == 1


async def test_idle_days_measures_dormancy(make_store: MakeStore, shipped_spec: CounterSpec) -> None:
    store = make_store(shipped_spec)
    account = "6222020200112233445"
    first = await screen(store, shipped_spec, transfer(T0, account, "2222", 100))
    assert first["out_idle_24h"] == 0 and first["in_idle_payer_24h"] == 0
    woken = T0 + timedelta(days=200)
    incoming = await screen(store, shipped_spec, transfer(woken, "3333", account, 2_000_000))
    assert incoming["in_idle_24h"] == 0  # the first money ever seen coming in
    out = await screen(store, shipped_spec, transfer(woken + timedelta(hours=2), account, "4444", 1_900_000))
    assert out["out_idle_24h"] == 200
    assert out["inflow_to_payer_24h"] == 2_000_000
    again = await screen(store, shipped_spec, transfer(woken + timedelta(hours=5), account, "4444", 1))
    assert again["out_idle_24h"] == 200  # still the same run of activity
    assert (await screen(store, shipped_spec, transfer(woken + timedelta(days=2), account, "4444", 1)))[
        "out_idle_24h"
    ] == 1
