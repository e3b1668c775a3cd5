"""Redis killed or stopped under load: answers stay bounded, recover within 2 s of Redis answering,
and the log holds every answered decision exactly once.

Each test drives 150 screenings a second with 200 ms deadlines at the real server process,
SIGKILLs (or SIGSTOPs) its redis-server, brings it back on the same port and counts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from service._gen.riskgate.v1 import screening_pb2 as pb
from tests.faults.conftest import (
    FRAUD_PAYEE,
    NOT_SERVING,
    SERVING,
    Answer,
    HealthWatch,
    Load,
    RestartableRedis,
    count_log,
    external_server,
    list_fraud_payee,
    logged_decision_ids,
    wait_backlog_written,
)

pytestmark = pytest.mark.e2e

RECOVERY_SECONDS = 2.0
WATCH_AFTER_SECONDS = 6.0


def _degraded(answers: list[Answer]) -> int:
    return sum(1 for a in answers if a.decision is not None and a.decision.degraded)


def _check_recovery(
    load: Load, health: list[tuple[float, int]], outage: tuple[float, float], back_at: float, end: float
) -> None:
    during = load.between(*outage)
    assert during, "no request was made during the outage"
    failed = [(round(a.sent_at - outage[0], 3), a.code) for a in during if a.code != "OK"]
    assert not failed, f"{len(failed)} of {len(during)} not answered (s after the outage began, code): {failed[:20]}"
    assert _degraded(during) >= len(during) * 0.9
    assert any(status == NOT_SERVING for at, status in health if outage[0] + 1.5 < at < outage[1])
    # Within 2 s of Redis answering: health SERVING, and every answer from then on has its risk data.
    serving_again = [at for at, status in health if at >= back_at and status == SERVING]
    assert serving_again and serving_again[0] - back_at <= RECOVERY_SECONDS + 0.2, serving_again[:1]
    after = load.between(back_at + RECOVERY_SECONDS, end)
    assert len(after) > 100
    assert all(a.code == "OK" for a in after), {a.code for a in after}
    assert _degraded(after) == 0, f"{_degraded(after)} of {len(after)} degraded after recovery"
    listed = [a for a in after if a.request.transfer.payee_account == FRAUD_PAYEE]
    assert listed and all(a.decision is not None and a.decision.outcome == pb.OUTCOME_BLOCK for a in listed)


@pytest.mark.parametrize("outage_seconds", [5, 15, 60])
@pytest.mark.timeout(150)
def test_redis_killed_under_load(tmp_path: Path, restartable_redis: RestartableRedis, outage_seconds: int) -> None:
    server = external_server(tmp_path, restartable_redis.url)
    try:
        list_fraud_payee(server)
        health = HealthWatch(server.address).start()
        load = Load(server).start()
        time.sleep(2)
        killed_at = time.monotonic()
        restartable_redis.kill()
        time.sleep(outage_seconds)
        restartable_redis.start()
        back_at = time.monotonic()
        time.sleep(WATCH_AFTER_SECONDS)
        end = time.monotonic()
        answers = load.stop()
        seen = health.stop()
        _check_recovery(load, seen, (killed_at, back_at), back_at, end)
        wait_backlog_written(server)
        answered, missing, duplicates = count_log(answers, logged_decision_ids(restartable_redis.client()))
        assert answered > 150 * (outage_seconds + 6)
        assert (missing, duplicates) == (0, 0), f"{answered} answered: {missing} missing, {duplicates} copies"
        assert server.process.poll() is None
    finally:
        assert server.terminate() == 0, server.log()[-3000:]


@pytest.mark.timeout(90)
def test_redis_stopped_under_load(tmp_path: Path, restartable_redis: RestartableRedis) -> None:
    """SIGSTOP: a silent peer, with writes in its socket buffer that land only when it resumes."""
    server = external_server(tmp_path, restartable_redis.url)
    pid = restartable_redis.server.pid
    assert pid is not None
    try:
        list_fraud_payee(server)
        health = HealthWatch(server.address).start()
        load = Load(server).start()
        time.sleep(2)
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(5)
        finally:
            os.kill(pid, signal.SIGCONT)
        back_at = time.monotonic()
        time.sleep(WATCH_AFTER_SECONDS)
        end = time.monotonic()
        answers = load.stop()
        seen = health.stop()
        during = load.between(stopped_at, back_at)
        assert all(a.code == "OK" for a in during if a.sent_at > stopped_at + 0.5), {a.code for a in during}
        _check_recovery(load, seen, (stopped_at + 0.5, back_at), back_at, end)
        wait_backlog_written(server)
        answered, missing, duplicates = count_log(answers, logged_decision_ids(restartable_redis.client()))
        assert (missing, duplicates) == (0, 0), f"{answered} answered: {missing} missing, {duplicates} copies"
    finally:
        assert server.terminate() == 0, server.log()[-3000:]
