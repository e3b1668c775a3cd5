"""One replica, all its cores: RISKGATE_WORKERS=1 against 2, and how SO_REUSEPORT spreads connections.

    python -m benchmarks.workers_bench [--quick] [--json PATH]        (`make loadgen` builds the client)

Both servers are the real `riskgate serve` (`benchmarks.servers.ScreeningStack`, each with its own
redis-server) driven by the compiled client (`benchmarks.compiled.drive`) with the same
pre-serialised `riskgate synth` requests, each with a fresh request id:

1. scaling: `rounds` interleaved rounds of workers=1 then workers=2, closed loop, `inflight` calls
   in flight over `channels` connections (many, so that the kernel's spread is not what is
   measured). Server CPU is every serving process's (/proc, all threads: the supervisor's and the
   workers'), per screening; Redis's likewise; the machine's busy share beside them.
2. fixed rate: `rate_rounds` interleaved rounds of both at the same offered rate (open loop, Poisson
   arrivals, `rate` a second, below what one process does): server CPU per screening and the
   client's p50 / p99, the figures a busy neighbour on the machine moves least;
3. balance: with workers=2, `balance_runs` fresh client runs at each of 2, 4 and 16 connections
   (each run opens new connections, so the kernel hashes them anew); the share of screenings the
   busier worker served (from each worker's own counter in the multiprocess metrics files: 0.5 is
   even, 1.0 one worker did everything).

Prints one line per phase; `run_part` returns the figures (keys `workers.*`) for
benchmarks/results/latest.json. Loopback only; about 3 minutes (`--quick` about 1).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import Json, median, part_main, rounded
from benchmarks.compiled import binary, drive
from benchmarks.servers import SCREEN_METHOD, ScreeningStack
from benchmarks.traffic import write_pool
from service.server.metrics import screenings_by_process
from service.server.workers import METRICS_DIR


@dataclass(frozen=True)
class WorkersConfig:
    rounds: int = 3
    seconds: float = 6.0
    warmup: float = 1.5
    inflight: int = 32
    channels: int = 16
    rate: float = 600.0
    rate_rounds: int = 2
    rate_seconds: float = 8.0
    balance_connections: tuple[int, ...] = (2, 4, 16)
    balance_runs: int = 5
    balance_seconds: float = 2.0
    pool_events: int = 20_000
    seed: int = 1


QUICK = WorkersConfig(
    rounds=2,
    seconds=3.0,
    warmup=1.0,
    rate_rounds=1,
    rate_seconds=4.0,
    balance_runs=3,
    balance_seconds=1.5,
    pool_events=4_000,
)


def _print(line: str) -> None:
    print(line, flush=True)


class _Stack:
    """A ScreeningStack with RISKGATE_WORKERS=n, and the pids of its serving processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.stack = ScreeningStack(extra_env={"RISKGATE_WORKERS": str(workers), "RISKGATE_LOG_LEVEL": "INFO"})
        self.pids: list[int] = []

    def __enter__(self) -> _Stack:
        self.stack.start()
        deadline = time.monotonic() + 60
        while not self._all_serving():
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers={self.workers} did not start:\n{self.stack.log()[-3000:]}")
            time.sleep(0.1)
        supervisor = self.stack.pid
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        self.pids = [supervisor, *(int(pid) for pid in children)]
        return self

    def _all_serving(self) -> bool:
        if self.workers == 1:
            return True
        return any(
            line.startswith("{") and json.loads(line).get("logger") == "riskgate.workers" and '"serving"' in line
            for line in self.stack.log().splitlines()
        )

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()

    def by_worker(self) -> dict[int, float]:
        if self.workers == 1:
            return {self.stack.pid: self.stack.metrics().get("riskgate_requests_total", 0.0)}
        return screenings_by_process(self.stack.tmp / "data" / METRICS_DIR)

    def run(self, requests: Path, label: str, **options: object) -> Json:
        before = self.by_worker()
        watched = [*self.pids, self.stack.redis_pid]
        report = drive(self.stack.address, SCREEN_METHOD, requests, unique_ids=label, watch_pids=watched, **options)  # type: ignore[arg-type]
        after = self.by_worker()
        served = {pid: after.get(pid, 0.0) - before.get(pid, 0.0) for pid in after}
        ok = int(report["ok"]) or 1
        cpu = report["watched_cpu_s"]
        server_cpu = sum(float(cpu.get(str(pid), 0.0)) for pid in self.pids)
        total = sum(served.values()) or 1.0
        return {
            "rps": float(report["rps"] or 0.0),
            "server_cpu_us": 1e6 * server_cpu / ok,
            "redis_cpu_us": 1e6 * float(cpu.get(str(self.stack.redis_pid), 0.0)) / ok,
            "client_cpu_us": 1e6 * float(report["client_cpu_s"]) / ok,
            "machine_busy": float(report["machine_busy_fraction"] or "nan"),
            "server_cores": server_cpu / float(report["elapsed_s"]),
            "busier_share": max(served.values()) / total if served else float("nan"),
            "p50_ms": float(report["latency_ms"]["p50"] or "nan"),
            "p99_ms": float(report["latency_ms"]["p99"] or "nan"),
            "errors": sum(int(n) for n in report["errors"].values()),
        }


def scaling(cfg: WorkersConfig, requests: Path, one: _Stack, two: _Stack) -> Json:
    runs: dict[int, list[Json]] = {1: [], 2: []}
    options = {"inflight": cfg.inflight, "channels": cfg.channels, "seconds": cfg.seconds, "warmup": cfg.warmup}
    for round_ in range(cfg.rounds):
        for stack in (one, two):
            runs[stack.workers].append(stack.run(requests, f"w{stack.workers}r{round_}", **options))
    out: Json = {}
    for n, results in runs.items():
        for key in ("rps", "server_cpu_us", "redis_cpu_us", "client_cpu_us", "machine_busy", "server_cores"):
            out[f"workers.{n}.{key}"] = rounded(
                median([r[key] for r in results]), 3 if key.endswith(("busy", "cores")) else 0
            )
        out[f"workers.{n}.rps_per_round"] = [round(r["rps"]) for r in results]
        out[f"workers.{n}.errors"] = sum(r["errors"] for r in results)
    out["workers.2.busier_share"] = rounded(median([r["busier_share"] for r in runs[2]]), 3)
    ratios = [b["rps"] / a["rps"] for a, b in zip(runs[1], runs[2], strict=True) if a["rps"]]
    out["workers.throughput_ratio"] = rounded(median(ratios), 2)
    out["workers.throughput_ratio_per_round"] = [rounded(r, 2) for r in ratios]
    out["workers.cpu_ratio"] = rounded(out["workers.2.server_cpu_us"] / out["workers.1.server_cpu_us"], 2)
    _print(
        f"workers: 1 → 2 processes ({cfg.rounds} rounds, {cfg.inflight} in flight over {cfg.channels} connections): "
        f"{out['workers.1.rps']:.0f} → {out['workers.2.rps']:.0f} screenings/s (×{out['workers.throughput_ratio']}, "
        f"rounds {out['workers.throughput_ratio_per_round']}); server CPU per screening "
        f"{out['workers.1.server_cpu_us']:.0f} → {out['workers.2.server_cpu_us']:.0f} us on "
        f"{out['workers.1.server_cores']:.2f} → "
        f"{out['workers.2.server_cores']:.2f} cores; redis {out['workers.1.redis_cpu_us']:.0f} → "
        f"{out['workers.2.redis_cpu_us']:.0f} us; client {out['workers.1.client_cpu_us']:.0f} → "
        f"{out['workers.2.client_cpu_us']:.0f} us; machine {out['workers.1.machine_busy']:.0%} → "
        f"{out['workers.2.machine_busy']:.0%} busy; busier worker's share {out['workers.2.busier_share']:.0%}"
    )
    return out


def fixed_rate(cfg: WorkersConfig, requests: Path, one: _Stack, two: _Stack) -> Json:
    runs: dict[int, list[Json]] = {1: [], 2: []}
    options = {"mode": "open", "rate": cfg.rate, "channels": 16, "seconds": cfg.rate_seconds, "warmup": 1.0}
    for round_ in range(cfg.rate_rounds):
        for stack in (one, two):
            runs[stack.workers].append(stack.run(requests, f"f{stack.workers}r{round_}", **options))
    out: Json = {"workers.rate": cfg.rate}
    for n, results in runs.items():
        for key in ("server_cpu_us", "redis_cpu_us", "p50_ms", "p99_ms", "machine_busy", "server_cores"):
            digits = 2 if key.endswith(("ms", "busy", "cores")) else 0
            out[f"workers.rate.{n}.{key}"] = rounded(median([r[key] for r in results]), digits)
        out[f"workers.rate.{n}.errors"] = sum(r["errors"] for r in results)
    ratios = [b["server_cpu_us"] / a["server_cpu_us"] for a, b in zip(runs[1], runs[2], strict=True)]
    out["workers.rate.cpu_ratio"] = rounded(median(ratios), 2)
    out["workers.rate.cpu_ratio_per_round"] = [rounded(r, 2) for r in ratios]
    _print(
        f"workers: at {cfg.rate:.0f}/s offered ({cfg.rate_rounds} rounds, open loop): server CPU per screening "
        f"{out['workers.rate.1.server_cpu_us']:.0f} → {out['workers.rate.2.server_cpu_us']:.0f} us "
        f"(×{out['workers.rate.cpu_ratio']}, rounds {out['workers.rate.cpu_ratio_per_round']}); p50 "
        f"{out['workers.rate.1.p50_ms']} → {out['workers.rate.2.p50_ms']} ms, p99 {out['workers.rate.1.p99_ms']} → "
        f"{out['workers.rate.2.p99_ms']} ms; redis {out['workers.rate.1.redis_cpu_us']:.0f} → "
        f"{out['workers.rate.2.redis_cpu_us']:.0f} us; machine {out['workers.rate.1.machine_busy']:.0%} → "
        f"{out['workers.rate.2.machine_busy']:.0%} busy"
    )
    return out


def balance(cfg: WorkersConfig, requests: Path, two: _Stack) -> Json:
    out: Json = {}
    parts = []
    for connections in cfg.balance_connections:
        shares = []
        for run in range(cfg.balance_runs):
            result = two.run(
                requests, f"b{connections}x{run}", inflight=max(16, connections), channels=connections,
                seconds=cfg.balance_seconds, warmup=0.3,
            )  # fmt: skip
            shares.append(result["busier_share"])
        out[f"workers.balance.{connections}.busier_shares"] = [rounded(s, 2) for s in shares]
        out[f"workers.balance.{connections}.median"] = rounded(median(shares), 2)
        out[f"workers.balance.{connections}.all_on_one"] = sum(1 for s in shares if s > 0.99)
        parts.append(f"{connections} connections {[f'{s:.0%}' for s in shares]}")
    _print(
        "workers: the busier worker's share of screenings, fresh connections each run (0.5 is even): "
        + "; ".join(parts)
    )
    return out


def bench(cfg: WorkersConfig, requests: Path) -> Json:
    binary()
    with _Stack(1) as one, _Stack(2) as two:
        warm = {"inflight": 16, "channels": 8, "seconds": 2.0, "warmup": 0.5}
        one.run(requests, "warm1", **warm)
        two.run(requests, "warm2", **warm)
        out = scaling(cfg, requests, one, two)
        out.update(fixed_rate(cfg, requests, one, two))
        out.update(balance(cfg, requests, two))
    return out


def run_part(quick: bool) -> Json:
    cfg = QUICK if quick else WorkersConfig()
    binary()
    with tempfile.TemporaryDirectory(prefix="rg-bench-workers-") as tmp:
        pool = write_pool(Path(tmp) / "requests.bin", seed=cfg.seed, events=cfg.pool_events, now=datetime.now(UTC))
        figures = bench(cfg, pool.path)
    figures["workers.config"] = asdict(cfg)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    return part_main("python -m benchmarks.workers_bench", __doc__, run_part, "short rounds (about a minute)", argv)


if __name__ == "__main__":
    sys.exit(main())
