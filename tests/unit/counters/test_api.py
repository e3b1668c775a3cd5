"""The counters package's public surface, pinned: changing it is a deliberate act."""

from __future__ import annotations

import inspect

from service import counters
from service.counters.store import CounterStore


def test_public_names() -> None:
    assert sorted(counters.__all__) == [
        "Aggregate",
        "Counter",
        "CounterSpec",
        "CounterStore",
        "Filter",
        "Key",
        "KeyHasher",
        "Predicate",
        "ReadAs",
        "ValueInfo",
        "Window",
        "counters_to_update",
        "field_domain",
        "load_counters",
        "parse_counters",
    ]


def test_signatures() -> None:
    assert str(inspect.signature(counters.load_counters)) == "(path: 'Path | str') -> 'CounterSpec'"
    assert str(inspect.signature(counters.counters_to_update)) == (
        "(spec: 'CounterSpec', kind: 'EventKind', facts: 'Mapping[str, Scalar]', predicate: 'Predicate')"
        " -> 'frozenset[str]'"
    )
    assert str(inspect.signature(CounterStore.observe)) == (
        "(self, *, occurred_at: 'datetime', kind: 'EventKind', facts: 'Mapping[str, Scalar]', "
        "ids: 'Mapping[str, str]', updates: 'Collection[str]') -> 'dict[str, int | float]'"
    )
    assert str(inspect.signature(CounterStore.__init__)) == (
        "(self, client: 'Redis | RedisCluster', spec: 'CounterSpec', hasher: 'KeyHasher') -> 'None'"
    )
