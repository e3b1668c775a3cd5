"""Online (Lua on Redis) and offline (Numba replay kernels) give the same value for every event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pytest

from service.domain import EventKind
from service.riskdata.counters import kernels as kn
from service.riskdata.counters.model import CounterSpec
from service.riskdata.counters.store import CounterStore

pytestmark = pytest.mark.integration

MakeStore = Callable[[CounterSpec | str], CounterStore]

SPEC = """
counters:
  - name: cnt
    on: transfer
    key: transfer.payee_account
    aggregate: count
    windows: [30m, 24h]
  - name: amt
    on: transfer
    key: transfer.payee_account
    aggregate: sum(transfer.amount_fen)
    windows: [2h, all]
  - name: uniq
    on: transfer
    key: transfer.payee_account
    aggregate: distinct(transfer.payer_account)
    windows: [1h, 24h]
    exact_up_to: 1000
  - name: idle
    on: transfer
    key: transfer.payee_account
    aggregate: idle_days
    windows: [24h]
  - name: active
    on: sim_sale
    decrement_on: closure
    key: person.id_number
    aggregate: sum(sim_sale.quantity)
    windows: [all]
"""
T0 = 1_767_268_800  # 2026-01-01T12:00:00Z
ENTITIES, MEMBERS, EVENTS = 3, 8, 300


@pytest.mark.parametrize("seed", [11, 12])
async def test_windowed_distinct_and_idle_values_agree_with_the_replay_kernels(
    make_store: MakeStore, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(EVENTS) < 0.03, rng.integers(2, 40, EVENTS) * 86400, rng.integers(0, 900, EVENTS))
    times = T0 + np.cumsum(steps)
    late = np.where(rng.random(EVENTS) < 0.2, rng.integers(0, 6 * 3600, EVENTS), 0)
    times = (times - late).astype(np.int64)
    ents = rng.integers(0, ENTITIES, EVENTS).astype(np.int64)
    members = rng.integers(0, MEMBERS, EVENTS).astype(np.int64)
    amounts = rng.integers(1, 10_000, EVENTS).astype(np.int64)
    updates = (rng.random(EVENTS) < 0.8).astype(np.int64)

    store = make_store(SPEC)
    online: dict[str, list[int | float]] = {}
    for i in range(EVENTS):
        values = await store.observe(
            occurred_at=datetime.fromtimestamp(int(times[i]), UTC),
            kind=EventKind.TRANSFER,
            facts={"transfer.amount_fen": int(amounts[i])},
            ids={
                "transfer.payee_account": f"62170000{int(ents[i]):011d}",
                "transfer.payer_account": f"62220000{int(members[i]):011d}",
            },
            updates={"cnt", "amt", "uniq", "idle"} if updates[i] else set(),
        )
        for name, value in values.items():
            online.setdefault(name, []).append(value)

    ones = np.ones(EVENTS, dtype=np.int64)
    pairs = ents * MEMBERS + members
    offline = {
        "cnt_30m": kn.replay_windowed(times, ents, ones, updates, 60, 30, ENTITIES),
        "cnt_24h": kn.replay_windowed(times, ents, ones, updates, 3600, 24, ENTITIES),
        "amt_2h": kn.replay_windowed(times, ents, amounts, updates, 300, 24, ENTITIES),
        "amt_all": kn.replay_all_time(ents, amounts, updates, ENTITIES),
        "uniq_1h": kn.replay_distinct(times, ents, pairs, updates, 60, 60, ENTITIES, ENTITIES * MEMBERS),
        "uniq_24h": kn.replay_distinct(times, ents, pairs, updates, 3600, 24, ENTITIES, ENTITIES * MEMBERS),
        "idle_24h": kn.replay_idle(times, ents, updates, 86400, ENTITIES),
    }
    assert set(online) == set(offline)
    for name, expected in offline.items():
        assert online[name] == expected.tolist(), name
    assert max(online["idle_24h"]) > 1  # the stream did contain dormancy


async def test_active_counts_agree_with_the_all_time_kernel(make_store: MakeStore) -> None:
    rng = np.random.default_rng(5)
    ents = rng.integers(0, 2, 200).astype(np.int64)
    signs = rng.choice(np.array([-1, 0, 1], dtype=np.int64), 200, p=[0.45, 0.1, 0.45])
    quantities = rng.integers(1, 4, 200).astype(np.int64)
    store = make_store(SPEC)
    online = []
    for i in range(200):
        kind = EventKind.CLOSURE if signs[i] < 0 else EventKind.SIM_SALE
        values = await store.observe(
            occurred_at=datetime.fromtimestamp(T0 + i, UTC),
            kind=kind,
            facts={"sim_sale.quantity": int(quantities[i])} if kind is EventKind.SIM_SALE else {},
            ids={"person.id_number": f"11010519900307{int(ents[i]):04d}"},
            updates={"active"} if signs[i] else set(),
        )
        online.append(values["active_all"])
    amounts = np.where(signs < 0, 1, quantities).astype(np.int64)  # a closure closes one card
    assert online == kn.replay_all_time(ents, amounts, signs, 2).tolist()


SHORT = """
counters:
  - name: tick
    on: transfer
    key: transfer.payee_account
    aggregate: count
    windows: [1m, 5m, 2h]
  - name: tock
    on: transfer
    key: transfer.payee_account
    aggregate: sum(transfer.amount_fen)
    windows: [3m, all]
  - name: seen
    on: transfer
    key: transfer.payee_account
    aggregate: distinct(transfer.payer_account)
    windows: [2m, 10m]
    exact_up_to: 1000
"""


@pytest.mark.parametrize("seed", [21, 22, 23])
async def test_short_windows_moving_by_any_number_of_buckets_agree(make_store: MakeStore, seed: int) -> None:
    """Windows of 6, 12, 18, 30 and 60 ten-second buckets and 24 five-minute ones, events 0-200 s apart
    (and some pauses, late events, reads): every way a window moves - within its bucket, by a
    few buckets (slots read by name), by many (slots found by a scan), past its whole length -
    with three counters sharing one hash."""
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(EVENTS) < 0.05, rng.integers(600, 20_000, EVENTS), rng.integers(0, 200, EVENTS))
    times = T0 + np.cumsum(steps)
    late = np.where(rng.random(EVENTS) < 0.15, rng.integers(0, 400, EVENTS), 0)
    times = (times - late).astype(np.int64)
    ents = rng.integers(0, ENTITIES, EVENTS).astype(np.int64)
    members = rng.integers(0, MEMBERS, EVENTS).astype(np.int64)
    amounts = rng.integers(1, 10_000, EVENTS).astype(np.int64)
    updates = (rng.random(EVENTS) < 0.85).astype(np.int64)

    store = make_store(SHORT)
    online: dict[str, list[int | float]] = {}
    for i in range(EVENTS):
        values = await store.observe(
            occurred_at=datetime.fromtimestamp(int(times[i]), UTC),
            kind=EventKind.TRANSFER,
            facts={"transfer.amount_fen": int(amounts[i])},
            ids={
                "transfer.payee_account": f"62170000{int(ents[i]):011d}",
                "transfer.payer_account": f"62220000{int(members[i]):011d}",
            },
            updates={"tick", "tock", "seen"} if updates[i] else set(),
        )
        for name, value in values.items():
            online.setdefault(name, []).append(value)

    ones = np.ones(EVENTS, dtype=np.int64)
    pairs = ents * MEMBERS + members
    offline = {
        "tick_1m": kn.replay_windowed(times, ents, ones, updates, 10, 6, ENTITIES),
        "tick_5m": kn.replay_windowed(times, ents, ones, updates, 10, 30, ENTITIES),
        "tick_2h": kn.replay_windowed(times, ents, ones, updates, 300, 24, ENTITIES),
        "tock_3m": kn.replay_windowed(times, ents, amounts, updates, 10, 18, ENTITIES),
        "tock_all": kn.replay_all_time(ents, amounts, updates, ENTITIES),
        "seen_2m": kn.replay_distinct(times, ents, pairs, updates, 10, 12, ENTITIES, ENTITIES * MEMBERS),
        "seen_10m": kn.replay_distinct(times, ents, pairs, updates, 10, 60, ENTITIES, ENTITIES * MEMBERS),
    }
    assert set(online) == set(offline)
    for name, expected in offline.items():
        assert online[name] == expected.tolist(), name
