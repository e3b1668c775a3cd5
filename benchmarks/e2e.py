"""End to end: unary Screen and ScreenStream through `riskgate serve`, against the echo baseline, in one session.

    python -m benchmarks.e2e [--quick]

One redis-server and one `riskgate serve` (the shipped rules and counters; see
`benchmarks.servers`), one echo server (`benchmarks.grpc_echo`, same grpcio), and the same load
generator (`benchmarks.loadgen`) driving both with the same pre-serialised `riskgate synth`
requests (`benchmarks.traffic`):

1. Saturation, closed loop: `rounds` pairs of runs (screen, echo; the order alternates), each
   `seconds` long after a warm-up. Throughput and the ratio screen ÷ echo are medians over the
   rounds (the ratio is taken per round, from runs a few seconds apart). Server CPU per call from
   /proc; Redis CPU per screening from `INFO commandstats` (the scripts, the commands they call and
   the other commands the service sends) and from the redis-server process (`INFO cpu`, which adds
   reading and writing sockets); the degraded share and errors from the service's metrics.
2. Latency at a fixed offered load of half the saturation throughput, open loop (Poisson
   arrivals): p50 / p99 / p99.9 for the service, then for the echo server at the same rate. The
   service's resident memory is sampled every second meanwhile: its slope over the run shows
   whether memory grows under steady load.
3. ScreenStream: `clients` × `streams` long-lived bidirectional streams, one message in flight
   on each (ping-pong), against the echo stream with the same shape; medians over `rounds`.

Each phase prints one line; `bench()` returns the figures for `benchmarks/results/latest.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import grpc_echo, loadgen
from benchmarks.common import Json, median, peak_rss_mb, rounded, rss_mb, slope, slope_per_minute, thread_cpu_seconds
from benchmarks.servers import SCREEN_METHOD, STREAM_METHOD, ScreeningStack, Snapshot
from benchmarks.traffic import PoolInfo, PoolSlice, repeats_needed, write_pool

# The scripts (whose time includes the commands they call) and the commands the service sends itself.
_TOP_LEVEL = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "xadd", "hmget")
MACHINE_BOUND = 0.85  # share of all cores busy from which a run is bound by the machine
_MAX_RPS_PER_RUN = 6000.0  # sizes the request lists: no run may run dry below this rate


@dataclass(frozen=True)
class E2EConfig:
    rounds: int = 3
    clients: int = 3
    inflight: int = 8
    seconds: float = 8.0
    warmup: float = 1.5
    fixed_seconds: float = 90.0
    echo_fixed_seconds: float = 10.0
    stream_rounds: int = 2
    streams: int = 4  # per client
    pool_events: int = 60_000
    seed: int = 1


QUICK = E2EConfig(
    rounds=1, seconds=4.0, fixed_seconds=10.0, echo_fixed_seconds=4.0, stream_rounds=1, pool_events=10_000
)


def _redis_top_level_us(before: Snapshot, after: Snapshot) -> float:
    screened = after.screened - before.screened
    if screened <= 0:
        return float("nan")
    usec = sum(after.by_command.get(c, 0.0) - before.by_command.get(c, 0.0) for c in _TOP_LEVEL)
    return usec / screened


class _Session:
    """The servers and the request pool of one e2e session, and the runs made against them."""

    def __init__(
        self, cfg: E2EConfig, pool: PoolInfo, stack: ScreeningStack, echo: grpc_echo.EchoServerProcess
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.stack = stack
        self.echo = echo
        self.runs = 0
        self.cursor = 0  # how far into its slice of the stream each client has got, over the screening runs
        self.rss_timeline: list[tuple[float, float]] = []  # (screenings served so far, RSS MiB)

    def factory(self, label: str, seconds: float) -> PoolSlice:
        self.runs += 1
        per_client = _MAX_RPS_PER_RUN * (seconds + self.cfg.warmup + 1) / self.cfg.clients
        repeats = repeats_needed(self.pool.events, self.cfg.clients, per_client) + 1
        return PoolSlice(str(self.pool.path), f"{label}{self.runs}", self.cfg.clients, repeats, start=self.cursor)

    def note_rss(self) -> None:
        self.rss_timeline.append((self.stack.metrics().get("riskgate_requests_total", 0.0), rss_mb(self.stack.pid)))

    def screen(
        self, spec: loadgen.LoadSpec, sample: Callable[[], float] | None = None
    ) -> tuple[loadgen.LoadFigures, Json]:
        before = self.stack.snapshot()
        threads_before = thread_cpu_seconds(self.stack.pid)
        figures = loadgen.run(spec, server_pid=self.stack.pid, sample=sample)
        after = self.stack.snapshot()
        # Every request sent (warm-up included) was screened: the next run continues after them.
        self.cursor += int((after.screened - before.screened) / self.cfg.clients) + 1
        threads_after = thread_cpu_seconds(self.stack.pid)
        redis = after.minus(before)
        redis["redis_top_level_us_per_screen"] = _redis_top_level_us(before, after)
        screened = redis["screened"] or float("nan")
        redis["server_threads_cpu_us_per_screen"] = {
            name: round((cpu - threads_before.get(name, 0.0)) * 1e6 / screened, 1)
            for name, cpu in threads_after.items()
            if cpu - threads_before.get(name, 0.0) > 0
        }
        self.note_rss()
        return figures, redis


def _spec(cfg: E2EConfig, target: str, method: str, factory: PoolSlice, **changes: Any) -> loadgen.LoadSpec:
    base = loadgen.LoadSpec(
        target=target,
        method=method,
        clients=cfg.clients,
        inflight=cfg.inflight,
        seconds=cfg.seconds,
        warmup=cfg.warmup,
        request_factory=factory,
    )
    return loadgen.LoadSpec(**{**asdict(base), "request_factory": factory, **changes})


def _print(line: str) -> None:
    print(line, flush=True)


def saturation(s: _Session) -> Json:
    cfg = s.cfg
    screens: list[tuple[loadgen.LoadFigures, Json]] = []
    echoes: list[loadgen.LoadFigures] = []
    ratios: list[float] = []
    for round_ in range(cfg.rounds):
        order = ("screen", "echo") if round_ % 2 == 0 else ("echo", "screen")
        got: dict[str, loadgen.LoadFigures] = {}
        for which in order:
            if which == "screen":
                spec = _spec(cfg, s.stack.address, SCREEN_METHOD, s.factory("sat", cfg.seconds))
                figures, delta = s.screen(spec)
                screens.append((figures, delta))
            else:
                spec = _spec(cfg, s.echo.target, grpc_echo.UNARY_METHOD, s.factory("echo", cfg.seconds))
                figures = loadgen.run(spec, server_pid=s.echo.pid)
                echoes.append(figures)
            got[which] = figures
        ratios.append(got["screen"].rps / got["echo"].rps)
    sat = [f for f, _ in screens]
    redis = [r for _, r in screens]
    out: Json = {
        "unary.throughput_rps": round(median([f.rps for f in sat])),
        "unary.echo_throughput_rps": round(median([f.rps for f in echoes])),
        "unary.screen_over_echo_ratio": round(median(ratios), 3),
        "unary.screen_over_echo_ratio_per_round": [round(r, 3) for r in ratios],
        "unary.saturation_inflight": cfg.clients * cfg.inflight,
        "unary.saturation_p50_ms": rounded(median([f.p50_ms for f in sat]), 2),
        "unary.saturation_p99_ms": rounded(median([f.p99_ms for f in sat]), 2),
        "unary.server_cpu_us_per_screen": rounded(median([f.server_cpu_us_per_req or 0.0 for f in sat])),
        "unary.server_cpu_core_fraction": rounded(median([f.server_cpu_core_fraction or 0.0 for f in sat]), 2),
        "unary.server_ctx_switches_per_screen": rounded(median([f.server_ctx_switches_per_req or 0.0 for f in sat])),
        "unary.echo_server_cpu_us_per_call": rounded(median([f.server_cpu_us_per_req or 0.0 for f in echoes])),
        "unary.redis_cpu_us_per_screen": rounded(median([r["redis_top_level_us_per_screen"] for r in redis])),
        "unary.redis_process_cpu_us_per_screen": rounded(median([r["redis_process_cpu_us_per_screen"] for r in redis])),
        "unary.redis_commands_per_screen": rounded(median([r["redis_commands_per_screen"] for r in redis]), 2),
        "unary.redis_us_per_screen_by_command": redis[len(redis) // 2]["redis_us_per_screen_by_command"],
        "unary.server_threads_cpu_us_per_screen": redis[len(redis) // 2]["server_threads_cpu_us_per_screen"],
        "unary.degraded_share": rounded(max(r["degraded_share"] for r in redis), 4),
        "unary.errors": sum(f.errors for f in sat) + int(sum(r["errors"] for r in redis)),
        "unary.replayed": int(sum(r["replayed"] for r in redis)),
        "unary.client_cpu_us_per_screen": rounded(median([f.client_cpu_us_per_req for f in sat])),
        "unary.client_cpu_us_per_echo": rounded(median([f.client_cpu_us_per_req for f in echoes])),
        "unary.client_cpu_core_fraction_screen": rounded(median([f.client_cpu_core_fraction for f in sat]), 2),
        "unary.client_cpu_core_fraction_echo": rounded(median([f.client_cpu_core_fraction for f in echoes]), 2),
        "unary.machine_busy_fraction_screen": rounded(median([f.machine_busy_fraction for f in sat]), 2),
        "unary.machine_busy_fraction_echo": rounded(median([f.machine_busy_fraction for f in echoes]), 2),
        "unary.client_saturated_screen": any(f.client_saturated for f in sat),
        "unary.client_saturated_echo": any(f.client_saturated for f in echoes),
        # All cores near busy (server, clients, Redis together): the machine, not one process, set the pace.
        "unary.machine_bound_screen": median([f.machine_busy_fraction for f in sat]) >= MACHINE_BOUND,
        "unary.machine_bound_echo": median([f.machine_busy_fraction for f in echoes]) >= MACHINE_BOUND,
        "unary.ran_dry": any(f.ran_dry for f in sat + echoes),
        "unary.runs": {"screen": [f.describe() for f in sat], "echo": [f.describe() for f in echoes]},
    }
    _print(
        f"unary saturation: screen {out['unary.throughput_rps']}/s vs echo {out['unary.echo_throughput_rps']}/s "
        f"= {out['unary.screen_over_echo_ratio']:.2f} (per round {out['unary.screen_over_echo_ratio_per_round']}); "
        f"server {out['unary.server_cpu_us_per_screen']} us/screen ({out['unary.server_cpu_core_fraction']} core), "
        f"redis {out['unary.redis_cpu_us_per_screen']} us/screen commandstats, "
        f"{out['unary.redis_process_cpu_us_per_screen']} us process; degraded {out['unary.degraded_share']:.2%}; "
        f"client {out['unary.client_cpu_us_per_screen']} us/screen, {out['unary.client_cpu_us_per_echo']} us/echo; "
        f"machine busy {out['unary.machine_busy_fraction_screen']:.0%} / {out['unary.machine_busy_fraction_echo']:.0%}"
        f"{'; echo MACHINE-BOUND' if out['unary.machine_bound_echo'] else ''}"
        f"{'; CLIENT SATURATED (echo)' if out['unary.client_saturated_echo'] else ''}"
        f"{'; CLIENT SATURATED (screen)' if out['unary.client_saturated_screen'] else ''}"
    )
    return out


def fixed_load(s: _Session, rate: float) -> Json:
    cfg = s.cfg
    pid = s.stack.pid
    spec = _spec(
        cfg, s.stack.address, SCREEN_METHOD, s.factory("fixed", cfg.fixed_seconds), rate=rate,
        seconds=cfg.fixed_seconds, warmup=2.0,
    )  # fmt: skip
    screen, redis = s.screen(spec, sample=lambda: rss_mb(pid))
    echo_spec = _spec(
        cfg, s.echo.target, grpc_echo.UNARY_METHOD, s.factory("echofixed", cfg.echo_fixed_seconds), rate=rate,
        seconds=cfg.echo_fixed_seconds, warmup=1.0,
    )  # fmt: skip
    echo = loadgen.run(echo_spec, server_pid=s.echo.pid)
    steady = [(t, v) for t, v in screen.samples if t >= cfg.fixed_seconds / 4]
    out: Json = {
        "unary.offered_rps": round(rate),
        "unary.achieved_rps": round(screen.rps),
        "unary.p50_ms": rounded(screen.p50_ms, 2),
        "unary.p90_ms": rounded(screen.p90_ms, 2),
        "unary.p99_ms": rounded(screen.p99_ms, 2),
        "unary.p999_ms": rounded(screen.p999_ms, 2),
        "unary.max_ms": rounded(screen.max_ms, 2),
        "unary.p99_from_schedule_ms": rounded(screen.p99_from_schedule_ms, 2),
        "unary.send_slip_p99_ms": rounded(screen.slip_p99_ms, 2),
        "unary.fixed_seconds": cfg.fixed_seconds,
        "unary.fixed_samples": screen.completed,
        "unary.fixed_server_cpu_us_per_screen": rounded(screen.server_cpu_us_per_req),
        "unary.fixed_server_cpu_core_fraction": rounded(screen.server_cpu_core_fraction, 2),
        "unary.fixed_redis_cpu_us_per_screen": rounded(redis["redis_top_level_us_per_screen"]),
        "unary.fixed_client_cpu_core_fraction": rounded(screen.client_cpu_core_fraction, 2),
        "unary.fixed_machine_busy_fraction": rounded(screen.machine_busy_fraction, 2),
        "unary.fixed_p99_ms_by_5s": screen.p99_ms_by_slice,
        # The typical 5-second window's p99: less swayed by a neighbour's burst on a shared machine.
        "unary.fixed_p99_ms_median_of_5s": rounded(median(screen.p99_ms_by_slice), 2),
        # From the service's own histogram (receipt to decision; bucket bounds, so "at most"):
        # a p99 far below the client's means the time went before the handler ran (CPU, queueing).
        "unary.fixed_server_side_p50_ms_at_most": rounded(redis["server_side_p50_ms_at_most"], 2),
        "unary.fixed_server_side_p99_ms_at_most": rounded(redis["server_side_p99_ms_at_most"], 2),
        "unary.fixed_degraded_share": rounded(redis["degraded_share"], 4),
        "unary.fixed_errors": screen.errors + int(redis["errors"]),
        "unary.fixed_dropped": screen.dropped,
        "unary.echo_p50_ms": rounded(echo.p50_ms, 2),
        "unary.echo_p99_ms": rounded(echo.p99_ms, 2),
        "unary.echo_p999_ms": rounded(echo.p999_ms, 2),
        "server.rss_samples_mb": [(t, round(v, 1)) for t, v in screen.samples],
        "server.rss_slope_mb_per_min": rounded(slope_per_minute(steady), 2),
    }
    _print(
        f"unary fixed load {rate:.0f}/s offered for {cfg.fixed_seconds:g}s (open loop, Poisson): "
        f"screen p50={screen.p50_ms:.2f}ms p99={screen.p99_ms:.2f}ms p99.9={screen.p999_ms:.2f}ms "
        f"(from schedule p99={screen.p99_from_schedule_ms or 0:.2f}ms, send slip p99={screen.slip_p99_ms or 0:.2f}ms) "
        f"achieved {screen.rps:.0f}/s; server-side p99 <= {out['unary.fixed_server_side_p99_ms_at_most']}ms; "
        f"p99 by 5s {screen.p99_ms_by_slice} (median {out['unary.fixed_p99_ms_median_of_5s']}ms); "
        f"echo p50={echo.p50_ms:.2f}ms p99={echo.p99_ms:.2f}ms; "
        f"machine {screen.machine_busy_fraction:.0%} busy; "
        f"server {screen.server_cpu_us_per_req or 0:.0f} us/screen; "
        f"RSS slope {out['server.rss_slope_mb_per_min']} MiB/min"
    )
    return out


def streams(s: _Session) -> Json:
    cfg = s.cfg
    screen: list[loadgen.LoadFigures] = []
    echo: list[loadgen.LoadFigures] = []
    for round_ in range(cfg.stream_rounds):
        for which in ("screen", "echo") if round_ % 2 == 0 else ("echo", "screen"):
            if which == "screen":
                spec = _spec(
                    cfg, s.stack.address, STREAM_METHOD, s.factory("stream", cfg.seconds), kind="stream",
                    inflight=cfg.streams,
                )  # fmt: skip
                screen.append(s.screen(spec)[0])
            else:
                factory = s.factory("echostream", cfg.seconds)
                spec = _spec(cfg, s.echo.target, grpc_echo.STREAM_METHOD, factory, kind="stream", inflight=cfg.streams)
                echo.append(loadgen.run(spec, server_pid=s.echo.pid))
    eps, echo_eps = median([f.rps for f in screen]), median([f.rps for f in echo])
    out: Json = {
        "stream.throughput_eps": round(eps),
        "stream.echo_throughput_eps": round(echo_eps),
        "stream.screen_over_echo_ratio": round(eps / echo_eps, 3),
        "stream.streams": cfg.clients * cfg.streams,
        "stream.p50_ms": rounded(median([f.p50_ms for f in screen]), 2),
        "stream.p99_ms": rounded(median([f.p99_ms for f in screen]), 2),
        "stream.server_cpu_us_per_event": rounded(median([f.server_cpu_us_per_req or 0.0 for f in screen])),
        "stream.echo_server_cpu_us_per_message": rounded(median([f.server_cpu_us_per_req or 0.0 for f in echo])),
        "stream.client_cpu_core_fraction": rounded(median([f.client_cpu_core_fraction for f in screen]), 2),
        "stream.client_saturated": any(f.client_saturated for f in screen + echo),
        "stream.machine_bound_echo": median([f.machine_busy_fraction for f in echo]) >= MACHINE_BOUND,
        "stream.echo_client_cpu_core_fraction": rounded(median([f.client_cpu_core_fraction for f in echo]), 2),
        "stream.runs": {"screen": [f.describe() for f in screen], "echo": [f.describe() for f in echo]},
    }
    _print(
        f"stream: screen {eps:.0f} events/s vs echo {echo_eps:.0f} msg/s = {eps / echo_eps:.2f} "
        f"over {cfg.clients * cfg.streams} streams (ping-pong); "
        f"server {out['stream.server_cpu_us_per_event']} us/event, "
        f"echo {out['stream.echo_server_cpu_us_per_message']} us/msg"
    )
    return out


def bench(cfg: E2EConfig, pool: PoolInfo) -> Json:
    with ScreeningStack() as stack, grpc_echo.EchoServerProcess() as echo:
        s = _Session(cfg, pool, stack, echo)
        s.note_rss()
        # Warm both servers (first keys, code paths, connections) before measuring anything.
        s.screen(_spec(cfg, stack.address, SCREEN_METHOD, s.factory("warm", 3.0), seconds=3.0, warmup=0.5))
        loadgen.run(
            _spec(cfg, echo.target, grpc_echo.UNARY_METHOD, s.factory("warmecho", 2.0), seconds=2.0, warmup=0.5)
        )
        out = saturation(s)
        out.update(fixed_load(s, 0.5 * out["unary.throughput_rps"]))
        out.update(streams(s))
        served = [x for x, _ in s.rss_timeline]
        rss = [v for _, v in s.rss_timeline]
        out["server.peak_rss_mb"] = round(peak_rss_mb(stack.pid), 1)
        out["server.rss_start_mb"] = round(rss[0], 1)
        out["server.rss_end_mb"] = round(rss[-1], 1)
        out["server.screenings_served"] = int(served[-1])
        # Growth per 100k screenings over the measured runs (the first point is before the warm-up).
        points = list(zip(served[1:], rss[1:], strict=True))
        per_100k = slope([(x / 1e5, y) for x, y in points])
        out["server.rss_growth_mb_per_100k_screens"] = rounded(per_100k, 2)
        out["server.rss_timeline"] = [(int(x), round(y, 1)) for x, y in s.rss_timeline]
        _print(
            f"server memory: peak RSS {out['server.peak_rss_mb']} MiB; RSS {out['server.rss_start_mb']} -> "
            f"{out['server.rss_end_mb']} MiB over {out['server.screenings_served']} screenings "
            f"({out['server.rss_growth_mb_per_100k_screens']} MiB per 100k after warm-up; "
            f"{out['server.rss_slope_mb_per_min']} MiB/min at steady fixed load)"
        )
    return out


def make_pool(path: Path, events: int, seed: int) -> PoolInfo:
    started = time.perf_counter()
    pool = write_pool(path, seed=seed, events=events, now=datetime.now(UTC))
    _print(
        f"traffic: riskgate synth seed={seed}, {pool.events} events "
        f"({', '.join(f'{k} {v / pool.events:.1%}' for k, v in sorted(pool.kinds.items()))}), "
        f"{pool.planted} planted, {pool.mean_bytes:.0f} B per request, {time.perf_counter() - started:.1f}s"
    )
    return pool


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round of each (a smoke test)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else E2EConfig()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rg-e2e-") as tmp:
        pool = make_pool(Path(tmp) / "pool.bin", cfg.pool_events, cfg.seed)
        figures = bench(cfg, pool)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
