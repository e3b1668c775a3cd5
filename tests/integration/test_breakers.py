"""Rule breakers against a real redis-server: two "replicas" (two risk-data stores on one Redis)
count a rule that blocks every transfer, one trips it, both demote it; re-arming, a changed rule,
the sliding window, Redis trouble, and Redis Cluster.

Wall time is an injected clock the tests move (a window passes without sleeping).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from service.domain import Decision, EventKind, Outcome, ScreenRequest
from service.pipeline import validate
from service.pipeline.breakers import Breaker, BreakerWatch
from service.pipeline.screening import Screener
from service.redis.connection import make_client
from service.redis.keys import KeyHasher
from service.riskdata.breakers import COUNT, STATE_TTL_MS, RuleBreakers, Trip
from service.riskdata.records import entry_document
from service.riskdata.store import BoundRiskData, RiskDataConfig, RiskDataStore
from service.rules.directory import load_directory
from service.rules.reload import ActiveRules, RulesManager
from service.settings import Settings
from service.tools.rules import add_rules_commands
from tests import samples
from tests.conftest import REPO

pytestmark = pytest.mark.integration

SECRET = bytes.fromhex("6a" * 32)
BOUND = 30.0
RULE = "T99_every_transfer"
MIN_EVENTS = 20

GONE_WRONG = f"""\
revision: gone-wrong
appeal:
  zh: 如有异议，可携本人身份证件向本行申诉。
  en: You may appeal with your ID at this bank.
rules:
  - id: {RULE}
    on: [transfer]
    when: transfer.amount_fen >= {{threshold}}
    outcome: block
    reason:
      zh: 转账暂不办理
      en: The transfer is not made now
    breaker: {{{{max_block_share: 50%, window: 1m, min_events: {MIN_EVENTS}}}}}
"""


def rules_dir(path: Path, threshold: int = 1) -> Path:
    """The shipped counters, lists and rates, and one rule file: a threshold typed far too low."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("counters.yaml", "lists.yaml", "rates.yaml"):
        shutil.copy(REPO / "rules" / name, path / name)
    (path / "gone_wrong.rules.yaml").write_text(GONE_WRONG.format(threshold=threshold), encoding="utf-8")
    return path


class Clock:
    def __init__(self) -> None:
        self.wall = datetime.now(UTC)

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return 1000.0


@dataclass
class Replica:
    """One serving process's risk data over the shared Redis, and the steps of a screening."""

    store: RiskDataStore
    bound: BoundRiskData
    active: ActiveRules
    clock: Clock
    trips: list[Trip] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    @property
    def rules(self) -> ActiveRules:
        return self.active

    @property
    def risk_data(self) -> BoundRiskData:
        return self.bound

    def transfer(self, amount_fen: int = 1_000_00) -> ScreenRequest:
        message = samples.transfer(f"brk-{uuid.uuid4()}", amount_fen=amount_fen)
        message.occurred_at.CopyFrom(samples.timestamp(self.clock.now()))
        return validate.screen_request(message, now=self.clock.now(), bounds=validate.TimeBounds())

    async def screen(self, amount_fen: int = 1_000_00) -> Decision:
        @contextmanager
        def session() -> Iterator[Any]:
            yield self

        screener = Screener(session=session, clock=self.clock, new_id=lambda: f"dec-{next(self._ids)}")
        async with asyncio.timeout(BOUND):
            return await screener.screen(self.transfer(amount_fen))

    @property
    def watch(self) -> BreakerWatch:
        (watch,) = self.active.breakers
        return watch


def shadow_of(decision: Decision) -> bool:
    (reason,) = [r for r in decision.reasons if r.rule_id == RULE]
    return reason.shadow


MakeReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def make_replica(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeReplica]:
    managers: list[RulesManager] = []
    made: list[Replica] = []

    async def make(directory: Path | None = None, clock: Clock | None = None) -> Replica:
        manager = RulesManager(directory or rules_dir(tmp_path / "rules"))
        managers.append(manager)
        active = manager.load()
        clock = clock or Clock()
        store = RiskDataStore(
            client=make_client(redis_url, cluster=False),
            hasher=KeyHasher(SECRET),
            clock=clock,
            config=RiskDataConfig(budget_seconds=2.0),
            max_future_skew_seconds=300,
        )
        bound = store.for_rules(
            key=active.content_hash,
            counter_spec=active.counter_spec,
            where=active.where,
            lists=active.lists,
            breakers=active.breakers,
        )
        replica = Replica(store, bound, active, clock)
        store.breakers.on_trip = lambda watch, trip: replica.trips.append(trip)
        await bound.warm_up()
        made.append(replica)
        return replica

    yield make
    for replica in made:
        replica.store.log.release()
        await replica.store.client.aclose()
    for manager in managers:
        manager.close()


async def test_a_rule_blocking_every_transfer_trips_at_min_events_on_every_replica(
    make_replica: MakeReplica, redis_url: str
) -> None:
    a = await make_replica()
    b = await make_replica(clock=a.clock)
    first = [await a.screen() for _ in range(MIN_EVENTS)]
    # Blocked, enforced, until the window holds min_events decisions: the last of them trips it
    # in its record (its own answer was already given).
    assert all(d.outcome is Outcome.BLOCK and not shadow_of(d) for d in first)
    assert [(t.rule_id, t.events, t.blocks) for t in a.trips] == [(RULE, MIN_EVENTS, MIN_EVENTS)]
    demoted = await a.screen()
    assert demoted.outcome is Outcome.ALLOW and shadow_of(demoted)
    # The other replica decides its next transfer with what it knew (enforced), learns in its
    # record, and demotes from then on; it does not trip the rule again.
    stale = await b.screen()
    assert stale.outcome is Outcome.BLOCK and not shadow_of(stale)
    assert b.store.breakers.demoted_ids(b.active.breakers) == {RULE}
    assert shadow_of(await b.screen()) and b.trips == []
    # A third replica without traffic learns it from the background refresh.
    c = await make_replica(clock=a.clock)
    assert await c.store.breakers.refresh(c.active.breakers)
    trip = c.store.breakers.trip_of(c.watch.identity)
    assert trip is not None and (trip.events, trip.blocks) == (MIN_EVENTS, MIN_EVENTS)
    assert trip.tripped_at_ms == int(a.clock.now().timestamp() * 1000)
    # The log says which rules were demoted at each decision, so a replay demotes them too.
    entries: Any = await a.store.client.xrange(a.store.log_key)
    documents = {d["decision_id"]: d for d in (entry_document(i.decode(), f) for i, f in entries)}
    assert documents[demoted.decision_id]["demoted"] == [RULE]
    assert documents[demoted.decision_id]["rules"] == [f"~{RULE}"]
    assert documents[first[-1].decision_id]["demoted"] == []
    # Keys: one hash tag per rule, every key with a TTL; nothing but the rule id and hashes in them.
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys: list[str] = sorted(sync.keys("rg:brk:*"))  # type: ignore[arg-type]
        state_key = f"rg:brk:{{{a.watch.identity}}}"
        assert keys[0] == state_key and all(k.startswith(state_key) for k in keys)
        assert 0 < sync.pttl(state_key) <= STATE_TTL_MS
        assert all(0 < sync.pttl(k) <= 21 * a.watch.breaker.bucket_ms for k in keys[1:])
    finally:
        sync.close()


async def test_below_the_share_or_under_min_events_nothing_trips(make_replica: MakeReplica, tmp_path: Path) -> None:
    # Blocks ¥1,000 and more: one transfer in two blocked is 50 %, not above it.
    a = await make_replica(rules_dir(tmp_path / "half", threshold=100_000))
    for _ in range(3 * MIN_EVENTS):
        assert (await a.screen(10_00)).outcome is Outcome.ALLOW
        assert (await a.screen(1_000_00)).outcome is Outcome.BLOCK
    assert a.trips == []
    # Every one blocked, but fewer than min_events in the window: one window later the old ones
    # are gone and the count starts again.
    b = await make_replica(rules_dir(tmp_path / "all", threshold=1))
    for _ in range(MIN_EVENTS - 1):
        await b.screen()
    b.clock.wall += timedelta(minutes=1)
    for _ in range(MIN_EVENTS - 1):
        assert not shadow_of(await b.screen())
    assert b.trips == []
    await b.screen()  # the window holds 20 now
    assert len(b.trips) == 1


async def test_rearming_enforces_again_everywhere_with_an_empty_window(make_replica: MakeReplica) -> None:
    a = await make_replica()
    b = await make_replica(clock=a.clock)
    for _ in range(MIN_EVENTS):
        await a.screen()
    await b.screen()
    assert b.store.breakers.demoted_ids(b.active.breakers) == {RULE}
    assert await a.store.breakers.rearm(a.watch, int(a.clock.now().timestamp() * 1000))
    assert not shadow_of(await a.screen())
    # b decides once more with what it knew, then learns of the re-arm from its record.
    assert shadow_of(await b.screen())
    assert not shadow_of(await b.screen())
    # The window started empty: three decisions were counted since, so 17 more trip it again.
    for _ in range(MIN_EVENTS - 4):
        await a.screen()
    assert len(a.trips) == 1
    await a.screen()
    assert len(a.trips) == 2
    assert await a.store.breakers.rearm(a.watch, 0)
    assert not await a.store.breakers.rearm(a.watch, 0)  # armed already: harmless


async def test_a_changed_rule_is_a_new_breaker(make_replica: MakeReplica, tmp_path: Path) -> None:
    a = await make_replica(rules_dir(tmp_path / "typo", threshold=5))
    for _ in range(MIN_EVENTS):
        await a.screen()
    assert shadow_of(await a.screen())
    fixed = await make_replica(rules_dir(tmp_path / "fixed", threshold=6), clock=a.clock)
    assert fixed.watch.rule_id == a.watch.rule_id and fixed.watch.identity != a.watch.identity
    assert not shadow_of(await fixed.screen())
    # The old definition stays demoted, as long as something still serves it.
    assert shadow_of(await a.screen())


async def test_redis_trouble_keeps_the_last_known_demoted_set(make_replica: MakeReplica) -> None:
    a = await make_replica()
    for _ in range(MIN_EVENTS):
        await a.screen()
    # Redis stops answering (the circuit opens): decisions are degraded, and the rule stays demoted.
    for _ in range(3):
        a.store.breaker.failure()
    degraded = await a.screen()
    assert degraded.degraded and shadow_of(degraded) and degraded.outcome is Outcome.WARN
    with socket.socket() as idle:
        idle.bind(("127.0.0.1", 0))
        idle.listen()  # accepts nothing: every command times out
        port = idle.getsockname()[1]
        dead = RuleBreakers(make_client(f"redis://127.0.0.1:{port}/0", cluster=False), KeyHasher(SECRET))
        watch = a.watch
        dead._demoted[watch.identity] = Trip(RULE, watch.identity, 1, MIN_EVENTS, MIN_EVENTS)
        assert not await dead.refresh((watch,), timeout=0.2)
        assert dead.demoted_ids((watch,)) == {RULE}
        await dead._client.aclose()


def _watch(rule_id: str, min_events: int = 3) -> BreakerWatch:
    breaker = Breaker(share_ppm=500_000, window_seconds=60, min_events=min_events)
    return BreakerWatch(rule_id, f"{rule_id}@{uuid.uuid4().hex[:12]}", frozenset({EventKind.TRANSFER}), breaker)


async def test_on_redis_cluster_each_call_stays_in_its_rules_slot(redis_cluster_url: str) -> None:
    client = make_client(redis_cluster_url, cluster=True)
    try:
        breakers = RuleBreakers(client, KeyHasher(SECRET))
        trips: list[str] = []
        breakers.on_trip = lambda watch, trip: trips.append(watch.rule_id)
        watches = tuple(_watch(f"R{i}") for i in range(6))  # keys spread over the nodes
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        for _ in range(3):
            pipe = client.pipeline(transaction=False)
            calls = breakers.queue(pipe, breakers.prepare(watches), frozenset({"R0", "R3"}), now_ms)
            assert calls is not None and calls.count == len(watches)
            async with asyncio.timeout(BOUND):
                replies = await pipe.execute(raise_on_error=False)
                await breakers.settle(calls, replies, 2.0)
        assert not [r for r in replies if isinstance(r, BaseException)]
        assert sorted(trips) == ["R0", "R3"]
        assert breakers.demoted_ids(watches) == {"R0", "R3"}
        states = await breakers.status(watches, now_ms)
        assert [(s.watch.rule_id, s.trip is not None, s.window_events) for s in states] == [
            ("R0", True, 3), ("R1", False, 3), ("R2", False, 3), ("R3", True, 3), ("R4", False, 3), ("R5", False, 3)
        ]  # fmt: skip
        assert await breakers.rearm(watches[0], now_ms)
        assert breakers.demoted_ids(watches) == {"R3"}
        assert await breakers.refresh(watches)
        assert breakers.demoted_ids(watches) == {"R3"}
    finally:
        await client.aclose()


async def test_a_restarted_redis_answering_noscript_is_counted_after_loading_the_script(redis_url: str) -> None:
    client = make_client(redis_url, cluster=False)
    try:
        breakers = RuleBreakers(client, KeyHasher(SECRET))
        watches = (_watch("N1", min_events=1),)
        await client.script_flush()
        pipe = client.pipeline(transaction=False)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        calls = breakers.queue(pipe, breakers.prepare(watches), frozenset({"N1"}), now_ms)
        assert calls is not None
        replies = await pipe.execute(raise_on_error=False)
        assert isinstance(replies[0], redis.exceptions.NoScriptError)
        await breakers.settle(calls, replies, 2.0)
        assert breakers.demoted_ids(watches) == {"N1"}  # one block of one decision: 100 % > 50 %
    finally:
        await client.aclose()


def test_the_command_line_lists_and_rearms_breakers(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = rules_dir(tmp_path / "rules")
    secret = tmp_path / "hash-secret"
    secret.write_text(SECRET.hex())
    for name, value in {"RISKGATE_REDIS_URL": redis_url, "RISKGATE_HASH_SECRET_FILE": str(secret)}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(os.environ)
    (watch,) = load_directory(directory).ruleset.breaker_watches
    sync = redis.Redis.from_url(redis_url)
    try:  # the rule blocked min_events transfers, as a replica's record round trips count them
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        key = f"rg:brk:{{{watch.identity}}}"
        for _ in range(MIN_EVENTS):
            sync.eval(COUNT, 1, key, now_ms, 1, watch.breaker.bucket_ms, MIN_EVENTS, watch.breaker.share_ppm)
    finally:
        sync.close()
    parser = argparse.ArgumentParser(prog="riskgate")
    add_rules_commands(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(["rules", *argv])
        code = args.handler(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = run("breakers", "--rules", str(directory))
    assert code == 0
    line, summary = out.splitlines()
    assert line.startswith(f"{RULE}: DEMOTED since ") and "+08:00: 20 of 20 blocked;" in line
    assert line.endswith("; max_block_share 50%, window 1m, min_events 20; 20 of 20 blocked in the window now (100%)")
    assert summary == "1 rules with breakers, 1 demoted"
    code, out, _ = run("breakers", "--rules", str(directory), "--json")
    (document,) = json.loads(out)
    assert document["demoted"] and document["definition"] == watch.identity and document["events_at_trip"] == 20
    code, _, err = run("rearm", "T99_every_transfr", "--rules", str(directory))
    assert code == 1 and f"did you mean '{RULE}'?" in err
    code, out, _ = run("rearm", RULE, "--rules", str(directory), "--note", "ticket  4711")
    assert code == 0 and out.startswith(f"re-armed: {RULE}: armed; ")
    code, out, _ = run("breakers", "--rules", str(directory))
    assert out.splitlines()[-1] == "1 rules with breakers, 0 demoted"
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ((_, entry),) = cast(list[Any], sync.xrange("rg:audit"))
    finally:
        sync.close()
    assert entry["action"] == "rules.breaker.rearm" and entry["principal"] == "local"
    assert entry["identity"].startswith("local:") and entry["note"] == "ticket 4711"
    assert entry["detail"] == f"rule={RULE}; definition={watch.identity}; was_demoted=yes"
    assert settings.redis_url == redis_url
