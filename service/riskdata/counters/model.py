"""The counter model: what `service.riskdata.counters.loader` produces from a counter file and the
store (`service.riskdata.counters.store`), the rules layer and the backtests consume.

Every value here is frozen and already validated. The file format, and the exact meaning of
a counter's value, are in the docstring of `service.riskdata.counters.loader`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from service.domain import EventKind
from service.pipeline.facts import Scalar

MAX_WINDOW_SECONDS = 180 * 86400
MAX_BUCKETS = 200
MAX_WINDOWS = 8
DEFAULT_EXACT_UP_TO = 64
MAX_EXACT_UP_TO = 10_000
DEFAULT_RETAIN_DAYS = 400
MAX_RETAIN_DAYS = 3650
ALL = "all"


class Aggregate(enum.StrEnum):
    COUNT = "count"
    SUM = "sum"
    DISTINCT = "distinct"
    IDLE_DAYS = "idle_days"


def duration_label(seconds: int) -> str:
    """'30d', '24h', '5m', or '45s': the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class Window:
    """One window of a counter: `label` as written ('30m', '24h', 'all')."""

    label: str
    seconds: int  # 0 for all-time
    granularity: int  # bucket width in seconds; 0 for all-time

    @property
    def all_time(self) -> bool:
        return self.seconds == 0

    @property
    def buckets(self) -> int:
        return self.seconds // self.granularity if self.granularity else 0

    @property
    def error_bound(self) -> str:
        """The most the window can lag: one bucket ('1m'), or '0' for all-time."""
        return duration_label(self.granularity) if self.granularity else "0"


@dataclass(frozen=True, slots=True)
class Filter:
    """A counter's `where` condition, kept as text for the rules layer to compile."""

    text: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Key:
    """The entity a counter is kept per: its key fields on each event kind that has them."""

    domains: tuple[str, ...]  # hashing domain per position, e.g. ('id_number', 'carrier')
    by_kind: tuple[tuple[EventKind, tuple[str, ...]], ...]

    def fields(self, kind: EventKind) -> tuple[str, ...] | None:
        for k, fields in self.by_kind:
            if k is kind:
                return fields
        return None

    @property
    def kinds(self) -> frozenset[EventKind]:
        return frozenset(k for k, _ in self.by_kind)


@dataclass(frozen=True, slots=True)
class ReadAs:
    """Another name under which a counter is read for another key of the same kind of entity."""

    name: str
    key: Key
    read_on: frozenset[EventKind]
    description: str
    line: int


@dataclass(frozen=True, slots=True)
class Counter:
    name: str
    description: str
    on: frozenset[EventKind]
    decrement_on: frozenset[EventKind]
    key: Key
    aggregate: Aggregate
    field: str | None  # the sum() or distinct() field
    windows: tuple[Window, ...]  # as declared
    where: tuple[tuple[EventKind, Filter], ...]
    read_as: tuple[ReadAs, ...]
    read_on: frozenset[EventKind]
    exact_up_to: int
    retain_seconds: int
    file: str
    line: int
    undo_on_block: bool = False  # a BLOCKed event's increment is taken back (it did not happen)

    def where_for(self, kind: EventKind) -> Filter | None:
        for k, condition in self.where:
            if k is kind:
                return condition
        return None

    def names(self, prefix: str | None = None) -> tuple[str, ...]:
        """`{prefix}_{window}` for each window, in declared order (prefix: the counter's name)."""
        base = self.name if prefix is None else prefix
        return tuple(f"{base}_{w.label}" for w in self.windows)

    def value_names(self) -> frozenset[str]:
        """Every name this counter is read by, its read_as names included."""
        names = set(self.names())
        for alias in self.read_as:
            names.update(self.names(alias.name))
        return frozenset(names)


@dataclass(frozen=True, slots=True)
class ValueInfo:
    """One readable value: `banks_30d` is window 30d of counter `banks`."""

    name: str
    counter: str
    window: Window
    kinds: frozenset[EventKind]  # the event kinds that can read it
    description: str


@dataclass(frozen=True, slots=True)
class CounterSpec:
    counters: tuple[Counter, ...]
    values: tuple[ValueInfo, ...]
    file: str

    def value_names(self, kind: EventKind | None = None) -> frozenset[str]:
        """Every readable value name, or those an event of `kind` can read."""
        return frozenset(v.name for v in self.values if kind is None or kind in v.kinds)

    def value_info(self) -> dict[str, ValueInfo]:
        return {v.name: v for v in self.values}

    def counter(self, name: str) -> Counter:
        for counter in self.counters:
            if counter.name == name:
                return counter
        raise KeyError(name)


Predicate = Callable[[Filter, Mapping[str, Scalar]], bool]


def counters_to_update(
    spec: CounterSpec, kind: EventKind, facts: Mapping[str, Scalar], predicate: Predicate
) -> frozenset[str]:
    """Names of the counters an event updates (or decrements): its kind is in `on`/`decrement_on`
    and the counter's `where` for that kind, if any, holds for its facts."""
    names: list[str] = []
    for counter in spec.counters:
        if kind in counter.on or kind in counter.decrement_on:
            condition = counter.where_for(kind)
            if condition is None or predicate(condition, facts):
                names.append(counter.name)
    return frozenset(names)
