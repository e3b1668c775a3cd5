"""The one load generator of the benchmarks: several client processes, closed loop or a fixed offered rate.

Two ways to load a loopback gRPC server with pre-serialised requests (`request_factory`, called in
each client process as `factory(client_index, payload)`; see `benchmarks.traffic.PoolSlice` and
`benchmarks.grpc_echo.echo_requests`):

* **closed loop** (`rate=None`): each client process keeps `inflight` calls outstanding, each slot
  sending its next call when its last one answers: throughput at saturation. Unary calls, or
  ping-pong on `inflight` long-lived bidirectional streams per client (`kind="stream"`).
* **open loop** (`rate=R`, unary): each client sends on its own seeded Poisson schedule at
  `R / clients` calls per second whatever the answers do (no limit on calls in flight but
  `max_outstanding`): latency at a given load, without the coordinated omission of a closed loop,
  where a slow answer delays the next request and hides the queueing it caused.

The slots of a client take the *next unsent* request of its list, so no request is sent twice while
the list lasts: the real service answers a repeated request_id from its idempotency record, far
more cheaply than a screening. A client whose list is used up stops (`ran_dry`), unless `repeat`
cycles the list (for the echo server, where a repeat costs what the first call did) or
`max_requests_per_client` stops it earlier.

Measurement: a common window after a warm-up; calls that complete inside it count; server CPU
from /proc/<pid>/stat (all threads) over the window; client CPU from getrusage of each client
process over the window; per-request figures divide by the completed calls. In open loop, latency
is measured from the moment a call is sent; the schedule slip (send time minus scheduled time) is
reported too: a p99 slip beyond a millisecond or two means the client was late (CPU-starved), and
`p99_from_schedule_ms` (latency counted from the scheduled time, slip included) is the conservative
figure.

Needs only grpcio (no project imports), so `benchmarks.grpc_echo` runs it inside throwaway venvs.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import resource
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import grpc.aio

_STARTUP_TIMEOUT = 60.0
_MAX_RATE = 50_000.0
_MAX_SECONDS = 600.0
_MAX_CLIENTS = 64
_MAX_INFLIGHT = 4096
_MAX_ERRORS = 1000
_LOOPBACK_HOSTS = frozenset({"localhost", "::1", "[::1]"})

Kind = Literal["unary", "stream"]
# (client_index, payload_bytes) -> the client's serialized requests, in the order it sends them.
RequestFactory = Callable[[int, int], Sequence[bytes]]


def _identity(data: bytes) -> bytes:
    return data


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


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [float(x) for x in open("/proc/stat").readline().split()[1:]]  # noqa: SIM115 - one line
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


# ------------------------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class LoadSpec:
    target: str
    method: str  # the full method path, e.g. /riskgate.v1.Screening/Screen
    request_factory: RequestFactory
    kind: Kind = "unary"
    clients: int = 3
    inflight: int = 8  # closed loop: calls (or streams) in flight per client
    rate: float | None = None  # open loop: total offered calls per second
    seconds: float = 8.0
    warmup: float = 1.5
    payload: int = 300  # the factory's second argument (request bytes, for factories that take it)
    repeat: bool = False  # cycle the request list instead of stopping when it is used up
    max_requests_per_client: int | None = None  # stop each client after this many calls
    call_timeout: float = 10.0
    max_outstanding: int = 2000  # open loop, per client: beyond it a scheduled call is dropped and counted
    seed: int = 1

    def validate(self) -> None:
        host = self.target.rsplit(":", 1)[0]
        if not host.startswith("127.") and host not in _LOOPBACK_HOSTS:
            raise ValueError(f"loopback targets only, got {self.target!r}")
        if self.rate is not None and (not 0 < self.rate <= _MAX_RATE or self.kind != "unary"):
            raise ValueError(f"rate must be in (0, {_MAX_RATE:g}] and only for unary calls")
        if not 0 < self.seconds <= _MAX_SECONDS or not 0 <= self.warmup <= _MAX_SECONDS:
            raise ValueError("seconds must be in (0, 600], warmup in [0, 600]")
        if not 1 <= self.clients <= _MAX_CLIENTS or not 1 <= self.inflight <= _MAX_INFLIGHT:
            raise ValueError(f"clients must be in [1, {_MAX_CLIENTS}], inflight in [1, {_MAX_INFLIGHT}]")
        if self.payload < 0 or (self.max_requests_per_client is not None and self.max_requests_per_client < 1):
            raise ValueError("payload must be >= 0 and max_requests_per_client >= 1")


@dataclass
class _Report:
    index: int
    completed: int = 0
    errors: int = 0
    dropped: int = 0
    exhausted: bool = False
    cpu_seconds: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    slips: array[float] = field(default_factory=lambda: array("d"))
    sent_at: array[float] = field(default_factory=lambda: array("d"))  # seconds into the window
    error: str = ""


class _Client:
    """One client process's run: its channel, its request list, its report."""

    def __init__(self, index: int, spec: LoadSpec, sync: dict[str, Any]) -> None:
        self.index = index
        self.spec = spec
        self.sync = sync
        self.report = _Report(index)
        self.requests = list(spec.request_factory(index, spec.payload))
        if not self.requests:
            raise ValueError("the request factory returned no requests")
        self.limit = sys.maxsize if spec.repeat else len(self.requests)
        if spec.max_requests_per_client is not None:
            self.limit = min(self.limit, spec.max_requests_per_client)
        self.sent = 0
        self.start = self.end = 0.0

    def take(self) -> bytes | None:
        """The next unsent request, or None when the client is done (reported: the run ran dry)."""
        if self.sent >= self.limit:
            self.report.exhausted = True
            return None
        self.sent += 1
        return self.requests[(self.sent - 1) % len(self.requests)]

    def sending(self) -> bool:
        return time.monotonic() < self.end and self.report.errors < _MAX_ERRORS

    def done(self, sent: float, finished: float, scheduled: float | None = None) -> None:
        in_window = self.start <= (finished if scheduled is None else scheduled) <= self.end
        if in_window:
            self.report.completed += 1
            self.report.latencies.append(finished - sent)
            self.report.sent_at.append(sent - self.start)
            if scheduled is not None:
                self.report.slips.append(sent - scheduled)

    async def run(self) -> None:
        spec = self.spec
        async with grpc.aio.insecure_channel(spec.target) as channel:
            await asyncio.wait_for(channel.channel_ready(), _STARTUP_TIMEOUT)
            self.sync["ready"].put(self.index)
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, self.sync["go"].wait, _STARTUP_TIMEOUT):
                raise TimeoutError("no go signal")
            self.start, self.end = self.sync["window"][0], self.sync["window"][1]
            work: list[Any] = [self._cpu_sampler()]
            if spec.rate is not None:
                work.append(self._open_loop(channel))
            elif spec.kind == "unary":
                work += [self._unary_slot(channel) for _ in range(spec.inflight)]
            else:
                work += [self._stream_slot(channel) for _ in range(spec.inflight)]
            async with asyncio.timeout(self.end - time.monotonic() + spec.warmup + spec.call_timeout + 5):
                await asyncio.gather(*work)

    async def _cpu_sampler(self) -> None:
        await asyncio.sleep(max(0.0, self.start - time.monotonic()))
        before = _self_cpu()
        await asyncio.sleep(max(0.0, self.end - time.monotonic()))
        self.report.cpu_seconds = _self_cpu() - before

    async def _unary_slot(self, channel: grpc.aio.Channel) -> None:
        call = channel.unary_unary(self.spec.method, request_serializer=_identity, response_deserializer=_identity)
        while self.sending():
            request = self.take()
            if request is None:
                return
            sent = time.monotonic()
            try:
                await call(request, timeout=self.spec.call_timeout)
            except grpc.aio.AioRpcError:
                self.report.errors += 1
                continue
            self.done(sent, time.monotonic())

    async def _stream_slot(self, channel: grpc.aio.Channel) -> None:
        stream = channel.stream_stream(self.spec.method, request_serializer=_identity, response_deserializer=_identity)
        call = stream()
        try:
            while self.sending():
                request = self.take()
                if request is None:
                    break
                sent = time.monotonic()
                await call.write(request)
                response = await call.read()
                if response is grpc.aio.EOF:
                    self.report.errors += 1
                    return
                self.done(sent, time.monotonic())
            await call.done_writing()
            await asyncio.wait_for(call.code(), self.spec.call_timeout)
        except grpc.aio.AioRpcError:
            self.report.errors += 1

    async def _open_loop(self, channel: grpc.aio.Channel) -> None:
        spec = self.spec
        assert spec.rate is not None
        call = channel.unary_unary(spec.method, request_serializer=_identity, response_deserializer=_identity)
        rng = random.Random(spec.seed * 1000 + self.index)
        per_client = spec.rate / spec.clients
        outstanding: set[asyncio.Task[None]] = set()

        async def one(request: bytes, scheduled: float) -> None:
            sent = time.monotonic()
            try:
                await call(request, timeout=spec.call_timeout)
            except grpc.aio.AioRpcError:
                self.report.errors += self.start <= scheduled <= self.end
                return
            self.done(sent, time.monotonic(), scheduled)

        next_at = self.start - spec.warmup + rng.expovariate(per_client)
        while next_at < self.end:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while next_at <= time.monotonic() and next_at < self.end:
                if len(outstanding) >= spec.max_outstanding:
                    self.report.dropped += self.start <= next_at
                else:
                    request = self.take()
                    if request is None:
                        break
                    task = asyncio.create_task(one(request, next_at))
                    outstanding.add(task)
                    task.add_done_callback(outstanding.discard)
                next_at += rng.expovariate(per_client)
        if outstanding:
            await asyncio.wait(outstanding, timeout=spec.call_timeout + 1)


def _client_process(index: int, spec: LoadSpec, sync: dict[str, Any]) -> None:
    report = _Report(index)
    try:
        client = _Client(index, spec, sync)
        report = client.report
        asyncio.run(client.run())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        report.error = f"{type(exc).__name__}: {exc}"
    sync["results"].put(report)


# ------------------------------------------------------------------------------------------- figures


@dataclass
class LoadFigures:
    mode: str  # "closed" or "open"
    kind: str
    clients: int
    inflight: int
    seconds: float
    offered_rps: float | None
    rps: float
    completed: int
    errors: int
    dropped: int
    ran_dry: bool  # a client used up its request list before the window ended
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    p99_from_schedule_ms: float | None
    slip_p99_ms: float | None
    server_cpu_us_per_req: float | None
    server_cpu_core_fraction: float | None
    server_ctx_switches_per_req: float | None
    client_cpu_us_per_req: float
    client_cpu_core_fraction: float
    client_cpu_max_process_fraction: float  # the busiest client process's share of one core
    machine_busy_fraction: float  # all cores, over the window (from /proc/stat)
    samples: list[tuple[float, float]] = field(default_factory=list)
    p99_ms_by_slice: list[float] = field(default_factory=list)  # p99 of the calls sent in each `slice_seconds`
    slice_seconds: float = 5.0

    @property
    def client_saturated(self) -> bool:
        """A client process near a whole core: the load generator, not the server, set the pace."""
        return self.client_cpu_max_process_fraction >= 0.9

    def describe(self) -> str:
        server = "n/a"
        if self.server_cpu_us_per_req is not None and self.server_cpu_core_fraction is not None:
            server = f"{self.server_cpu_us_per_req:.0f}us/req ({100 * self.server_cpu_core_fraction:.0f}% core)"
        load = f"{self.offered_rps:.0f}/s offered" if self.offered_rps else f"{self.clients}x{self.inflight} in flight"
        text = (
            f"{self.rps:.0f}/s ({load}) p50={self.p50_ms:.2f}ms p99={self.p99_ms:.2f}ms p99.9={self.p999_ms:.2f}ms "
            f"server_cpu={server} client_cpu={self.client_cpu_us_per_req:.0f}us/req "
            f"({100 * self.client_cpu_core_fraction:.0f}% core) machine={100 * self.machine_busy_fraction:.0f}% busy"
        )
        if self.slip_p99_ms is not None:
            text += f" slip_p99={self.slip_p99_ms:.2f}ms"
        if self.errors or self.dropped or self.ran_dry:
            text += f" errors={self.errors} dropped={self.dropped} ran_dry={self.ran_dry}"
        return text


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[rank]


def run(
    spec: LoadSpec,
    server_pid: int | None = None,
    sample: Callable[[], float] | None = None,
    sample_every: float = 1.0,
) -> LoadFigures:
    """Drive `spec.target` from `spec.clients` processes over one common window.

    `sample()` is called every `sample_every` seconds during the window (e.g. the server's RSS); the
    values come back as (seconds into the window, value) in `samples`.
    """
    spec.validate()
    ctx = mp.get_context("spawn")  # no fork after grpc is initialised
    sync: dict[str, Any] = {
        "ready": ctx.Queue(),
        "go": ctx.Event(),
        "window": ctx.Array("d", 2),
        "results": ctx.Queue(),
    }
    procs = [ctx.Process(target=_client_process, args=(i, spec, sync), daemon=True) for i in range(spec.clients)]
    for proc in procs:
        proc.start()
    reports: list[_Report] = []
    samples: list[tuple[float, float]] = []
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        for _ in procs:
            sync["ready"].get(timeout=max(0.1, deadline - time.monotonic()))
        start = time.monotonic() + spec.warmup + 0.1
        end = start + spec.seconds
        sync["window"][0], sync["window"][1] = start, end
        sync["go"].set()
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0 = process_cpu_seconds(server_pid) if server_pid else 0.0
        csw0 = process_context_switches(server_pid) if server_pid else 0
        busy0, total0 = _cpu_times()
        while time.monotonic() < end:
            if sample is not None:
                samples.append((round(time.monotonic() - start, 2), sample()))
            time.sleep(max(0.0, min(sample_every, end - time.monotonic())))
        cpu1 = process_cpu_seconds(server_pid) if server_pid else 0.0
        csw1 = process_context_switches(server_pid) if server_pid else 0
        busy1, total1 = _cpu_times()
        collect_deadline = time.monotonic() + spec.call_timeout + 20
        for _ in procs:
            reports.append(sync["results"].get(timeout=max(0.1, collect_deadline - time.monotonic())))
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
    open_loop = spec.rate is not None
    from_schedule: list[float] = []
    if open_loop:
        from_schedule = sorted(x + s for r in reports for x, s in zip(r.latencies, r.slips, strict=True))
    slips = sorted(x for r in reports for x in r.slips)
    per_req = 1e6 / completed if completed else float("nan")
    client_cpu = sum(r.cpu_seconds for r in reports)
    slice_seconds = 5.0
    slices: list[list[float]] = [[] for _ in range(max(1, int(spec.seconds // slice_seconds)))]
    for r in reports:
        for at, latency in zip(r.sent_at, r.latencies, strict=True):
            slices[min(len(slices) - 1, max(0, int(at // slice_seconds)))].append(latency)
    return LoadFigures(
        mode="open" if open_loop else "closed",
        kind=spec.kind,
        clients=spec.clients,
        inflight=spec.inflight,
        seconds=spec.seconds,
        offered_rps=spec.rate,
        rps=completed / spec.seconds,
        completed=completed,
        errors=sum(r.errors for r in reports),
        dropped=sum(r.dropped for r in reports),
        ran_dry=any(r.exhausted for r in reports),
        p50_ms=1e3 * percentile(latencies, 0.50),
        p90_ms=1e3 * percentile(latencies, 0.90),
        p99_ms=1e3 * percentile(latencies, 0.99),
        p999_ms=1e3 * percentile(latencies, 0.999),
        max_ms=1e3 * latencies[-1] if latencies else float("nan"),
        p99_from_schedule_ms=1e3 * percentile(from_schedule, 0.99) if open_loop else None,
        slip_p99_ms=1e3 * percentile(slips, 0.99) if open_loop else None,
        server_cpu_us_per_req=(cpu1 - cpu0) * per_req if server_pid else None,
        server_cpu_core_fraction=(cpu1 - cpu0) / spec.seconds if server_pid else None,
        server_ctx_switches_per_req=(csw1 - csw0) * per_req / 1e6 if server_pid else None,
        client_cpu_us_per_req=client_cpu * per_req,
        client_cpu_core_fraction=client_cpu / spec.seconds,
        client_cpu_max_process_fraction=max((r.cpu_seconds for r in reports), default=0.0) / spec.seconds,
        machine_busy_fraction=(busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan"),
        samples=samples,
        p99_ms_by_slice=[round(1e3 * percentile(sorted(x), 0.99), 2) for x in slices],
        slice_seconds=slice_seconds,
    )


def cores() -> int:
    return len(os.sched_getaffinity(0))
