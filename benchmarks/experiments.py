"""Measure a variant of the service against the service as it is: `riskgate serve` with one of its
configuration seams switched.

    python -m benchmarks.experiments [--experiment separate-claim] [--rounds 4] [--seconds 8] [--rate 250]

Runs the saturated unary benchmark of `benchmarks.e2e` (or, with `--rate`, a fixed offered load,
open loop) against stacks side by side: the service as it is, and the service with each
experiment's configuration. An experiment is a change to a typed production configuration
(`service.riskdata.store.RiskDataConfig`), handed to `service.server.app.run` by this module's
launcher (`serve` below): the server runs its own code, nothing is patched or copied. The order
rotates every round; it prints each run, then per experiment the medians and the median of the
per-round ratios of throughput and server CPU per screening (with the collector's share,
measured in the server through `gc.callbacks`).

Experiments:

* ``separate-claim``: `RiskDataConfig(fold_claim=False)`: the request-id claim as a round trip of
  its own before the counters' (as on Redis Cluster, and on a single Redis before it was folded
  into the counter script). Measured: README, Performance, "The optimisations made", item 3.

Dropped, because no configuration of the production code expresses them (their figures stay
where they were recorded, README, Performance, "Where the time goes"):

* ``held-connections`` (the risk data's round trips on redis-py connections held per concurrent
  request instead of the multiplexed connection): "The optimisations made", item 2. The counter
  store takes the held connections only where the multiplexer does not apply (TLS); measuring
  them again needs a switch on `CounterStore` (a `multiplex` option that `RiskDataConfig` could
  pass), which does not exist.
* ``record-batched`` (the record round trip off the request path, batched per loop iteration):
  "Measured and left alone", "taking the record write off the request path: x1.04 at
  saturation". It was a different implementation of `BoundRiskData.record`, not a setting.
* ``gc`` and ``gc-threshold`` (`gc.freeze()` after start-up; a generation-0 threshold of 10,000):
  "Measured and left alone", "the garbage collector: 3-30 us per screening". The server now
  collects and freezes its start-up heap after its warm-up (`Server._warm_up`), which is what
  ``gc`` measured; the threshold has no setting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import loadgen
from benchmarks.common import median
from benchmarks.servers import SCREEN_METHOD, ScreeningStack
from benchmarks.traffic import PoolSlice, repeats_needed, write_pool
from service import logs
from service.errors import ConfigError, RiskgateError
from service.riskdata.store import RiskDataConfig
from service.server.app import risk_data_config, run
from service.settings import Settings

AS_IS = "as is"
# Each experiment: the risk-data store's configuration it serves with, from the one the settings give.
EXPERIMENTS: Mapping[str, Callable[[RiskDataConfig], RiskDataConfig]] = {
    "separate-claim": lambda config: dataclasses.replace(config, fold_claim=False),
}


def gc_accounting(path: str) -> None:
    """Account the collector's CPU time (of the thread it runs on) per generation, written to `path`
    (JSON) twice a second: measurement only, no change of behaviour."""
    import gc
    import json
    import threading
    import time

    cpu_seconds = [0.0, 0.0, 0.0]
    collections = [0, 0, 0]
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            generation = info["generation"]
            cpu_seconds[generation] += time.thread_time() - started[0]
            collections[generation] += 1

    def writer() -> None:
        while True:
            time.sleep(0.5)
            Path(path).write_text(json.dumps({"cpu_seconds": cpu_seconds, "collections": collections}))

    gc.callbacks.append(callback)
    threading.Thread(target=writer, daemon=True, name="gc-accounting").start()


def read_gc(path: Path) -> dict[str, list[float]]:
    import json

    try:
        data: dict[str, list[float]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"cpu_seconds": [0.0, 0.0, 0.0], "collections": [0, 0, 0]}
    return data


def serve(experiment: str | None, gc_stats: str | None = None) -> int:
    """`riskgate serve` (its settings from the environment, as the stack sets them) with the risk-data
    configuration of `experiment` (None: as it is)."""
    if gc_stats:
        gc_accounting(gc_stats)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        print(f"riskgate: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level_number, settings.log_format)
    config = risk_data_config(settings)
    if experiment is not None:
        config = EXPERIMENTS[experiment](config)
    try:
        asyncio.run(run(settings, risk_config=config))
    except RiskgateError as error:
        logging.getLogger("riskgate").error("cannot serve: %s", error)
        return 1
    return 0


def compare(
    experiments: Sequence[str], rounds: int, seconds: float, clients: int, inflight: int, rate: float | None = None
) -> None:
    """The service as it is and with each experiment, side by side; the order rotates every round."""
    import tempfile

    names = [AS_IS, *experiments]
    with tempfile.TemporaryDirectory(prefix="rg-exp-") as tmp, contextlib.ExitStack() as stack_of:
        pool = write_pool(Path(tmp) / "pool.bin", seed=1, events=20_000, now=datetime.now(UTC))
        repeats = repeats_needed(pool.events, clients, 3000 * (seconds + 3) / clients)
        me = [sys.executable, "-m", "benchmarks.experiments"]
        gc_files = {name: Path(tmp) / f"gc-{n}.json" for n, name in enumerate(names)}
        stacks = {
            name: stack_of.enter_context(
                ScreeningStack(
                    server_argv=[*me, "--serve", "none" if name == AS_IS else name, "--gc-stats", str(gc_files[name])]
                )
            )
            for name in names
        }
        figures: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in names}
        runs = 0
        for round_ in range(rounds + 1):  # round 0 warms every stack up
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                stack = stacks[name]
                runs += 1
                spec = loadgen.LoadSpec(
                    target=stack.address, method=SCREEN_METHOD, clients=clients, inflight=inflight,
                    seconds=seconds if round_ else 3.0, warmup=1.0, rate=rate,
                    request_factory=PoolSlice(str(pool.path), f"x{runs}", clients, repeats),
                )  # fmt: skip
                before, gc_before = stack.snapshot(), read_gc(gc_files[name])
                result = loadgen.run(spec, server_pid=stack.pid)
                time.sleep(0.6)  # the next write of the collector's totals
                delta, gc_after = stack.snapshot().minus(before), read_gc(gc_files[name])
                screened = delta["screened"] or float("nan")
                gc_us = sum(
                    (a - b) * 1e6 / screened
                    for a, b in zip(gc_after["cpu_seconds"], gc_before["cpu_seconds"], strict=True)
                )
                if round_:
                    cpu = result.server_cpu_us_per_req or 0.0
                    figures[name].append((result.rps, cpu, delta["redis_process_cpu_us_per_screen"], gc_us))
                    print(
                        f"  {name:12} {result.describe()} degraded={delta['degraded_share']:.2%} "
                        f"errors={int(delta['errors'])} gc={gc_us:.0f}us/screen",
                        flush=True,
                    )
    base = figures[AS_IS]
    a = tuple(median([r[i] for r in base]) for i in range(4))
    load = f"{rate:g}/s offered (open loop)" if rate else f"{clients}x{inflight} in flight"
    for experiment in experiments:
        rows = figures[experiment]
        b = tuple(median([r[i] for r in rows]) for i in range(4))
        cpu_ratios = [p[1] / q[1] for p, q in zip(rows, base, strict=True)]
        rps_ratios = [p[0] / q[0] for p, q in zip(rows, base, strict=True)]
        print(
            f"experiment {experiment}: {b[0]:.0f} vs {a[0]:.0f} screenings/s (median of per-round ratios "
            f"{median(rps_ratios):.2f}x), server CPU {b[1]:.0f} vs {a[1]:.0f} us/screen (median of per-round ratios "
            f"{median(cpu_ratios):.2f}x, rounds {[round(x, 2) for x in cpu_ratios]}), garbage collection "
            f"{b[3]:.0f} vs {a[3]:.0f} us; redis-server {b[2]:.0f} vs {a[2]:.0f} us/screen; {rounds} interleaved "
            f"rounds of {seconds:g}s, {load}",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="separate-claim", help=f"comma-separated, from {','.join(EXPERIMENTS)}")
    parser.add_argument("--serve", choices=("none", *EXPERIMENTS), help=argparse.SUPPRESS)
    parser.add_argument("--gc-stats", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--rate", type=float, help="offer this many screenings/s (open loop) instead of saturating")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(None if args.serve == "none" else args.serve, args.gc_stats)
    experiments = [name.strip() for name in args.experiment.split(",") if name.strip()]
    if not experiments or set(experiments) - set(EXPERIMENTS):
        parser.error(f"--experiment: choose from {','.join(EXPERIMENTS)}")
    if not 1 <= args.rounds <= 10 or not 1 <= args.seconds <= 60:
        parser.error("--rounds 1..10, --seconds 1..60")
    compare(experiments, args.rounds, args.seconds, args.clients, args.inflight, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
