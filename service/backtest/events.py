"""The recorded history as columns: what a backtest replays, one array per field over every event.

A backtest touches every event once per counter and once per rule; per-event Python objects
would cost more than the arithmetic (a dict of a transfer's 40 facts alone takes ~10 µs to
build). So the history is held as columns, read straight from the archive's Parquet
(`service.riskdata.history.SCHEMA`): one `Column` (values and a present mask) per fact and per
identifier hash, `person.*` put back from the screened person's role, and arrays of the kind,
time, outcome and degraded flags. Per-event views (`facts_of`, `ids_of`) are made only for the
few events a report shows, and for evaluating rules through durable_rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True, slots=True)
class Column:
    """One field over every event: `values[i]` means something only where `present[i]`.
    Numbers are int64 (0 where absent), booleans bool, strings object arrays."""

    values: np.ndarray
    present: np.ndarray

    def take(self, index: np.ndarray) -> Column:
        return Column(self.values[index], self.present[index])


@dataclass(frozen=True, slots=True)
class Event:
    """One event given by hand (tests, small tools): turned into columns by `Events.of`."""

    time: int  # occurred_at, whole seconds since the epoch (UTC)
    kind: EventKind
    facts: Mapping[str, Scalar]
    ids: Mapping[str, str]
    counted: bool = True


class Events:
    """A history in replay order (the order the service decided: decided_at, then stream id)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.n = table.num_rows
        self.kind = np.array([_KIND_INDEX[k] for k in table.column("kind").to_pylist()], dtype=np.int8)
        occurred = pc.cast(table.column("occurred_at"), pa.int64()).to_numpy()
        self.occurred_us = occurred.astype(np.int64)
        self.time = np.floor_divide(self.occurred_us, 1_000_000)
        self.degraded = table.column("degraded").to_numpy().astype(bool)
        late = table.column("late").to_numpy().astype(bool)
        # A degraded decision counted only when its counter call was sent and ran late.
        self.counted = ~self.degraded | late
        self.outcome = np.array([_OUTCOMES[o] for o in table.column("outcome").to_pylist()], dtype=np.int8)
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

    def _struct(self, name: str, fields: Sequence[str], *, hashes: bool) -> dict[str, Column]:
        struct = self.table.column(name).combine_chunks()
        if isinstance(struct, pa.ChunkedArray):  # an empty table
            struct = pa.concat_arrays(struct.chunks) if struct.num_chunks else pa.array([], type=struct.type)
        columns = {
            field_name: _column(field_name, array, hashes=hashes)
            for field_name, array in zip(fields, struct.flatten(), strict=True)
        }
        # person.*: each event's screened person's role (payer., applicant., ...).
        leaves = {n.partition(".")[2] for n in fields if n.partition(".")[0] + "." in SUBJECT_ROLE.values()}
        for leaf in sorted(leaves):
            values: np.ndarray | None = None
            present = np.zeros(self.n, dtype=bool)
            for index, kind in enumerate(KINDS):
                source = columns.get(SUBJECT_ROLE[kind] + leaf)
                if source is None:
                    continue
                mine = self.kind == index
                values = source.values.copy() if values is None else np.where(mine, source.values, values)
                present |= mine & source.present
            if values is not None:
                columns[_PERSON + leaf] = Column(values, present)
        return columns

    def value(self, name: str) -> Column:
        """A key or member field as counters and lists see it: an identifier (or a region, for a
        list) by its hash, any other field by its value."""
        if FIELDS[name].type is FieldType.IDENTIFIER:
            return self.hashes[name]
        return self.facts[name]

    @cached_property
    def strings(self) -> dict[str, list[Any]]:
        """The text columns reports show, as lists."""
        return {
            name: self.table.column(name).to_pylist()
            for name in ("decision_id", "request_id", "institution_id", "outlet_id", "region_code", "revision")
        }

    @cached_property
    def recorded_rules(self) -> list[list[str]]:
        return [list(r or ()) for r in self.table.column("rules").to_pylist()]

    @cached_property
    def demoted(self) -> list[frozenset[str]]:
        return [frozenset(d or ()) for d in self.table.column("demoted").to_pylist()]

    @cached_property
    def list_hits(self) -> list[frozenset[str]]:
        return [frozenset(h or ()) for h in self.table.column("list_hits").to_pylist()]

    def recorded_counters(self, index: int) -> dict[str, int | float]:
        """The counter values the service read for one event (whole numbers as int)."""
        items = self.table.column("counters")[index].as_py() or []
        return {k: int(v) if float(v).is_integer() else v for k, v in items}

    @cached_property
    def recorded_counter_columns(self) -> dict[str, Column]:
        """The counter values the service read for each event, as columns (for the agreement check)."""
        counters = self.table.column("counters").combine_chunks()
        offsets = counters.offsets.to_numpy(zero_copy_only=False)
        owner = np.repeat(np.arange(self.n), np.diff(offsets))
        keys = counters.keys.dictionary_encode()
        codes = keys.indices.to_numpy(zero_copy_only=False)
        values = counters.items.to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(keys.dictionary) + 1))
        out: dict[str, Column] = {}
        for code, name in enumerate(keys.dictionary.to_pylist()):
            mine = order[bounds[code] : bounds[code + 1]]
            column = Column(np.zeros(self.n, dtype=np.float64), np.zeros(self.n, dtype=bool))
            column.values[owner[mine]] = values[mine]
            column.present[owner[mine]] = True
            out[str(name)] = column
        return out

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
        """One event's facts as the rules were given them (person.* included)."""
        kind = KINDS[self.kind[index]]
        out: dict[str, Scalar] = {}
        for name, column in self.facts.items():
            if kind in FIELDS[name].kinds and column.present[index]:
                value = column.values[index]
                out[name] = value.item() if isinstance(value, np.generic) else value
        return out


def _column(name: str, array: pa.Array, *, hashes: bool) -> Column:
    present = array.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    kind = FIELDS[name].type
    if hashes:
        values = array.to_numpy(zero_copy_only=False).astype(object)
    elif kind is FieldType.NUMBER:
        values = array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    elif kind is FieldType.BOOL:
        values = array.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
    else:
        values = array.to_numpy(zero_copy_only=False).astype(object)
    return Column(values, present)
