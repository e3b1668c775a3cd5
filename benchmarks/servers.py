"""The real service under test: a private redis-server and `riskgate serve` as separate processes, on loopback.

`ScreeningStack` starts redis-server (no persistence, loopback TCP: the shape of a shared Redis
that several replicas use) and `riskgate serve` with the shipped ruleset pointed at it through
RISKGATE_REDIS_URL, as tests/e2e does. The Redis budget is generous (RISKGATE_REDIS_BUDGET_MS,
default here 1000 ms) so that queueing at saturation shows up as latency, not as degraded answers;
the degraded share is read from the service's own metrics and reported.

Counts and Redis CPU come from outside the load generator: `snapshot()` reads the service's
Prometheus counters (screenings by outcome, degraded, errors) and Redis' `INFO commandstats`
(microseconds spent in each command) and `INFO cpu` (the redis-server process); the difference
of two snapshots divided by the screenings between them is the Redis CPU per screening.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import REPO
from service.redis.embedded import EmbeddedRedis, RedisOptions, free_port

SCREEN_METHOD = "/riskgate.v1.Screening/Screen"
STREAM_METHOD = "/riskgate.v1.Screening/ScreenStream"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eE]+|NaN|\+Inf)$")


@dataclass(frozen=True)
class Snapshot:
    at: float
    screened: float  # riskgate_requests_total, every kind and outcome
    degraded: float
    replayed: float
    errors: float
    redis_command_usec: float  # sum over INFO commandstats
    redis_commands: float
    redis_process_cpu: float  # seconds, INFO cpu user+sys (main thread and background threads)
    redis_used_memory: float
    by_command: dict[str, float] = field(default_factory=dict)
    durations: dict[float, float] = field(default_factory=dict)

    def minus(self, earlier: Snapshot) -> dict[str, Any]:
        screened = self.screened - earlier.screened
        per = 1.0 / screened if screened > 0 else float("nan")
        commands = {
            name: (usec - earlier.by_command.get(name, 0.0)) * per
            for name, usec in self.by_command.items()
            if usec - earlier.by_command.get(name, 0.0) > 0
        }
        return {
            "screened": screened,
            "degraded_share": (self.degraded - earlier.degraded) * per,
            "replayed": self.replayed - earlier.replayed,
            "errors": self.errors - earlier.errors,
            "redis_cpu_us_per_screen": (self.redis_command_usec - earlier.redis_command_usec) * per,
            "redis_process_cpu_us_per_screen": (self.redis_process_cpu - earlier.redis_process_cpu) * 1e6 * per,
            "redis_commands_per_screen": (self.redis_commands - earlier.redis_commands) * per,
            "redis_us_per_screen_by_command": {k: round(v, 2) for k, v in sorted(commands.items())},
            "server_side_p50_ms_at_most": 1e3 * bucket_quantile(earlier.durations, self.durations, 0.50),
            "server_side_p99_ms_at_most": 1e3 * bucket_quantile(earlier.durations, self.durations, 0.99),
        }


_LE = re.compile(r'le="([^"]+)"')


def duration_buckets(text: str) -> dict[float, float]:
    """The service's request-duration histogram (receipt to decision), cumulative counts by upper bound."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("riskgate_request_duration_seconds_bucket{"):
            match = _LE.search(line)
            if match:
                bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
                out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound (seconds) of the histogram bucket holding quantile `q` of the calls between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return bound
    return float("inf")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {name: value summed over label sets}."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match:
            name, value = match.group(1), float(match.group(3))
            totals[name] = totals.get(name, 0.0) + value
    return totals


class ScreeningStack:
    """redis-server + `riskgate serve`, both child processes; a context manager."""

    def __init__(
        self,
        *,
        rules_dir: Path | None = None,
        budget_ms: int = 1000,
        extra_env: dict[str, str] | None = None,
        server_argv: list[str] | None = None,
        unix_socket: bool = True,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="rg-bench-")
        self.tmp = Path(self._tmp.name)
        self.rules_dir = rules_dir or REPO / "rules"
        self.budget_ms = budget_ms
        self.extra_env = extra_env or {}
        self.server_argv = server_argv
        self.redis = EmbeddedRedis(self.tmp / "redis", RedisOptions(persistent=False, port=None if unix_socket else 0))
        self.address = ""
        self.metrics_address = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.tmp / "server.log"
        self._sync: redis.Redis | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def redis_pid(self) -> int:
        pid = self.redis.pid
        assert pid is not None
        return pid

    @property
    def sync(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.redis.url)
        return self._sync

    def start(self) -> ScreeningStack:
        self.redis.start()
        secret = self.tmp / "hash-secret"
        secret.write_text(secrets.token_hex(32) + "\n")
        secret.chmod(0o600)
        self.address = f"127.0.0.1:{free_port()}"
        self.metrics_address = f"127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
        env.update(
            RISKGATE_LISTEN=self.address,
            RISKGATE_METRICS_LISTEN=self.metrics_address,
            RISKGATE_CONSOLE_LISTEN="off",
            RISKGATE_REDIS_URL=self.redis.url,
            RISKGATE_HASH_SECRET_FILE=str(secret),
            RISKGATE_REDIS_BUDGET_MS=str(self.budget_ms),
            RISKGATE_DATA_DIR=str(self.tmp / "data"),
            RISKGATE_RULES_DIR=str(self.rules_dir),
            RISKGATE_RULES_POLL_SECONDS="2",
            RISKGATE_LOG_LEVEL="WARNING",
            RISKGATE_GRACE_SECONDS="2",
        )
        env.update(self.extra_env)
        argv = self.server_argv or [sys.executable, "-m", "service.tools.cli", "serve"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            self._wait_serving()
        except Exception:
            self.stop()
            raise
        return self

    def _wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    break
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"riskgate serve did not start:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics_text(self) -> str:
        url = f"http://{self.metrics_address}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
        return text

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.metrics_text())

    def snapshot(self) -> Snapshot:
        text = self.metrics_text()
        m = parse_metrics(text)
        stats: Any = self.sync.info("commandstats")
        cpu: Any = self.sync.info("cpu")
        memory: Any = self.sync.info("memory")
        by_command = {name.removeprefix("cmdstat_"): float(v["usec"]) for name, v in stats.items()}
        return Snapshot(
            at=time.monotonic(),
            screened=m.get("riskgate_requests_total", 0.0),
            degraded=m.get("riskgate_degraded_decisions_total", 0.0),
            replayed=m.get("riskgate_replayed_decisions_total", 0.0),
            errors=m.get("riskgate_errors_total", 0.0),
            redis_command_usec=sum(by_command.values()),
            redis_commands=sum(float(v["calls"]) for v in stats.values()),
            redis_process_cpu=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            redis_used_memory=float(memory["used_memory"]),
            by_command=by_command,
            durations=duration_buckets(text),
        )

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.process = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None
        self.redis.stop()
        self._tmp.cleanup()

    def __enter__(self) -> ScreeningStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
