"""The counters package's public surface, pinned: changing it is a deliberate act."""

from __future__ import annotations

import inspect

from service.riskdata import counters
from service.riskdata.counters.store import CounterStore


def test_public_names() -> None:
    assert sorted(counters.__all__) == [
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


def test_signatures() -> None:
    assert str(inspect.signature(counters.load_counters)) == "(path: 'Path | str') -> 'CounterSpec'"
    assert str(inspect.signature(counters.counters_to_update)) == (
        "(spec: 'CounterSpec', kind: 'EventKind', facts: 'Mapping[str, Scalar]', predicate: 'Predicate')"
        " -> 'frozenset[str]'"
    )
    event = (
        "*, occurred_at: 'datetime', kind: 'EventKind', facts: 'Mapping[str, Scalar]', "
        "ids: 'Mapping[str, str]', updates: 'Collection[str]'"
    )
    expected = {
        "__init__": (
            "(self, client: 'Redis | RedisCluster', spec: 'CounterSpec', hasher: 'KeyHasher', *, "
            "max_future_skew_seconds: 'float' = 300) -> 'None'"
        ),
        "observe": f"(self, {event}) -> 'dict[str, int | float]'",
        "prepare": f"(self, {event}) -> 'CounterPlan'",
        "queue": (
            "(self, pipe: 'DirectPipeline | Pipeline | ClusterPipeline', plan: 'CounterPlan | RetractPlan') -> 'int'"
        ),
        "read": "(self, plan: 'CounterPlan | RetractPlan', replies: 'Sequence[Any]') -> 'dict[str, int | float]'",
        "retry_noscript": "(self, plan: 'CounterPlan | RetractPlan', replies: 'Sequence[Any]') -> 'list[Any]'",
        "prepare_retract": "(self, plan: 'CounterPlan', *, token: 'str | None' = None) -> 'RetractPlan'",
        "queue_retract": (
            "(self, pipe: 'DirectPipeline | Pipeline | ClusterPipeline', retract: 'RetractPlan') -> 'int'"
        ),
        "pipeline": "(self) -> 'DirectPipeline | ClusterPipeline'",
        "aclose": "(self) -> 'None'",
        "read_retract": "(self, retract: 'RetractPlan', replies: 'Sequence[Any]') -> 'dict[str, int | float]'",
        "retract": "(self, retract: 'RetractPlan') -> 'dict[str, int | float]'",
        "run": "(self, plan: 'CounterPlan | RetractPlan') -> 'dict[str, int | float]'",
        "load_script": "(self) -> 'None'",
        "value_names": "(self, kind: 'EventKind') -> 'frozenset[str]'",
    }
    for name, signature in expected.items():
        assert str(inspect.signature(getattr(CounterStore, name))) == signature, name
