"""`riskgate serve` SIGKILLed in embedded mode (no RISKGATE_REDIS_URL): its redis-server dies with it,
the next start runs exactly one redis-server on the data directory, and what was written before the
crash (a watchlist entry, a velocity counter) is still there, from the AOF.

Before the parent-death signal, each crash left one more redis-server appending to the shared AOF,
and its expiry deletions removed live keys at the following restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.redis.embedded import PID_FILE, free_port
from tests import samples
from tests.conftest import REPO, start_unowned_redis
from tests.e2e.conftest import RISKGATE, RunningServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(55)]

STARTUP_SECONDS = 15.0  # a start takes 1-3 s here
GONE_SECONDS = 5.0
LISTED_PAYEE = "6217000099997777666"


def _state_and_ppid(pid: int) -> tuple[str, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # gone, even while being read
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    # A zombie has exited: an orphan's reaper (PID 1 in a container) may never reap it.
    state = _state_and_ppid(pid)
    return state is not None and state[0] not in ("Z", "X")


def redis_servers_on(redis_dir: Path) -> list[int]:
    """Live redis-servers started on `redis_dir`, found by scanning /proc (not by the code under test)."""
    conf = str(redis_dir.resolve() / "redis.conf")
    socket_title = f"unixsocket:{redis_dir.resolve() / 'redis.sock'}"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [os.fsdecode(a) for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        words = argv[0].split() if argv else []
        is_redis = bool(words) and Path(words[0]).name == "redis-server"
        if is_redis and (conf in argv[1:] or socket_title in words[1:]) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def _wait_no_redis(redis_dir: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := redis_servers_on(redis_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class Fleet:
    """Every process a test starts, so that each is killed at the end, even on failure."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.redis_dir = self.data_dir / "redis"
        self.servers: list[RunningServer] = []

    def serve(self) -> RunningServer:
        """`riskgate serve`, embedded Redis, on the fleet's one data directory."""
        run_dir = self.tmp / f"run{len(self.servers)}"
        run_dir.mkdir()
        address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
        environment.update(
            RISKGATE_LISTEN=address,
            RISKGATE_METRICS_LISTEN=metrics,
            RISKGATE_CONSOLE_LISTEN="off",
            RISKGATE_DATA_DIR=str(self.data_dir),
            RISKGATE_RULES_DIR=str(REPO / "rules"),
            RISKGATE_GRACE_SECONDS="5",
            RISKGATE_DRAIN_SECONDS="0",  # no load balancer to drain: a clean stop need not wait
        )
        log_path = run_dir / "server.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [str(RISKGATE), "serve"], stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=run_dir
            )
        server = RunningServer(process, address, metrics, self.data_dir, log_path)
        self.servers.append(server)
        _wait_serving(server, STARTUP_SECONDS)
        return server

    def cleanup(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(10)
        # Only redis-servers on this test's own directory: never anything else on the machine.
        for pid in redis_servers_on(self.redis_dir):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    processes = Fleet(tmp_path)
    try:
        yield processes
    finally:
        processes.cleanup()


def _wait_serving(server: RunningServer, timeout: float) -> None:
    # A fresh channel per probe: one channel that failed to connect waits out gRPC's reconnect
    # backoff (1 s, then x1.6), and notices the server seconds after it serves.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"riskgate serve exited with {server.process.returncode}:\n{server.log()}")
        with grpc.insecure_channel(server.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"riskgate serve was not SERVING after {timeout} s:\n{server.log()}")


def _the_one_redis_of(server: RunningServer, redis_dir: Path) -> int:
    """The pid of the only redis-server on `redis_dir`; it must be `server`'s child and in the pid file."""
    servers = redis_servers_on(redis_dir)
    assert len(servers) == 1, f"expected one redis-server on {redis_dir}, found {servers}"
    (pid,) = servers
    assert (redis_dir / PID_FILE).read_text().strip() == str(pid)
    state = _state_and_ppid(pid)
    assert state is not None and state[1] == server.process.pid, "the redis-server must be this server's child"
    return pid


def _screen(server: RunningServer, request: pb.ScreenRequest) -> pb.Decision:
    with server.channel() as channel:
        decision: pb.Decision = pb_grpc.ScreeningStub(channel).Screen(request, timeout=5)
    return decision


def _transfer_to_listed_payee() -> pb.ScreenRequest:
    request = samples.transfer(f"crash-{uuid.uuid4()}")
    request.transfer.payee_account = LISTED_PAYEE
    return request


def _opening(id_number: str, bank: str) -> pb.ScreenRequest:
    request = samples.card_opening(f"crash-{uuid.uuid4()}")
    request.outlet.institution_id = bank
    request.card_opening.applicant.id_number = id_number
    return request


def _banks_30d(decision: pb.Decision) -> str:
    reason = next(r for r in decision.reasons if r.rule_id == "K05_multi_bank_openings_young_trial")
    return {e.name: e.value for e in reason.evidence}["banks_30d"]


def _listed(server: RunningServer) -> bool:
    with server.channel() as channel:
        reply = admin_pb_grpc.WatchlistsStub(channel).CheckEntry(
            admin_pb.CheckEntryRequest(list="fraud_accounts", value=LISTED_PAYEE), timeout=5
        )
    return bool(reply.listed)


def _sigkill(server: RunningServer) -> None:
    server.process.kill()
    server.process.wait(10)


def test_sigkilled_server_takes_its_redis_along_and_restarts_on_the_kept_data(fleet: Fleet) -> None:
    started = time.monotonic()
    young = samples.resident_id(birth=samples.born_aged(20), sequence=417)
    first = fleet.serve()
    with first.channel() as channel:
        admin_pb_grpc.WatchlistsStub(channel).AddEntry(
            admin_pb.AddEntryRequest(list="fraud_accounts", value=LISTED_PAYEE, reason="crash test", added_by="t"),
            timeout=5,
        )
    assert _screen(first, _transfer_to_listed_payee()).outcome == pb.OUTCOME_BLOCK
    _screen(first, _opening(young, "BANK_A"))  # K05 reports from the second bank on
    redis_pid = _the_one_redis_of(first, fleet.redis_dir)

    # Twice: before the fix, every crash left one more redis-server on the directory.
    for crash, bank in enumerate(("BANK_B", "BANK_C"), start=2):
        _sigkill(fleet.servers[-1])
        assert _wait_no_redis(fleet.redis_dir, GONE_SECONDS) == [], "redis-server outlived its SIGKILLed riskgate"
        assert not _alive(redis_pid)
        assert "SIGTERM" in (fleet.redis_dir / "redis.log").read_text(), "SIGTERM, so it flushed its AOF"

        again = fleet.serve()
        redis_pid = _the_one_redis_of(again, fleet.redis_dir)
        assert _listed(again), "the watchlist entry written before the crash is gone"
        assert _screen(again, _transfer_to_listed_payee()).outcome == pb.OUTCOME_BLOCK
        assert _banks_30d(_screen(again, _opening(young, bank))) == str(crash), "the counter lost its history"

    assert fleet.servers[-1].terminate(15) == 0, fleet.servers[-1].log()
    assert _wait_no_redis(fleet.redis_dir, GONE_SECONDS) == []
    assert not (fleet.redis_dir / PID_FILE).exists(), "a clean stop removes the pid file"
    assert time.monotonic() - started < 50


def test_a_redis_server_leaked_by_an_older_riskgate_is_stopped_at_start(fleet: Fleet) -> None:
    first = fleet.serve()
    with first.channel() as channel:
        admin_pb_grpc.WatchlistsStub(channel).AddEntry(
            admin_pb.AddEntryRequest(list="fraud_accounts", value=LISTED_PAYEE, reason="leak test", added_by="t"),
            timeout=5,
        )
    assert first.terminate(15) == 0, first.log()
    # What a crash of a riskgate without the fix left behind: a redis-server nobody owns, no pid file,
    # and the default process title ("redis-server unixsocket:<path>") instead of its argv.
    conf = fleet.redis_dir / "redis.conf"
    conf.write_text(conf.read_text().replace("set-proc-title no\n", ""))
    leaked_pid = start_unowned_redis(conf)
    deadline = time.monotonic() + 10
    while not (fleet.redis_dir / "redis.sock").exists():
        assert time.monotonic() < deadline, "the leaked redis-server did not start"
        time.sleep(0.05)
    assert redis_servers_on(fleet.redis_dir) == [leaked_pid]

    second = fleet.serve()
    assert not _alive(leaked_pid)
    _the_one_redis_of(second, fleet.redis_dir)
    assert _listed(second)
    assert f'"pid": {leaked_pid}' in second.log(), second.log()
    assert second.terminate(15) == 0, second.log()
