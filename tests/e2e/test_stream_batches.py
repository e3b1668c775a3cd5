"""ScreenStream screens what a stream has sent as a batch: the decisions must be those of one
request at a time (unary calls), retries inside a batch included.

Real server processes, each against a redis-server of its own that the test starts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import cast

import grpc
import pytest
import redis

from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.redis.embedded import EmbeddedRedis, RedisOptions, free_port
from service.synth.stream import generate
from tests import samples
from tests.e2e.conftest import RunningServer, external_server

pytestmark = pytest.mark.e2e

EVENTS = 1500


def _redis(tmp: Path) -> EmbeddedRedis:
    server = EmbeddedRedis(tmp / "redis", RedisOptions(persistent=False, port=free_port()))
    server.start()
    return server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = _redis(tmp_path)
    yield server
    server.stop()


def _server(tmp: Path, redis_url: str) -> RunningServer:
    # Budget generous enough for a batch on a shared CI machine: these tests are about what is decided.
    return external_server(tmp, redis_url, budget_ms=2000, credentials=None, host="127.0.0.1")


def _canonical(decision: pb.Decision) -> dict[str, object]:
    return {
        "request_id": decision.request_id,
        "outcome": decision.outcome,
        "degraded": decision.degraded,
        "replayed": decision.replayed,
        "error": decision.error.code,
        "reasons": [
            (r.rule_id, r.outcome, r.message_en, r.shadow, [(e.name, e.value) for e in r.evidence])
            for r in decision.reasons
        ],
    }


def _logged_counters(redis_url: str) -> dict[str, object]:
    """request_id -> the counter values its decision-log entry holds."""
    client = redis.Redis.from_url(redis_url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange("rg:log:decisions"))
    finally:
        client.close()
    return {fields[b"request_id"].decode(): json.loads(fields[b"counters"]) for _, fields in entries}


def _unary(stub: pb_grpc.ScreeningStub, request: pb.ScreenRequest) -> pb.Decision:
    """Screen's answer, or its error status as ScreenStream answers it (an error Decision)."""
    try:
        answer: pb.Decision = stub.Screen(request, timeout=30)
    except grpc.RpcError as error:
        return pb.Decision(request_id=request.request_id, error=pb.RequestError(code=error.code().name))
    return answer


def _screen_both_ways(tmp_path: Path, requests: list[pb.ScreenRequest]) -> tuple[list[pb.Decision], ...]:
    """The same requests on two fresh stacks: one unary call at a time, and all on one stream;
    the answers and the logged counters of each."""
    results = []
    for way in ("unary", "stream"):
        tmp = tmp_path / way
        tmp.mkdir()
        store = _redis(tmp)
        try:
            server = _server(tmp, store.url)
            try:
                with server.channel() as channel:
                    stub = pb_grpc.ScreeningStub(channel)
                    if way == "unary":
                        answers = [_unary(stub, request) for request in requests]
                    else:
                        answers = list(stub.ScreenStream(iter(requests), timeout=300))
            finally:
                assert server.terminate() == 0, server.log()
            results.append((answers, _logged_counters(store.url)))
        finally:
            store.stop()
    (unary, unary_counters), (streamed, streamed_counters) = results
    assert [_canonical(d) for d in streamed] == [_canonical(d) for d in unary]
    assert streamed_counters == unary_counters
    return unary, streamed


def test_a_stream_decides_a_synth_stream_as_unary_calls_do(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    # A whole day: openings (what blocks) happen in branch hours, so a shorter window may hold none.
    labelled = generate(7, EVENTS, 1.0, now, population=1500, fraud_scale=30.0)
    requests = [request for request, _ in labelled]
    unary, _ = _screen_both_ways(tmp_path, requests)
    assert len(unary) == EVENTS
    assert not any(d.degraded for d in unary)
    assert sum(1 for d in unary if d.outcome == pb.OUTCOME_BLOCK) > 0
    assert len({r.rule_id for d in unary for r in d.reasons}) >= 10  # the velocity rules fire


def _opening(id_number: str, bank: str, request_id: str | None = None) -> pb.ScreenRequest:
    request = samples.card_opening(request_id or f"open-{uuid.uuid4()}")
    request.outlet.institution_id = bank
    request.card_opening.applicant.id_number = id_number
    return request


def test_retries_and_take_backs_inside_one_stream_batch_behave_as_one_at_a_time(tmp_path: Path) -> None:
    id_number = samples.resident_id(birth=date(1980, 1, 2), sequence=505)
    first = _opening(id_number, "BANK_A", "batch-first")
    other = samples.resident_id(birth=date(1980, 1, 2), sequence=506)
    reused = _opening(other, "BANK_A", "batch-first")  # another request under a used request_id
    requests = [
        first,
        first,  # a retry: the first attempt's decision, counted once
        _opening(id_number, "BANK_A", "batch-second"),  # the second account: BLOCKed, taken back
        first,
        _opening(id_number, "BANK_A", "batch-third"),  # sees one account held, not two
        reused,
        _opening(id_number, "BANK_A", "batch-third"),
    ]
    unary, streamed = _screen_both_ways(tmp_path, requests)
    one, retry, second, again, third, refused, third_again = streamed
    assert retry.replayed and retry.decision_id == one.decision_id
    assert again.replayed and again.decision_id == one.decision_id
    assert second.outcome == pb.OUTCOME_BLOCK and third.outcome == pb.OUTCOME_BLOCK
    evidence = {e.name: e.value for r in third.reasons if r.rule_id.startswith("K04") for e in r.evidence}
    assert evidence["class1_accounts_all"] == "2"
    assert refused.error.code == "ALREADY_EXISTS"
    assert third_again.replayed and third_again.decision_id == third.decision_id
    assert [d.replayed for d in unary] == [d.replayed for d in streamed]
