"""Velocity counters: declared in YAML (loader -> model), kept in Redis (store), window arithmetic in Numba (kernels).

Public API::

    load_counters(path) -> CounterSpec              # raises SourceError (file:line: problem)
    counters_to_update(spec, kind, facts, predicate) -> frozenset[str]
    store = CounterStore(client, spec, hasher, max_future_skew_seconds=300)
    store.observe(occurred_at=, kind=, facts=, ids=, updates=) -> values     # one round trip
    plan = store.prepare(occurred_at=, kind=, facts=, ids=, updates=)      # the same, split:
    n = store.queue(pipe, plan); ...; store.read(plan, await store.retry_noscript(plan, replies[:n]))
    store.prepare_retract(plan, token=) -> RetractPlan; store.queue_retract(pipe, retract)  # BLOCK
    store.pipeline() -> DirectPipeline (single Redis) | ClusterPipeline   # the cheapest shared pipe
    KeyHasher(secret)                               # HMAC-SHA256 of everything that reaches Redis
"""

from service.redis.keys import KeyHasher, field_domain
from service.redis.pipeline import DirectPipeline
from service.riskdata.counters.loader import load_counters, parse_counters
from service.riskdata.counters.model import (
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
)
from service.riskdata.counters.store import CounterPlan, CounterStore, RetractPlan

__all__ = [
    "Aggregate",
    "Counter",
    "CounterPlan",
    "CounterSpec",
    "CounterStore",
    "DirectPipeline",
    "Filter",
    "Key",
    "KeyHasher",
    "Predicate",
    "ReadAs",
    "RetractPlan",
    "ValueInfo",
    "Window",
    "counters_to_update",
    "field_domain",
    "load_counters",
    "parse_counters",
]
