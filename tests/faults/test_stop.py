"""Stopping the real server: the decision-log backlog survives SIGTERM and SIGKILL, SIGTERM drains
before it stops, and 2,000 open streams end with a clear status within drain + grace + 2 s."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from tests import samples
from tests.e2e.conftest import RunningServer
from tests.faults.conftest import (
    NOT_SERVING,
    SERVING,
    RestartableRedis,
    external_server,
    logged_decision_ids,
    wait_backlog_written,
)

pytestmark = pytest.mark.e2e


def _health(server: RunningServer, service: str = "") -> int:
    with server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
    return int(reply.status)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.timeout(60)
def test_decisions_answered_with_redis_down_reach_the_log_after_a_restart(
    tmp_path: Path, restartable_redis: RestartableRedis, stop_signal: signal.Signals
) -> None:
    server = external_server(tmp_path, restartable_redis.url)
    restartable_redis.kill()
    try:
        with server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            answered = [stub.Screen(samples.transfer(f"down-{uuid.uuid4()}"), timeout=2) for _ in range(300)]
        assert all(d.degraded for d in answered)
        server.process.send_signal(stop_signal)
        code = server.process.wait(15)
        assert code == (0 if stop_signal is signal.SIGTERM else -signal.SIGKILL), server.log()[-3000:]
        if stop_signal is signal.SIGTERM:
            assert "written at the next start" in server.log()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    restartable_redis.start()
    again = external_server(tmp_path, restartable_redis.url)  # the same data directory, so the same spool
    try:
        wait_backlog_written(again)
        logged = logged_decision_ids(restartable_redis.client())
        ids = {d.decision_id for d in answered}
        assert len(ids) == 300
        assert sorted(i for i in logged if i in ids) == sorted(ids), "each answered decision logged once"
        assert len(logged) == len(set(logged))
    finally:
        assert again.terminate() == 0, again.log()[-3000:]


@pytest.mark.timeout(60)
def test_sigterm_reports_not_serving_and_keeps_serving_through_the_drain(
    tmp_path: Path, restartable_redis: RestartableRedis
) -> None:
    server = external_server(tmp_path, restartable_redis.url, RISKGATE_DRAIN_SECONDS="3")
    try:
        assert _health(server) == SERVING
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        assert _health(server) == NOT_SERVING
        assert _health(server, "riskgate.v1.Screening") == NOT_SERVING
        answers = []
        with server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            while time.monotonic() - signalled < 2.5:
                answers.append(stub.Screen(samples.transfer(f"drain-{uuid.uuid4()}"), timeout=1))
                time.sleep(0.05)
        assert len(answers) > 20 and not any(a.degraded for a in answers)
        assert server.process.wait(3 + 5 + 2) == 0
        assert time.monotonic() - signalled >= 3
    finally:
        if server.process.poll() is None:
            server.process.kill()


async def _open_streams(address: str, count: int, per_channel: int) -> tuple[list[grpc.aio.Channel], list[Any]]:
    # A connection of its own per channel (channels with the same arguments share one), each under
    # the server's RISKGATE_MAX_STREAMS_PER_CONNECTION.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(-(-count // per_channel))]
    calls: list[Any] = []  # grpc.aio.StreamStreamCall: the generated stubs are typed for the sync API
    for index in range(count):
        stub: Any = pb_grpc.ScreeningStub(channels[index // per_channel])
        calls.append(stub.ScreenStream())
    # Each stream screens one closure, so every one is open and handled on the server side.
    for index, call in enumerate(calls):
        await call.write(samples.closure(f"stream-{index}-{uuid.uuid4()}"))
    for call in calls:
        decision = await call.read()
        assert isinstance(decision, pb.Decision) and decision.decision_id
    return channels, calls


async def _ends(calls: list[Any]) -> list[tuple[grpc.StatusCode, str]]:
    async def end(call: Any) -> tuple[grpc.StatusCode, str]:
        return await call.code(), await call.details()

    return list(await asyncio.gather(*(end(call) for call in calls)))


@pytest.mark.timeout(90)
def test_sigterm_with_2000_open_streams_exits_within_drain_grace_and_two_seconds(
    tmp_path: Path, restartable_redis: RestartableRedis
) -> None:
    drain, grace = 1.0, 2.0
    server = external_server(
        tmp_path,
        restartable_redis.url,
        RISKGATE_DRAIN_SECONDS=str(drain),
        RISKGATE_GRACE_SECONDS=str(grace),
        RISKGATE_MAX_CONCURRENT_RPCS="2500",
    )

    async def scenario() -> tuple[float, list[tuple[grpc.StatusCode, str]]]:
        channels, calls = await _open_streams(server.address, 2000, per_channel=100)
        try:
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            ends = await asyncio.wait_for(_ends(calls), drain + grace + 10)
            while server.process.poll() is None and time.monotonic() - signalled < drain + grace + 10:
                await asyncio.sleep(0.05)
            return time.monotonic() - signalled, ends
        finally:
            for channel in channels:
                await channel.close()

    try:
        took, ends = asyncio.run(scenario())
        assert server.process.poll() == 0, server.log()[-3000:]
        assert took <= drain + grace + 2, took
        assert {code for code, _ in ends} == {grpc.StatusCode.UNAVAILABLE}
        assert all("stopping" in details for _, details in ends), {details for _, details in ends}
    finally:
        if server.process.poll() is None:
            server.process.kill()


@pytest.mark.timeout(60)
def test_a_silent_stream_is_ended_after_the_idle_limit(tmp_path: Path, restartable_redis: RestartableRedis) -> None:
    server = external_server(tmp_path, restartable_redis.url, RISKGATE_STREAM_IDLE_SECONDS="1")

    async def scenario() -> tuple[bool, grpc.StatusCode, str, grpc.StatusCode]:
        channels, calls = await _open_streams(server.address, 2, per_channel=2)
        try:
            busy, silent = calls
            for index in range(10):  # 3 s; the busy stream sends every 0.3 s and is never idle for 1 s
                await asyncio.sleep(0.3)
                await busy.write(samples.closure(f"busy-{index}-{uuid.uuid4()}"))
                assert (await busy.read()).decision_id
            ended_meanwhile = silent.done()
            code, details = await asyncio.wait_for(silent.code(), 5), await silent.details()
            await busy.done_writing()
            return ended_meanwhile, code, details, await busy.code()
        finally:
            for channel in channels:
                await channel.close()

    try:
        ended_meanwhile, code, details, busy_code = asyncio.run(scenario())
        assert ended_meanwhile
        assert code == grpc.StatusCode.UNAVAILABLE and "idle for 1 s" in details
        assert busy_code == grpc.StatusCode.OK
    finally:
        assert server.terminate() == 0, server.log()[-3000:]
