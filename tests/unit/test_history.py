"""The decision history at rest: what a log entry keeps for replays, Parquet files, the archive's commits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.domain import Decision, EventKind, Outcome, ScreenRequest
from service.errors import InvalidValue
from service.pipeline.facts import FIELDS, FieldType, facts, identifiers
from service.pipeline.validate import screen_request
from service.redis.keys import KeyHasher
from service.riskdata.history import SCHEMA, documents_of, read_history, to_table, write_parquet
from service.riskdata.records import (
    LAYOUTS,
    entry_document,
    history_ids,
    log_entry,
    replay_facts,
    replay_ids,
)
from service.tools.archive import CHECKPOINT, Archive
from tests import samples

HASHER = KeyHasher(b"k" * 32)
NOW = datetime.now(UTC).replace(microsecond=0)

# The layouts of this field catalogue. A change to FIELDS changes them: the entries already in
# Redis then have a layout this code must still read; add the old layout to
# records._LAYOUTS_BY_TAG, and its tag here.
KNOWN_TAGS = {
    EventKind.CARD_OPENING: "e89bcacf6d1a",
    EventKind.SIM_SALE: "ce732e8ad74a",
    EventKind.TRANSFER: "e3988df541a6",
    EventKind.CLOSURE: "55246444e995",
}


def validated(message: object) -> ScreenRequest:
    assert isinstance(message, pb.ScreenRequest)
    return screen_request(message, now=datetime.now(UTC))


def _decision(kind: EventKind, decided_at: datetime = NOW, outcome: Outcome = Outcome.ALLOW) -> Decision:
    return Decision(
        "r-1", f"d-{decided_at.timestamp()}", outcome, (), "rev@1", False, decided_at, timedelta(0), kind=kind
    )


def _entry(request_message: object, decided_at: datetime = NOW) -> tuple[dict[str, str], dict[str, object]]:
    request = validated(request_message)
    request_facts = facts(request)
    ids = identifiers(request)
    fields = log_entry(
        request,
        _decision(request.kind, decided_at),
        subject_hash=HASHER.identifier("person.id_number", ids["person.id_number"]),
        counters={"banks_30d": 2},
        list_hits={("fraud_accounts", "transfer.payee_account"): True},
        facts=request_facts,
        id_hashes=history_ids(ids, request_facts, HASHER.identifier),
    )
    return fields, {"facts": request_facts, "ids": ids, "kind": request.kind}


def test_the_layouts_are_the_ones_entries_were_written_with() -> None:
    assert {kind: layout.tag for kind, layout in LAYOUTS.items()} == KNOWN_TAGS


@pytest.mark.parametrize("make", [samples.transfer, samples.card_opening, samples.sim_sale])
def test_an_entry_gives_back_every_fact_and_identifier_hash_and_no_clear_identifier(make: object) -> None:
    fields, source = _entry(make("r-1"))  # type: ignore[operator]
    document = entry_document("1-0", fields)
    kind = source["kind"]
    assert isinstance(kind, EventKind)
    assert document["layout_known"]
    assert replay_facts(kind, document["facts"]) == source["facts"]
    ids = source["ids"]
    assert isinstance(ids, dict)
    assert replay_ids(kind, document["ids"]) == {
        **{name: HASHER.identifier(name, value) for name, value in ids.items()},
        **{
            name: HASHER.identifier(name, value)
            for name, value in replay_facts(kind, document["facts"]).items()
            if name.endswith(("region_code", "ip_region_code"))
        },
    }
    text = json.dumps(fields, ensure_ascii=False)
    for value in ids.values():
        assert value not in text


def test_an_entry_of_an_unknown_layout_is_read_without_its_facts() -> None:
    fields, _ = _entry(samples.transfer("r-1"))
    fields["layout"] = "000000000000"
    document = entry_document("1-0", fields)
    assert not document["layout_known"]
    assert document["facts"] == {} and document["ids"] == {}


def test_identifiers_are_never_facts() -> None:
    fields, _ = _entry(samples.transfer("r-1"))
    layout = LAYOUTS[EventKind.TRANSFER]
    assert all(FIELDS[name].type is not FieldType.IDENTIFIER for name in layout.facts)
    assert len(json.loads(fields["facts"])) == len(layout.facts)


def test_parquet_round_trip_keeps_every_field(tmp_path: Path) -> None:
    fields, _ = _entry(samples.transfer("r-1"))
    document = entry_document("1700000000000-0", fields)
    path = tmp_path / "one.parquet"
    write_parquet([document], path)
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA)
    (again,) = documents_of(table)
    assert again == {name: value for name, value in document.items() if name != "layout"}


def test_read_history_orders_by_decision_and_selects_by_event_time(tmp_path: Path) -> None:
    first, _ = _entry(samples.transfer("r-1"), NOW - timedelta(hours=2))
    second, _ = _entry(samples.transfer("r-2"), NOW - timedelta(hours=1))
    documents = [entry_document("2-0", second), entry_document("1-0", first)]
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in documents))
    assert [d["stream_id"] for d in read_history(path)] == ["1-0", "2-0"]
    occurred = datetime.fromisoformat(documents[0]["occurred_at"])
    assert read_history(path, since=occurred + timedelta(seconds=1)) == []


def test_a_broken_history_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"decision_id": "d"}\n')
    with pytest.raises(InvalidValue, match=r"history.jsonl:1: not a logged decision"):
        read_history(path)


def _batch(start: int, count: int, decided_at: datetime) -> list[tuple[str, dict[str, object]]]:
    fields, _ = _entry(samples.transfer("r-1"), decided_at)
    return [
        (f"{start + i}-0", {**entry_document(f"{start + i}-0", fields), "decision_id": f"d{start + i}"})
        for i in range(count)
    ]


def test_a_batch_across_midnight_is_one_file_per_day_and_one_commit(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.close()  # committing needs no lock; the drain holds one
    midnight = NOW.replace(hour=0, minute=0, second=0)
    batch = _batch(1, 3, midnight - timedelta(seconds=1)) + _batch(4, 2, midnight)
    assert archive.commit(batch) == 2
    checkpoint = json.loads((tmp_path / CHECKPOINT).read_text())
    assert checkpoint == {"last_id": "5-0", "entries": 5, "files": 2, "before": 0}
    days = sorted(p.parent.name for p in tmp_path.rglob("*.parquet"))
    assert days == [f"day={(midnight - timedelta(days=1)).date()}", f"day={midnight.date()}"]
    assert len(read_history(tmp_path)) == 5


def test_files_a_cut_drain_never_committed_are_removed_and_rewritten_once(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.commit(_batch(1, 2, NOW))
    # A drain killed after writing its next batch's file, before its checkpoint:
    day = next(tmp_path.glob("day=*"))
    write_parquet([d for _, d in _batch(3, 2, NOW)], day / "part-3-0_4-0.parquet")
    (day / "part-5-0_6-0.parquet.tmp").write_bytes(b"half")
    with pytest.raises(ValueError, match="another drain is archiving into this directory"):
        Archive(tmp_path)  # while the first one holds it
    archive.close()
    with Archive(tmp_path) as again:
        assert again.removed == 2
    assert again.checkpoint.last_id == "2-0"
    again.commit(_batch(3, 2, NOW))
    assert [d["decision_id"] for d in read_history(tmp_path)] == ["d1", "d2", "d3", "d4"]


def test_a_damaged_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT).write_text("{")
    with pytest.raises(ValueError, match="not an archive checkpoint"):
        Archive(tmp_path)


def test_to_table_refuses_nothing_it_can_write() -> None:
    fields, _ = _entry(samples.card_opening("r-1"))
    assert to_table([entry_document("1-0", fields)]).num_rows == 1


def test_a_history_names_the_line_of_a_bad_decision(tmp_path: Path) -> None:
    fields, _ = _entry(samples.transfer("r-1"))
    document = entry_document("1-0", fields)
    path = tmp_path / "history.jsonl"
    for bad in ({"kind": "loan"}, {"outcome": "maybe"}, {"facts": {"transfer.amount_fen": "lots"}}):
        path.write_text(json.dumps(document) + "\n" + json.dumps({**document, **bad}) + "\n")
        with pytest.raises(InvalidValue, match=r"history.jsonl:2: not a logged decision"):
            read_history(path)


def test_a_stream_id_without_a_sequence_is_read(tmp_path: Path) -> None:
    fields, _ = _entry(samples.transfer("r-1"))
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(entry_document("1700000000000", fields)) + "\n")
    assert [d["stream_id"] for d in read_history(path)] == ["1700000000000"]
