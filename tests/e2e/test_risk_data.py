"""End to end with risk data: counters in evidence, retries, outages, privacy, Redis Cluster.

The server runs as a real process against a redis-server these tests start
(and stop, for the outage), on loopback.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.redis.embedded import EmbeddedRedis, RedisOptions, free_port
from tests import samples
from tests.e2e.conftest import RunningServer, external_server
from tests.redis_dump import dump_everything

pytestmark = pytest.mark.e2e


def _external_server(tmp: Path, redis_url: str, **env: str) -> RunningServer:
    # A generous budget: these tests are about what is counted, not about a slow, shared CI machine.
    return external_server(tmp, redis_url, budget_ms=250, credentials=None, host="127.0.0.1", **env)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", RedisOptions(persistent=False, port=free_port()))
    server.start()
    yield server
    server.stop()


def _opening(id_number: str, bank: str, request_id: str | None = None) -> pb.ScreenRequest:
    request = samples.card_opening(request_id or f"open-{uuid.uuid4()}")
    request.outlet.institution_id = bank
    request.card_opening.applicant.id_number = id_number
    return request


def _evidence(decision: pb.Decision, rule_prefix: str) -> dict[str, str]:
    for reason in decision.reasons:
        if reason.rule_id.startswith(rule_prefix):
            return {e.name: e.value for e in reason.evidence}
    raise AssertionError(f"no {rule_prefix} reason in {[r.rule_id for r in decision.reasons]}")


def test_third_bank_in_30_days_shows_the_count_and_fires(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    server = _external_server(tmp_path, own_redis.url)
    try:
        id_number = samples.resident_id(birth=date(1995, 5, 5), sequence=321)
        with server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            first = stub.Screen(_opening(id_number, "BANK_A"), timeout=5)
            second = stub.Screen(_opening(id_number, "BANK_B"), timeout=5)
            third_request = _opening(id_number, "BANK_C")
            third = stub.Screen(third_request, timeout=5)
            again = stub.Screen(third_request, timeout=5)
            fourth = stub.Screen(_opening(id_number, "BANK_D"), timeout=5)
        assert not any(r.rule_id.startswith("K05") for r in (*first.reasons, *second.reasons))
        assert third.outcome >= pb.OUTCOME_WARN
        assert _evidence(third, "K05")["banks_30d"] == "3"
        assert "3" in next(r.message_zh for r in third.reasons if r.rule_id.startswith("K05"))
        # The retry is the same decision, replayed, and counted nothing: the next bank is the 4th.
        assert again.decision_id == third.decision_id
        assert again.replayed
        assert _evidence(fourth, "K05")["banks_30d"] == "4"
    finally:
        assert server.terminate() == 0


def test_concurrent_retries_count_once(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    server = _external_server(tmp_path, own_redis.url)
    try:
        id_number = samples.resident_id(birth=date(1988, 8, 8), sequence=777)
        burst = _opening(id_number, "BANK_A", f"burst-{uuid.uuid4()}")
        with server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            with ThreadPoolExecutor(max_workers=16) as pool:
                answers = list(pool.map(lambda _: stub.Screen(burst, timeout=10), range(32)))
            assert len({a.decision_id for a in answers}) == 1
            assert sum(not a.replayed for a in answers) == 1
            # Counted once: a second bank is the 2nd, not the 33rd.
            follow = stub.Screen(_opening(id_number, "BANK_B"), timeout=5)
        reads = {e.name: e.value for r in follow.reasons for e in r.evidence}
        if "banks_30d" in reads:
            assert reads["banks_30d"] == "2"
        client = redis.Redis.from_url(own_redis.url)
        entries = client.xlen("rg:log:decisions")
        client.close()
        assert entries == 2  # one logged decision for the burst, one for the follow-up
    finally:
        assert server.terminate() == 0


def test_redis_outage_degrades_answers_within_the_deadline_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    outage_redis = EmbeddedRedis(redis_dir, RedisOptions(persistent=False, port=port))
    outage_redis.start()
    server = _external_server(tmp_path, outage_redis.url)
    stop = threading.Event()
    results: list[tuple[float, pb.Decision | None, str]] = []
    lock = threading.Lock()

    def load(channel: grpc.Channel) -> None:
        stub = pb_grpc.ScreeningStub(channel)
        while not stop.is_set():
            started = time.monotonic()
            try:
                decision: pb.Decision | None = stub.Screen(samples.transfer(f"out-{uuid.uuid4()}"), timeout=0.5)
                code = "OK"
            except grpc.RpcError as error:
                decision, code = None, error.code().name
            with lock:
                results.append((time.monotonic() - started, decision, code))

    def redis_health(channel: grpc.Channel) -> int:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="redis"), timeout=2)
        return int(reply.status)

    try:
        with server.channel() as channel:
            workers = [threading.Thread(target=load, args=(channel,)) for _ in range(4)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)
            outage_redis.kill()
            outage_started = len(results)
            time.sleep(2.5)
            assert redis_health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            during = results[outage_started:]
            restarted = EmbeddedRedis(redis_dir, RedisOptions(persistent=False, port=port))
            restarted.start()
            try:
                deadline = time.monotonic() + 15
                while redis_health(channel) != health_pb2.HealthCheckResponse.SERVING:
                    assert time.monotonic() < deadline, "redis health did not recover"
                    time.sleep(0.2)
                recovered_from = len(results)
                time.sleep(1.5)
                stop.set()
                for worker in workers:
                    worker.join(10)
                after = results[recovered_from:]
            finally:
                restarted.stop()
        assert during, "no request was made during the outage"
        assert all(code == "OK" for _, _, code in during), {code for _, _, code in during}
        assert all(elapsed < 0.5 for elapsed, _, _ in during)
        degraded = [d for _, d, _ in during if d is not None and d.degraded]
        assert len(degraded) >= len(during) // 2
        assert all(d.outcome == pb.OUTCOME_WARN for d in degraded)
        assert all(any(r.rule_id == "RISK_DATA_UNAVAILABLE" for r in d.reasons) for d in degraded)
        assert after and not any(d is not None and d.degraded for _, d, _ in after[-5:])
        assert server.process.poll() is None, "the server must not crash"
    finally:
        stop.set()
        assert server.terminate() == 0


def test_fail_closed_policy_blocks_when_redis_is_down(tmp_path: Path) -> None:
    dead_port = free_port()  # nothing listens there
    server = _external_server(tmp_path, f"redis://127.0.0.1:{dead_port}/0", RISKGATE_FAIL_POLICY="block")
    try:
        with server.channel() as channel:
            decision = pb_grpc.ScreeningStub(channel).Screen(samples.transfer(f"fc-{uuid.uuid4()}"), timeout=2)
        assert decision.degraded
        assert decision.outcome == pb.OUTCOME_BLOCK
    finally:
        assert server.terminate() == 0


def test_no_clear_identifier_in_redis_after_screening(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    server = _external_server(tmp_path, own_redis.url)
    requests = [kind(f"priv-{name}-{uuid.uuid4()}") for name, kind in samples.ALL_KINDS.items()]
    try:
        with server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            for request in requests:
                stub.Screen(request, timeout=5)
    finally:
        assert server.terminate() == 0
    blob = asyncio.run(_dump(own_redis.url))
    assert blob, "the screenings stored nothing"
    clear = {
        samples.person().id_number,
        samples.person().phone,
        "6222020200112233445",
        "6217000010002000300",
        "PHONE-7",
    }
    leaked = [value for value in clear if value.encode() in blob]
    assert not leaked, leaked


async def _dump(url: str) -> bytes:
    client = aioredis.Redis.from_url(url)
    try:
        return await dump_everything(client)
    finally:
        await client.aclose()


def test_screening_against_a_redis_cluster(redis_cluster_url: str, tmp_path: Path) -> None:
    server = _external_server(tmp_path, redis_cluster_url, RISKGATE_REDIS_CLUSTER="true")
    try:
        id_number = samples.resident_id(birth=date(1999, 9, 9), sequence=99)
        with server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            decisions = [stub.Screen(_opening(id_number, bank), timeout=5) for bank in ("B1", "B2", "B3")]
            transfer = stub.Screen(samples.transfer(f"cl-{uuid.uuid4()}"), timeout=5)
        assert not any(d.degraded for d in (*decisions, transfer))
        assert _evidence(decisions[2], "K05")["banks_30d"] == "3"
    finally:
        assert server.terminate() == 0


def test_a_blocked_opening_does_not_count_as_an_account_held(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    server = _external_server(tmp_path, own_redis.url)
    try:
        id_number = samples.resident_id(birth=date(1980, 1, 2), sequence=404)
        with server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            first = stub.Screen(_opening(id_number, "BANK_A"), timeout=5)
            second = stub.Screen(_opening(id_number, "BANK_A"), timeout=5)
            closure = samples.closure(f"close-{uuid.uuid4()}")
            closure.closure.holder.id_number = id_number
            stub.Screen(closure, timeout=5)
            after_closing = stub.Screen(_opening(id_number, "BANK_A"), timeout=5)
        assert first.outcome != pb.OUTCOME_BLOCK
        assert second.outcome == pb.OUTCOME_BLOCK
        assert _evidence(second, "K04")["class1_accounts_all"] == "2"
        # The blocked second opening was undone: after closing the one real account, none is held.
        assert not any(r.rule_id.startswith("K04") for r in after_closing.reasons)
    finally:
        assert server.terminate() == 0


def test_warm_up_before_serving_writes_nothing_to_redis(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    server = _external_server(tmp_path, own_redis.url)
    try:
        log = server.log()
        assert 0 <= log.index('"msg": "warmed up"') < log.index('"msg": "serving"')
        client = redis.Redis.from_url(own_redis.url)
        assert client.dbsize() == 0  # nothing counted, claimed or logged: only scripts were loaded
        client.close()
    finally:
        assert server.terminate() == 0
