"""The backtest's counter replay gives every event exactly what the online store on Redis gave it.

The shipped counter file, every kind of event, shared people, accounts, devices and outlets,
late events, blocked events whose active counts are taken back: each event goes through the
real CounterStore on a real redis-server, and through its log entry (what the history keeps:
facts, identifier hashes) into `CounterReplay`. Every value must agree.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis

from service.backtest.events import Event, Events
from service.backtest.replay import CounterReplay
from service.domain import AccountClass, CardOpening, Carrier, Decision, Outcome, ScreenRequest
from service.pipeline.facts import facts, identifiers
from service.redis.keys import KeyHasher
from service.riskdata.counters.model import counters_to_update
from service.riskdata.counters.store import CounterStore
from service.riskdata.records import entry_document, history_ids, log_entry, replay_facts, replay_ids
from service.rules.directory import load_directory
from tests.integration.counters import events as ev
from tests.integration.counters.conftest import REPO, SECRET

pytestmark = pytest.mark.integration

IDS = ["110105199003071234", "310104198805124321", "44030519950101555X", "320102197001011111"]
ACCOUNTS = [f"62170000000000{i:05d}" for i in range(6)]
DEVICES = ["dev-a", "dev-b", ""]
BANKS = ["BANK_A", "BANK_B", "BANK_C"]


def _request(rng: random.Random, at: datetime) -> ScreenRequest:
    choice = rng.random()
    person = rng.choice(IDS)
    if choice < 0.2:
        opening = ev.opening(
            at,
            person,
            rng.choice(BANKS),
            phone=rng.choice(["13812345678", "13900001111", ""]),
            device=rng.choice(DEVICES),
            companion=rng.choice([None, IDS[0]]),
            account_class=rng.choice(list(AccountClass)),
            clerk=rng.choice(["C1", "C2"]),
        )
        assert isinstance(opening.event, CardOpening)
        limit = rng.choice([0, 0, 5_000_00, 20_000_00])
        return dataclasses.replace(opening, event=dataclasses.replace(opening.event, requested_daily_limit_fen=limit))
    if choice < 0.35:
        return ev.sim_sale(at, person, rng.choice(list(Carrier)), rng.randint(1, 3), device=rng.choice(DEVICES))
    if choice < 0.42:
        if rng.random() < 0.5:
            return ev.sim_closure(at, person, "13812345678")
        return ev.account_closure(at, person, rng.choice(ACCOUNTS), rng.choice(BANKS))
    payer, payee = rng.sample(ACCOUNTS, 2)
    return ev.transfer(
        at, payer, payee, rng.choice([100, 5_000_00, 49_999_00, 200_000_00]), person, rng.choice(DEVICES)
    )


# Sums of a field that is often 0 (adding 0 is a read online), a two-field key, a read_as.
LIMITS = """
counters:
  - name: limits
    on: card_opening
    key: [person.id_number, outlet.institution_id]
    aggregate: sum(card_opening.requested_daily_limit_fen)
    windows: [1h, 24h, all]
  - name: device_people
    on: [card_opening, sim_sale]
    key:
      card_opening: card_opening.device_id
      sim_sale: sim_sale.device_id
    aggregate: distinct(person.id_number)
    windows: [30m, 24h]
    read_as:
      - name: device_people_again
        key:
          card_opening: card_opening.device_id
"""


RULES = """
revision: t
rules:
  - id: T_limits
    on: [card_opening]
    when: limits_24h > 1000000 or device_people_24h >= 2
    outcome: warn
    reason: {zh: 测试, en: test}
"""


@pytest.mark.parametrize(("seed", "counters"), [(1, None), (2, None), (3, LIMITS)])
async def test_the_replay_gives_each_event_the_values_redis_gave_it(
    client: Redis, tmp_path: Path, seed: int, counters: str | None
) -> None:
    if counters is None:
        directory = load_directory(REPO / "rules")
    else:
        (tmp_path / "counters.yaml").write_text(counters)
        (tmp_path / "t.rules.yaml").write_text(RULES)
        directory = load_directory(tmp_path)
    spec, where = directory.counter_spec, directory.filters
    hasher = KeyHasher(SECRET)
    store = CounterStore(client, spec, hasher)
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)
    online: list[dict[str, int]] = []
    history: list[Event] = []
    blocked: list[bool] = []
    moment = start
    for i in range(300):
        moment += timedelta(seconds=rng.choice([1, 20, 300, 1800]))
        late = timedelta(seconds=rng.choice([0, 0, 0, 90, 4000]))
        request = _request(rng, moment - late)
        request_facts, ids = facts(request), identifiers(request)
        plan = store.prepare(
            occurred_at=request.occurred_at,
            kind=request.kind,
            facts=request_facts,
            ids=ids,
            updates=counters_to_update(spec, request.kind, request_facts, where),
        )
        online.append({k: int(v) for k, v in (await store.run(plan)).items()})
        block = rng.random() < 0.2
        blocked.append(block)
        if block:
            await store.retract(store.prepare_retract(plan, token=f"t{i}"))
        # What the decision log keeps of it, read back as a backtest reads it.
        decision = Decision("r", f"d{i}", Outcome.ALLOW, (), "v", False, moment, timedelta(0), kind=request.kind)
        fields = log_entry(
            request,
            decision,
            subject_hash="S",
            counters={},
            list_hits={},
            facts=request_facts,
            id_hashes=history_ids(ids, request_facts, hasher.identifier),
        )
        document = entry_document(f"{i}-0", fields)
        history.append(
            Event(
                int(request.occurred_at.timestamp()),
                request.kind,
                replay_facts(request.kind, document["facts"]),
                replay_ids(request.kind, document["ids"]),
            )
        )
    replayed = CounterReplay(spec, where, Events.of(history)).run(np.array(blocked))
    values = [replayed.values_of(i) for i in range(len(history))]
    mismatches = [(i, online[i], values[i]) for i in range(len(online)) if online[i] != values[i]]
    assert not mismatches, mismatches[:3]
    assert sum(1 for values in online if any(values.values())) > 100  # not vacuous
