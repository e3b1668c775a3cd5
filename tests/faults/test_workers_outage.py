"""Redis SIGKILLed under load with RISKGATE_WORKERS=2: both workers answer within their deadlines,
degraded, recover once Redis is back, and the log holds every answered decision exactly once (each
worker's backlog and spool are its own)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import grpc
import pytest

from service.server.metrics import screenings_by_process
from service.server.workers import METRICS_DIR
from tests.e2e.conftest import RunningServer
from tests.faults.conftest import (
    Load,
    RestartableRedis,
    count_log,
    external_server,
    logged_decision_ids,
    wait_backlog_written,
)

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 5
RECOVERY_SECONDS = 2.0


class _OwnConnections(RunningServer):
    """Every channel its own TCP connection, so the kernel spreads the load's threads over the workers."""

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)])


def _all_serving(server: RunningServer) -> bool:
    """The supervisor's "serving" line: every worker serves."""
    for line in server.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["logger"] == "riskgate.workers" and entry["msg"] == "serving":
                return True
    return False


@pytest.mark.timeout(120)
def test_redis_killed_under_load_with_two_workers(tmp_path: Path, restartable_redis: RestartableRedis) -> None:
    server = external_server(tmp_path, restartable_redis.url, RISKGATE_WORKERS="2")
    try:
        # Connections opened while worker 1 still warms up all go to worker 0, and stay there.
        deadline = time.monotonic() + 60
        while not _all_serving(server):
            assert time.monotonic() < deadline, "the workers did not all serve:\n" + server.log()[-3000:]
            time.sleep(0.1)
        spread = _OwnConnections(**{f.name: getattr(server, f.name) for f in dataclasses.fields(server)})
        load = Load(spread, threads=12).start()
        deadline = time.monotonic() + 30
        while len([n for n in screenings_by_process(server.data_dir.resolve() / METRICS_DIR).values() if n]) < 2:
            assert time.monotonic() < deadline, "the load did not reach both workers"
            time.sleep(0.2)
        killed_at = time.monotonic()
        restartable_redis.kill()
        time.sleep(OUTAGE_SECONDS)
        restartable_redis.start()
        back_at = time.monotonic()
        time.sleep(6)
        end = time.monotonic()
        answers = load.stop()

        during = load.between(killed_at, back_at)
        assert during and all(a.code == "OK" for a in during), {a.code for a in during}
        assert sum(1 for a in during if a.decision is not None and a.decision.degraded) >= 0.9 * len(during)
        after = load.between(back_at + RECOVERY_SECONDS, end)
        assert len(after) > 100 and all(a.code == "OK" for a in after)
        assert not any(a.decision is not None and a.decision.degraded for a in after)
        counts = screenings_by_process(server.data_dir.resolve() / METRICS_DIR)
        assert len([n for n in counts.values() if n]) == 2, counts

        wait_backlog_written(server)
        answered, missing, duplicates = count_log(answers, logged_decision_ids(restartable_redis.client()))
        assert answered > 150 * (OUTAGE_SECONDS + 6)
        assert (missing, duplicates) == (0, 0), f"{answered} answered: {missing} missing, {duplicates} copies"
    finally:
        assert server.terminate() == 0, server.log()[-3000:]
