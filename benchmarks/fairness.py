"""Fairness: does a flood of idle streams or a greedy streaming client move another client's latency?

    python -m benchmarks.fairness [--quick] [--json PATH]

The requirement: "a flood of idle streams or a greedy streaming client does not move other
clients' p99 by more than 2x". One redis-server and one `riskgate serve` (`benchmarks.servers`,
RISKGATE_MAX_CONCURRENT_RPCS raised to `max_concurrent_rpcs` so that the idle flood fits under it),
and a *victim*: one client process (`benchmarks.loadgen`, its own GIL and one gRPC channel)
sending unary Screen on an open-loop Poisson schedule at `victim_rate` calls per second for
`seconds` after a warm-up, recording the latency of every call. It runs in three scenarios,
`rounds` times each, interleaved (the order rotates each round):

1. baseline: the victim alone;
2. idle flood: another process holds `idle_streams` ScreenStreams open, each having sent one
   request and read its answer, then idle (one channel per `streams_per_channel` streams, each with
   its own connection through ``grpc.use_local_subchannel_pool``: channels with equal arguments
   share one connection, which the server caps at RISKGATE_MAX_STREAMS_PER_CONNECTION streams);
3. greedy streamer: `greedy_processes` processes, each pushing `greedy_streams` ScreenStreams as
   fast as the server answers, `greedy_inflight` messages in flight on each.

The aggressor is started, opens its streams (and, greedy, is flowing) before the victim starts, and
stops after the victim's window. Reported: the victim's p50 / p99 (medians over the rounds), the
ratios scenario ÷ baseline (of the medians, and per round against that round's baseline), whether
the p99 ratio stays within `target_ratio`, the greedy clients' throughput, the machine's busy share
(/proc/stat) and the server's CPU (process and main thread, where the event loop runs) over each run.
Every request id is unique (`benchmarks.traffic`).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import queue
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import grpc
import grpc.aio

from benchmarks import loadgen
from benchmarks.common import Json, median, part_main, rounded, thread_cpu_seconds
from benchmarks.servers import SCREEN_METHOD, STREAM_METHOD, ScreeningStack
from benchmarks.traffic import PoolInfo, PoolSlice, read_requests, repeats_needed, write_pool

Scenario = Literal["baseline", "idle", "greedy"]
SCENARIOS: tuple[Scenario, ...] = ("baseline", "idle", "greedy")
_READY_TIMEOUT = 120.0
_GREEDY_RAMP_SECONDS = 0.5  # the greedy streams flow this long before they report ready


@dataclass(frozen=True)
class FairnessConfig:
    rounds: int = 3
    seconds: float = 10.0  # the victim's measured window per run
    warmup: float = 1.0
    victim_rate: float = 200.0
    idle_streams: int = 2000
    streams_per_channel: int = 100
    greedy_processes: int = 1
    greedy_streams: int = 4  # per greedy process
    greedy_inflight: int = 32  # messages in flight per greedy stream
    max_concurrent_rpcs: int = 2500
    target_ratio: float = 2.0
    pool_events: int = 20_000
    seed: int = 3


QUICK = FairnessConfig(rounds=2, seconds=4.0, pool_events=5000)


def _identity(data: bytes) -> bytes:
    return data


def _print(line: str) -> None:
    print(line, flush=True)


# ------------------------------------------------------------------------------- aggressor processes


@dataclass
class AggressorReport:
    kind: str
    index: int
    opened: int = 0  # streams open (idle) or flowing (greedy) when the victim started
    setup_seconds: float = 0.0
    messages: int = 0  # answers received between ready and stop
    seconds: float = 0.0  # from ready to stop
    errors: int = 0
    first_error: str = ""
    lost: int = 0  # idle streams the server ended before the stop
    cpu_seconds: float = 0.0  # this process, from ready to stop
    error: str = ""  # the process failed


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Requests:
    """The pool's requests in a loop, each sent with a fresh request id."""

    def __init__(self, pool_path: str, label: str) -> None:
        self.messages = read_requests(Path(pool_path))
        self.label = label
        self.n = 0

    def next(self) -> bytes:
        message = self.messages[self.n % len(self.messages)]
        message.request_id = f"{self.label}-{self.n}"
        self.n += 1
        return message.SerializeToString()


class _Aggressor:
    def __init__(
        self,
        kind: Scenario,
        index: int,
        cfg: FairnessConfig,
        target: str,
        pool_path: str,
        label: str,
        sync: dict[str, Any],
    ) -> None:
        self.kind = kind
        self.cfg = cfg
        self.target = target
        self.sync = sync
        self.requests = _Requests(pool_path, f"{label}-p{index}")
        self.report = AggressorReport(kind, index)
        self.stopping = False

    def error(self, error: grpc.aio.AioRpcError) -> None:
        self.report.errors += 1
        if not self.report.first_error:
            self.report.first_error = f"{error.code().name}: {error.details()}"

    async def wait_for_stop(self) -> None:
        stop = self.sync["stop"]
        while not stop.is_set():
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        started = time.monotonic()
        if self.kind == "idle":
            await self._idle(started)
        else:
            await self._greedy(started)

    def _ready(self, started: float) -> tuple[float, float, int]:
        self.report.setup_seconds = time.monotonic() - started
        self.sync["ready"].put(self.report.index)
        return time.monotonic(), _self_cpu(), self.report.messages

    def _stopped(self, at: tuple[float, float, int]) -> None:
        self.report.seconds = time.monotonic() - at[0]
        self.report.cpu_seconds = _self_cpu() - at[1]
        self.report.messages -= at[2]

    async def _idle(self, started: float) -> None:
        cfg = self.cfg
        options = [("grpc.use_local_subchannel_pool", 1)]
        count = math.ceil(cfg.idle_streams / cfg.streams_per_channel)
        channels = [grpc.aio.insecure_channel(self.target, options=options) for _ in range(count)]
        calls: list[Any] = []
        opening = asyncio.Semaphore(200)

        async def open_one(channel: grpc.aio.Channel) -> None:
            async with opening:
                call = channel.stream_stream(
                    STREAM_METHOD, request_serializer=_identity, response_deserializer=_identity
                )()
                try:
                    await call.write(self.requests.next())
                    answer = await call.read()
                except grpc.aio.AioRpcError as error:
                    self.error(error)
                    return
                if answer is grpc.aio.EOF:
                    self.report.errors += 1
                    return
                calls.append(call)

        try:
            await asyncio.gather(*(open_one(channels[i // cfg.streams_per_channel]) for i in range(cfg.idle_streams)))
            self.report.opened = len(calls)
            at = self._ready(started)
            await self.wait_for_stop()
            self.report.lost = sum(1 for call in calls if call.done())
            self._stopped(at)
            for call in calls:
                call.cancel()
        finally:
            for channel in channels:
                await channel.close()

    async def _greedy(self, started: float) -> None:
        cfg = self.cfg
        async with grpc.aio.insecure_channel(self.target) as channel:
            await asyncio.wait_for(channel.channel_ready(), _READY_TIMEOUT)
            flowing = [self._greedy_stream(channel) for _ in range(cfg.greedy_streams)]
            work = asyncio.gather(*flowing)
            await asyncio.sleep(_GREEDY_RAMP_SECONDS)
            self.report.opened = cfg.greedy_streams
            at = self._ready(started)
            await self.wait_for_stop()
            self.stopping = True
            self._stopped(at)
            await work

    async def _greedy_stream(self, channel: grpc.aio.Channel) -> None:
        call = channel.stream_stream(STREAM_METHOD, request_serializer=_identity, response_deserializer=_identity)()
        window = asyncio.Semaphore(self.cfg.greedy_inflight)

        async def read() -> None:
            while True:
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    return
                window.release()
                self.report.messages += 1

        reading = asyncio.create_task(read())
        try:
            while not self.stopping and not reading.done():
                await window.acquire()
                await call.write(self.requests.next())
            await call.done_writing()
            await asyncio.wait_for(reading, 30)
        except grpc.aio.AioRpcError as error:
            self.error(error)
        finally:
            if not reading.done():
                reading.cancel()
            call.cancel()


def _report_and_exit(sync: dict[str, Any], report: AggressorReport) -> None:
    """Hand the report over and end the process now: leaving `asyncio.run` after grpc.aio calls were
    cancelled can hang in the loop's shutdown (seen with grpcio 1.62), and the channels are closed."""
    results = sync["results"]
    results.put(report)
    results.close()
    results.join_thread()
    os._exit(0)


def _aggressor_process(
    kind: Scenario, index: int, cfg: FairnessConfig, target: str, pool_path: str, label: str, sync: dict[str, Any]
) -> None:
    report = AggressorReport(kind, index)
    try:
        aggressor = _Aggressor(kind, index, cfg, target, pool_path, label, sync)
        report = aggressor.report

        async def bounded() -> None:
            try:
                async with asyncio.timeout(2 * _READY_TIMEOUT + 3 * cfg.seconds + 60):
                    await aggressor.run()
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run
                report.error = f"{type(exc).__name__}: {exc}"
            _report_and_exit(sync, report)

        asyncio.run(bounded())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        report.error = f"{type(exc).__name__}: {exc}"
    _report_and_exit(sync, report)


class Aggressors:
    """The aggressor processes of one run: started and ready on entry, stopped and reported on exit."""

    def __init__(self, kind: Scenario, cfg: FairnessConfig, target: str, pool: PoolInfo, label: str) -> None:
        self.kind = kind
        ctx = mp.get_context("spawn")  # no fork after grpc is initialised
        self.sync: dict[str, Any] = {"ready": ctx.Queue(), "stop": ctx.Event(), "results": ctx.Queue()}
        count = cfg.greedy_processes if kind == "greedy" else 1
        self.procs = [
            ctx.Process(
                target=_aggressor_process, args=(kind, i, cfg, target, str(pool.path), label, self.sync), daemon=True
            )
            for i in range(count)
        ]
        self.reports: list[AggressorReport] = []

    def __enter__(self) -> Aggressors:
        for proc in self.procs:
            proc.start()
        try:
            deadline, ready = time.monotonic() + _READY_TIMEOUT, 0
            while ready < len(self.procs):
                if time.monotonic() > deadline or not all(proc.is_alive() for proc in self.procs):
                    raise RuntimeError(f"{self.kind} aggressors: {ready} of {len(self.procs)} ready")
                try:
                    self.sync["ready"].get(timeout=0.5)
                    ready += 1
                except queue.Empty:
                    continue
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync["stop"].set()
        try:
            deadline = time.monotonic() + 60
            while len(self.reports) < len(self.procs) and time.monotonic() < deadline:
                try:
                    # Children flush their report before they end: once all are gone, one more second suffices.
                    alive = any(proc.is_alive() for proc in self.procs)
                    self.reports.append(self.sync["results"].get(timeout=0.5 if alive else 1.0))
                except queue.Empty:
                    if not alive:
                        break
            if len(self.reports) < len(self.procs):
                raise RuntimeError(f"{self.kind} aggressors: {len(self.reports)} of {len(self.procs)} reported")
        finally:
            for proc in self.procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5)
        failures = [r.error for r in self.reports if r.error]
        if failures and (not exc or exc[0] is None):
            raise RuntimeError(f"{self.kind} aggressor failures: {failures}")


# ----------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    scenario: Scenario
    round: int
    victim: loadgen.LoadFigures
    aggressors: list[AggressorReport]
    server: Json  # from the service's metrics and /proc, over the victim's run

    def brief(self) -> Json:
        out: Json = {
            "scenario": self.scenario,
            "round": self.round,
            "p50_ms": rounded(self.victim.p50_ms, 2),
            "p99_ms": rounded(self.victim.p99_ms, 2),
            "p999_ms": rounded(self.victim.p999_ms, 2),
            "max_ms": rounded(self.victim.max_ms, 2),
            "p99_from_schedule_ms": rounded(self.victim.p99_from_schedule_ms or math.nan, 2),
            "send_slip_p99_ms": rounded(self.victim.slip_p99_ms or math.nan, 2),
            "achieved_rps": rounded(self.victim.rps),
            "completed": self.victim.completed,
            "errors": self.victim.errors,
            "dropped": self.victim.dropped,
            "machine_busy_fraction": rounded(self.victim.machine_busy_fraction, 2),
            "server_cpu_core_fraction": rounded(self.victim.server_cpu_core_fraction or math.nan, 2),
            "victim_client_cpu_core_fraction": rounded(self.victim.client_cpu_core_fraction, 2),
            **self.server,
        }
        if self.aggressors:
            seconds = max(r.seconds for r in self.aggressors) or math.nan
            out["aggressor"] = {
                "opened": sum(r.opened for r in self.aggressors),
                "setup_seconds": rounded(max(r.setup_seconds for r in self.aggressors), 2),
                "messages_per_second": rounded(sum(r.messages for r in self.aggressors) / seconds),
                "errors": sum(r.errors for r in self.aggressors),
                "first_error": next((r.first_error for r in self.aggressors if r.first_error), ""),
                "lost": sum(r.lost for r in self.aggressors),
                "cpu_core_fraction": rounded(sum(r.cpu_seconds for r in self.aggressors) / seconds, 2),
            }
        return out


class _Session:
    def __init__(self, cfg: FairnessConfig, pool: PoolInfo, stack: ScreeningStack) -> None:
        self.cfg = cfg
        self.pool = pool
        self.stack = stack
        self.runs = 0
        self.cursor = 0

    def victim_spec(self, label: str, seconds: float, warmup: float) -> loadgen.LoadSpec:
        self.runs += 1
        wanted = self.cfg.victim_rate * (seconds + warmup + 1) * 1.5
        factory = PoolSlice(
            str(self.pool.path),
            f"{label}{self.runs}",
            1,
            repeats_needed(self.pool.events, 1, wanted) + 1,
            start=self.cursor,
        )
        self.cursor += int(self.cfg.victim_rate * (seconds + warmup)) + 1
        return loadgen.LoadSpec(
            target=self.stack.address,
            kind="unary",
            method=SCREEN_METHOD,
            clients=1,
            rate=self.cfg.victim_rate,
            seconds=seconds,
            warmup=warmup,
            request_factory=factory,
            seed=self.runs,
        )

    def victim(self, spec: loadgen.LoadSpec) -> tuple[loadgen.LoadFigures, Json]:
        pid = self.stack.pid
        before = self.stack.snapshot()
        threads_before = thread_cpu_seconds(pid)
        started = time.monotonic()
        figures = loadgen.run(spec, server_pid=pid)
        elapsed = time.monotonic() - started
        threads_after = thread_cpu_seconds(pid)
        delta = self.stack.snapshot().minus(before)
        server: Json = {
            # over the whole victim run (client start-up included), not only its window
            "server_main_thread_core_fraction": rounded(
                (threads_after.get("main", 0.0) - threads_before.get("main", 0.0)) / elapsed, 2
            ),
            "server_screened": int(delta["screened"]),
            "server_degraded_share": rounded(delta["degraded_share"], 4),
            "server_errors": int(delta["errors"]),
        }
        return figures, server

    def run(self, scenario: Scenario, round_: int) -> Run:
        cfg = self.cfg
        spec = self.victim_spec(f"fair-{scenario}-", cfg.seconds, cfg.warmup)
        if scenario == "baseline":
            figures, server = self.victim(spec)
            return Run(scenario, round_, figures, [], server)
        aggressors = Aggressors(scenario, cfg, self.stack.address, self.pool, f"fair-{scenario}{self.runs}")
        with aggressors:
            figures, server = self.victim(spec)
        return Run(scenario, round_, figures, aggressors.reports, server)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) else math.nan


def summarise(cfg: FairnessConfig, runs: list[Run]) -> Json:
    by: dict[Scenario, list[Run]] = {s: [r for r in runs if r.scenario == s] for s in SCENARIOS}
    p50 = {s: median([r.victim.p50_ms for r in by[s]]) for s in SCENARIOS}
    p99 = {s: median([r.victim.p99_ms for r in by[s]]) for s in SCENARIOS}
    baseline_by_round = {r.round: r.victim for r in by["baseline"]}
    out: Json = {
        "fairness.victim_rate": cfg.victim_rate,
        "fairness.rounds": cfg.rounds,
        "fairness.seconds": cfg.seconds,
        "fairness.target_ratio": cfg.target_ratio,
    }
    for s in SCENARIOS:
        out[f"fairness.{s}.p50_ms"] = rounded(p50[s], 2)
        out[f"fairness.{s}.p99_ms"] = rounded(p99[s], 2)
        out[f"fairness.{s}.p999_ms"] = rounded(median([r.victim.p999_ms for r in by[s]]), 2)
        out[f"fairness.{s}.p99_from_schedule_ms"] = rounded(
            median([r.victim.p99_from_schedule_ms or math.nan for r in by[s]]), 2
        )
        out[f"fairness.{s}.send_slip_p99_ms"] = rounded(median([r.victim.slip_p99_ms or math.nan for r in by[s]]), 2)
        out[f"fairness.{s}.machine_busy_fraction"] = rounded(median([r.victim.machine_busy_fraction for r in by[s]]), 2)
        out[f"fairness.{s}.server_cpu_core_fraction"] = rounded(
            median([r.victim.server_cpu_core_fraction or math.nan for r in by[s]]), 2
        )
        out[f"fairness.{s}.server_main_thread_core_fraction"] = rounded(
            median([r.server["server_main_thread_core_fraction"] or math.nan for r in by[s]]), 2
        )
        out[f"fairness.{s}.victim_errors"] = sum(r.victim.errors + r.victim.dropped for r in by[s])
        out[f"fairness.{s}.server_degraded_share"] = max((r.server["server_degraded_share"] or 0.0) for r in by[s])
        if s == "baseline":
            continue
        ratio99 = _ratio(p99[s], p99["baseline"])
        out[f"fairness.{s}.p99_ratio"] = rounded(ratio99, 2)
        out[f"fairness.{s}.p50_ratio"] = rounded(_ratio(p50[s], p50["baseline"]), 2)
        out[f"fairness.{s}.p99_ratio_per_round"] = [
            rounded(_ratio(r.victim.p99_ms, baseline_by_round[r.round].p99_ms), 2)
            for r in by[s]
            if r.round in baseline_by_round
        ]
        out[f"fairness.{s}.within_target"] = bool(ratio99 <= cfg.target_ratio)
        briefs = [r.brief()["aggressor"] for r in by[s]]
        out[f"fairness.{s}.aggressor_opened"] = min(b["opened"] for b in briefs)
        out[f"fairness.{s}.aggressor_errors"] = sum(b["errors"] for b in briefs)
        out[f"fairness.{s}.aggressor_first_error"] = next((b["first_error"] for b in briefs if b["first_error"]), "")
        out[f"fairness.{s}.aggressor_cpu_core_fraction"] = rounded(median([b["cpu_core_fraction"] for b in briefs]), 2)
        if s == "idle":
            out["fairness.idle.streams"] = cfg.idle_streams
            out["fairness.idle.setup_seconds"] = rounded(median([b["setup_seconds"] for b in briefs]), 2)
            out["fairness.idle.lost_streams"] = sum(b["lost"] for b in briefs)
        else:
            out["fairness.greedy.streams"] = cfg.greedy_processes * cfg.greedy_streams
            out["fairness.greedy.inflight"] = cfg.greedy_processes * cfg.greedy_streams * cfg.greedy_inflight
            out["fairness.greedy.throughput_eps"] = rounded(median([b["messages_per_second"] for b in briefs]))
    out["fairness.within_target"] = all(out[f"fairness.{s}.within_target"] for s in SCENARIOS[1:])
    out["fairness.runs"] = [r.brief() for r in runs]
    return out


def _verdict(out: Json, s: str) -> str:
    return "ok" if out[f"fairness.{s}.within_target"] else "EXCEEDED"


def bench(cfg: FairnessConfig, pool: PoolInfo) -> Json:
    env = {"RISKGATE_MAX_CONCURRENT_RPCS": str(cfg.max_concurrent_rpcs)}
    with ScreeningStack(extra_env=env) as stack:
        s = _Session(cfg, pool, stack)
        # Warm the server (first keys, code paths) at the victim's rate before measuring anything.
        s.victim(s.victim_spec("fair-warm-", 2.0, 0.5))
        runs: list[Run] = []
        for round_ in range(cfg.rounds):
            shift = round_ % len(SCENARIOS)
            for scenario in SCENARIOS[shift:] + SCENARIOS[:shift]:
                run = s.run(scenario, round_)
                runs.append(run)
                _print(f"fairness round {round_ + 1} {scenario}: {run.victim.describe()}")
    out = summarise(cfg, runs)
    _print(
        f"fairness: victim {cfg.victim_rate:g}/s unary (open loop, 1 channel) p50/p99 "
        f"baseline {out['fairness.baseline.p50_ms']}/{out['fairness.baseline.p99_ms']}ms; "
        f"{cfg.idle_streams} idle streams {out['fairness.idle.p50_ms']}/{out['fairness.idle.p99_ms']}ms "
        f"(p99 x{out['fairness.idle.p99_ratio']}, p50 x{out['fairness.idle.p50_ratio']}, {_verdict(out, 'idle')}); "
        f"greedy {out['fairness.greedy.streams']} streams x{cfg.greedy_inflight} in flight at "
        f"{out['fairness.greedy.throughput_eps']} events/s {out['fairness.greedy.p50_ms']}/"
        f"{out['fairness.greedy.p99_ms']}ms (p99 x{out['fairness.greedy.p99_ratio']}, "
        f"p50 x{out['fairness.greedy.p50_ratio']}, {_verdict(out, 'greedy')}); target {cfg.target_ratio:g}x; "
        f"machine busy {out['fairness.baseline.machine_busy_fraction']:.0%}/"
        f"{out['fairness.idle.machine_busy_fraction']:.0%}/{out['fairness.greedy.machine_busy_fraction']:.0%}, "
        f"server main thread {out['fairness.baseline.server_main_thread_core_fraction']}/"
        f"{out['fairness.idle.server_main_thread_core_fraction']}/"
        f"{out['fairness.greedy.server_main_thread_core_fraction']} core"
    )
    out["fairness.config"] = asdict(cfg)
    return out


def make_pool(path: Path, cfg: FairnessConfig) -> PoolInfo:
    return write_pool(path, seed=cfg.seed, events=cfg.pool_events, now=datetime.now(UTC))


def run_part(quick: bool) -> Json:
    """`benchmarks.run`'s entry point."""
    cfg = QUICK if quick else FairnessConfig()
    with tempfile.TemporaryDirectory(prefix="rg-bench-fairness-") as tmp:
        return bench(cfg, make_pool(Path(tmp) / "pool.bin", cfg))


def main(argv: Sequence[str] | None = None) -> int:
    return part_main(
        "python -m benchmarks.fairness", __doc__, run_part, "two short rounds of each scenario (a smoke test)", argv
    )


if __name__ == "__main__":
    sys.exit(main())
