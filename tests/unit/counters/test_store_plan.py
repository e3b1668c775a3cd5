"""The store's pure half: plans are computed without a connection; commands are packed exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from service.domain import EventKind
from service.redis.keys import KeyHasher, counter_tag
from service.redis.pipeline import DirectPipeline
from service.riskdata.counters.loader import load_counters, parse_counters
from service.riskdata.counters.store import CounterStore

REPO = Path(__file__).resolve().parents[3]
SECRET = bytes(range(32))
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
IDS = {
    "transfer.payer_account": "6222020200112233445",
    "transfer.payee_account": "6217000010002000300",
    "payer.id_number": "110105199003071234",
}


def _store(text: str | None = None, **options: float) -> CounterStore:
    spec = parse_counters(text, "c.yaml") if text else load_counters(REPO / "rules" / "counters.yaml")
    # never connected: preparing and packing need no Redis
    return CounterStore(Redis(port=1), spec, KeyHasher(SECRET), **options)


def test_a_transfer_plans_one_call_per_entity_and_every_value_name() -> None:
    store = _store()
    plan = store.prepare(occurred_at=T0, kind=EventKind.TRANSFER, facts={}, ids=IDS, updates=())
    assert plan.header == str(int(T0.timestamp())).encode()
    keys = [key for key, _, _ in plan.calls]
    assert len(keys) == len(set(keys)) == 4  # payee, payer, payer person, (payer, payee)
    assert all(key.startswith(b"rg:c2:{") and key.endswith(b"}") and len(key) == 30 for key in keys)
    assert set(plan.names()) == store.value_names(EventKind.TRANSFER)
    assert plan.undo == []  # transfers increment no active count
    # a time with an offset is the same second
    shifted = T0.astimezone(timezone(timedelta(hours=8)))
    again = store.prepare(occurred_at=shifted, kind=EventKind.TRANSFER, facts={}, ids=IDS, updates=())
    assert again.header == plan.header and again.calls == plan.calls
    with pytest.raises(ValueError, match="timezone-aware"):
        store.prepare(occurred_at=T0.replace(tzinfo=None), kind=EventKind.TRANSFER, facts={}, ids=IDS, updates=())


def test_absent_key_fields_leave_their_entity_out() -> None:
    store = _store()
    plan = store.prepare(
        occurred_at=T0, kind=EventKind.TRANSFER, facts={}, ids={**IDS, "payer.id_number": ""}, updates=()
    )
    assert len(plan.calls) == 3 and "near_threshold_7d" not in plan.names()


def test_the_program_carries_the_skew_in_its_ttls() -> None:
    text = """
counters:
  - name: sends
    on: transfer
    key: transfer.payer_account
    aggregate: count
    windows: [1h, 24h]
"""
    programs = []
    for skew in (0, 300, 3600):
        store = _store(text, max_future_skew_seconds=skew)
        (call,) = store.prepare(occurred_at=T0, kind=EventKind.TRANSFER, facts={}, ids=IDS, updates=()).calls
        programs.append(call[1].items)
        assert call[1].program == b"%d" % call[1].number
    tag = counter_tag("sends")
    for skew, items in zip((0, 300, 3600), programs, strict=True):
        # values format, 8 fields, 2 windows, 1 op; the fields; the windows (24h first)
        assert items[:4] == ("<l", 8, 2, 1)
        fields = [tag + kind + bytes((window,)) for window in (1, 2) for kind in (b"h", b"s", b"v", b"")]
        assert list(items[4:12]) == fields
        assert items[12:20] == (3600, 24, 1, 1, 60, 60, 5, 1)
        # the op: count, value 1, TTL of the 24h window (24h + an hour's bucket + skew), no `all`
        assert items[20:26] == ("c", 1, 86400 + 3600 + skew, 0, 1, 2)


def test_values_are_packed_per_event() -> None:
    store = _store()
    facts = {"transfer.amount_fen": 1234.6, "local_hour": 3}
    updates = {"inflow", "outflow", "payers_in", "payees_out", "night_transfers", "pair_payments", "in_idle"}
    plan = store.prepare(occurred_at=T0, kind=EventKind.TRANSFER, facts=facts, ids=IDS, updates=updates)
    read = store.prepare(occurred_at=T0, kind=EventKind.TRANSFER, facts=facts, ids=IDS, updates=())
    for (key, segment, values), (_, _, zeros) in zip(plan.calls, read.calls, strict=True):
        unpacked = segment.values.unpack(values)
        assert set(segment.values.unpack(zeros)) <= {0, b"\0" * 8}
        for op in segment.ops:
            if op.counter in ("inflow", "outflow") and op.sign:
                assert 1235 in unpacked  # a sum adds its amount, rounded
        assert key and len(values) == segment.values.size


def test_only_increments_of_active_counts_can_be_retracted() -> None:
    store = _store()
    ids = {"person.id_number": "110105199003071234"}
    sale = store.prepare(
        occurred_at=T0,
        kind=EventKind.SIM_SALE,
        facts={"sim_sale.quantity": 3, "sim_sale.carrier": "china_mobile", "outlet.institution_id": "CMCC"},
        ids=ids,
        updates={"sims_active", "sims"},
    )
    (undo,) = sale.undo
    assert undo[1].names == ("sims_active_all",) and undo[1].values.unpack(undo[2]) == (3,)
    assert store.prepare_retract(sale).header == b"-"
    tokened = store.prepare_retract(sale, token="BANK_A/r-1")
    assert tokened.header.startswith(b"-") and len(tokened.header) == 23 and b"r-1" not in tokened.header
    assert tokened.header == store.prepare_retract(sale, token="BANK_A/r-1").header
    assert tokened.names() == ["sims_active_all"]
    # not updated (a blocked reader, or its `where` false): nothing to take back
    quiet = store.prepare(
        occurred_at=T0,
        kind=EventKind.SIM_SALE,
        facts={"sim_sale.quantity": 3, "sim_sale.carrier": "china_mobile"},
        ids=ids,
        updates={"sims"},
    )
    assert quiet.undo == [] and store.prepare_retract(quiet).calls == []


def test_a_counter_met_twice_under_one_key_gets_a_segment_of_its_own() -> None:
    store = _store("""
counters:
  - name: sends
    on: transfer
    key: transfer.payer_account
    aggregate: count
    windows: [1h]
    read_as:
      - name: sends_again
        key: transfer.payer_account
""")
    plan = store.prepare(occurred_at=T0, kind=EventKind.TRANSFER, facts={}, ids=IDS, updates={"sends"})
    assert [segment.names for _, segment, _ in plan.calls] == [("sends_1h",), ("sends_again_1h",)]
    assert plan.calls[0][0] == plan.calls[1][0]  # one entity, read again after the update


def test_skew_is_bounded() -> None:
    with pytest.raises(ValueError, match="max_future_skew_seconds"):
        _store(max_future_skew_seconds=90_000)


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    store = _store()
    plan = store.prepare(occurred_at=T0, kind=EventKind.TRANSFER, facts={}, ids=IDS, updates=())
    pipe = store.pipeline()
    assert isinstance(pipe, DirectPipeline)
    assert store.queue(pipe, plan) == 1
    pipe.hmget("rg:l:{x}", ["fraud_accounts", "punished"]).execute_command("SET", "k", 1.5)
    args: list[bytes | str | int] = ["EVALSHA", store.script_sha, len(plan.calls), *(key for key, _, _ in plan.calls)]
    args.append(plan.header)
    for _, segment, values in plan.calls:
        args += (segment.program, values)
    connection = Connection()
    expected = b"".join(
        b"".join(connection.pack_command(*command))
        for command in (args, ("HMGET", "rg:l:{x}", "fraud_accounts", "punished"), ("SET", "k", 1.5))
    )
    assert b"".join(pipe._chunks) == expected and len(pipe) == 3
