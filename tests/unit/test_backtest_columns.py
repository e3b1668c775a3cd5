"""The backtest's columnar paths give what the per-event ones they replaced give.

Each twin below holds a NumPy/Arrow pass over every event to the plain per-event code it replaced
(kept as the reference): history columns read out of order and put in order as codes, text as
dictionary codes, lists as codes of distinct lists, recorded counters as columns, labels looked
up for every event at once, the counting sort of a counter's steps by entity, dense ids of key
tuples, and the vectorised evaluator's text columns from codes.
"""

from __future__ import annotations

import json
import random
import string
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.backtest.compare import Labels, known_labels, read_labels
from service.backtest.events import KINDS, Column, Event, Events, encode
from service.backtest.replay import _dense
from service.backtest.vector import _texts_from_arrays, _texts_from_codes
from service.errors import EvaluationError
from service.pipeline.facts import FIELDS
from service.riskdata.counters import kernels
from service.riskdata.history import read_rows, read_table
from service.riskdata.records import SUBJECT_ROLE
from tests.unit.test_backtest import _history

SEPARATOR = "\x1f"


def _shuffled_archive(tmp_path: Path, events: list[Event], seed: int) -> Path:
    """`events` as an archive file whose rows are out of replay order, with recorded rules, demoted
    rules, list hits and counters of their own per event."""
    rng = random.Random(seed)
    table = Events.of(events).table
    n = table.num_rows
    rule_ids = ["T1", "~T2", "T3", "RISK_DATA_UNAVAILABLE"]
    lists: dict[str, list[list[str] | None]] = {
        "rules": [rng.sample(rule_ids, rng.randint(0, 3)) for _ in range(n)],
        "demoted": [rng.choice([None, [], ["T1"], ["T3", "T1"], ["T1", "T3"]]) for _ in range(n)],
        "list_hits": [rng.choice([None, [], ["l:a"], ["l:a", "m:b"], ["m:b"]]) for _ in range(n)],
    }
    for name, values in lists.items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, type=pa.list_(pa.string())))
    counters = [
        [(k, float(rng.choice([0, 1, 2.5, 1e15]))) for k in sorted(rng.sample(["a", "b", "c"], rng.randint(0, 3)))]
        if rng.random() > 0.1
        else None
        for _ in range(n)
    ]
    index = table.schema.get_field_index("counters")
    table = table.set_column(index, "counters", pa.array(counters, type=table.schema.field("counters").type))
    order = list(range(n))
    rng.shuffle(order)
    path = tmp_path / "history.parquet"
    pq.write_table(table.take(pa.array(order)), path)
    return path


def _facts_from_columns(events: Events, index: int) -> dict[str, object]:
    """`Events.facts_of` as it was, from the columns (person.* included)."""
    kind = KINDS[events.kind[index]]
    out: dict[str, object] = {}
    for name, column in events.facts.items():
        if kind in FIELDS[name].kinds and column.present[index]:
            value = column.values[index]
            out[name] = value.item() if isinstance(value, np.generic) else value
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_columns_read_out_of_order_are_the_columns_of_the_ordered_table(tmp_path: Path, seed: int) -> None:
    path = _shuffled_archive(tmp_path, _history(seed, 150), seed)
    table, rows = read_rows(path)
    assert rows is not None  # shuffled: the rows are put in order
    lazy, ordered = Events(table, rows), Events(read_table(path))
    for name in ("kind", "occurred_us", "time", "degraded", "counted", "outcome"):
        assert np.array_equal(getattr(lazy, name), getattr(ordered, name)), name
    for mapping in ("facts", "hashes"):
        names = list(getattr(ordered, mapping))
        assert list(getattr(lazy, mapping)) == names
        for name in names:
            a, b = getattr(lazy, mapping)[name], getattr(ordered, mapping)[name]
            assert np.array_equal(a.present, b.present), name
            assert a.values[a.present].tolist() == b.values[b.present].tolist(), name
    rules, demoted = ordered.table.column("rules").to_pylist(), ordered.table.column("demoted").to_pylist()
    hits = ordered.table.column("list_hits").to_pylist()
    for i in range(ordered.n):
        assert lazy.facts_of(i) == ordered.facts_of(i) == _facts_from_columns(lazy, i)
        assert lazy.recorded_counters(i) == ordered.recorded_counters(i)
        assert lazy.string("decision_id", i) == ordered.table.column("decision_id")[i].as_py()
        # The per-event lists, as the report and the verdicts read them before they were codes.
        assert lazy.recorded_rules.distinct[lazy.recorded_rules.codes[i]] == tuple(rules[i] or ())
        assert lazy.demoted.distinct[lazy.demoted.codes[i]] == frozenset(demoted[i] or ())
        for key in ("l:a", "m:b", "n:c"):
            assert bool(lazy.list_hit(key)[i]) == (key in frozenset(hits[i] or ()))
    recorded = lazy.recorded_counter_columns
    for i in range(ordered.n):
        as_columns = {k: c.values[i] for k, c in recorded.items() if c.present[i]}
        assert as_columns == ordered.recorded_counters(i)


def test_a_time_range_reads_the_rows_of_the_filtered_table(tmp_path: Path) -> None:
    events = _history(7, 120)
    path = _shuffled_archive(tmp_path, events, 7)
    times = sorted(e.time for e in events)
    since, until = (datetime.fromtimestamp(times[30], UTC), datetime.fromtimestamp(times[90], UTC))
    table, rows = read_rows(path, since=since, until=until)
    expected = read_table(path, since=since, until=until)
    assert rows is not None
    assert table.take(pa.array(rows)).equals(expected)


def _texts(rng: random.Random, n: int) -> list[str | None]:
    alphabet = ["", "a", "b", "ab", "转账", "x" * 40, SEPARATOR, "a" + SEPARATOR + "b"]
    return [rng.choice([None, *alphabet, "".join(rng.choices(string.ascii_letters, k=3))]) for _ in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_text_as_codes_gives_back_the_text(seed: int) -> None:
    rng = random.Random(seed)
    texts = _texts(rng, 300)
    array = pa.array(texts, type=pa.string())
    column = Column.coded(*encode(array))
    assert column.values.tolist() == texts
    assert column.present.tolist() == [t is not None for t in texts]
    order = np.array(rng.sample(range(len(texts)), len(texts)))
    assert column.take(order).values.tolist() == [texts[i] for i in order]
    for text in ("", "a", "nowhere"):
        code = column.code_of(text)
        assert (code >= 0) == (text in texts)
        if code >= 0:
            assert column.uniques[code] == text


@pytest.mark.parametrize("seed", range(4))
def test_lists_as_codes_are_the_lists_even_with_the_separator_in_them(seed: int) -> None:
    rng = random.Random(seed)
    items = ["T1", "~T2", "", "a" + SEPARATOR * (seed % 2)]  # odd seeds: the list-by-list path
    lists = [rng.choice([None, [], *[rng.sample(items, rng.randint(1, 3)) for _ in range(3)]]) for _ in range(200)]
    events = Events.of(_history(seed, len(lists)))
    events.table = events.table.set_column(
        events.table.schema.get_field_index("rules"), "rules", pa.array(lists, type=pa.list_(pa.string()))
    )
    coded = events.recorded_rules
    assert [coded.distinct[c] for c in coded.codes] == [tuple(r or ()) for r in lists]


def test_labels_for_every_event_at_once_are_labels_of_each(tmp_path: Path) -> None:
    events = Events.of(_history(8, 60))
    decisions = events.table.column("decision_id").to_pylist()
    requests = [f"r{i}" for i in range(events.n)]
    events.table = events.table.set_column(
        events.table.schema.get_field_index("request_id"), "request_id", pa.array(requests)
    )
    synth = tmp_path / "synth.jsonl"
    synth.write_text("".join(json.dumps({"request_id": r, "pattern": "mule"}) + "\n" for r in requests[::3]))
    dispositions = tmp_path / "dispositions.jsonl"
    lines = [
        {"decision_id": d, "disposition": ("confirmed_fraud", "false_alarm")[i % 2]}
        for i, d in enumerate(decisions[::4])
    ]
    dispositions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    mixed = Labels(read_labels(synth).by_request, read_labels(dispositions).by_decision, complete=True, source="mixed")
    rows = np.array(random.Random(8).sample(range(events.n), 40))
    for labels in (read_labels(synth), read_labels(dispositions), mixed):
        expected = [labels.of(decisions[i], requests[i]) for i in rows]
        assert known_labels(labels, events, rows).tolist() == [-1 if k is None else int(k) for k in expected]


@pytest.mark.parametrize("seed", range(4))
def test_the_counting_sort_of_steps_is_a_stable_argsort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for size, n in ((0, 0), (0, 5), (1, 1), (500, 3), (2000, 700)):
        keys = rng.integers(0, max(n, 1), size=size).astype(np.int64)
        order = kernels.group_order(keys, n)
        assert np.array_equal(order, np.argsort(keys, kind="stable"))
        assert np.array_equal(order, kernels.group_order.py_func(keys, n))


@pytest.mark.parametrize("seed", range(4))
def test_dense_ids_tell_apart_exactly_the_distinct_key_tuples(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for width in (1, 2, 3):
        for high in (2, 50, 10**9):  # a table, then Arrow's hashing
            columns = [rng.integers(-1, high, size=400).astype(np.int64) for _ in range(width)]
            ids, count = _dense(columns)
            _, reference = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
            reference = reference.reshape(-1)
            assert count == len(set(reference.tolist()))
            assert sorted(set(ids.tolist())) == list(range(count))
            pairs = set(zip(ids.tolist(), reference.tolist(), strict=True))
            assert len(pairs) == count  # one reference tuple per id and one id per tuple


@pytest.mark.parametrize("seed", range(4))
def test_text_columns_from_codes_are_those_from_the_strings(seed: int) -> None:
    rng = random.Random(seed)
    texts = _texts(rng, 300)
    column = Column.coded(*encode(pa.array(texts, type=pa.string())))
    index = np.array(sorted(rng.sample(range(len(texts)), 120)))
    assert column.codes is not None
    from_codes = _texts_from_codes("f", column.codes[index], column.uniques)
    reference = _texts_from_arrays("f", column.values[index], column.present[index])
    assert np.array_equal(from_codes.present, reference.present)
    decoded = [from_codes.uniques[c] if c >= 0 else None for c in from_codes.codes.tolist()]
    assert decoded == [reference.uniques[c] if c >= 0 else None for c in reference.codes.tolist()]
    assert sorted(from_codes.uniques) == sorted(reference.uniques)


def test_a_refused_string_from_codes_is_named_as_from_the_strings() -> None:
    """Two refused strings: the first in event order is named, whatever the dictionary's order."""
    uniques = np.array(["ok", "bad\ud800", "x" * 70_000], dtype=object)
    codes = np.array([0, 2, 1, 0], dtype=np.int32)
    with pytest.raises(EvaluationError) as from_codes:
        _texts_from_codes("f", codes, uniques)
    with pytest.raises(EvaluationError) as from_strings:
        _texts_from_arrays("f", uniques[codes], np.ones(4, dtype=bool))
    assert str(from_codes.value) == str(from_strings.value)


def test_person_fields_are_the_screened_persons_fields_of_each_kind() -> None:
    """person.* from codes, against the per-event definition: the field of the kind's subject role."""
    events = Events.of(_history(9, 200))
    assert {int(k) for k in events.kind} == set(range(len(KINDS)))
    person = [name for name in events.hashes if name.startswith("person.")]
    assert person
    for name in person:
        leaf = name.removeprefix("person.")
        column = events.hashes[name]
        assert column.codes is not None
        for i in range(events.n):
            source = events.hashes.get(SUBJECT_ROLE[KINDS[events.kind[i]]] + leaf)
            if source is None or not source.present[i]:
                assert not column.present[i]
            else:
                assert column.present[i] and column.values[i] == source.values[i]
