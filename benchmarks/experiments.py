"""Measure a proposed change to the service before making it: `riskgate serve` with the change patched in.

    python -m benchmarks.experiments [--patch redis-py,no-claim] [--rounds 4] [--seconds 8] [--rate 250]

Runs the saturated unary benchmark of `benchmarks.e2e` (or, with `--rate`, a fixed offered load,
open loop) against stacks side by side: the service as it is, and the service with each patch
applied at start-up (`serve` below; nothing in service/ is edited). The order rotates every
round; it prints each run, then per patch the medians and the median of the per-round ratios of
throughput and server CPU per screening (with the collector's share, measured in the server).

Patches:

* ``held-connections``: the risk data's round trips on connections held from redis-py's pool, one
  per concurrent request (`_Held` in `service.riskdata.counters.store`, what a TLS client still uses),
  instead of the multiplexed connection of `service.redis.mux`: measures that change.
* ``separate-claim``: the request-id claim as a round trip of its own before the counters' (as on
  Redis Cluster, and on a single Redis before it was folded into the counter script).
* ``record-batched``: the record round trip (idempotency record, decision log) taken off the
  request path and batched over the requests of one loop iteration (see `patch_record_batched`).
* ``gc``: once serving, `gc.collect()` and `gc.freeze()` (see `patch_gc`); ``gc-threshold``: the
  same and a generation-0 threshold of 10,000 allocations instead of 700. (Measured: the collector
  costs 3-30 µs per screening; no gain.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import loadgen
from benchmarks.common import median
from benchmarks.servers import SCREEN_METHOD, ScreeningStack
from benchmarks.traffic import PoolSlice, repeats_needed, write_pool
from service.errors import Unsupported

T = TypeVar("T")
PATCHES = ("gc", "gc-threshold", "separate-claim", "held-connections", "record-batched")


def patch_gc(threshold: int | None = None) -> None:
    """After start-up (modules, protobuf descriptors, numba, the compiled rules: ~100k objects),
    `gc.collect()` then `gc.freeze()`: the objects that live as long as the process leave the
    collector's generations, so a full collection no longer walks them; optionally a higher
    generation-0 threshold (fewer collections, each of more young objects)."""
    import gc

    from service.server import app as server

    original = server.Server.start

    async def start(self: server.Server) -> None:
        await original(self)
        gc.collect()
        gc.freeze()
        if threshold is not None:
            gc.set_threshold(threshold, 10, 10)

    server.Server.start = start  # type: ignore[method-assign]


def patch_separate_claim() -> None:
    """The request-id claim as a round trip of its own before the counters', as before the claim
    was folded into the counter script (and as on Redis Cluster): measures that change."""
    from service.riskdata.counters.store import CounterStore

    CounterStore.folds_claim = property(lambda self: False)  # type: ignore[method-assign,assignment]


def patch_held_connections() -> None:
    """The counter store's exchanges on held redis-py connections instead of the multiplexer."""
    from service.redis import mux as redis_mux

    def unsupported(cls: Any, client: Any) -> Any:
        raise Unsupported("the held-connections experiment")

    redis_mux.Multiplexer.for_client = classmethod(unsupported)  # type: ignore[method-assign,assignment]


def patch_record_batched() -> None:
    """The record round trip off the request path, batched: `record` queues the request's commands
    (the idempotency record, a blocked opening's retract, the decision-log entry) and returns; a task
    started by the first record of a loop iteration sends everything queued meanwhile in ONE round
    trip. The answer no longer waits for the write; a retry arriving before it finds the pending
    claim and waits for the decision, as it does today."""
    from service.domain import Decision, Outcome, ScreenRequest
    from service.errors import StoreUnavailable
    from service.riskdata import store as riskdata_module
    from service.riskdata.records import encode_decision, log_entry

    riskdata: Any = riskdata_module
    from service.riskdata.decision_log import LogEntry

    queue: list[tuple[Any, Any, list[LogEntry]]] = []  # (bound risk data, queue-into-pipe, entries)
    scheduled = [False]

    async def flush() -> None:
        scheduled[0] = False
        batch = list(queue)
        queue.clear()
        groups: dict[int, tuple[Any, list[tuple[Any, list[LogEntry]]]]] = {}
        for bound, add, entries in batch:
            groups.setdefault(id(bound), (bound, []))[1].append((add, entries))
        for bound, items in groups.values():
            pipe = bound._counters.pipeline()
            written: list[LogEntry] = []
            for add, _entries in items:
                written += add(pipe)
            try:
                await bound._store.bounded(pipe.execute(raise_on_error=False), None)
            except StoreUnavailable:
                for logged in written:
                    bound._store.log.defer(logged, sent=True)

    async def record(
        self: Any, request: ScreenRequest, decision: Decision, observation: Any, ids: Mapping[str, str]
    ) -> None:
        store = self._store
        entry = log_entry(
            request,
            decision,
            subject_hash=store.hasher.identifier("person.id_number", ids["person.id_number"]),
            counters=observation.counters,
            list_hits=observation.list_hits,
        )
        logged = LogEntry.of(entry, int(decision.decided_at.timestamp() * 1000))
        if not store.breaker.allow():
            store.log.defer(logged, sent=False)
            return

        def add(pipe: Any) -> list[LogEntry]:
            if observation.claim:
                pipe.execute_command(
                    "EVAL", riskdata._RECORD, 1, store.request_key(request), observation.claim,
                    encode_decision(decision), store.config.idempotency_ms,
                )  # fmt: skip
            attempt = observation.plan
            if decision.outcome is Outcome.BLOCK and attempt is not None and attempt.counted is not None:
                retract = self._counters.prepare_retract(attempt.counted, token=attempt.key)
                self._counters.queue_retract(pipe, retract)
            store.log.queue(pipe, logged)
            return [logged]

        queue.append((self, add, [logged]))
        if not scheduled[0]:
            scheduled[0] = True
            task = asyncio.get_running_loop().create_task(flush())
            _background.add(task)
            task.add_done_callback(_background.discard)

    riskdata_module.BoundRiskData.record = record  # type: ignore[method-assign]


_background: set[asyncio.Task[None]] = set()


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


def serve(patch: str, gc_stats: str | None = None) -> int:
    """`riskgate serve` with `patch` applied first ("none": as it is)."""
    if gc_stats:
        gc_accounting(gc_stats)
    patches: dict[str, Any] = {
        "none": lambda: None,
        "gc": patch_gc,
        "gc-threshold": lambda: patch_gc(threshold=10_000),
        "separate-claim": patch_separate_claim,
        "held-connections": patch_held_connections,
        "record-batched": patch_record_batched,
    }
    patches[patch]()
    from service.tools.cli import main

    return main(["serve"])


def compare(
    patches: Sequence[str], rounds: int, seconds: float, clients: int, inflight: int, rate: float | None = None
) -> None:
    """The service as it is and with each patch, side by side; the order rotates every round."""
    import tempfile

    names = ["as is", *patches]
    with tempfile.TemporaryDirectory(prefix="rg-exp-") as tmp, contextlib.ExitStack() as stack_of:
        pool = write_pool(Path(tmp) / "pool.bin", seed=1, events=20_000, now=datetime.now(UTC))
        repeats = repeats_needed(pool.events, clients, 3000 * (seconds + 3) / clients)
        me = [sys.executable, "-m", "benchmarks.experiments"]
        gc_files = {name: Path(tmp) / f"gc-{n}.json" for n, name in enumerate(names)}
        stacks = {
            name: stack_of.enter_context(
                ScreeningStack(
                    server_argv=[*me, "--serve", "none" if name == "as is" else name, "--gc-stats", str(gc_files[name])]
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
    base = figures["as is"]
    a = tuple(median([r[i] for r in base]) for i in range(4))
    load = f"{rate:g}/s offered (open loop)" if rate else f"{clients}x{inflight} in flight"
    for patch in patches:
        rows = figures[patch]
        b = tuple(median([r[i] for r in rows]) for i in range(4))
        cpu_ratios = [p[1] / q[1] for p, q in zip(rows, base, strict=True)]
        rps_ratios = [p[0] / q[0] for p, q in zip(rows, base, strict=True)]
        print(
            f"experiment {patch}: {b[0]:.0f} vs {a[0]:.0f} screenings/s (median of per-round ratios "
            f"{median(rps_ratios):.2f}x), server CPU {b[1]:.0f} vs {a[1]:.0f} us/screen (median of per-round ratios "
            f"{median(cpu_ratios):.2f}x, rounds {[round(x, 2) for x in cpu_ratios]}), garbage collection "
            f"{b[3]:.0f} vs {a[3]:.0f} us; redis-server {b[2]:.0f} vs {a[2]:.0f} us/screen; {rounds} interleaved "
            f"rounds of {seconds:g}s, {load}",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", default="separate-claim", help=f"comma-separated, from {','.join(PATCHES)}")
    parser.add_argument("--serve", choices=("none", *PATCHES), help=argparse.SUPPRESS)
    parser.add_argument("--gc-stats", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--rate", type=float, help="offer this many screenings/s (open loop) instead of saturating")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.gc_stats)
    patches = [p.strip() for p in args.patch.split(",") if p.strip()]
    if not patches or set(patches) - set(PATCHES):
        parser.error(f"--patch: choose from {','.join(PATCHES)}")
    if not 1 <= args.rounds <= 10 or not 1 <= args.seconds <= 60:
        parser.error("--rounds 1..10, --seconds 1..60")
    compare(patches, args.rounds, args.seconds, args.clients, args.inflight, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
