"""The gRPC echo benchmark: a grpc.aio echo server driven by `benchmarks.loadgen`.

Needs only ``grpcio`` (this module and `benchmarks.loadgen`: no other project imports, no .proto),
so it runs inside throwaway venvs to compare grpcio versions, and it is the echo baseline that
``make bench`` compares the real service against. What is echo's own lives here: the server (raw
bytes in, the same bytes out, unary and bidirectional streaming), its payloads, the summary line.
The load (client processes, the measured window, latency and CPU figures) is `benchmarks.loadgen`'s.

Run a whole benchmark (server in its own process, N client processes, loopback only)::

    python -m benchmarks.grpc_echo --seconds 5 --clients 2 --inflight 16 --payload 300 [--json [PATH]]

Serve only (e.g. to drive it from elsewhere)::

    python -m benchmarks.grpc_echo --serve-only --port 50551

Drive an already running loopback server (the echo server or the real service; pass its pid to get
its CPU per request; ``--requests module:function`` supplies serialized request bytes)::

    python -m benchmarks.grpc_echo --target 127.0.0.1:50551 --server-pid 1234 --method /pkg.Svc/Call

``--server-python /tmp/venv/bin/python`` starts the echo server under another interpreter (another
grpcio), while the clients keep this interpreter's grpcio: isolates the server's share of a change.

Each client cycles its requests (the default: one payload of ``--payload`` bytes), up to
``--max-requests``. Figures: throughput counts the calls that complete inside the measured window
(after ``--warmup``); latency is per call (p50/p99 over those calls); server CPU is user+system time
of the server process (all threads) from /proc/<pid>/stat over the same window; client CPU is
getrusage of every client process over the same window. All per-request CPU figures divide by the
completed calls.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from benchmarks import loadgen

SERVICE = "riskgate.bench.Echo"
UNARY_METHOD = f"/{SERVICE}/Unary"
STREAM_METHOD = f"/{SERVICE}/Stream"

_REPO = Path(__file__).resolve().parent.parent
_STARTUP_TIMEOUT = 30.0


def _identity(data: bytes) -> bytes:
    return data


# --------------------------------------------------------------------------------------------- server


async def _unary_echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _stream_echo(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def echo_handler() -> grpc.GenericRpcHandler:
    """Generic handler for ``/riskgate.bench.Echo/{Unary,Stream}`` on raw bytes."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                _unary_echo, request_deserializer=_identity, response_serializer=_identity
            ),
            "Stream": grpc.stream_stream_rpc_method_handler(
                _stream_echo, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )


async def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve the echo service until SIGTERM/SIGINT; prints ``READY <port> pid=<pid> grpcio=<v>`` once bound."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo_handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"cannot bind {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {bound} pid={os.getpid()} grpcio={grpc.__version__}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


class EchoServerProcess:
    """The echo server in a child process (optionally under another interpreter, i.e. another grpcio)."""

    def __init__(self, python: str | None = None, port: int = 0, host: str = "127.0.0.1") -> None:
        self.python = python or sys.executable
        self.host = host
        self.requested_port = port
        self.port = 0
        self.pid = 0
        self.grpcio_version = "?"
        self._proc: subprocess.Popen[str] | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EchoServerProcess:
        argv = [self.python, "-m", "benchmarks.grpc_echo", "--serve-only"]
        argv += ["--host", self.host, "--port", str(self.requested_port)]
        # from the repository root, so that `benchmarks` imports under any interpreter
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=_REPO)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        line = ""
        while time.monotonic() < deadline and not line.startswith("READY "):
            line = self._proc.stdout.readline()
            if not line and self._proc.poll() is not None:
                break
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"echo server did not start: {argv}")
        fields = line.split()
        self.port = int(fields[1])
        info = dict(f.split("=", 1) for f in fields[2:])
        self.pid = int(info["pid"])
        self.grpcio_version = info.get("grpcio", "?")
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    def __enter__(self) -> EchoServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------- load


def echo_requests(client_index: int, payload: int) -> Sequence[bytes]:
    """Default request factory: one fixed payload of ``payload`` bytes (cycled: ``repeat=True``)."""
    return [bytes((client_index + i) % 251 for i in range(payload))]


def _resolve_factory(name: str | None) -> loadgen.RequestFactory:
    if name is None:
        return echo_requests
    module_name, _, attr = name.partition(":")
    factory: loadgen.RequestFactory = getattr(importlib.import_module(module_name), attr)
    return factory


@dataclass
class LoadResult:
    grpcio_client: str
    grpcio_server: str
    target: str
    method: str
    kind: str
    clients: int
    inflight: int
    payload: int
    seconds: float
    completed: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_us_per_req: float | None
    server_cpu_core_fraction: float | None
    server_ctx_switches_per_req: float | None
    client_cpu_us_per_req: float
    client_cpu_core_fraction: float
    load1_before: float
    load1_after: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        server = "server_cpu=n/a"
        if self.server_cpu_us_per_req is not None:
            core = 100 * (self.server_cpu_core_fraction or 0.0)
            server = f"server_cpu={self.server_cpu_us_per_req:.0f}us/req ({core:.0f}% core)"
        return (
            f"grpc_echo grpcio={self.grpcio_client}/server={self.grpcio_server} {self.kind} "
            f"clients={self.clients} inflight={self.inflight} payload={self.payload}B {self.seconds:g}s: "
            f"{self.rps:.0f} req/s p50={self.p50_ms:.2f}ms p99={self.p99_ms:.2f}ms {server} "
            f"client_cpu={self.client_cpu_us_per_req:.0f}us/req ({100 * self.client_cpu_core_fraction:.0f}% core) "
            f"errors={self.errors} load1={self.load1_before:.2f}->{self.load1_after:.2f}"
        )


def _load1() -> float:
    return os.getloadavg()[0]


# LoadResult's fields that are loadgen's figures under the same names.
_FROM_FIGURES = (
    "kind", "clients", "inflight", "seconds", "completed", "errors", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms",
    "server_cpu_us_per_req", "server_cpu_core_fraction", "server_ctx_switches_per_req",
    "client_cpu_us_per_req", "client_cpu_core_fraction",
)  # fmt: skip


def run_load(spec: loadgen.LoadSpec, server_pid: int | None = None, grpcio_server: str = "?") -> LoadResult:
    """Drive ``spec.target`` with `benchmarks.loadgen`; the figures in this benchmark's own format."""
    load_before = _load1()
    figures = loadgen.run(spec, server_pid=server_pid)
    return LoadResult(
        grpcio_client=grpc.__version__,
        grpcio_server=grpcio_server,
        target=spec.target,
        method=spec.method,
        payload=spec.payload,
        load1_before=load_before,
        load1_after=_load1(),
        **{name: getattr(figures, name) for name in _FROM_FIGURES},
    )


def run_echo_benchmark(spec: loadgen.LoadSpec, server_python: str | None = None) -> LoadResult:
    """Start the echo server in its own process, drive it with ``spec`` (its target replaced), stop it."""
    with EchoServerProcess(python=server_python) as server:
        return run_load(replace(spec, target=server.target), server_pid=server.pid, grpcio_server=server.grpcio_version)


# ----------------------------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grpc_echo", description="gRPC echo benchmark")
    p.add_argument("--seconds", type=float, default=5.0, help="measured window (after warmup)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--clients", type=int, default=2, help="client processes, one channel each")
    p.add_argument("--inflight", type=int, default=16, help="calls in flight per client process")
    p.add_argument("--payload", type=int, default=300, help="request bytes (default factory)")
    p.add_argument("--kind", choices=["unary", "stream"], default="unary", help="unary call or bidi ping-pong")
    p.add_argument("--max-requests", type=int, default=10_000_000, help="per client process")
    p.add_argument("--serve-only", action="store_true", help="only run the echo server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="--serve-only port (0: any free port)")
    p.add_argument("--server-python", help="interpreter to run the echo server with (another venv)")
    p.add_argument("--target", help="drive this running loopback server instead of starting one")
    p.add_argument("--server-pid", type=int, help="pid of --target's server, for its CPU per request")
    p.add_argument("--method", default="", help="full method path, e.g. /pkg.Svc/Call")
    p.add_argument("--requests", help="request factory 'module:function' (client_index, payload) -> [bytes]")
    p.add_argument("--label", default="", help="free text copied into the JSON output")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="JSON output: to stdout instead of the summary, or append to PATH",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.serve_only:
        asyncio.run(serve(args.port, args.host))
        return 0
    spec = loadgen.LoadSpec(
        target=args.target or "127.0.0.1:0",  # without --target: the echo server's, once it listens
        method=args.method or (UNARY_METHOD if args.kind == "unary" else STREAM_METHOD),
        request_factory=_resolve_factory(args.requests),
        kind=args.kind,
        clients=args.clients,
        inflight=args.inflight,
        seconds=args.seconds,
        warmup=args.warmup,
        payload=args.payload,
        repeat=True,
        max_requests_per_client=args.max_requests,
    )
    spec.validate()  # before starting a server
    if args.target:
        result = run_load(spec, server_pid=args.server_pid)
    else:
        result = run_echo_benchmark(spec, server_python=args.server_python)
    result.extra["label"] = args.label
    if args.json is None or args.json != "-":
        print(result.summary(), flush=True)
    if args.json is not None:
        line = json.dumps(asdict(result), sort_keys=True)
        if args.json == "-":
            print(line, flush=True)
        else:
            with Path(args.json).open("a") as out:
                out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
