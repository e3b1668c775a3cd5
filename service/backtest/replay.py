"""Counters recomputed as of each event: a counter file replayed over recorded history by the Numba kernels.

No Redis and no future data. Events are replayed in the order the service made them (the log's
`decided_at`, then stream id): the order in which Redis applied their counter updates, so each
event is given exactly what it was given online, computed only from the events before it (and
its own update: "this is the 3rd bank"). Late events (an `occurred_at` older than the entity's
newest) are handled as online: `service.riskdata.counters.kernels` runs the steps
`lua/observe.lua` runs.

What the online store does per event, and the replay with it (`service.riskdata.counters.store`):

* for every counter the event's kind reads (`read_on`, and each `read_as` name), the entity is
  its key fields' values: identifiers by their keyed hash, as the log keeps them, other fields
  by value (two events share an entity when every key part is equal, which is when the store's
  HMAC of the parts is equal); a key field absent or empty means no value at all;
* an `on` (`decrement_on`) event whose `where` holds updates it: +1 or the field's amount
  (rounded, negative as 0; adding 0 is a read), a distinct member (an absent one: a read), a
  run of activity; a decrement takes 1 from the all-time total, never below 0;
* a BLOCKed event's increments of counters with `decrement_on` or `undo_on_block` are taken
  back after its decision (`run(blocked)`), so that active counts depend on the outcomes: the
  backtest replays again with each ruleset's own blocks (`service.backtest.run`);
* a degraded decision counted only if its counter call was sent and answered late (`late`).

Within one event, the readings of one counter go in the order the store's script takes them
(groups of key fields in order of first appearance in the counter file, see `CounterStore._compile`).

Columnar. The history is columns (`service.backtest.events.Events`), and so is the work: per
counter, the steps (one reading by one event) are arrays built with NumPy from the key, amount
and member columns, sorted into replay order, and handed to the kernels; the values come back
as one `Column` per value name. Only `where` filters are asked per event (through the rules
layer's compiled closures, on a view of the columns).

Where the replay differs from the online values, it says so: a distinct() counter above its
`exact_up_to` is HyperLogLog online (standard error 0.81 %), exact here (`approximate`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from service.backtest.events import KINDS, Column, Events, unify
from service.domain import EventKind
from service.pipeline.facts import Scalar
from service.riskdata.counters import kernels
from service.riskdata.counters.model import Aggregate, Counter, CounterSpec, Filter, Predicate
from service.rules.model import FieldRef

_ALL_TIME_BUCKET = 1 << 40  # seconds: every time since 1970 (and for 30,000 years) in bucket 0


@dataclass(frozen=True, slots=True)
class _Reading:
    """One counter read by one kind of event under one key: (a name prefix, its key fields)."""

    counter: Counter
    kind: EventKind
    names: tuple[str, ...]  # value names, one per window in declared order
    fields: tuple[str, ...]
    sign: int  # +1 on, -1 decrement_on, 0 read only
    order: int  # the script's order within an event


def _readings(spec: CounterSpec, kind: EventKind) -> list[_Reading]:
    """The counter readings of an event of `kind`, in the order the store's script takes them."""
    raw: list[tuple[tuple[str, ...], Counter, tuple[str, ...], int]] = []
    for counter in spec.counters:
        if kind in counter.read_on:
            fields = counter.key.fields(kind)
            assert fields is not None
            sign = 1 if kind in counter.on else -1 if kind in counter.decrement_on else 0
            raw.append((fields, counter, counter.names(), sign))
        for alias in counter.read_as:
            if kind in alias.read_on:
                fields = alias.key.fields(kind)
                assert fields is not None
                raw.append((fields, counter, counter.names(alias.name), 0))
    groups: dict[tuple[str, ...], int] = {}
    out = []
    for position, (fields, counter, names, sign) in enumerate(raw):
        group = groups.setdefault(fields, len(groups))
        out.append(_Reading(counter, kind, names, fields, sign, group * len(raw) + position))
    return out


class _Row(Mapping[str, Scalar]):
    """One event's facts, read from the columns on demand (for `where` closures)."""

    __slots__ = ("_columns", "index")

    def __init__(self, columns: Mapping[str, Column]) -> None:
        self._columns = columns
        self.index = 0

    def __getitem__(self, name: str) -> Scalar:
        column = self._columns[name]
        if not column.present[self.index]:
            raise KeyError(name)
        value = column.values[self.index]
        return value.item() if isinstance(value, np.generic) else value  # type: ignore[no-any-return]

    def get(self, name: str, default: Any = None) -> Any:
        column = self._columns.get(name)
        if column is None or not column.present[self.index]:
            return default
        value = column.values[self.index]
        return value.item() if isinstance(value, np.generic) else value

    def __iter__(self) -> Iterator[str]:
        return (name for name, column in self._columns.items() if column.present[self.index])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _fields_read(node: object) -> set[str]:
    """The fact names a condition reads (every FieldRef in its tree)."""
    if isinstance(node, FieldRef):
        return {node.name}
    if isinstance(node, tuple):
        return set().union(*(_fields_read(item) for item in node)) if node else set()
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return set().union(*(_fields_read(getattr(node, f.name)) for f in dataclasses.fields(node)))
    return set()


def _where_mask(condition: Filter, where: Predicate, facts: Mapping[str, Column], rows: np.ndarray) -> np.ndarray:
    """Whether `condition` holds for each of the events `rows`: asked of `where` (the rules layer's
    closures, the online semantics) once per distinct combination of the facts it reads."""
    row = _Row(facts)
    conditions = getattr(where, "conditions", None)
    names = sorted(_fields_read(conditions[condition])) if conditions and condition in conditions else None
    if names is None or not all(name in facts for name in names):
        out = np.zeros(len(rows), dtype=bool)
        for position, index in enumerate(rows.tolist()):
            row.index = index
            out[position] = where(condition, row)
        return out
    codes = []
    for name in names:
        column = facts[name]
        if column.codes is not None:
            code = column.codes[rows]
        else:
            values = column.values[rows]
            code = _codes(values) if values.dtype == object else _renumber(values.astype(np.int64))[0]
        codes.append(np.where(column.present[rows], code, -1).astype(np.int64))
    if not codes:
        codes = [np.zeros(len(rows), dtype=np.int64)]
    combination, count = _dense(codes)
    _, first = np.unique(combination, return_index=True)
    answers = np.zeros(count, dtype=bool)
    for number, position in enumerate(first.tolist()):
        row.index = int(rows[position])
        answers[number] = where(condition, row)
    return np.asarray(answers[combination], dtype=bool)


def _given(column: Column) -> np.ndarray:
    """Where a key or member field has a value: present, and not empty text (as the store has it)."""
    if column.codes is not None:
        return np.asarray(column.present & (column.codes != column.code_of("")), dtype=bool)
    if column.values.dtype == object:
        return np.asarray(column.present & (column.values != ""), dtype=bool)
    return np.array(column.present, dtype=bool)


def _codes(values: np.ndarray) -> np.ndarray:
    """Dense integer codes of equal values, via Arrow's hash-based dictionary encoding; values are
    compared as the store hashes them, as text."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        array = pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        array = pa.array([str(v) for v in values], type=pa.string())
    encoded = array.dictionary_encode()
    indices = encoded.indices.fill_null(-1)  # an absent value (None): a code of its own
    return np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def _dense(columns: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Dense ids (0 to count - 1) of the tuples formed by equal positions of integer code columns
    (codes from -1 up: -1, an absent value, is a code like the others). Which tuple gets which id
    is arbitrary: ids only tell tuples apart."""
    ids, count = np.zeros(len(columns[0]) if columns else 0, dtype=np.int64), 1
    for codes in columns:
        if not len(codes):
            return ids, 0
        shifted = codes.astype(np.int64) + 1
        ids, count = _renumber(ids * (int(shifted.max()) + 1) + shifted)
    return ids, count if len(ids) else 0


def _renumber(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ids of equal int64 values, and how many there are: by a table when their range is
    small, else by Arrow's hash-based dictionary encoding (no sort either way)."""
    if not len(values):
        return np.zeros(0, dtype=np.int64), 0
    low, high = int(values.min()), int(values.max())
    if high - low <= 4 * len(values) + 1024:
        used = np.zeros(high - low + 1, dtype=bool)
        used[values - low] = True
        ids = np.cumsum(used) - 1
        return ids[values - low], int(ids[-1]) + 1
    encoded = pa.array(values).dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), len(encoded.dictionary)


@dataclass
class _Steps:
    """One counter's steps over the history (a reading by one event), grouped by entity (entities
    in increasing order), in replay order within each entity."""

    event: np.ndarray  # the event index
    reading: np.ndarray  # the reading (index into `readings`) the step belongs to
    entity: np.ndarray
    time: np.ndarray
    amount: np.ndarray
    update: np.ndarray  # +1, -1 (decrement) or 0
    pair: np.ndarray  # distinct: (entity, member) pair id (0 when no member)
    retract: np.ndarray  # an increment a BLOCK takes back
    entities: int
    pairs: int
    readings: list[_Reading]

    @cached_property
    def by_reading(self) -> list[tuple[int, np.ndarray | slice]]:
        """Per reading that has steps: its number and its steps' positions (all: a slice)."""
        numbers = np.flatnonzero(np.bincount(self.reading, minlength=len(self.readings)))
        if len(numbers) == 1:
            return [(int(numbers[0]), slice(None))]
        return [(int(number), np.flatnonzero(self.reading == number)) for number in numbers]


@dataclass(frozen=True)
class Replayed:
    """What the replay computed: a column per value name, and where values are approximate online."""

    columns: dict[str, Column]
    approximate: int  # events given a distinct() value above its exact_up_to (HyperLogLog online)
    kernel_seconds: float  # time spent in the kernels

    def values_of(self, index: int) -> dict[str, int]:
        """One event's counter values, as the online store returns them."""
        return {name: int(c.values[index]) for name, c in self.columns.items() if c.present[index]}

    def value_row(self, index: int) -> dict[str, int]:
        """`values_of` for reading every event in turn: the columns are made lists once."""
        return {name: values[index] for name, values, present in self._lists if present[index]}

    @cached_property
    def _lists(self) -> list[tuple[str, list[int], list[bool]]]:
        return [(name, c.values.tolist(), c.present.tolist()) for name, c in self.columns.items()]


class CounterReplay:
    """A counter file's state machine over a fixed history, replayable with different blocks."""

    def __init__(
        self, spec: CounterSpec, where: Predicate, events: Events, facts: Mapping[str, Column] | None = None
    ) -> None:
        """`facts`: the events' facts as these rules see them (`events.facts`, or with amounts in
        another currency converted at other rates)."""
        self.spec = spec
        self.events = events
        self.facts = facts if facts is not None else events.facts
        readings = [r for kind in KINDS for r in _readings(spec, kind)]
        self._given_masks: dict[str, np.ndarray] = {}
        self._unified: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
        self._steps = {c.name: self._build(c, [r for r in readings if r.counter is c], where) for c in spec.counters}
        self._given_masks.clear()
        self._unified.clear()

    def _given(self, name: str) -> np.ndarray:
        given = self._given_masks.get(name)
        if given is None:
            given = self._given_masks[name] = _given(self.events.value(name))
        return given

    def _joint_codes(self, names: list[str], rows: list[np.ndarray]) -> np.ndarray:
        """Codes of the values of field `names[i]` at `rows[i]`, concatenated, equal where the
        values are equal as the store hashes them (as text)."""
        columns = [self.events.value(name) for name in names]
        if all(column.codes is not None for column in columns):
            distinct = tuple(dict.fromkeys(names))
            renumbered = self._unified.get(distinct)
            if renumbered is None:  # fields read together by several counters are renumbered once
                codes, _ = unify([self.events.value(name) for name in distinct])
                renumbered = self._unified[distinct] = dict(zip(distinct, codes, strict=True))
            return np.concatenate([renumbered[name][r] for name, r in zip(names, rows, strict=True)])
        values = np.concatenate([column.values[r] for column, r in zip(columns, rows, strict=True)])
        return _codes(values.astype(object))

    def _build(self, counter: Counter, readings: list[_Reading], where: Predicate) -> _Steps:
        events = self.events
        parts: list[dict[str, np.ndarray]] = []
        key_rows: list[np.ndarray] = []  # per reading, its events
        member_rows: list[np.ndarray] = []  # per reading, its events with a member (distinct)
        # Parts in the script's order, so that sorting by event alone (stable) sorts by (event, order).
        for number, reading in sorted(enumerate(readings), key=lambda item: item[1].order):
            mask = events.kind == KINDS.index(reading.kind)
            for name in reading.fields:
                mask &= self._given(name)
            rows = np.flatnonzero(mask)
            update = np.zeros(len(rows), dtype=np.int64)
            amount = np.zeros(len(rows), dtype=np.int64)
            with_member = rows[:0]
            member = np.zeros(len(rows), dtype=bool)
            if reading.sign:
                updating = events.counted[rows].copy()
                condition = counter.where_for(reading.kind)
                if condition is not None and updating.any():
                    updating[updating] = _where_mask(condition, where, self.facts, rows[updating])
                if reading.sign < 0:
                    amount[:] = 1
                elif counter.aggregate is Aggregate.SUM:
                    assert counter.field is not None
                    column = self.facts[counter.field]
                    amount = np.where(column.present[rows], np.maximum(column.values[rows], 0), 0).astype(np.int64)
                    updating &= amount > 0  # adding 0 is a read
                elif counter.aggregate is Aggregate.DISTINCT:
                    assert counter.field is not None
                    member = self._given(counter.field)[rows]
                    with_member = rows[member]
                    updating &= member
                else:
                    amount[:] = 1
                update = np.where(updating, reading.sign, 0).astype(np.int64)
            parts.append(
                {
                    "event": rows.astype(np.int64),
                    "reading": np.full(len(rows), number, dtype=np.int16),
                    "update": update,
                    "amount": amount,
                    "member": member,
                }
            )
            key_rows.append(rows)
            member_rows.append(with_member)
        merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}
        if not parts or len(merged["event"]) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return _Steps(
                empty, empty.astype(np.int16), empty, empty, empty, empty, empty, empty.astype(bool), 0, 0, readings
            )
        in_order = [reading for _, reading in sorted(enumerate(readings), key=lambda item: item[1].order)]
        codes = [self._joint_codes([r.fields[p] for r in in_order], key_rows) for p in range(len(readings[0].fields))]
        entity, entities = _dense(codes)
        has_member = merged["member"]
        pair = np.zeros(len(entity), dtype=np.int64)
        pairs = 0
        if has_member.any():
            assert counter.field is not None
            member_codes = self._joint_codes([counter.field] * len(member_rows), member_rows)
            pair_ids, pairs = _dense([entity[has_member], member_codes])
            pair[has_member] = pair_ids
        in_replay_order = np.argsort(merged["event"], kind="stable")
        # Grouped by entity, in replay order within each: entities never interact, so every kernel
        # runs on this order (the `*_runs` ones need it), and the steps are held in it alone.
        order = in_replay_order[kernels.group_order(entity[in_replay_order], entities)]
        retractable = (
            (bool(counter.decrement_on) or counter.undo_on_block)
            and counter.aggregate in (Aggregate.COUNT, Aggregate.SUM)
            and any(w.all_time for w in counter.windows)
        )
        update = merged["update"][order]
        event = merged["event"][order]
        return _Steps(
            event=event,
            reading=merged["reading"][order],
            entity=entity[order],
            time=self.events.time[event],
            amount=merged["amount"][order],
            update=update,
            pair=pair[order],
            retract=(update > 0) & retractable,
            entities=entities,
            pairs=max(pairs, 1),
            readings=readings,
        )

    def retracting(self) -> np.ndarray:
        """Events whose BLOCK would take back an increment (their outcome changes the counters)."""
        mask = np.zeros(self.events.n, dtype=bool)
        for steps in self._steps.values():
            mask[steps.event[steps.retract]] = True
        return mask

    def run(self, blocked: np.ndarray | None = None) -> Replayed:
        """Every event's counter values, with the increments of `blocked` events taken back after them."""
        n = self.events.n
        columns: dict[str, Column] = {}
        approximate = np.zeros(n, dtype=bool)
        spent = 0.0
        for counter in self.spec.counters:
            steps = self._steps[counter.name]
            if len(steps.event) == 0:
                continue
            for position, window in enumerate(counter.windows):
                started = time.perf_counter()
                result = self._window(counter, window.seconds, window.granularity, steps, blocked)
                spent += time.perf_counter() - started
                for number, mine in steps.by_reading:
                    name = steps.readings[number].names[position]
                    column = columns.get(name)
                    if column is None:
                        column = columns[name] = Column(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool))
                    rows = steps.event[mine]
                    column.values[rows] = result[mine]
                    column.present[rows] = True
                if counter.aggregate is Aggregate.DISTINCT:
                    approximate[steps.event[result > counter.exact_up_to]] = True
        return Replayed(columns, int(approximate.sum()), spent)

    def _window(
        self, counter: Counter, seconds: int, granularity: int, steps: _Steps, blocked: np.ndarray | None
    ) -> np.ndarray:
        times, entities, amounts, updates = steps.time, steps.entity, steps.amount, steps.update
        n = steps.entities
        if counter.aggregate is Aggregate.IDLE_DAYS:
            return np.asarray(kernels.replay_idle(times, entities, updates, seconds, n))
        if counter.aggregate is Aggregate.DISTINCT or seconds:
            # The steps are grouped by entity: one ring of buckets, not one per entity (kernels, "by entity").
            if not seconds:  # distinct over `all`: one bucket holding every time there is
                granularity = _ALL_TIME_BUCKET
            buckets = max(1, seconds // granularity)
            if counter.aggregate is Aggregate.DISTINCT:
                return np.asarray(
                    kernels.replay_distinct_runs(
                        times, entities, steps.pair, updates, granularity, buckets, steps.pairs
                    )
                )
            return np.asarray(kernels.replay_windowed_runs(times, entities, amounts, updates, granularity, buckets))
        # All-time: a blocked event's retractable increment is taken back right after it.
        if blocked is not None:
            # Online, only a decision that read its counters takes them back (a degraded one cannot).
            undo = steps.retract & blocked[steps.event] & ~self.events.degraded[steps.event]
            if undo.any():
                return _all_time_with_undo(entities, amounts, updates, undo, n)
        return np.asarray(kernels.replay_all_time(entities, amounts, updates, n))


def _all_time_with_undo(
    entities: np.ndarray, amounts: np.ndarray, signs: np.ndarray, undo: np.ndarray, n: int
) -> np.ndarray:
    """replay_all_time with a -amount step after each step in `undo`; the values of the original steps."""
    extra = np.flatnonzero(undo)
    # Each original step i goes to position i + (undone steps before i); an undo right after its step.
    before = np.cumsum(undo) - undo
    position = np.arange(len(entities)) + before
    total = len(entities) + len(extra)
    merged_entities = np.empty(total, dtype=np.int64)
    merged_amounts = np.empty(total, dtype=np.int64)
    merged_signs = np.empty(total, dtype=np.int64)
    merged_entities[position] = entities
    merged_amounts[position] = amounts
    merged_signs[position] = signs
    undo_position = position[extra] + 1
    merged_entities[undo_position] = entities[extra]
    merged_amounts[undo_position] = amounts[extra]
    merged_signs[undo_position] = -1
    result = np.asarray(kernels.replay_all_time(merged_entities, merged_amounts, merged_signs, n))
    return np.asarray(result[position])
