"""Bytes that are not a ScreenRequest: INVALID_ARGUMENT on Screen, an error Decision on ScreenStream
(which goes on), counted in riskgate_errors_total, and at most a throttled line in the log."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError

from service._gen.riskgate.v1 import screening_pb2 as pb
from tests import samples
from tests.e2e.conftest import RunningServer
from tests.faults.conftest import RestartableRedis, external_server, metric

pytestmark = pytest.mark.e2e


def _unparseable(rng: random.Random) -> Iterator[bytes]:
    """Random byte strings that protobuf refuses to parse as a ScreenRequest."""
    while True:
        data = rng.randbytes(rng.randint(1, 200))
        try:
            pb.ScreenRequest.FromString(data)
        except DecodeError:
            yield data


@pytest.fixture
def server(tmp_path: Path, restartable_redis: RestartableRedis) -> Iterator[RunningServer]:
    running = external_server(tmp_path, restartable_redis.url)
    yield running
    assert running.terminate() == 0, running.log()[-3000:]


@pytest.mark.timeout(60)
def test_unparseable_messages_get_invalid_argument_and_streams_go_on(server: RunningServer) -> None:
    garbage = _unparseable(random.Random(9))
    with server.channel() as channel:
        screen: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/riskgate.v1.Screening/Screen")
        codes = set()
        for _ in range(200):
            with pytest.raises(grpc.RpcError) as raised:
                screen(next(garbage), timeout=5)
            codes.add((raised.value.code(), raised.value.details()))
        assert codes == {
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "request: the message is not a valid riskgate.v1.ScreenRequest (protobuf parse error)",
            )
        }
        stream: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            "/riskgate.v1.Screening/ScreenStream"
        )
        good = samples.closure(f"after-garbage-{uuid.uuid4()}")
        messages = [next(garbage), good.SerializeToString(), next(garbage), b"\xff"]
        answers = [pb.Decision.FromString(raw) for raw in stream(iter(messages), timeout=10)]
    assert [a.error.code for a in answers] == ["INVALID_ARGUMENT", "", "INVALID_ARGUMENT", "INVALID_ARGUMENT"]
    assert answers[1].request_id == good.request_id and answers[1].decision_id
    errors = metric(server, 'riskgate_errors_total{code="INVALID_ARGUMENT",rpc="Screen"}')
    assert errors == 200
    assert metric(server, 'riskgate_errors_total{code="INVALID_ARGUMENT",rpc="ScreenStream"}') == 3
    lines = [line for line in server.log().splitlines() if "unparseable" in line]
    assert 1 <= len(lines) <= 3, lines
    assert "Traceback" not in server.log()
