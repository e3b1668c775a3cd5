"""`make bench`: every benchmark, one summary line each, all figures in benchmarks/results/latest.json.

    python -m benchmarks.run [--quick] [--only e2e,rules,...,backtest,console,compiled,workers] [--out PATH]

1. end to end (`benchmarks.e2e`): unary Screen at saturation against the echo baseline, latency at
   half that load, ScreenStream against the echo stream, and the server's memory;
2. rules alone (`benchmarks.rules_bench`): our durable_rules adapter against GoRules ZEN, by case (event
   kind, a rule fired or not), and the counters' `where` filters: closures against durable_rules;
3. counters alone (`benchmarks.counters_bench`, run as its own process): the counter round trip and
   Redis memory per entity at full windows;
4. fairness (`benchmarks.fairness`): a victim client's unary p50 / p99 alone, beside 2,000 idle
   ScreenStreams and beside a greedy streaming client (target: p99 within 2x of alone);
5. soak (`benchmarks.soak`): 1,000,000 screenings at a fixed rate (60% of a short closed-loop
   calibration), the server's RSS sampled every 2% (target: flat within ±5% after the first 100k);
6. first request (`benchmarks.first_request`): the first screening of each kind after SERVING
   against the tenth, over 5 fresh starts (target: as fast);
7. access control alone (`benchmarks.access_bench`): `Guard.admit` per call by local caller,
   token and certificate, against validating one transfer;
8. identity (`benchmarks.identity compare --base HEAD`): the working tree's decisions on a 6,000-event
   synth stream against those of the last commit (a temporary git worktree), field by field but for
   decision_id, decided_at and evaluation_time; fails on any difference or degraded decision;
9. mux (`benchmarks.mux_bench`): how soon the multiplexed Redis connection fails its waiters: after
   Redis is killed, after stale_after from a silent peer, after connect_timeout connecting to one;
10. backtest (`benchmarks.backtest_bench`): a 20,000-event synth stream screened by the real server and
   archived; the served rules' backtest on it (target: 0 mismatches, decisions and counters); the
   counter replay in the kernels and the whole backtest of a changed threshold on it replicated to
   1,000,000 events, per core (targets: 1 M and 50 k events/s);
11. console (`benchmarks.console_bench`): the console's tallies, written in the decision log's
   script: Redis and Python CPU per decision with and without them, Redis memory, and the
   console's reads with 1,000,000 decisions logged (~2.5 minutes, `--quick` 30 s);
12. compiled (`benchmarks.compiled`, the client `make loadgen` builds): unary Screen against the echo
   server driven by the compiled C++ load generator, interleaved rounds at saturation; the figure
   to steer by, server CPU per screening ÷ echo server CPU per call (`compiled.server_cpu_ratio`),
   beside the throughput ratio, what saturated first, p99 at half load and ScreenStream (~3 minutes,
   `--quick` ~1);
13. workers (`benchmarks.workers_bench`, the same client): RISKGATE_WORKERS=1 against 2, interleaved
   rounds: throughput and server CPU per screening; and, with 2, the busier worker's share of the
   screenings at 2, 4 and 16 client connections, fresh ones each run (~2 minutes, `--quick` ~1).

Loopback only; bounded (about 33 minutes on a 2-core machine, of which the soak about 16 at
~1,050 screenings/s; `--quick` about 8, the soak 150,000 screenings). Every result
carries the versions (Python, grpcio, redis-server, durable_rules, zen-engine, ...) and the machine
(cores, CPU model). The machines are shared and noisy: compare ratios from one run, not absolute
figures across runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    access_bench,
    backtest_bench,
    compiled,
    console_bench,
    e2e,
    fairness,
    first_request,
    identity,
    mux_bench,
    rules_bench,
    soak,
    workers_bench,
)
from benchmarks.common import LATEST, REPO, Json, git_revision, machine, versions, write_results

PARTS = (
    "e2e",
    "rules",
    "counters",
    "fairness",
    "soak",
    "first",
    "access",
    "identity",
    "mux",
    "backtest",
    "console",
    "compiled",
    "workers",
)
_COUNTERS_TIMEOUT = 240


def run_e2e(quick: bool) -> Json:
    cfg = e2e.QUICK if quick else e2e.E2EConfig()
    with tempfile.TemporaryDirectory(prefix="rg-bench-pool-") as tmp:
        pool = e2e.make_pool(Path(tmp) / "pool.bin", cfg.pool_events, cfg.seed)
        figures = e2e.bench(cfg, pool)
    figures["traffic"] = {"seed": cfg.seed, "events": pool.events, "kinds": pool.kinds, "mean_bytes": pool.mean_bytes}
    figures["e2e.config"] = cfg.__dict__
    return figures


def run_rules(quick: bool) -> Json:
    return rules_bench.bench(events=1000 if quick else 5000, repeats=3 if quick else 5)


def run_counters(quick: bool) -> Json:
    """The counters bench in its own process (it owns its redis-server and event loop)."""
    with tempfile.TemporaryDirectory(prefix="rg-bench-counters-") as tmp:
        out = Path(tmp) / "counters.json"
        argv = [sys.executable, "-m", "benchmarks.counters_bench", "--json", str(out)]
        if quick:
            argv += ["--events", "500", "--repeats", "2"]
        subprocess.run(argv, cwd=REPO, check=True, timeout=_COUNTERS_TIMEOUT)
        figures: Json = json.loads(out.read_text())
    figures["counters.versions"] = figures.pop("versions", {})
    figures.pop("machine", None)
    return figures


RUNNERS: dict[str, Callable[[bool], Json]] = {
    "e2e": run_e2e,
    "rules": run_rules,
    "counters": run_counters,
    # the parts whose own entry point is run_part(quick)
    "fairness": fairness.run_part,
    "soak": soak.run_part,
    "first": first_request.run_part,
    "access": access_bench.run_part,
    "identity": identity.run_part,
    "mux": mux_bench.run_part,
    "backtest": backtest_bench.run_part,
    "console": console_bench.run_part,
    "compiled": compiled.run_part,
    "workers": workers_bench.run_part,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs of everything (a smoke test, ~5 min)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--out", default=str(LATEST), help=f"results file (default {LATEST.relative_to(REPO)})")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": git_revision(),
        "quick": args.quick,
        "versions": versions(),
        "machine": machine(),
    }
    print(
        f"bench: {results['revision']} python {results['versions']['python']} grpcio {results['versions']['grpcio']} "
        f"redis-server {results['versions']['redis_server']} durable_rules {results['versions']['durable_rules']} "
        f"zen-engine {results['versions']['zen_engine']}; {results['machine']['cores']} cores "
        f"{results['machine']['model']}, load {results['machine']['load1_at_start']}",
        flush=True,
    )
    failed: dict[str, str] = {}
    durations: dict[str, float] = {}
    for part in parts:
        part_started = time.monotonic()
        try:
            results.update(RUNNERS[part](args.quick))
        except Exception as error:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed[part] = f"{type(error).__name__}: {error}"
            print(f"{part}: FAILED ({failed[part]})", flush=True)
        durations[part] = round(time.monotonic() - part_started, 1)
    results["durations_seconds"] = durations
    results["failed"] = failed
    path = write_results(results, Path(args.out))
    print(
        f"bench: {len(parts) - len(failed)}/{len(parts)} benchmarks in {time.monotonic() - started:.0f}s; "
        f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
