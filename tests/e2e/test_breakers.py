"""A breaker for a rule gone wrong, end to end: two `riskgate serve` replicas on one Redis, a rule
whose threshold was typed far too low (it blocks every transfer), transfers under load over gRPC.

The rule is demoted to shadow within its window once it blocked min_events transfers; the outcome
stream shows when; both replicas demote it; the metric, the health detail, the audit trail and the
decision log show it; RearmBreaker enforces it again; tripped again, a changed rule file re-arms it.
"""

from __future__ import annotations

import concurrent.futures
import queue
import secrets
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._gen.riskgate.v1 import admin_pb2, admin_pb2_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from tests import samples
from tests.conftest import REPO
from tests.e2e.conftest import RunningServer, external_server

pytestmark = pytest.mark.e2e

RULE = "T99_threshold_typo"
MIN_EVENTS = 50
STREAMS = 8  # concurrent ScreenStreams: at most this many screenings in flight
PER_STREAM = 20
BOUND = 30.0  # every wait of the test ends within this many seconds

GONE_WRONG = f"""\
revision: typo
appeal:
  zh: 如有异议，可携本人身份证件向本行或当地公安机关申诉。
  en: You may appeal with your ID at this bank or the local police.
rules:
  - id: {RULE}
    on: [transfer]
    when: transfer.amount_fen >= {{threshold}}     # meant 5_000_000 (¥50,000)
    outcome: block
    basis: the rule author's typo
    reason:
      zh: 大额转账暂不办理
      en: A large transfer is not made now
    breaker: {{{{max_block_share: 50%, window: 1m, min_events: {MIN_EVENTS}}}}}
"""


@dataclass
class Replicas:
    a: RunningServer
    b: RunningServer
    rules: Path
    redis_url: str

    def write_rule(self, threshold: int, share: str = "50%") -> None:
        path = self.rules / "gone_wrong.rules.yaml"
        staged = path.with_suffix(".tmp")
        staged.write_text(GONE_WRONG.format(threshold=threshold).replace("50%", share), encoding="utf-8")
        staged.rename(path)


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[Replicas]:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "gone_wrong.rules.yaml").write_text(GONE_WRONG.format(threshold=5), encoding="utf-8")
    secret = secrets.token_hex(32)
    started: list[RunningServer] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "hash-secret").write_text(secret)  # both replicas key Redis alike
            started.append(
                external_server(
                    tmp_path / name,
                    redis_url,
                    budget_ms=1000,
                    RISKGATE_RULES_DIR=str(rules),
                    RISKGATE_RULES_POLL_SECONDS="0.2",
                )
            )
        yield Replicas(started[0], started[1], rules, redis_url)
    finally:
        for server in started:
            assert server.terminate() == 0, server.log()


def transfer() -> pb.ScreenRequest:
    # Every screening is the same ordinary ¥1,000 transfer between the same two accounts, under a
    # new request id: only the typo'd rule blocks it.
    return samples.transfer(f"typo-{uuid.uuid4()}")


def t99(decision: pb.Decision) -> pb.Reason:
    (reason,) = [r for r in decision.reasons if r.rule_id == RULE]
    return reason


def enforced(decision: pb.Decision) -> bool:
    return decision.outcome == pb.OUTCOME_BLOCK and not t99(decision).shadow


def demoted(decision: pb.Decision) -> bool:
    return t99(decision).shadow and decision.outcome != pb.OUTCOME_BLOCK


def screen_under_load(server: RunningServer, streams: int = STREAMS, each: int = PER_STREAM) -> list[pb.Decision]:
    """`streams` ScreenStreams at once, `each` transfers on each: the answers in the order they came."""
    answers: queue.Queue[tuple[float, pb.Decision]] = queue.Queue()

    def stream() -> None:
        # As a counter terminal does: the next transfer once the last one is answered, so that at
        # most `streams` screenings are in flight (a stream sending ahead is screened in batches).
        answered: queue.Queue[None] = queue.Queue()

        def requests() -> Iterator[pb.ScreenRequest]:
            for _ in range(each):
                yield transfer()
                answered.get(timeout=BOUND)

        with server.channel() as channel:
            replies = pb_grpc.ScreeningStub(channel).ScreenStream(requests(), timeout=BOUND)
            for decision in replies:
                answers.put((time.monotonic(), decision))
                answered.put(None)

    with concurrent.futures.ThreadPoolExecutor(max_workers=streams) as pool:
        for future in [pool.submit(stream) for _ in range(streams)]:
            future.result(timeout=BOUND)
    received = sorted(answers.get_nowait() for _ in range(answers.qsize()))
    assert len(received) == streams * each
    assert all(not d.HasField("error") for _, d in received)
    return [d for _, d in received]


def screen(server: RunningServer) -> pb.Decision:
    with server.channel() as channel:
        return pb_grpc.ScreeningStub(channel).Screen(transfer(), timeout=5)


def metrics(server: RunningServer) -> str:
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=5) as reply:
        return cast(str, reply.read().decode())


def breakers_health(server: RunningServer) -> int:
    with server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="breakers"), timeout=5)
    return int(reply.status)


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"not within {BOUND:g} s: {what}"
        time.sleep(0.1)


def audit(redis_url: str, action: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = cast(list[Any], client.xrange("rg:audit"))
    finally:
        client.close()
    return [fields for _, fields in entries if fields["action"] == action]


def logged(redis_url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = cast(list[Any], client.xrange("rg:log:decisions"))
    finally:
        client.close()
    return [fields for _, fields in entries]


NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
TRIPPED = f'riskgate_rule_breaker_tripped{{rule="{RULE}"}} '


@pytest.mark.timeout(180)
def test_a_rule_blocking_every_transfer_is_demoted_within_its_window_and_rearmed(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    assert breakers_health(a) == SERVING and TRIPPED + "0.0" in metrics(a)
    started = time.monotonic()
    answers = screen_under_load(a)
    # The outcome stream: the typo'd rule blocks every transfer until the window holds min_events
    # of them (plus what was in flight when it tripped), then it is shadow and the transfers go.
    blocked = [enforced(d) for d in answers]
    assert all(enforced(d) or demoted(d) for d in answers)
    count = sum(blocked)  # the first min_events trip it; screenings in flight then still enforce
    assert MIN_EVENTS <= count <= MIN_EVENTS + STREAMS
    assert all(blocked[: MIN_EVENTS - STREAMS]) and not any(blocked[count + STREAMS :])
    assert blocked.index(False) >= MIN_EVENTS - STREAMS
    assert time.monotonic() - started < 60  # within its window (1m)
    # Metrics, health, the log line, the audit trail: on the replica that tripped it.
    page = metrics(a)
    assert TRIPPED + "1.0" in page and f'riskgate_rule_breaker_trips_total{{rule="{RULE}"}} 1.0' in page
    wait_for(lambda: breakers_health(a) == NOT_SERVING, "health 'breakers' NOT_SERVING on a")
    assert f"rule {RULE} demoted to shadow by its breaker" in a.log()
    (trip,) = audit(replicas.redis_url, "rules.breaker.trip")
    assert trip["principal"] == "riskgate" and f"definition={RULE}@" in trip["detail"]
    assert f"blocks={MIN_EVENTS}; events={MIN_EVENTS}" in trip["detail"]
    # The other replica learns within a second, without having screened anything.
    wait_for(lambda: breakers_health(b) == NOT_SERVING, "health 'breakers' NOT_SERVING on b")
    assert demoted(screen(b)) and TRIPPED + "1.0" in metrics(b)
    assert f'riskgate_rule_breaker_trips_total{{rule="{RULE}"}}' not in metrics(b)  # a tripped it
    # The decision log says which rules were demoted at each decision.
    entries = [e for e in logged(replicas.redis_url) if e["kind"] == "transfer"]
    assert {e["demoted"] for e in entries} == {"", RULE}
    assert all(e["rules"] == f"~{RULE}" for e in entries if e["demoted"])
    with a.channel() as channel:
        stub = admin_pb2_grpc.RulesStub(channel)
        listed = {br.rule_id: br for br in stub.ListBreakers(admin_pb2.ListBreakersRequest(), timeout=5).breakers}
        assert listed[RULE].demoted and listed[RULE].events_at_trip == listed[RULE].blocks_at_trip == MIN_EVENTS
        assert (listed[RULE].max_block_share, listed[RULE].window, listed[RULE].min_events) == ("50%", "1m", 50)
        assert not listed["T15_fraud_payee"].demoted and listed["T15_fraud_payee"].max_block_share == "20%"
        # Re-armed by the RPC: enforced again on both replicas.
        rearmed = stub.RearmBreaker(admin_pb2.RearmBreakerRequest(rule_id=RULE, note="ticket 42"), timeout=5)
        assert rearmed.was_demoted and not rearmed.breaker.demoted and rearmed.breaker.window_events == 0
        with pytest.raises(grpc.RpcError) as unknown:
            stub.RearmBreaker(admin_pb2.RearmBreakerRequest(rule_id="T99_threshold_typ"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"did you mean '{RULE}'?" in (unknown.value.details() or "")
    assert enforced(screen(a))
    wait_for(lambda: breakers_health(b) == SERVING, "health 'breakers' SERVING on b")
    assert enforced(screen(b))
    (rearm, _) = audit(replicas.redis_url, "rules.breaker.rearm")
    assert rearm["result"] == "ok" and rearm["principal"] == "local" and rearm["note"] == "ticket 42"
    assert f'riskgate_rule_breaker_rearms_total{{rule="{RULE}"}} 1.0' in metrics(a)
    # It trips again (its window started empty at the re-arm), and fixing the rule file re-arms it.
    again = screen_under_load(a)
    assert not demoted(again[0]) and demoted(again[-1])
    assert len(audit(replicas.redis_url, "rules.breaker.trip")) == 2
    revision = again[-1].ruleset_revision
    replicas.write_rule(threshold=6)  # still wrong, but a different rule
    wait_for(lambda: screen(a).ruleset_revision != revision, "the changed rule file served on a")
    assert enforced(screen(a))
    wait_for(lambda: screen(b).ruleset_revision != revision, "the changed rule file served on b")
    assert enforced(screen(b))
    wait_for(lambda: breakers_health(a) == SERVING, "health 'breakers' SERVING on a")
    assert TRIPPED + "0.0" in metrics(a)
    # A broken breaker is a broken rule file: refused with file and line, the last good rules serve.
    serving = screen(a).ruleset_revision
    replicas.write_rule(threshold=6, share="0%")
    with a.channel() as channel:
        reloaded = admin_pb2_grpc.RulesStub(channel).ReloadRules(admin_pb2.ReloadRulesRequest(), timeout=10)
    assert not reloaded.changed and reloaded.active_revision == serving
    assert [e.split("/")[-1] for e in reloaded.errors] == [
        "gone_wrong.rules.yaml:14: breaker.max_block_share must be a percentage above 0% and at most 100%, "
        "with at most 4 decimals (e.g. 2% or 0.5%), got '0%'"
    ]
    assert enforced(screen(a)) and screen(a).ruleset_revision == serving
