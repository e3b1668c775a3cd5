"""Soak: is the server's resident memory flat over a million screenings at a steady load?

    python -m benchmarks.soak [--quick] [--screenings N] [--rate R] [--json PATH]

The requirement: "RSS flat within ±5 % over 1 M screenings after warm-up". One redis-server and
one `riskgate serve` (`benchmarks.servers`), the load generator of `make bench`
(`benchmarks.loadgen`, `clients` processes) and the same realistic `riskgate synth` requests as the
e2e bench (`benchmarks.traffic`: a seeded pool replayed in order, every request id unique):

1. calibration: `calibrate_seconds` closed loop (`clients` × `calibrate_inflight` in flight) gives
   what the machine can do; the soak rate is `load_share` of it (or `--rate`);
2. soak: open loop (Poisson arrivals) at that fixed rate until the server has answered
   `screenings` in all (the calibration included), in consecutive load runs of at most
   `segment_seconds` (a load run lasts at most 600 s; each continues the stream where the last
   stopped). The server's RSS (/proc/<pid>/status) and its screenings so far (its own
   `riskgate_requests_total`, one scrape of /metrics) are sampled every `sample_share` of the way,
   and between runs.

Warm-up is the first `warmup_screenings` screenings served; its value is the first sample at or
after it. Reported: RSS at warm-up end, at the end, the min and max after warm-up, the change end
vs warm-up (MiB and %), the least-squares slope after warm-up (MiB per 100k screenings), the peak
(VmHWM), and PASS when every sample after warm-up is within ±`tolerance` of the warm-up value.
That the rate is sustainable is shown beside it: the degraded decisions
(`riskgate_degraded_decisions_total`, expected 0), errors, dropped calls and p99 of each run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import loadgen
from benchmarks.common import Json, median, peak_rss_mb, rounded, rss_mb, slope
from benchmarks.e2e import make_pool
from benchmarks.servers import SCREEN_METHOD, ScreeningStack, Snapshot
from benchmarks.traffic import PoolInfo, PoolSlice, repeats_needed

_RUN_WARMUP = 1.0  # seconds each load run sends before its window (screened, and counted by the server)


@dataclass(frozen=True)
class SoakConfig:
    screenings: int = 1_000_000
    warmup_screenings: int = 100_000
    sample_share: float = 0.02  # sample RSS every 2 % of the screenings
    tolerance: float = 0.05  # flat: every sample after warm-up within ±5 % of the warm-up value
    # The soak rate, as a share of the calibrated closed-loop throughput. The open loop costs the
    # server more per call (less batching): 70% of the closed loop kept its one core ~90% busy, with
    # p99 ~330 ms and ~0.9% of calls refused (2 cores), where 60% is clean.
    load_share: float = 0.6
    rate: float | None = None  # a fixed soak rate instead (screenings per second)
    clients: int = 3
    calibrate_inflight: int = 8
    calibrate_seconds: float = 5.0
    segment_seconds: float = 300.0
    pool_events: int = 60_000
    seed: int = 5


QUICK = SoakConfig(screenings=150_000, pool_events=20_000)


@dataclass(frozen=True)
class Sample:
    screened: int  # riskgate_requests_total since the server started
    rss_mb: float
    degraded: int
    at: float  # seconds since the soak's first sample


def _print(line: str) -> None:
    print(line, flush=True)


class _Session:
    def __init__(self, cfg: SoakConfig, pool: PoolInfo, stack: ScreeningStack) -> None:
        self.cfg = cfg
        self.pool = pool
        self.stack = stack
        self.runs = 0
        self.cursor = 0  # how far into its slice of the stream each client has got
        self.samples: list[Sample] = []
        self.started = time.monotonic()

    def sample(self) -> float:
        """RSS first (the scrape that follows allocates a little in the server), then the counters."""
        rss = rss_mb(self.stack.pid)
        metrics = self.stack.metrics()
        self.samples.append(
            Sample(
                screened=int(metrics.get("riskgate_requests_total", 0.0)),
                rss_mb=rss,
                degraded=int(metrics.get("riskgate_degraded_decisions_total", 0.0)),
                at=round(time.monotonic() - self.started, 2),
            )
        )
        return rss

    def spec(self, label: str, seconds: float, *, rate: float | None) -> loadgen.LoadSpec:
        cfg = self.cfg
        self.runs += 1
        # Enough requests that no client runs dry: the closed loop at up to 6,000/s, the open loop
        # with a margin over its Poisson count.
        per_second = 6000.0 if rate is None else 1.2 * rate
        per_client = per_second * (seconds + _RUN_WARMUP + 1) / cfg.clients
        factory = PoolSlice(
            str(self.pool.path),
            f"{label}{self.runs}",
            cfg.clients,
            repeats_needed(self.pool.events, cfg.clients, per_client) + 1,
            start=self.cursor,
        )
        return loadgen.LoadSpec(
            target=self.stack.address,
            method=SCREEN_METHOD,
            clients=cfg.clients,
            inflight=cfg.calibrate_inflight,
            rate=rate,
            seconds=seconds,
            warmup=_RUN_WARMUP,
            request_factory=factory,
            max_outstanding=2000,
            seed=cfg.seed * 100 + self.runs,
        )

    def load(self, spec: loadgen.LoadSpec, sample_every: float | None = None) -> loadgen.LoadFigures:
        before = self.stack.metrics().get("riskgate_requests_total", 0.0)
        if sample_every is None:
            figures = loadgen.run(spec, server_pid=self.stack.pid)
        else:
            figures = loadgen.run(spec, server_pid=self.stack.pid, sample=self.sample, sample_every=sample_every)
        after = self.stack.metrics().get("riskgate_requests_total", 0.0)
        # Every request sent (warm-up included) was screened: the next run continues after them.
        self.cursor += int((after - before) / self.cfg.clients) + 1
        return figures

    def screened(self) -> int:
        return int(self.stack.metrics().get("riskgate_requests_total", 0.0))


def summarise(cfg: SoakConfig, samples: list[Sample]) -> Json:
    """The memory figures of a soak: warm-up value, end, min / max after it, change, slope, verdict."""
    after = [s for s in samples if s.screened >= cfg.warmup_screenings]
    if not after:
        raise RuntimeError(f"no RSS sample after the warm-up ({cfg.warmup_screenings} screenings)")
    warm, end = after[0], after[-1]
    lowest = min(after, key=lambda s: s.rss_mb)
    highest = max(after, key=lambda s: s.rss_mb)
    deviation = max(abs(s.rss_mb - warm.rss_mb) for s in after) / warm.rss_mb
    per_100k = slope([(s.screened / 1e5, s.rss_mb) for s in after])
    return {
        "soak.warmup_screenings": warm.screened,
        "soak.rss_start_mb": round(samples[0].rss_mb, 1),
        "soak.rss_warmup_end_mb": round(warm.rss_mb, 1),
        "soak.rss_end_mb": round(end.rss_mb, 1),
        "soak.rss_min_after_warmup_mb": round(lowest.rss_mb, 1),
        "soak.rss_min_after_warmup_at": lowest.screened,
        "soak.rss_max_after_warmup_mb": round(highest.rss_mb, 1),
        "soak.rss_max_after_warmup_at": highest.screened,
        "soak.rss_change_mb": round(end.rss_mb - warm.rss_mb, 2),
        "soak.rss_change_pct": round(100 * (end.rss_mb - warm.rss_mb) / warm.rss_mb, 2),
        "soak.rss_max_deviation_pct": round(100 * deviation, 2),
        "soak.rss_slope_mb_per_100k_screens": rounded(per_100k, 3),
        "soak.tolerance_pct": round(100 * cfg.tolerance, 1),
        "soak.flat": deviation <= cfg.tolerance,
        "soak.samples_after_warmup": len(after),
    }


def _sustained(out: Json) -> str:
    return f"degraded {out['soak.degraded']}, errors {out['soak.errors']}, dropped {out['soak.dropped']}"


def bench(cfg: SoakConfig, pool: PoolInfo) -> Json:
    with ScreeningStack() as stack:
        s = _Session(cfg, pool, stack)
        s.sample()
        calibration = s.load(s.spec("soakcal", cfg.calibrate_seconds, rate=None))
        rate = cfg.rate or cfg.load_share * calibration.rps
        s.sample()
        _print(
            f"soak calibration: {calibration.rps:.0f}/s closed loop ({calibration.describe()}); "
            f"soak rate {rate:.0f}/s{'' if cfg.rate else f' ({cfg.load_share:.0%})'}"
        )
        first: Snapshot = stack.snapshot()
        sample_every = max(0.5, cfg.sample_share * cfg.screenings / rate)
        runs: list[loadgen.LoadFigures] = []
        soak_started = time.monotonic()
        while (left := cfg.screenings - s.screened()) > 0:
            seconds = 1.01 * left / rate - _RUN_WARMUP  # a little over: the achieved rate falls short
            if seconds < 1.0:  # less than a run's worth left: the last run took us close enough
                break
            parts = math.ceil(seconds / cfg.segment_seconds)
            figures = s.load(s.spec("soak", seconds / parts, rate=rate), sample_every)
            runs.append(figures)
            s.sample()
            _print(
                f"soak run {len(runs)}: {s.samples[-1].screened} screened, RSS {s.samples[-1].rss_mb:.1f} MiB; "
                f"{figures.describe()}"
            )
        soak_seconds = time.monotonic() - soak_started
        last = stack.snapshot()
        delta = last.minus(first)
        out: Json = {
            "soak.calibration_rps": round(calibration.rps),
            "soak.rate_rps": round(rate),
            "soak.achieved_rps": round(median([f.rps for f in runs])) if runs else None,
            "soak.screenings": s.samples[-1].screened,
            "soak.seconds": round(soak_seconds, 1),
            "soak.runs": len(runs),
            "soak.degraded": int(last.degraded - first.degraded),
            "soak.degraded_calibration": int(first.degraded),
            "soak.degraded_share": rounded(delta["degraded_share"], 5),
            "soak.errors": sum(f.errors for f in runs) + int(delta["errors"]),
            "soak.dropped": sum(f.dropped for f in runs),
            "soak.ran_dry": any(f.ran_dry for f in runs),
            "soak.p50_ms_by_run": [rounded(f.p50_ms, 2) for f in runs],
            "soak.p99_ms_by_run": [rounded(f.p99_ms, 2) for f in runs],
            "soak.max_ms": rounded(max((f.max_ms for f in runs), default=math.nan), 1),
            "soak.machine_busy_fraction": rounded(median([f.machine_busy_fraction for f in runs]), 2),
            "soak.server_cpu_core_fraction": rounded(median([f.server_cpu_core_fraction or 0.0 for f in runs]), 2),
            "soak.peak_rss_mb": round(peak_rss_mb(stack.pid), 1),
            "soak.redis_used_memory_mb": round(last.redis_used_memory / 2**20, 1),
            "soak.run_details": [f.describe() for f in runs],
        }
        out.update(summarise(cfg, s.samples))
        out["soak.rss_timeline"] = [(x.screened, round(x.rss_mb, 1)) for x in s.samples]
        out["soak.degraded_timeline"] = [(x.screened, x.degraded) for x in s.samples if x.degraded]
    _print(
        f"soak: {out['soak.screenings']} screenings at {out['soak.rate_rps']}/s "
        f"({out['soak.calibration_rps']}/s closed loop) in {out['soak.seconds']:.0f}s; server RSS "
        f"{out['soak.rss_warmup_end_mb']} MiB at warm-up end ({out['soak.warmup_screenings']}) -> "
        f"{out['soak.rss_end_mb']} MiB ({out['soak.rss_change_mb']:+} MiB, {out['soak.rss_change_pct']:+}%); "
        f"after warm-up min {out['soak.rss_min_after_warmup_mb']} max {out['soak.rss_max_after_warmup_mb']} MiB, "
        f"max deviation {out['soak.rss_max_deviation_pct']}% "
        f"({'PASS' if out['soak.flat'] else 'FAIL'} within ±{out['soak.tolerance_pct']:g}%), "
        f"slope {out['soak.rss_slope_mb_per_100k_screens']} MiB per 100k; peak {out['soak.peak_rss_mb']} MiB; "
        f"{_sustained(out)}; p99 by run {out['soak.p99_ms_by_run']}ms"
    )
    out["soak.config"] = asdict(cfg)
    return out


def run_part(quick: bool, cfg: SoakConfig | None = None) -> Json:
    """`benchmarks.run`'s entry point."""
    cfg = cfg or (QUICK if quick else SoakConfig())
    with tempfile.TemporaryDirectory(prefix="rg-bench-soak-") as tmp:
        pool = make_pool(Path(tmp) / "pool.bin", cfg.pool_events, cfg.seed)
        figures = bench(cfg, pool)
    figures["soak.traffic"] = {"seed": cfg.seed, "events": pool.events, "kinds": pool.kinds}
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.screenings:,} screenings (a smoke test)")
    parser.add_argument("--screenings", type=int, help="screenings in all (default 1,000,000)")
    parser.add_argument("--rate", type=float, help="soak rate per second (default: 60%% of the calibration)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else SoakConfig()
    if args.screenings is not None:
        cfg = SoakConfig(**{**asdict(cfg), "screenings": args.screenings})
    if args.rate is not None:
        cfg = SoakConfig(**{**asdict(cfg), "rate": args.rate})
    figures = run_part(args.quick, cfg)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0 if figures["soak.flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
