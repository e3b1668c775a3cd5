"""The compiled load generator of `make bench` (benchmarks/loadgen_cc) counts what it sends and what comes back.

`make loadgen` builds it first (Debian's g++ and gRPC C++ packages, installed with apt-get when
missing and run as root); without them the test fails saying so: it is part of `make test`. Small
fixed counts against the echo server and the real `riskgate serve`, in every mode; counts only,
never timings.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks import compiled
from benchmarks.common import Json
from benchmarks.grpc_echo import STREAM_METHOD as ECHO_STREAM
from benchmarks.grpc_echo import UNARY_METHOD as ECHO_UNARY
from benchmarks.grpc_echo import EchoServerProcess
from benchmarks.servers import SCREEN_METHOD, STREAM_METHOD, ScreeningStack
from benchmarks.traffic import write_pool
from tests.conftest import REPO


@pytest.fixture(scope="module")
def built() -> Path:
    done = subprocess.run(["make", "-C", str(REPO), "loadgen"], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not compiled.LOADGEN.exists():
        pytest.fail(
            f"no compiled load generator at {compiled.LOADGEN}: `make loadgen` builds it from Debian's "
            f"g++, pkg-config, libgrpc++-dev and libprotobuf-dev (as root):\n{done.stdout}{done.stderr}",
            pytrace=False,
        )
    return compiled.LOADGEN


@pytest.fixture(scope="module")
def requests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loadgen") / "requests.bin"
    write_pool(path, seed=3, events=20, now=datetime.now(UTC))
    return path


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServerProcess]:
    with EchoServerProcess() as server:
        yield server


def _clean(report: Json, count: int) -> None:
    assert report["sent"] == count, report
    assert report["ok"] == count, report
    assert report["errors"] == {}, report
    assert report["dropped"] == 0, report


@pytest.mark.parametrize("inflight", [1, 16])
def test_unary_calls_to_echo_are_all_answered(
    built: Path, requests: Path, echo: EchoServerProcess, inflight: int
) -> None:
    report = compiled.drive(
        echo.target, ECHO_UNARY, requests, inflight=inflight, count=50, unique_ids="t", watch_pids=[echo.pid]
    )
    _clean(report, 50)
    assert report["mode"] == "unary"
    assert set(report["watched_cpu_s"]) == {str(echo.pid)}
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "p999", "max"}


def test_open_loop_sends_the_count_at_its_rate(built: Path, requests: Path, echo: EchoServerProcess) -> None:
    report = compiled.drive(echo.target, ECHO_UNARY, requests, mode="open", rate=500, count=30)
    _clean(report, 30)
    assert report["rate"] == 500
    assert report["slip_p99_ms"] is not None
    assert report["from_schedule_p99_ms"] is not None


@pytest.mark.parametrize("depth", [1, 8])
def test_stream_messages_to_echo_are_all_answered(
    built: Path, requests: Path, echo: EchoServerProcess, depth: int
) -> None:
    report = compiled.drive(echo.target, ECHO_STREAM, requests, mode="stream", inflight=4, count=40, depth=depth)
    _clean(report, 40)
    assert report["depth"] == depth


def test_failed_calls_are_counted_by_status_code(built: Path, requests: Path, echo: EchoServerProcess) -> None:
    report = compiled.drive(echo.target, "/riskgate.bench.Echo/Missing", requests, inflight=4, count=12)
    assert report["sent"] == 12
    assert report["ok"] == 0
    assert report["errors"] == {"UNIMPLEMENTED": 12}


def test_bad_options_are_refused(built: Path, requests: Path) -> None:
    done = subprocess.run(
        [str(built), "--target", "10.1.2.3:50051", "--method", ECHO_UNARY, "--requests", str(requests)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "loopback targets only" in done.stderr


def test_screenings_with_fresh_request_ids_are_screened_not_replayed(built: Path, requests: Path) -> None:
    """The 20 requests cycled: with the appended request ids every call is a new screening; without
    them, the second time round is answered from the idempotency record."""
    replayed = "riskgate_replayed_decisions_total"
    with ScreeningStack() as stack:
        watched = {str(stack.pid), str(stack.redis_pid)}
        before = stack.metrics()
        unary = compiled.drive(
            stack.address, SCREEN_METHOD, requests, inflight=4, count=60, unique_ids="u",
            watch_pids=[stack.pid, stack.redis_pid],
        )  # fmt: skip
        stream = compiled.drive(
            stack.address, STREAM_METHOD, requests, mode="stream", inflight=2, count=20, unique_ids="s"
        )
        fresh = stack.metrics()
        repeated = compiled.drive(stack.address, SCREEN_METHOD, requests, inflight=1, count=40)
        after = stack.metrics()
        refused = compiled.drive(
            stack.address, SCREEN_METHOD, requests, count=5, metadata=[("authorization", "Bearer not-a-token")]
        )
    _clean(unary, 60)
    _clean(stream, 20)
    _clean(repeated, 40)
    assert set(unary["watched_cpu_s"]) == watched
    assert fresh.get(replayed, 0.0) == before.get(replayed, 0.0)
    assert after.get(replayed, 0.0) - fresh.get(replayed, 0.0) == 20
    assert refused["errors"] == {"UNAUTHENTICATED": 5}, refused
