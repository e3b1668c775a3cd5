"""Screening against echo with a compiled client: server CPU per call, same client, same run.

    python -m benchmarks.compiled [--quick] [--json PATH]        (`make loadgen` builds the client)

The Python load generator (`benchmarks.loadgen`) spends 140–340 µs of CPU per call and saturates
the machine on echo, so the throughput ratio it reports measures it as much as the service. Here
the client is `benchmarks/loadgen_cc` (C++ `grpc::GenericStub`, one thread, one completion queue),
driving a grpc.aio echo server (`benchmarks.grpc_echo`) and the real `riskgate serve` with its
redis-server (`benchmarks.servers.ScreeningStack`) with the same pre-serialised `riskgate synth`
requests (`benchmarks.traffic.write_pool`), each sent with a fresh request id that the client
appends (so a cycled request is screened again, not answered from the idempotency record):

1. saturation, closed loop: `rounds` rounds of echo then screening, `inflight` calls in flight over
   `channels` connections, `seconds` measured after a warm-up. The client reports, over its measured
   window, its own CPU (getrusage), the CPU of the server and of redis-server (/proc/<pid>/stat, all
   threads) and the machine's busy share (/proc/stat). **The steering figure,
   `compiled.server_cpu_ratio`, is the median over rounds of the screening server's CPU per call ÷
   the echo server's CPU per call in the same round**; the throughput ratio stands beside it. Each
   run is classed by what saturated first: the client (its CPU ≥ 0.9 of a core), else the server's
   main thread (≥ 0.9 of a core: grpc.aio and our Python run on it), else the machine (≥ 85 % of all
   cores busy), else none of them.
2. latency at half the screening throughput: open loop (Poisson arrivals) at that offered rate,
   p50 / p99 from the client's clock (from each call's send; the p99 from its scheduled time and
   the send slip beside it); then echo at the same rate.
3. ScreenStream against the echo stream: `streams` ping-pong streams, then `streams` streams with
   `stream_depth` messages in flight on each (a client streaming what it has: the server screens
   what has arrived as a batch); events/s and server CPU per event, medians over interleaved rounds.

Prints one line per phase; `run_part` returns the figures (keys `compiled.*`) for
benchmarks/results/latest.json. Loopback only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import grpc_echo
from benchmarks.common import REPO, Json, median, part_main, rounded, thread_cpu_seconds
from benchmarks.servers import SCREEN_METHOD, STREAM_METHOD, ScreeningStack
from benchmarks.traffic import write_pool

LOADGEN = REPO / "benchmarks" / "loadgen_cc" / "build" / "loadgen"
CLIENT_BOUND = 0.9  # of one core: the client sends from one thread
SERVER_BOUND = 0.9  # of one core: the server's main thread (its event loop)
MACHINE_BOUND = 0.85  # of all cores busy (server, client, Redis and the neighbours together)


@dataclass(frozen=True)
class CompiledConfig:
    rounds: int = 5
    seconds: float = 6.0
    warmup: float = 1.5
    inflight: int = 16
    channels: int = 2
    latency_seconds: float = 20.0
    stream_rounds: int = 3
    streams: int = 16
    stream_depth: int = 64
    pool_events: int = 20_000
    seed: int = 1


QUICK = CompiledConfig(rounds=3, seconds=3.0, warmup=1.0, latency_seconds=6.0, stream_rounds=1, pool_events=4_000)


class LoadgenMissingError(RuntimeError):
    pass


def binary() -> Path:
    if not LOADGEN.exists():
        raise LoadgenMissingError(
            f"no compiled load generator at {LOADGEN.relative_to(REPO)}: `make loadgen` builds it "
            "(Debian's g++, pkg-config, libgrpc++-dev, libprotobuf-dev)"
        )
    return LOADGEN


@dataclass(frozen=True)
class ClientRun:
    """One run of the compiled client: its JSON line, and the pids it watched (server, Redis)."""

    label: str
    report: Json
    server_pid: int
    redis_pid: int | None = None
    server_main_thread_cpu_s: float = float("nan")  # over the whole run, warm-up included
    wall_s: float = float("nan")
    extra: Json = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return int(self.report["ok"])

    @property
    def errors(self) -> int:
        return sum(int(n) for n in self.report["errors"].values())

    @property
    def rps(self) -> float:
        return float(self.report["rps"] or 0.0)

    @property
    def elapsed(self) -> float:
        return float(self.report["elapsed_s"])

    def _per_call_us(self, seconds: float | None) -> float:
        return 1e6 * seconds / self.ok if seconds is not None and self.ok else float("nan")

    @property
    def server_cpu_us(self) -> float:
        return self._per_call_us(self.report["watched_cpu_s"].get(str(self.server_pid)))

    @property
    def redis_cpu_us(self) -> float:
        if self.redis_pid is None:
            return float("nan")
        return self._per_call_us(self.report["watched_cpu_s"].get(str(self.redis_pid)))

    @property
    def client_cpu_us(self) -> float:
        return self._per_call_us(self.report["client_cpu_s"])

    @property
    def client_core_fraction(self) -> float:
        return float(self.report["client_cpu_s"]) / self.elapsed if self.elapsed else float("nan")

    @property
    def server_core_fraction(self) -> float:
        cpu = self.report["watched_cpu_s"].get(str(self.server_pid))
        return float(cpu) / self.elapsed if cpu is not None and self.elapsed else float("nan")

    @property
    def server_main_thread_core_fraction(self) -> float:
        return self.server_main_thread_cpu_s / self.wall_s if self.wall_s else float("nan")

    @property
    def machine_busy(self) -> float:
        value = self.report["machine_busy_fraction"]
        return float(value) if value is not None else float("nan")

    @property
    def saturated_first(self) -> str:
        """What set the pace of a closed-loop run: "client", else "server", else "machine", else "none"."""
        if self.client_core_fraction >= CLIENT_BOUND:
            return "client"
        if self.server_main_thread_core_fraction >= SERVER_BOUND:
            return "server"
        if self.machine_busy >= MACHINE_BOUND:
            return "machine"
        return "none"

    def latency_ms(self, name: str) -> float:
        value = self.report["latency_ms"][name]
        return float(value) if value is not None else float("nan")

    def describe(self) -> str:
        redis = f" redis={self.redis_cpu_us:.0f}us" if self.redis_pid is not None else ""
        errors = f" errors={self.report['errors']}" if self.errors else ""
        return (
            f"{self.label}: {self.rps:.0f}/s p50={self.latency_ms('p50'):.2f}ms p99={self.latency_ms('p99'):.2f}ms "
            f"server={self.server_cpu_us:.0f}us ({self.server_core_fraction:.0%} core, main thread "
            f"{self.server_main_thread_core_fraction:.0%}){redis} client={self.client_cpu_us:.0f}us "
            f"({self.client_core_fraction:.0%} core) machine={self.machine_busy:.0%} busy{errors}"
        )


def drive(
    target: str,
    method: str,
    requests: Path,
    *,
    mode: str = "unary",
    inflight: int = 16,
    channels: int = 2,
    seconds: float | None = None,
    count: int | None = None,
    warmup: float = 0.0,
    rate: float | None = None,
    unique_ids: str | None = None,
    watch_pids: Sequence[int] = (),
    metadata: Sequence[tuple[str, str]] = (),
    depth: int = 1,
) -> Json:
    """Run the compiled client once; its JSON line as a dict (`depth`: messages in flight per stream)."""
    argv = [str(binary()), "--target", target, "--method", method, "--requests", str(requests), "--mode", mode]
    argv += ["--inflight", str(inflight), "--channels", str(channels), "--warmup", str(warmup)]
    if depth != 1:
        argv += ["--depth", str(depth)]
    if count is not None:
        argv += ["--count", str(count)]
    if seconds is not None:
        argv += ["--seconds", str(seconds)]
    if rate is not None:
        argv += ["--rate", str(rate)]
    if unique_ids:
        argv += ["--unique-ids", unique_ids]
    for pid in watch_pids:
        argv += ["--watch-pid", str(pid)]
    for key, value in metadata:
        argv += ["--metadata", f"{key}={value}"]
    timeout = warmup + (seconds or 0.0) + 60.0
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen exited {done.returncode}: {done.stderr.strip()}")
    report: Json = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _print(line: str) -> None:
    print(line, flush=True)


class _Session:
    """The two servers, the request file and a run counter (each run's request ids are its own)."""

    def __init__(
        self, cfg: CompiledConfig, requests: Path, stack: ScreeningStack, echo: grpc_echo.EchoServerProcess
    ) -> None:
        self.cfg = cfg
        self.requests = requests
        self.stack = stack
        self.echo = echo
        self.runs = 0

    def run(self, which: str, label: str, **options: Any) -> ClientRun:
        self.runs += 1
        screening = which == "screen"
        stream = options.get("mode") == "stream"
        if screening:
            target, server_pid, redis_pid = self.stack.address, self.stack.pid, self.stack.redis_pid
            method = STREAM_METHOD if stream else SCREEN_METHOD
        else:
            target, server_pid, redis_pid = self.echo.target, self.echo.pid, None
            method = grpc_echo.STREAM_METHOD if stream else grpc_echo.UNARY_METHOD
        options.setdefault("inflight", self.cfg.inflight)
        options.setdefault("seconds", self.cfg.seconds)
        options.setdefault("warmup", self.cfg.warmup)
        watched = [server_pid] + ([redis_pid] if redis_pid is not None else [])
        before = self.stack.snapshot() if screening else None
        threads_before = thread_cpu_seconds(server_pid).get("main", 0.0)
        started = time.monotonic()
        report = drive(
            target, method, self.requests, channels=self.cfg.channels, unique_ids=f"cc{self.runs}",
            watch_pids=watched, **options,
        )  # fmt: skip
        wall = time.monotonic() - started
        main_thread = thread_cpu_seconds(server_pid).get("main", 0.0) - threads_before
        extra: Json = {}
        if before is not None:
            delta = self.stack.snapshot().minus(before)
            extra = {"degraded_share": delta["degraded_share"], "replayed": delta["replayed"]}
        return ClientRun(label, report, server_pid, redis_pid, main_thread, wall, extra)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def saturation(s: _Session) -> Json:
    echoes: list[ClientRun] = []
    screens: list[ClientRun] = []
    for round_ in range(s.cfg.rounds):
        echoes.append(s.run("echo", f"echo{round_ + 1}"))
        screens.append(s.run("screen", f"screen{round_ + 1}"))
    cpu_ratios = [_ratio(sc.server_cpu_us, ec.server_cpu_us) for sc, ec in zip(screens, echoes, strict=True)]
    rps_ratios = [_ratio(sc.rps, ec.rps) for sc, ec in zip(screens, echoes, strict=True)]

    def most_common(runs: list[ClientRun]) -> str:
        labels = [r.saturated_first for r in runs]
        return max(sorted(set(labels)), key=labels.count)

    out: Json = {
        "compiled.server_cpu_ratio": rounded(median(cpu_ratios), 2),
        "compiled.server_cpu_ratio_per_round": [rounded(r, 2) for r in cpu_ratios],
        "compiled.throughput_ratio": rounded(median(rps_ratios), 3),
        "compiled.throughput_ratio_per_round": [rounded(r, 3) for r in rps_ratios],
        "compiled.screen_rps": round(median([r.rps for r in screens])),
        "compiled.echo_rps": round(median([r.rps for r in echoes])),
        "compiled.inflight": s.cfg.inflight,
        "compiled.screen_server_cpu_us_per_call": rounded(median([r.server_cpu_us for r in screens])),
        "compiled.echo_server_cpu_us_per_call": rounded(median([r.server_cpu_us for r in echoes])),
        "compiled.screen_server_core_fraction": rounded(median([r.server_core_fraction for r in screens]), 2),
        "compiled.echo_server_core_fraction": rounded(median([r.server_core_fraction for r in echoes]), 2),
        "compiled.screen_server_main_thread_core_fraction": rounded(
            median([r.server_main_thread_core_fraction for r in screens]), 2
        ),
        "compiled.echo_server_main_thread_core_fraction": rounded(
            median([r.server_main_thread_core_fraction for r in echoes]), 2
        ),
        "compiled.redis_cpu_us_per_screen": rounded(median([r.redis_cpu_us for r in screens])),
        "compiled.client_cpu_us_per_screen": rounded(median([r.client_cpu_us for r in screens])),
        "compiled.client_cpu_us_per_echo": rounded(median([r.client_cpu_us for r in echoes])),
        "compiled.client_core_fraction_screen": rounded(median([r.client_core_fraction for r in screens]), 2),
        "compiled.client_core_fraction_echo": rounded(median([r.client_core_fraction for r in echoes]), 2),
        "compiled.machine_busy_fraction_screen": rounded(median([r.machine_busy for r in screens]), 2),
        "compiled.machine_busy_fraction_echo": rounded(median([r.machine_busy for r in echoes]), 2),
        "compiled.saturated_first_screen": most_common(screens),
        "compiled.saturated_first_echo": most_common(echoes),
        "compiled.saturation_p99_ms_screen": rounded(median([r.latency_ms("p99") for r in screens]), 2),
        "compiled.saturation_p99_ms_echo": rounded(median([r.latency_ms("p99") for r in echoes]), 2),
        "compiled.errors": sum(r.errors for r in screens + echoes),
        "compiled.degraded_share": rounded(max(r.extra["degraded_share"] for r in screens), 4),
        "compiled.replayed": int(sum(r.extra["replayed"] for r in screens)),
        "compiled.runs": [r.describe() for r in echoes + screens],
    }
    _print(
        f"compiled client, saturation ({s.cfg.rounds} rounds, {s.cfg.inflight} in flight): "
        f"server CPU per call screening {out['compiled.screen_server_cpu_us_per_call']} us / echo "
        f"{out['compiled.echo_server_cpu_us_per_call']} us = {out['compiled.server_cpu_ratio']} "
        f"(rounds {out['compiled.server_cpu_ratio_per_round']}); throughput {out['compiled.screen_rps']}/s / "
        f"{out['compiled.echo_rps']}/s = {out['compiled.throughput_ratio']}; redis "
        f"{out['compiled.redis_cpu_us_per_screen']} us/screen; client {out['compiled.client_cpu_us_per_screen']} / "
        f"{out['compiled.client_cpu_us_per_echo']} us/call ({out['compiled.client_core_fraction_screen']:.0%} / "
        f"{out['compiled.client_core_fraction_echo']:.0%} core); machine "
        f"{out['compiled.machine_busy_fraction_screen']:.0%} / {out['compiled.machine_busy_fraction_echo']:.0%} busy; "
        f"server main thread {out['compiled.screen_server_main_thread_core_fraction']:.0%} / "
        f"{out['compiled.echo_server_main_thread_core_fraction']:.0%} core; saturated first: screening "
        f"{out['compiled.saturated_first_screen']}, echo {out['compiled.saturated_first_echo']}; "
        f"errors {out['compiled.errors']}, degraded {out['compiled.degraded_share']:.2%}"
    )
    return out


def half_load(s: _Session, screen_rps: float) -> Json:
    rate = max(1.0, 0.5 * screen_rps)
    options: Json = {"mode": "open", "rate": rate, "seconds": s.cfg.latency_seconds}
    screen = s.run("screen", "screen-half", **options)
    echo = s.run("echo", "echo-half", **options)
    out: Json = {
        "compiled.half_load_offered_rps": round(rate),
        "compiled.half_load_achieved_rps": round(screen.rps),
        "compiled.half_load_p50_ms": rounded(screen.latency_ms("p50"), 2),
        "compiled.half_load_p90_ms": rounded(screen.latency_ms("p90"), 2),
        "compiled.half_load_p99_ms": rounded(screen.latency_ms("p99"), 2),
        "compiled.half_load_p999_ms": rounded(screen.latency_ms("p999"), 2),
        "compiled.half_load_max_ms": rounded(screen.latency_ms("max"), 2),
        "compiled.half_load_p99_from_schedule_ms": rounded(float(screen.report["from_schedule_p99_ms"] or "nan"), 2),
        "compiled.half_load_send_slip_p99_ms": rounded(float(screen.report["slip_p99_ms"] or "nan"), 2),
        "compiled.half_load_server_cpu_us_per_screen": rounded(screen.server_cpu_us),
        "compiled.half_load_machine_busy_fraction": rounded(screen.machine_busy, 2),
        "compiled.half_load_errors": screen.errors + echo.errors,
        "compiled.half_load_dropped": int(screen.report["dropped"]) + int(echo.report["dropped"]),
        "compiled.half_load_echo_p50_ms": rounded(echo.latency_ms("p50"), 2),
        "compiled.half_load_echo_p99_ms": rounded(echo.latency_ms("p99"), 2),
        "compiled.half_load_seconds": s.cfg.latency_seconds,
        "compiled.half_load_runs": [screen.describe(), echo.describe()],
    }
    _print(
        f"compiled client, half load {rate:.0f}/s offered for {s.cfg.latency_seconds:g}s (open loop, Poisson): "
        f"screening p50={out['compiled.half_load_p50_ms']}ms p99={out['compiled.half_load_p99_ms']}ms "
        f"p99.9={out['compiled.half_load_p999_ms']}ms "
        f"(from schedule p99 {out['compiled.half_load_p99_from_schedule_ms']}ms, "
        f"send slip p99 {out['compiled.half_load_send_slip_p99_ms']}ms, "
        f"achieved {screen.rps:.0f}/s); echo p50={out['compiled.half_load_echo_p50_ms']}ms "
        f"p99={out['compiled.half_load_echo_p99_ms']}ms; machine {screen.machine_busy:.0%} busy"
    )
    return out


def streams(s: _Session, depth: int = 1) -> Json:
    """ScreenStream against the echo stream, `depth` messages in flight per stream: with depth 1
    the keys `compiled.stream_*`, else `compiled.stream_deep_*`."""
    screens: list[ClientRun] = []
    echoes: list[ClientRun] = []
    options: Json = {"mode": "stream", "inflight": s.cfg.streams, "depth": depth}
    name, shape = ("stream", "ping-pong") if depth == 1 else (f"stream{depth}", f"{depth} in flight on each")
    for round_ in range(s.cfg.stream_rounds):
        echoes.append(s.run("echo", f"echo-{name}-{round_ + 1}", **options))
        screens.append(s.run("screen", f"screen-{name}-{round_ + 1}", **options))
    eps, echo_mps = median([r.rps for r in screens]), median([r.rps for r in echoes])
    cpu_ratios = [_ratio(sc.server_cpu_us, ec.server_cpu_us) for sc, ec in zip(screens, echoes, strict=True)]
    key = "compiled.stream" if depth == 1 else "compiled.stream_deep"
    out: Json = {
        f"{key}_eps": round(eps),
        f"{key}_echo_mps": round(echo_mps),
        f"{key}_ratio": rounded(_ratio(eps, echo_mps), 3),
        f"{key}_streams": s.cfg.streams,
        f"{key}_depth": depth,
        f"{key}_server_cpu_us_per_event": rounded(median([r.server_cpu_us for r in screens])),
        f"{key}_echo_server_cpu_us_per_message": rounded(median([r.server_cpu_us for r in echoes])),
        f"{key}_server_cpu_ratio": rounded(median(cpu_ratios), 2),
        f"{key}_client_core_fraction": rounded(median([r.client_core_fraction for r in screens]), 2),
        f"{key}_degraded_share": median([float(r.extra.get("degraded_share", 0.0)) for r in screens]),
        f"{key}_errors": sum(r.errors for r in screens + echoes),
        f"{key}_runs": [r.describe() for r in echoes + screens],
    }
    _print(
        f"compiled client, ScreenStream ({s.cfg.streams} streams, {shape}): {eps:.0f} events/s vs echo stream "
        f"{echo_mps:.0f} msg/s = {out[f'{key}_ratio']}; server "
        f"{out[f'{key}_server_cpu_us_per_event']} us/event vs "
        f"{out[f'{key}_echo_server_cpu_us_per_message']} us/msg = {out[f'{key}_server_cpu_ratio']}"
    )
    return out


def bench(cfg: CompiledConfig, requests: Path) -> Json:
    binary()
    with ScreeningStack() as stack, grpc_echo.EchoServerProcess() as echo:
        s = _Session(cfg, requests, stack, echo)
        # First keys, code paths and connections, before anything is measured.
        s.run("screen", "warm-screen", seconds=2.0, warmup=0.5)
        s.run("echo", "warm-echo", seconds=1.0, warmup=0.5)
        out = saturation(s)
        out.update(half_load(s, float(out["compiled.screen_rps"])))
        out.update(streams(s))
        out.update(streams(s, depth=cfg.stream_depth))
    return out


def run_part(quick: bool) -> Json:
    cfg = QUICK if quick else CompiledConfig()
    binary()  # before generating traffic
    with tempfile.TemporaryDirectory(prefix="rg-bench-compiled-") as tmp:
        started = time.perf_counter()
        pool = write_pool(Path(tmp) / "requests.bin", seed=cfg.seed, events=cfg.pool_events, now=datetime.now(UTC))
        _print(
            f"compiled client: {pool.events} riskgate synth requests (seed {cfg.seed}, {pool.mean_bytes:.0f} B each) "
            f"in {time.perf_counter() - started:.1f}s"
        )
        figures = bench(cfg, pool.path)
    figures["compiled.config"] = asdict(cfg)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    return part_main("python -m benchmarks.compiled", __doc__, run_part, "3 short rounds (about a minute)", argv)


if __name__ == "__main__":
    sys.exit(main())
