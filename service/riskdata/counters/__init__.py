"""Velocity counters: declared in YAML (loader -> model), kept in Redis (store), window arithmetic in Numba (kernels).

Public API, by module (this package imports none of them, so the counter declarations
(model, loader) load without the Redis store: the rules directory reads them)::

    load_counters(path) -> CounterSpec              # raises SourceError (file:line: problem)
    counters_to_update(spec, kind, facts, predicate) -> frozenset[str]
    store = CounterStore(client, spec, hasher, max_future_skew_seconds=300)
    store.observe(occurred_at=, kind=, facts=, ids=, updates=) -> values     # one round trip
    plan = store.prepare(occurred_at=, kind=, facts=, ids=, updates=)      # the same, split:
    n = store.queue(pipe, plan); ...; store.read(plan, await store.retry_noscript(plan, replies[:n]))
    store.prepare_retract(plan, token=) -> RetractPlan; store.queue_retract(pipe, retract)  # BLOCK
    store.pipeline() -> DirectPipeline (single Redis) | ClusterPipeline   # the cheapest shared pipe
    KeyHasher(secret)                               # HMAC-SHA256 of everything that reaches Redis

    service.riskdata.counters.model    Aggregate, Counter, CounterSpec, Filter, Key, Predicate, ReadAs,
                                       ValueInfo, Window, counters_to_update
    service.riskdata.counters.loader   load_counters, parse_counters
    service.riskdata.counters.store    CounterPlan, CounterStore, RetractPlan
    service.riskdata.counters.kernels  the window arithmetic (Numba)
    service.redis.keys                 KeyHasher, field_domain
    service.redis.pipeline             DirectPipeline
"""
