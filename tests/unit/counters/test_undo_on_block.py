"""`undo_on_block`: a count or sum with windows [all] whose increments a BLOCK takes back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from service.domain import EventKind
from service.errors import SourceError
from service.redis.keys import KeyHasher
from service.riskdata.counters.loader import parse_counters
from service.riskdata.counters.store import CounterPlan, CounterStore

PAIR = """
counters:
  - name: pair_payments
    on: transfer
    key: [transfer.payer_account, transfer.payee_account]
    aggregate: count
    undo_on_block: {value}
    windows: [{windows}]
"""


def _plan(text: str) -> CounterPlan:
    spec = parse_counters(text, "counters.yaml")
    store = CounterStore(cast(Any, None), spec, KeyHasher(b"k" * 32), max_future_skew_seconds=300)  # plans only
    facts = {"transfer.payer_account": "6222020200112233445", "transfer.payee_account": "6217000010002000300"}
    ids = dict(facts)
    return store.prepare(
        occurred_at=datetime.now(UTC), kind=EventKind.TRANSFER, facts=facts, ids=ids, updates=("pair_payments",)
    )


def test_a_counter_with_undo_on_block_has_an_undo_and_one_without_none() -> None:
    assert _plan(PAIR.format(value="true", windows="all")).undo
    assert not _plan(PAIR.format(value="false", windows="all")).undo


@pytest.mark.parametrize(
    ("value", "windows", "problem"),
    [
        ("yes", "all", "counters.yaml:7: counter 'pair_payments': undo_on_block must be true or false"),
        ("true", "30d", "counters.yaml:7: counter 'pair_payments': undo_on_block needs windows: [all]"),
    ],
)
def test_undo_on_block_is_checked(value: str, windows: str, problem: str) -> None:
    with pytest.raises(SourceError) as raised:
        parse_counters(PAIR.format(value=value, windows=windows), "counters.yaml")
    assert problem in str(raised.value)
