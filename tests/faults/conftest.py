"""The fault tier: the real `riskgate serve` process, a real redis-server these fixtures start, and
a paced load that records every answer, so a test can count what was answered against what was
logged after Redis is killed, stopped or restarted, or the server is stopped."""

from __future__ import annotations

import gc
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.redis.embedded import EmbeddedRedis, RedisOptions, free_port
from tests import samples
from tests.e2e import conftest as e2e
from tests.e2e.conftest import RunningServer

LOG_STREAM = "rg:log:decisions"
FRAUD_PAYEE = "6217000099998888777"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RestartableRedis:
    """A redis-server on one fixed loopback port that a test can SIGKILL, SIGSTOP and start again.
    With its append-only file: Redis writes it before it replies, so what it acknowledged survives
    its SIGKILL (the kernel holds it), and entries missing from the log afterwards are the
    service's loss, not the test's."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.server = self._new()
        self.server.start()

    def _new(self) -> EmbeddedRedis:
        return EmbeddedRedis(self.data_dir, RedisOptions(persistent=True, port=self.port))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server = self._new()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path / "redis")
    yield server
    server.stop()


def external_server(tmp: Path, redis_url: str, **env: str) -> RunningServer:
    # These tests are about recovering and counting, not a 10 ms budget on a shared 2-core machine:
    # a budget the machine's noise does not exceed, well inside the load's 200 ms deadlines.
    return e2e.external_server(tmp, redis_url, budget_ms=50, credentials=None, host="127.0.0.1", **env)


def list_fraud_payee(server: RunningServer) -> None:
    with server.channel() as channel:
        admin_pb_grpc.WatchlistsStub(channel).AddEntry(
            admin_pb.AddEntryRequest(list="fraud_accounts", value=FRAUD_PAYEE, reason="fault test", added_by="t"),
            timeout=5,
        )


def transfer(index: int) -> pb.ScreenRequest:
    """A transfer; one in ten to the fraud-listed payee (T15 blocks it while Redis answers). Not
    more: the shipped rules' breaker demotes a block rule that refuses over 20 % of the transfers
    (README, "A breaker for a rule gone wrong"), which a load of half fraud would be."""
    request = samples.transfer(f"fault-{uuid.uuid4()}")
    if index % 10 == 1:
        request.transfer.payee_account = FRAUD_PAYEE
    return request


@dataclass
class Answer:
    sent_at: float  # monotonic
    request: pb.ScreenRequest
    decision: pb.Decision | None
    code: str


@dataclass
class Load:
    """`rate` Screen calls a second with `deadline` seconds each, from `threads` threads, until stopped."""

    server: RunningServer
    rate: float = 150.0
    deadline: float = 0.2
    threads: int = 6
    make: Callable[[int], pb.ScreenRequest] = transfer
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        # The load runs in pytest's process, whose heap holds every earlier test's objects: a full
        # collection of it (60-80 ms measured late in `make test`) stalls all the load's threads
        # at once, and calls time out on the client with the server's answer on its way. Frozen,
        # that heap is not traversed; the server is measured, not the test's garbage collector.
        gc.collect()
        gc.freeze()
        for number in range(self.threads):
            worker = threading.Thread(target=self._run, args=(number,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, number: int) -> None:
        interval = self.threads / self.rate
        next_at = time.monotonic() + number * interval / self.threads
        index = number
        with self.server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            while not self._stop.is_set():
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                next_at += interval
                request = self.make(index)
                index += self.threads
                sent = time.monotonic()
                try:
                    decision: pb.Decision | None = stub.Screen(request, timeout=self.deadline)
                    code = "OK"
                except grpc.RpcError as error:
                    decision, code = None, error.code().name
                with self._lock:
                    self.answers.append(Answer(sent, request, decision, code))

    def stop(self) -> list[Answer]:
        self._stop.set()
        for worker in self._workers:
            worker.join(10)
        gc.unfreeze()
        with self._lock:
            return list(self.answers)

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.sent_at < end]


@dataclass
class HealthWatch:
    """Polls health `redis` every 0.1 s, recording (monotonic time, status)."""

    address: str
    seen: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> HealthWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.is_set():
                try:
                    status = int(stub.Check(health_pb2.HealthCheckRequest(service="redis"), timeout=1).status)
                except grpc.RpcError:
                    status = -1
                self.seen.append((time.monotonic(), status))
                time.sleep(0.1)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return list(self.seen)


def metric(server: RunningServer, name: str) -> float:
    """The sum of a metric's samples on the server's /metrics page."""
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def logged_decision_ids(client: redis.Redis) -> list[str]:
    """Every decision id in the log stream, in stream order (copies included)."""
    ids: list[str] = []
    last = "-"
    while True:
        batch: Any = client.xrange(LOG_STREAM, min=last, max="+", count=5000)
        if not batch:
            return ids
        ids += [fields[b"decision_id"].decode() for _, fields in batch]
        last = "(" + batch[-1][0].decode()


def wait_backlog_written(server: RunningServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(server, "riskgate_unwritten_decision_log_entries") > 0:
        assert time.monotonic() < deadline, "the decision-log backlog was not written:\n" + server.log()[-3000:]
        time.sleep(0.2)
    time.sleep(1.1)  # the gauge is refreshed once a second: one more round, to be sure


def count_log(answers: list[Answer], logged: list[str]) -> tuple[int, int, int]:
    """(answered, missing from the log, duplicated in the log)."""
    answered = {a.decision.decision_id for a in answers if a.decision is not None}
    missing = len(answered - set(logged))
    duplicates = len(logged) - len(set(logged))
    return len(answered), missing, duplicates
