"""End to end: `riskgate serve` with RISKGATE_WORKERS=2, a supervisor and two serving processes on one port."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.redis.embedded import PID_FILE
from service.server.metrics import screenings_by_process
from service.server.workers import METRICS_DIR
from tests import samples
from tests.e2e.conftest import RunningServer, start_server

pytestmark = pytest.mark.e2e

WORKERS = 2


def log_lines(server: RunningServer) -> list[dict[str, object]]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def wait_for(condition: Callable[[], bool], what: str, server: RunningServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout}s:\n{server.log()[-4000:]}")
        time.sleep(0.1)


def serving_lines(server: RunningServer) -> list[dict[str, object]]:
    return [e for e in log_lines(server) if e["logger"] == "riskgate.workers" and e["msg"] == "serving"]


def worker_pids(server: RunningServer) -> dict[int, int]:
    """Each worker's latest pid, from the supervisor's "worker serving" lines."""
    pids: dict[int, int] = {}
    for entry in log_lines(server):
        if entry["logger"] == "riskgate.workers" and entry["msg"] == "worker serving":
            pids[int(str(entry["worker"]))] = int(str(entry["pid"]))
    return pids


def start_workers(tmp: Path, **env: str) -> RunningServer:
    server = start_server(tmp, credentials=None, host="127.0.0.1", RISKGATE_WORKERS=str(WORKERS), **env)
    wait_for(lambda: bool(serving_lines(server)), "all workers serving", server)
    return server


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def by_worker(server: RunningServer) -> dict[int, float]:
    return screenings_by_process(server.data_dir.resolve() / METRICS_DIR)


def scraped_total(server: RunningServer) -> float:
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("riskgate_requests_total{")
    )


def screen_on_new_connections(server: RunningServer, until: Callable[[], bool], most: int = 64) -> int:
    """Screen twice on each of up to `most` fresh connections (each its own TCP connection, so the
    kernel picks a worker for each) until `until()`; returns the screenings made."""
    made = 0
    for _ in range(most):
        with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.ScreeningStub(channel)
            for _ in range(2):
                decision = stub.Screen(samples.transfer(request_id=f"w-{uuid.uuid4().hex}"), timeout=10)
                assert not decision.degraded
                made += 1
        if until():
            break
    return made


@pytest.fixture(scope="module")
def workers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_workers(tmp_path_factory.mktemp("workers"))
    yield server
    assert server.terminate() == 0, server.log()[-4000:]


def test_both_workers_answer_and_one_endpoint_counts_them_all(workers_server: RunningServer) -> None:
    server = workers_server
    pids = worker_pids(server)
    assert sorted(pids) == list(range(WORKERS))
    before = scraped_total(server)
    made = screen_on_new_connections(server, lambda: all(by_worker(server).get(pid, 0) > 0 for pid in pids.values()))
    counts = by_worker(server)
    assert all(counts.get(pid, 0) > 0 for pid in pids.values()), counts
    assert scraped_total(server) - before == made
    assert sum(counts.values()) == scraped_total(server)


def test_a_killed_worker_is_replaced(workers_server: RunningServer) -> None:
    server = workers_server
    old = worker_pids(server)
    screen_on_new_connections(server, lambda: True, most=1)
    total = scraped_total(server)
    os.kill(old[1], signal.SIGKILL)
    wait_for(lambda: worker_pids(server).get(1) not in (None, old[1]), "a new worker 1", server)
    assert not running(old[1])
    assert worker_pids(server)[0] == old[0]
    assert any(e["msg"] == "worker exited; restarting it" and e["pid"] == old[1] for e in log_lines(server))
    new = worker_pids(server)[1]
    screen_on_new_connections(server, lambda: by_worker(server).get(new, 0) > 0)
    assert by_worker(server).get(new, 0) > 0
    assert scraped_total(server) > total  # the dead worker's screenings still count


def _all_pids(server: RunningServer) -> list[int]:
    redis_pid = int((server.data_dir / "redis" / PID_FILE).read_text())
    return [*worker_pids(server).values(), redis_pid]


def test_sigterm_stops_every_process(tmp_path: Path) -> None:
    server = start_workers(tmp_path)
    pids = _all_pids(server)
    assert server.terminate() == 0, server.log()[-4000:]
    assert [pid for pid in pids if running(pid)] == []
    stopped = [e for e in log_lines(server) if e["msg"] == "worker stopped"]
    assert sorted(int(str(e["worker"])) for e in stopped) == list(range(WORKERS))
    assert all(e["exit"] == "code 0" for e in stopped)


def test_a_killed_supervisor_leaves_no_worker_behind(tmp_path: Path) -> None:
    server = start_workers(tmp_path)
    pids = _all_pids(server)
    server.process.kill()
    server.process.wait(10)
    wait_for(lambda: not any(running(pid) for pid in pids), "every worker and redis-server gone", server, timeout=30)


def test_a_worker_that_cannot_serve_refuses_the_start(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "broken.yaml").write_text("rules: [\n")
    server_log = tmp_path / "server.log"
    with pytest.raises(AssertionError, match="server did not start"):
        start_server(tmp_path, RISKGATE_WORKERS=str(WORKERS), RISKGATE_RULES_DIR=str(rules))
    text = server_log.read_text()
    assert "before serving" in text
    started = [json.loads(line) for line in text.splitlines() if line.startswith("{") and "worker started" in line]
    assert len(started) == WORKERS
    assert not any(running(int(e["pid"])) for e in started)
    redis_pid_file = tmp_path / "data" / "redis" / PID_FILE
    assert not redis_pid_file.exists()  # removed on a clean stop of the embedded redis-server
