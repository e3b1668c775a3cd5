"""Start the real `riskgate serve` process and talk to it over gRPC."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from playwright.sync_api import Browser, sync_playwright

from service.redis.embedded import free_port
from tests.conftest import REPO

RISKGATE = Path(sys.executable).parent / "riskgate"


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    address: str
    metrics_address: str
    data_dir: Path
    log_path: Path
    credentials: grpc.ChannelCredentials | None = None  # TLS servers: what health checks connect with
    console_address: str = ""  # the web console's host:port (a free port, as the metrics')

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        credentials = credentials or self.credentials
        if credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, credentials)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def wait_serving(
    address: str,
    service: str = "",
    timeout: float = 60.0,
    process: subprocess.Popen[bytes] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Poll health until `service` is SERVING, with a fresh channel each time: a channel whose
    first connect was refused (before the server listened) waits out gRPC's reconnect backoff
    (up to 20 s), and over TLS its later handshakes failed until then."""
    deadline = time.monotonic() + timeout
    options = [("grpc.use_local_subchannel_pool", 1)]
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the server exited with code {process.returncode} before serving")
        channel = (
            grpc.insecure_channel(address, options=options)
            if credentials is None
            else grpc.secure_channel(address, credentials, options=options)
        )
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        finally:
            channel.close()
        time.sleep(0.1)
    raise TimeoutError(f"{address} did not become SERVING for {service!r} in {timeout}s")


def start_server(
    tmp: Path, *, credentials: grpc.ChannelCredentials | None = None, host: str = "127.0.0.1", **env: str
) -> RunningServer:
    """`riskgate serve` on a free port of `host`; `credentials` when it serves TLS (health is
    checked with them; every call of the test brings its own)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    metrics = f"127.0.0.1:{free_port()}"
    console = f"127.0.0.1:{free_port()}"
    data_dir = tmp / "data"
    log_path = tmp / "server.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    environment.update(
        RISKGATE_LISTEN=f"{host}:{port}",
        RISKGATE_METRICS_LISTEN=metrics,
        RISKGATE_CONSOLE_LISTEN=console,
        RISKGATE_DATA_DIR=str(data_dir),
        RISKGATE_RULES_DIR=str(REPO / "rules"),
        RISKGATE_GRACE_SECONDS="5",
        RISKGATE_DRAIN_SECONDS="0",  # tests of the drain set their own
    )
    environment.update(env)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(RISKGATE), "serve"], stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=tmp
        )
    server = RunningServer(
        process, address, metrics, data_dir, log_path, credentials, environment.get("RISKGATE_CONSOLE_LISTEN", "")
    )
    try:
        wait_serving(address, process=process, credentials=credentials)
    except TimeoutError:
        server.terminate()
        raise AssertionError("server did not start:\n" + server.log()) from None
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("e2e"))
    yield running
    code = running.terminate()
    assert code == 0, running.log()


def external_server(
    tmp: Path,
    redis_url: str,
    *,
    budget_ms: int,
    credentials: grpc.ChannelCredentials | None = None,
    host: str = "127.0.0.1",
    **env: str,
) -> RunningServer:
    """`start_server` against a redis-server the test started, with the hash secret that needs
    (created in `tmp` once, so a restart on the same `tmp` reads the same keys) and a Redis budget
    chosen by the test, not the 10 ms default a shared CI machine's noise can exceed."""
    secret = tmp / "hash-secret"
    if not secret.exists():
        secret.write_text(secrets.token_hex(32))
    env.setdefault("RISKGATE_REDIS_BUDGET_MS", str(budget_ms))
    return start_server(
        tmp,
        credentials=credentials,
        host=host,
        RISKGATE_REDIS_URL=redis_url,
        RISKGATE_HASH_SECRET_FILE=str(secret),
        **env,
    )


# The headless Chromium of the page tests (the backtest report, the console).
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium phones home at start, and this network refuses it.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make setup` installs it (Debian's package chromium)", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()
