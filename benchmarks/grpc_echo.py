"""Self-contained gRPC echo benchmark: a grpc.aio echo server and a multi-process load generator.

Needs only ``grpcio`` (no project imports, no .proto), so it runs inside throwaway venvs to compare
grpcio versions, and it is the echo baseline that ``make bench`` compares the real service against.

Run a whole benchmark (server in its own process, N client processes, loopback only)::

    python -m benchmarks.grpc_echo --seconds 5 --clients 2 --inflight 16 --payload 300 [--json [PATH]]

Serve only (e.g. to drive it from elsewhere)::

    python -m benchmarks.grpc_echo --serve-only --port 50551

Drive an already running loopback server (the echo server or the real service; pass its pid to get
its CPU per request; ``--requests module:function`` supplies serialized request bytes)::

    python -m benchmarks.grpc_echo --target 127.0.0.1:50551 --server-pid 1234 --method /pkg.Svc/Call

``--server-python /tmp/venv/bin/python`` starts the echo server under another interpreter (another
grpcio), while the clients keep this interpreter's grpcio: isolates the server's share of a change.

Figures: throughput counts the calls that complete inside the measured window (after ``--warmup``);
latency is per call (p50/p99 over those calls); server CPU is user+system time of the server process
(all threads) from /proc/<pid>/stat over the same window; client CPU is getrusage of every client
process over the same window. All per-request CPU figures divide by the completed calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import multiprocessing as mp
import os
import resource
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import grpc
import grpc.aio

SERVICE = "riskgate.bench.Echo"
UNARY_METHOD = f"/{SERVICE}/Unary"
STREAM_METHOD = f"/{SERVICE}/Stream"

Kind = Literal["unary", "stream"]
# (client_index, payload_bytes) -> pool of serialized requests, cycled by the client.
RequestFactory = Callable[[int, int], Sequence[bytes]]

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_MAX_SECONDS = 600.0
_MAX_CLIENTS = 64
_MAX_INFLIGHT = 4096
_MAX_ERRORS_PER_CLIENT = 1000
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
        argv = [self.python, str(Path(__file__).resolve()), "--serve-only"]
        argv += ["--host", self.host, "--port", str(self.requested_port)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
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


# ------------------------------------------------------------------------------------- process stats


def process_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process, all threads (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()  # fields from #3 (state) on
    utime, stime = int(rest[11]), int(rest[12])  # fields #14 and #15
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def process_context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches summed over the live threads of a process."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def _self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load1() -> float:
    return os.getloadavg()[0]


# ------------------------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class LoadConfig:
    """What the load generator sends. ``request_factory`` may be a callable or ``"module:function"``."""

    target: str
    kind: Kind = "unary"
    method: str = ""  # defaults to the echo method of ``kind``
    clients: int = 2
    inflight: int = 16
    payload: int = 300
    seconds: float = 5.0
    warmup: float = 1.0
    max_requests_per_client: int = 10_000_000
    call_timeout: float = 10.0
    request_factory: RequestFactory | str | None = None

    def validate(self) -> None:
        host = self.target.rsplit(":", 1)[0]
        if host not in _LOOPBACK_HOSTS and not host.startswith("127."):
            raise ValueError(f"loopback targets only, got {self.target!r}")
        if not 0 < self.seconds <= _MAX_SECONDS or not 0 <= self.warmup <= _MAX_SECONDS:
            raise ValueError("seconds must be in (0, 600], warmup in [0, 600]")
        if not 1 <= self.clients <= _MAX_CLIENTS or not 1 <= self.inflight <= _MAX_INFLIGHT:
            raise ValueError(f"clients must be in [1, {_MAX_CLIENTS}], inflight in [1, {_MAX_INFLIGHT}]")
        if self.payload < 0 or self.max_requests_per_client < 1:
            raise ValueError("payload must be >= 0 and max_requests_per_client >= 1")

    @property
    def resolved_method(self) -> str:
        return self.method or (UNARY_METHOD if self.kind == "unary" else STREAM_METHOD)


def echo_requests(client_index: int, payload: int) -> Sequence[bytes]:
    """Default request factory: one fixed payload of ``payload`` bytes."""
    return [bytes((client_index + i) % 251 for i in range(payload))]


def _resolve_factory(spec: RequestFactory | str | None) -> RequestFactory:
    if spec is None:
        return echo_requests
    if callable(spec):
        return spec
    module_name, _, attr = spec.partition(":")
    factory: RequestFactory = getattr(importlib.import_module(module_name), attr)
    return factory


@dataclass
class _ClientReport:
    index: int
    completed: int = 0
    errors: int = 0
    issued: int = 0
    cpu_seconds: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    error: str = ""


class _Window:
    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end


@dataclass(frozen=True)
class _Sync:
    """multiprocessing primitives shared by the parent and the client processes."""

    ready: Any  # Queue[int]: a client is connected
    go: Any  # Event: window_times is set
    window_times: Any  # Array("d", 2): monotonic start and end of the measured window
    results: Any  # Queue[_ClientReport]


async def _run_client(index: int, cfg: LoadConfig, sync: _Sync, report: _ClientReport) -> None:
    requests = list(_resolve_factory(cfg.request_factory)(index, cfg.payload))
    if not requests:
        raise ValueError("request factory returned no requests")
    async with grpc.aio.insecure_channel(cfg.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), _STARTUP_TIMEOUT)
        sync.ready.put(index)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, sync.go.wait, _STARTUP_TIMEOUT):
            raise TimeoutError("no go signal")
        window = _Window(sync.window_times[0], sync.window_times[1])
        lat = report.latencies
        n_requests = len(requests)

        def finish(t0: float, t1: float) -> None:
            if window.start <= t1 <= window.end:
                report.completed += 1
                lat.append(t1 - t0)

        def may_issue() -> bool:
            return (
                time.monotonic() < window.end
                and report.issued < cfg.max_requests_per_client
                and report.errors < _MAX_ERRORS_PER_CLIENT
            )

        async def unary_worker(slot: int) -> None:
            call = channel.unary_unary(
                cfg.resolved_method, request_serializer=_identity, response_deserializer=_identity
            )
            i = slot
            while may_issue():
                report.issued += 1
                request = requests[i % n_requests]
                i += cfg.inflight  # slots interleave: each request is sent once per pass
                t0 = time.monotonic()
                try:
                    await call(request, timeout=cfg.call_timeout)
                except grpc.aio.AioRpcError:
                    report.errors += 1
                    continue
                finish(t0, time.monotonic())

        async def stream_worker(slot: int) -> None:
            stream = channel.stream_stream(
                cfg.resolved_method, request_serializer=_identity, response_deserializer=_identity
            )
            call = stream()
            i = slot
            try:
                while may_issue():
                    report.issued += 1
                    request = requests[i % n_requests]
                    i += cfg.inflight  # slots interleave: each request is sent once per pass
                    t0 = time.monotonic()
                    await call.write(request)
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        report.errors += 1
                        return
                    finish(t0, time.monotonic())
                await call.done_writing()
                await asyncio.wait_for(call.code(), cfg.call_timeout)
            except grpc.aio.AioRpcError:
                report.errors += 1

        async def cpu_sampler() -> None:
            await asyncio.sleep(max(0.0, window.start - time.monotonic()))
            before = _self_cpu_seconds()
            await asyncio.sleep(max(0.0, window.end - time.monotonic()))
            report.cpu_seconds = _self_cpu_seconds() - before

        worker = unary_worker if cfg.kind == "unary" else stream_worker
        async with asyncio.timeout(window.end - time.monotonic() + cfg.call_timeout + 5):
            await asyncio.gather(cpu_sampler(), *(worker(slot) for slot in range(cfg.inflight)))


def _client_process(index: int, cfg: LoadConfig, sync: _Sync) -> None:
    report = _ClientReport(index)
    try:
        asyncio.run(_run_client(index, cfg, sync, report))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        report.error = f"{type(exc).__name__}: {exc}"
    sync.results.put(report)


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


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[rank]


def run_load(cfg: LoadConfig, server_pid: int | None = None, grpcio_server: str = "?") -> LoadResult:
    """Drive ``cfg.target`` from ``cfg.clients`` processes; measure over a common window."""
    cfg.validate()
    ctx = mp.get_context("spawn")  # no fork after grpc is initialised
    sync = _Sync(ready=ctx.Queue(), go=ctx.Event(), window_times=ctx.Array("d", 2), results=ctx.Queue())
    procs = [ctx.Process(target=_client_process, args=(i, cfg, sync), daemon=True) for i in range(cfg.clients)]
    load_before = _load1()
    for proc in procs:
        proc.start()
    reports: list[_ClientReport] = []
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        for _ in procs:
            sync.ready.get(timeout=max(0.1, deadline - time.monotonic()))
        start = time.monotonic() + cfg.warmup
        end = start + cfg.seconds
        sync.window_times[0], sync.window_times[1] = start, end
        sync.go.set()
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0 = process_cpu_seconds(server_pid) if server_pid else 0.0
        csw0 = process_context_switches(server_pid) if server_pid else 0
        time.sleep(max(0.0, end - time.monotonic()))
        cpu1 = process_cpu_seconds(server_pid) if server_pid else 0.0
        csw1 = process_context_switches(server_pid) if server_pid else 0
        load_after = _load1()
        collect_deadline = time.monotonic() + cfg.call_timeout + 15
        for _ in procs:
            reports.append(sync.results.get(timeout=max(0.1, collect_deadline - time.monotonic())))
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    failures = [r.error for r in reports if r.error]
    if failures:
        raise RuntimeError(f"client failures: {failures}")

    completed = sum(r.completed for r in reports)
    latencies = sorted(x for r in reports for x in r.latencies)
    client_cpu = sum(r.cpu_seconds for r in reports)
    per_req = 1e6 / completed if completed else float("nan")
    return LoadResult(
        grpcio_client=grpc.__version__,
        grpcio_server=grpcio_server,
        target=cfg.target,
        method=cfg.resolved_method,
        kind=cfg.kind,
        clients=cfg.clients,
        inflight=cfg.inflight,
        payload=cfg.payload,
        seconds=cfg.seconds,
        completed=completed,
        errors=sum(r.errors for r in reports),
        rps=completed / cfg.seconds,
        p50_ms=1e3 * _percentile(latencies, 0.50),
        p90_ms=1e3 * _percentile(latencies, 0.90),
        p99_ms=1e3 * _percentile(latencies, 0.99),
        max_ms=1e3 * latencies[-1] if latencies else float("nan"),
        server_cpu_us_per_req=(cpu1 - cpu0) * per_req if server_pid else None,
        server_cpu_core_fraction=(cpu1 - cpu0) / cfg.seconds if server_pid else None,
        server_ctx_switches_per_req=(csw1 - csw0) * per_req / 1e6 if server_pid else None,
        client_cpu_us_per_req=client_cpu * per_req,
        client_cpu_core_fraction=client_cpu / cfg.seconds,
        load1_before=load_before,
        load1_after=load_after,
    )


def run_echo_benchmark(cfg_template: LoadConfig | None = None, server_python: str | None = None) -> LoadResult:
    """Start the echo server in its own process, drive it with ``run_load``, stop it."""
    base = cfg_template or LoadConfig(target="")
    with EchoServerProcess(python=server_python) as server:
        cfg = replace(base, target=server.target)
        return run_load(cfg, server_pid=server.pid, grpcio_server=server.grpcio_version)


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
    cfg = LoadConfig(
        target=args.target or "",
        kind=args.kind,
        method=args.method,
        clients=args.clients,
        inflight=args.inflight,
        payload=args.payload,
        seconds=args.seconds,
        warmup=args.warmup,
        max_requests_per_client=args.max_requests,
        request_factory=args.requests,
    )
    if args.target:
        result = run_load(cfg, server_pid=args.server_pid)
    else:
        result = run_echo_benchmark(cfg, server_python=args.server_python)
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
