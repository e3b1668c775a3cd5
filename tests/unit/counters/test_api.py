"""The counters package's public surface, pinned: changing it is a deliberate act."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from service.redis import keys, pipeline
from service.riskdata import counters
from service.riskdata.counters import loader, model, store
from service.riskdata.counters.store import CounterStore

PUBLIC = {
    model: ("Aggregate", "Counter", "CounterSpec", "Filter", "Key", "Predicate", "ReadAs", "ValueInfo", "Window",
            "counters_to_update"),
    loader: ("load_counters", "parse_counters"),
    store: ("CounterPlan", "CounterStore", "RetractPlan"),
    keys: ("KeyHasher", "field_domain"),
    pipeline: ("DirectPipeline",),
}  # fmt: skip


def test_public_names() -> None:
    for module, names in PUBLIC.items():
        assert [name for name in names if not hasattr(module, name)] == [], module.__name__


def test_the_package_imports_nothing() -> None:
    """The declarations load without the store (and its Redis client): the rule language reads them."""
    tree = ast.parse(Path(counters.__file__).read_text(encoding="utf-8"))
    assert not [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]


def test_signatures() -> None:
    assert str(inspect.signature(loader.load_counters)) == "(path: 'Path | str') -> 'CounterSpec'"
    assert str(inspect.signature(model.counters_to_update)) == (
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
