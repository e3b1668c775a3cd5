"""The recorded history as columns: what a backtest replays, one array per field over every event.

A backtest touches every event once per counter and once per rule; per-event Python objects
would cost more than the arithmetic (a dict of a transfer's 40 facts alone takes ~10 µs to
build). So the history is held as columns, read straight from the archive's Parquet
(`service.riskdata.history.SCHEMA`): one `Column` (values and a present mask) per fact and per
identifier hash, `person.*` put back from the screened person's role, and arrays of the kind,
time, outcome and degraded flags. A fact's column is made when first asked for (a backtest reads
a few dozen of the ~100), and text is held as dictionary codes (which events share a value is all
counter keys and most rule tests need), made Python strings only when asked for. The lists the
log keeps per event (fired and demoted rules, list hits) are codes into their distinct values.
Per-event views (`facts_of`, `fact_row`) are made only for the few events a report shows, and
for evaluating rules through durable_rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.domain import EventKind, Outcome
from service.pipeline.facts import FIELDS, FieldType, Scalar
from service.riskdata.history import FACT_FIELDS, ID_FIELDS, to_table
from service.riskdata.records import SUBJECT_ROLE

KINDS: tuple[EventKind, ...] = tuple(EventKind)
_KIND_INDEX = {kind.value: index for index, kind in enumerate(KINDS)}
_OUTCOMES = {o.label: int(o) for o in Outcome}
_PERSON = "person."
_SEPARATOR = "\x1f"  # joins a list's items into one text to encode lists (never inside a rule id)


class Column:
    """One field over every event: `values[i]` means something only where `present[i]`.
    Numbers are int64 (0 where absent), booleans bool, strings object arrays (None where absent).

    Text read from the archive is held as `codes` into `dictionary` (equal codes for equal text,
    -1 where absent), and `values` are made from them when first asked for."""

    __slots__ = ("_uniques", "_values", "codes", "dictionary", "present")

    def __init__(self, values: np.ndarray, present: np.ndarray) -> None:
        self._values: np.ndarray | None = values
        self.present = present
        self.codes: np.ndarray | None = None
        self.dictionary: pa.Array | None = None
        self._uniques: np.ndarray | None = None

    @classmethod
    def coded(cls, codes: np.ndarray, dictionary: pa.Array) -> Column:
        """Text as codes (int32, -1 where absent) into `dictionary` (distinct strings)."""
        column = cls.__new__(cls)
        column._values = None
        column._uniques = None
        column.codes = codes
        column.dictionary = dictionary
        column.present = codes >= 0
        return column

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            assert self.codes is not None
            table = np.empty(len(self.uniques) + 1, dtype=object)
            table[:-1] = self.uniques
            self._values = table[self.codes]  # code -1: the None at the end
        return self._values

    @property
    def uniques(self) -> np.ndarray:
        """A coded column's dictionary as Python strings (an object array)."""
        if self._uniques is None:
            assert self.dictionary is not None
            self._uniques = np.asarray(self.dictionary.to_numpy(zero_copy_only=False), dtype=object)
        return self._uniques

    def code_of(self, text: str) -> int:
        """A coded column's code of `text` (-1: no event has it)."""
        assert self.dictionary is not None
        return int(pc.index(self.dictionary, pa.scalar(text, pa.string())).as_py())

    def take(self, index: np.ndarray) -> Column:
        if self.codes is not None:
            assert self.dictionary is not None
            return Column.coded(self.codes[index], self.dictionary)
        return Column(self.values[index], self.present[index])


def encode(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Text as dictionary codes: (int32 codes, -1 where null; the distinct strings)."""
    if isinstance(array, pa.ChunkedArray) and array.num_chunks > 1:
        # Arrow encodes the chunks with one dictionary (each chunk gets the final one): no concatenation.
        chunks = array.dictionary_encode().chunks
        dictionary = chunks[-1].dictionary
        if all(len(chunk.dictionary) == len(dictionary) for chunk in chunks):
            parts = [chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False) for chunk in chunks]
            return np.concatenate(parts).astype(np.int32), dictionary
    encoded = _array(array).dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, encoded.dictionary


def unify(columns: Sequence[Column]) -> tuple[list[np.ndarray], pa.Array]:
    """Coded columns' codes renumbered into one dictionary, equal text having equal codes across
    them all: (int64 codes per column, -1 where absent; the dictionary)."""
    dictionaries: list[pa.Array] = []
    for column in columns:
        assert column.dictionary is not None
        if not any(column.dictionary is d for d in dictionaries):
            dictionaries.append(column.dictionary)
    if len(dictionaries) == 1:
        return [np.asarray(c.codes, dtype=np.int64) for c in columns], dictionaries[0]
    encoded = pa.concat_arrays(dictionaries).dictionary_encode()
    mapping = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.cumsum([0] + [len(d) for d in dictionaries])
    # Per dictionary, its codes' new codes, and -1 last: code -1 (absent) reads it.
    tables = [np.append(mapping[offsets[i] : offsets[i + 1]], -1) for i in range(len(dictionaries))]
    out = []
    for column in columns:
        assert column.codes is not None
        table = tables[next(i for i, d in enumerate(dictionaries) if column.dictionary is d)]
        out.append(table[column.codes])
    return out, encoded.dictionary


def first_of_each(codes: np.ndarray) -> np.ndarray:
    """Where each code first appears, for codes numbered in order of first appearance (as
    `encode` numbers them; no -1)."""
    if not len(codes):
        return np.zeros(0, dtype=np.int64)
    seen = np.maximum.accumulate(codes)
    return np.flatnonzero(np.concatenate(([True], seen[1:] > seen[:-1])))


@dataclass(frozen=True, slots=True)
class Coded:
    """A per-event value as codes into its distinct values (`distinct[codes[i]]`)."""

    codes: np.ndarray
    distinct: tuple[Any, ...]


class LazyColumns(Mapping[str, Column]):
    """Columns by name, each made on first use (a backtest reads few of the fields)."""

    def __init__(self, names: Sequence[str], make: Callable[[str], Column]) -> None:
        self._names = tuple(names)
        self._known = frozenset(names)
        self._make = make
        self._made: dict[str, Column] = {}

    def __getitem__(self, name: str) -> Column:
        column = self._made.get(name)
        if column is None:
            if name not in self._known:
                raise KeyError(name)
            column = self._made[name] = self._make(name)
        return column

    def replacing(self, name: str, column: Column) -> LazyColumns:
        """These columns with `name`'s replaced by `column` (the others shared, each still made once)."""
        out = LazyColumns(self._names, self.__getitem__)
        out._made[name] = column
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass(frozen=True, slots=True)
class Event:
    """One event given by hand (tests, small tools): turned into columns by `Events.of`."""

    time: int  # occurred_at, whole seconds since the epoch (UTC)
    kind: EventKind
    facts: Mapping[str, Scalar]
    ids: Mapping[str, str]
    counted: bool = True


class Events:
    """A history in replay order (the order the service decided: decided_at, then stream id).

    `table` as `read_table` gives it, or as `read_rows` does with `rows`, the positions of the
    events in it in replay order: then each column is put in order when it is made, as NumPy
    arrays (codes for text), and no Arrow data is moved."""

    def __init__(self, table: pa.Table, rows: np.ndarray | None = None) -> None:
        self.table = table
        self.rows = rows
        self.n = table.num_rows if rows is None else len(rows)
        self.kind = self._ordered(_lookup(table.column("kind"), _KIND_INDEX))
        occurred = pc.cast(table.column("occurred_at"), pa.int64()).to_numpy()
        self.occurred_us = self._ordered(occurred.astype(np.int64))
        self.time = np.floor_divide(self.occurred_us, 1_000_000)
        self.degraded = self._ordered(table.column("degraded").to_numpy().astype(bool))
        late = self._ordered(table.column("late").to_numpy().astype(bool))
        # A degraded decision counted only when its counter call was sent and ran late.
        self.counted = ~self.degraded | late
        self.outcome = self._ordered(_lookup(table.column("outcome"), _OUTCOMES))
        self.facts = self._struct("facts", FACT_FIELDS, hashes=False)
        self.hashes = self._struct("ids", ID_FIELDS, hashes=True)

    @classmethod
    def of(cls, events: Sequence[Event]) -> Events:
        """Columns of events given by hand, in the order given."""
        documents = []
        for index, event in enumerate(events):
            documents.append(
                {
                    "stream_id": f"{index + 1}-0",
                    "decision_id": f"e{index}",
                    "decided_at": f"{np.datetime64(event.time, 's')}+00:00",
                    "occurred_at": f"{np.datetime64(event.time, 's')}+00:00",
                    "kind": event.kind.value,
                    "outcome": Outcome.ALLOW.label,
                    "degraded": not event.counted,
                    "facts": {k: v for k, v in event.facts.items() if not k.startswith(_PERSON)},
                    "ids": {k: v for k, v in event.ids.items() if not k.startswith(_PERSON)},
                }
            )
        return cls(to_table(documents))

    def _ordered(self, values: np.ndarray) -> np.ndarray:
        """A column of the table's rows in replay order."""
        return values if self.rows is None else np.asarray(values[self.rows])

    def _table_row(self, index: int) -> int:
        return index if self.rows is None else int(self.rows[index])

    def in_table(self, index: np.ndarray) -> np.ndarray:
        """The table rows of the events `index`."""
        return index if self.rows is None else self.rows[index]

    def _owners(self, rows: np.ndarray) -> np.ndarray:
        """The events of table rows (-1: a row that is no event, outside the range read)."""
        if self.rows is None:
            return rows
        event = np.full(self.table.num_rows, -1, dtype=np.int64)
        event[self.rows] = np.arange(self.n)
        return np.asarray(event[rows])

    def _struct(self, name: str, fields: Sequence[str], *, hashes: bool) -> LazyColumns:
        chunks: list[list[pa.Array]] = []  # per chunk of the struct column, its fields

        def child(field_name: str) -> pa.ChunkedArray:
            if not chunks:
                column = self.table.column(name)
                chunks.extend(chunk.flatten() for chunk in column.chunks)
                if not chunks:  # an empty table
                    chunks.append(pa.array([], type=column.type).flatten())
            position = fields.index(field_name)
            return pa.chunked_array([chunk[position] for chunk in chunks])

        # person.*: each event's screened person's role (payer., applicant., ...).
        leaves = {n.partition(".")[2] for n in fields if n.partition(".")[0] + "." in SUBJECT_ROLE.values()}
        person = {
            _PERSON + leaf: [(index, SUBJECT_ROLE[kind] + leaf) for index, kind in enumerate(KINDS)]
            for leaf in sorted(leaves)
        }
        person = {k: [(i, s) for i, s in v if s in fields] for k, v in person.items()}
        person = {k: v for k, v in person.items() if v}

        def make(field_name: str) -> Column:
            if field_name in person:
                return self._person([(index, columns[source]) for index, source in person[field_name]])
            column = _column(field_name, child(field_name), hashes=hashes)
            return column if self.rows is None else column.take(self.rows)

        columns = LazyColumns([*fields, *person], make)
        return columns

    def _person(self, sources: Sequence[tuple[int, Column]]) -> Column:
        """A person.* column: each event's value from the column of its kind's screened person."""
        if all(column.codes is not None for _, column in sources):
            codes = np.full(self.n, -1, dtype=np.int32)
            renumbered, dictionary = unify([column for _, column in sources])
            for (index, _), source_codes in zip(sources, renumbered, strict=True):
                mine = self.kind == index
                codes[mine] = source_codes[mine]
            return Column.coded(codes, dictionary)
        values: np.ndarray | None = None
        present = np.zeros(self.n, dtype=bool)
        for index, source in sources:
            mine = self.kind == index
            values = source.values.copy() if values is None else np.where(mine, source.values, values)
            present |= mine & source.present
        assert values is not None
        return Column(values, present)

    def value(self, name: str) -> Column:
        """A key or member field as counters and lists see it: an identifier (or a region, for a
        list) by its hash, any other field by its value."""
        if FIELDS[name].type is FieldType.IDENTIFIER:
            return self.hashes[name]
        return self.facts[name]

    def text(self, name: str) -> Column:
        """A text column of the log (decision_id, institution_id, revision, ...), coded."""
        return self._texts[name]

    @cached_property
    def _texts(self) -> LazyColumns:
        return LazyColumns(
            ("decision_id", "request_id", "institution_id", "outlet_id", "region_code", "revision"),
            lambda name: Column.coded(*self._encode(name)),
        )

    def _encode(self, name: str) -> tuple[np.ndarray, pa.Array]:
        codes, dictionary = encode(self.table.column(name))
        return self._ordered(codes), dictionary

    def string(self, name: str, index: int) -> str:
        """One event's text of the log (`text`'s column)."""
        return str(self.table.column(name)[self._table_row(index)].as_py())

    @cached_property
    def recorded_rules(self) -> Coded:
        """The rules the service showed (shadow ones as ~ID), as tuples in the recorded order."""
        lists = _lists(self.table.column("rules"), tuple)
        return Coded(self._ordered(lists.codes), lists.distinct)

    @cached_property
    def demoted(self) -> Coded:
        """The rules the breaker had demoted at each decision, as frozensets."""
        lists = _lists(self.table.column("demoted"), frozenset)
        return Coded(self._ordered(lists.codes), lists.distinct)

    def list_hit(self, key: str) -> np.ndarray:
        """Whether each event's recorded list hits hold `key` ("list:field")."""
        hits = self._list_hits
        if key not in hits:
            hits[key] = np.zeros(self.n, dtype=bool)
        return hits[key]

    @cached_property
    def _list_hits(self) -> dict[str, np.ndarray]:
        hits = _array(self.table.column("list_hits"))
        owner = self._owners(pc.list_parent_indices(hits).to_numpy(zero_copy_only=False).astype(np.int64))
        codes, dictionary = encode(pc.list_flatten(hits))
        codes = np.where(owner >= 0, codes, -1)
        out: dict[str, np.ndarray] = {}
        for code, key in enumerate(dictionary.to_pylist()):
            mask = np.zeros(self.n, dtype=bool)
            mask[owner[codes == code]] = True
            out[str(key)] = mask
        return out

    def recorded_counters(self, index: int) -> dict[str, int | float]:
        """The counter values the service read for one event (whole numbers as int)."""
        items = self.table.column("counters")[self._table_row(index)].as_py() or []
        return {k: int(v) if float(v).is_integer() else v for k, v in items}

    @cached_property
    def recorded_counter_columns(self) -> dict[str, Column]:
        """The counter values the service read for each event, as columns (for the agreement check)."""
        # Chunk by chunk (a file's rows each): the map's keys are encoded with one dictionary, nothing concatenated.
        owners, keys, items = [], [], []
        first_row = 0
        for chunk in self.table.column("counters").chunks:
            offsets = chunk.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
            start, stop = int(offsets[0]), int(offsets[-1])
            owners.append(np.repeat(np.arange(first_row, first_row + len(chunk)), np.diff(offsets)))
            keys.append(chunk.keys.slice(start, stop - start))
            items.append(chunk.items.slice(start, stop - start).to_numpy(zero_copy_only=False).astype(np.float64))
            first_row += len(chunk)
        if not keys:
            return {}
        owner = np.concatenate(owners)
        codes, dictionary = encode(pa.chunked_array(keys, type=pa.string()))
        owner = self._owners(owner)
        event = owner >= 0
        codes, owner = codes[event], owner[event]
        values = np.zeros((len(dictionary), self.n), dtype=np.float64)
        present = np.zeros((len(dictionary), self.n), dtype=bool)
        values[codes, owner] = np.concatenate(items)[event]
        present[codes, owner] = True
        return {str(name): Column(values[code], present[code]) for code, name in enumerate(dictionary.to_pylist())}

    @cached_property
    def _fact_lists(self) -> dict[EventKind, list[tuple[str, list[Any], list[bool]]]]:
        """Per kind, its facts' columns as Python lists, for evaluating event by event (durable_rules)."""
        out: dict[EventKind, list[tuple[str, list[Any], list[bool]]]] = {}
        for kind in KINDS:
            names = [n for n in self.facts if kind in FIELDS[n].kinds]
            out[kind] = [(n, self.facts[n].values.tolist(), self.facts[n].present.tolist()) for n in names]
        return out

    def fact_row(self, index: int) -> dict[str, Scalar]:
        """`facts_of` for evaluating every event in turn: the columns are made lists once."""
        columns = self._fact_lists[KINDS[self.kind[index]]]
        return {name: values[index] for name, values, present in columns if present[index]}

    def facts_of(self, index: int) -> dict[str, Scalar]:
        """One event's facts as the rules were given them (person.* included), read from its row
        (no column is made for it)."""
        kind = KINDS[self.kind[index]]
        row: dict[str, Scalar | None] = self.table.column("facts")[self._table_row(index)].as_py() or {}
        out: dict[str, Scalar] = {}
        for name in self.facts:
            if kind not in FIELDS[name].kinds:
                continue
            source = SUBJECT_ROLE[kind] + name.removeprefix(_PERSON) if name.startswith(_PERSON) else name
            value = row.get(source)
            if value is not None:
                out[name] = value
        return out


def _array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array of a table's column (of no rows when the column has no chunks)."""
    if not isinstance(array, pa.ChunkedArray):
        return array
    if not array.num_chunks:
        return pa.array([], type=array.type)
    return array.chunk(0) if array.num_chunks == 1 else pa.concat_arrays(array.chunks)


def _lookup(array: pa.ChunkedArray, index: Mapping[str, int]) -> np.ndarray:
    """A text column of a few known values as their numbers (int8); KeyError for another one."""
    codes, dictionary = encode(array)
    table = np.array([index[value] for value in dictionary.to_pylist()] + [0], dtype=np.int8)
    if (codes < 0).any():
        raise KeyError(None)
    return np.asarray(table[codes])


def _lists(array: pa.ChunkedArray, kind: Callable[[list[str]], Any]) -> Coded:
    """A column of lists of text as codes into its distinct lists (an absent list is empty)."""
    lists = _array(array)
    items = pc.list_flatten(lists)
    if len(items) and pc.any(pc.match_substring(items, _SEPARATOR)).as_py():
        rows = [list(r or ()) for r in lists.to_pylist()]  # an item holds the separator: list by list
        distinct: dict[Any, int] = {}
        codes = np.array([distinct.setdefault(kind(r), len(distinct)) for r in rows], dtype=np.int32)
        return Coded(codes, tuple(distinct))
    joined = pc.fill_null(pc.binary_join(lists, _SEPARATOR), "")
    # An item-less list and a list of one "" both join to "": told apart by the length.
    lengths = pc.cast(pc.fill_null(pc.list_value_length(lists), 0), pa.string())
    codes, _ = encode(pc.binary_join_element_wise(lengths, joined, _SEPARATOR))
    values = lists.take(pa.array(first_of_each(codes))).to_pylist()
    return Coded(codes, tuple(kind(list(v or ())) for v in values))


def _column(name: str, array: pa.ChunkedArray, *, hashes: bool) -> Column:
    kind = FIELDS[name].type
    if hashes or kind not in (FieldType.NUMBER, FieldType.BOOL):
        return Column.coded(*encode(array))
    present = array.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    if kind is FieldType.NUMBER:
        values = array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        values = array.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
    return Column(values, present)
