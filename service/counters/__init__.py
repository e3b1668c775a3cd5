"""Velocity counters: declared in YAML (spec), kept in Redis (store), window arithmetic in Numba (kernels).

Public API::

    load_counters(path) -> CounterSpec              # raises SourceError (file:line: problem)
    counters_to_update(spec, kind, facts, predicate) -> frozenset[str]
    CounterStore(client, spec, hasher).observe(occurred_at=, kind=, facts=, ids=, updates=)
    KeyHasher(secret)                               # HMAC-SHA256 of everything that reaches Redis
"""

from service.counters.keys import KeyHasher, field_domain
from service.counters.spec import (
    Aggregate,
    Counter,
    CounterSpec,
    Filter,
    Key,
    Predicate,
    ReadAs,
    ValueInfo,
    Window,
    counters_to_update,
    load_counters,
    parse_counters,
)
from service.counters.store import CounterStore

__all__ = [
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
