"""Where the server's time goes: py-spy samples of one saturated run, sorted into the screening's steps.

    python -m benchmarks.profile [--seconds 10] [--rate 100] [--inflight 16] [--nonblocking]
                                 [--folded PATH] [--json PATH]

Starts the stack of `benchmarks.e2e` (redis-server + `riskgate serve`, shipped rules), saturates it
with the compiled load generator of `benchmarks.compiled` (16 calls in flight over 2 connections,
`riskgate synth` requests; `make loadgen` builds it), and meanwhile samples the server with py-spy
(`py-spy record --format raw`, Python frames, idle threads left out; installed into the venv when
missing). py-spy pauses the server for each sample: without that (`--nonblocking`) the stacks of
coroutines resumed from C (grpc.aio's Cython, asyncio's C tasks) often come out cut short at the
loop, and half the time looks like gRPC's. Server CPU per screening and per thread come from /proc
over the same seconds.

Each sample is put in one step of the pipeline (`STAGES`: the first step, in that order, that one
of its frames names), and separately in one component (`COMPONENTS`: the code base of the innermost
frame that belongs to a known one; asyncio, json and other plumbing of the standard library pass
the sample on to their caller). Work that asyncio runs in a task of its own (`asyncio.wait_for`,
redis-py's socket timeouts) starts at the loop, not at the step that awaited it: such Redis I/O is
a step of its own. A sample with no frame of ours is gRPC's: grpc.aio's Cython code runs
as callbacks of the asyncio loop (`Handle._run`) with no Python frame of its own, and so do the
protobuf (de)serialisers it calls. A step's µs per screening is its share of the main thread's
samples times the main thread's CPU per screening; the other threads are reported from /proc.

Prints one summary line and the two tables (markdown); `--json` writes them.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import compiled
from benchmarks.common import Json, thread_cpu_seconds, versions
from benchmarks.servers import SCREEN_METHOD, ScreeningStack
from benchmarks.traffic import write_pool

# (step, markers): a sample belongs to the first step, in this order, that one of its frames names.
# The steps do not call each other, so the order only matters for the catch-alls at the end.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("validation", ("(service/pipeline/validate.py", "_validator.<locals>")),
    ("facts", ("(service/pipeline/facts.py",)),
    ("rules", ("(service/rules/",)),
    ("metrics", ("prometheus_client/",)),
    ("response (domain -> protobuf)", ("(service/pipeline/api.py",)),
    ("decide", ("(service/pipeline/outcome.py",)),
    ("risk data: claim request_id (EVAL)", ("RiskDataStore.claim", "BoundRiskData._claim")),
    ("risk data: counters + lists round trip", ("BoundRiskData._read", "CounterStore.prepare", "Watchlists.plan")),
    ("decision log + idempotency write", ("BoundRiskData.record", "(service/riskdata/records.py", "DecisionLog.queue")),
    ("risk data: other (hashing keys, budget)", ("BoundRiskData.observe", "RiskDataStore.", "counters_to_update")),
    (
        "screening glue",
        (
            "(service/pipeline/screening.py",
            "(service/pipeline/gather.py",
            "(service/server/screening.py",
            "(service/server/app.py",
        ),
    ),
    # the interceptor's wrapper is below every handler: only what no step above claims is its own
    ("access control (interceptor)", ("(service/server/access/",)),
)
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("redis-py (client, pipeline, socket I/O)", ("(redis/",)),
    ("rules (our adapter + durable_rules)", ("(service/rules/",)),
    ("validation + facts", ("(service/pipeline/validate.py", "(service/pipeline/facts.py", "(service/domain.py")),
    (
        "counters + lists (plan, hash, pack, direct pipeline I/O, parse)",
        ("(service/riskdata/counters/", "(service/riskdata/lists.py", "(service/riskdata/watchlists.py"),
    ),
    ("decision log (entry, encoding)", ("(service/riskdata/records.py",)),
    ("protobuf (response building)", ("(service/pipeline/api.py", "google/protobuf")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    (
        "our pipeline (screening, risk data, server)",
        (
            "(service/pipeline/screening.py",
            "(service/riskdata/store.py",
            "(service/server/app.py",
            "(service/pipeline/outcome.py",
        ),
    ),
)
GRPC = "gRPC (grpc.aio Cython, protobuf parse/serialise) + asyncio loop"
# `asyncio.wait_for` runs its awaitable in a new task, whose samples start at the loop, not at the step
# that awaited it: Redis work seen only that way is a step of its own.
DETACHED_REDIS = "risk data: Redis I/O whose step the stack does not show"
_REDIS_CODE = ("(redis/", "(service/riskdata/counters/", "(service/riskdata/watchlists.py")
_LINE = re.compile(r":\d+\)$")


def classify(frames: Sequence[str], table: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    """STAGES: the first step (in table order) any frame names; COMPONENTS: the code base of the
    innermost frame that belongs to one (plumbing of the standard library passes to its caller)."""
    if table is STAGES:
        for name, markers in table:
            if any(marker in frame for frame in frames for marker in markers):
                return name
        if any(marker in frame for frame in frames for marker in _REDIS_CODE):
            return DETACHED_REDIS
        return GRPC
    for frame in reversed(frames):
        for name, markers in table:
            if any(marker in frame for marker in markers):
                return name
    return GRPC


def parse_folded(text: str) -> list[tuple[list[str], int]]:
    out = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            out.append(([_LINE.sub(")", f) for f in stack.split(";")], int(count)))
    return out


def breakdown(
    samples: list[tuple[list[str], int]], table: tuple[tuple[str, tuple[str, ...]], ...], us_per_sample: float
) -> list[tuple[str, float, float]]:
    """(name, share of samples, µs per screening), largest first."""
    counts: collections.Counter[str] = collections.Counter()
    for frames, n in samples:
        counts[classify(frames, table)] += n
    total = sum(counts.values()) or 1
    return [(name, n / total, n * us_per_sample) for name, n in counts.most_common()]


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    return found


def _table(title: str, rows: list[tuple[str, float, float]]) -> str:
    lines = [f"| {title} | share of main-thread samples | µs per screening |", "| --- | --- | --- |"]
    lines += [f"| {name} | {share:.1%} | {us:.0f} |" for name, share, us in rows]
    return "\n".join(lines)


def profile(seconds: float, rate: int, inflight: int, pool_events: int, blocking: bool = True) -> Json:
    spy = py_spy()
    with tempfile.TemporaryDirectory(prefix="rg-profile-") as tmp:
        pool = write_pool(Path(tmp) / "pool.bin", seed=1, events=pool_events, now=datetime.now(UTC))
        folded = Path(tmp) / "stacks.txt"
        with ScreeningStack() as stack:
            compiled.drive(stack.address, SCREEN_METHOD, pool.path, seconds=3, warmup=0.5, unique_ids="pwarm")
            result: dict[str, Any] = {}

            def drive() -> None:
                result["load"] = compiled.drive(
                    stack.address, SCREEN_METHOD, pool.path, inflight=inflight, seconds=seconds + 3.0, warmup=0.5,
                    unique_ids="prof", watch_pids=[stack.pid, stack.redis_pid],
                )  # fmt: skip

            loader = threading.Thread(target=drive)
            loader.start()
            time.sleep(1.5)  # the client connected and the window open
            before, threads0 = stack.snapshot(), thread_cpu_seconds(stack.pid)
            subprocess.run(
                [spy, "record", "--pid", str(stack.pid), "--duration", str(int(seconds)), "--rate", str(rate),
                 "--format", "raw", "--output", str(folded), *([] if blocking else ["--nonblocking"])],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            after, threads1 = stack.snapshot(), thread_cpu_seconds(stack.pid)
            loader.join()
        samples = parse_folded(folded.read_text())
        folded_text = folded.read_text()
    screened = after.screened - before.screened
    threads = {k: (v - threads0.get(k, 0.0)) * 1e6 / screened for k, v in threads1.items()}
    main_us = max(threads.values())
    main_thread = max(threads, key=lambda k: threads[k])
    # Only the main thread's samples are sorted into steps (the others are reported from /proc).
    main_samples = [(f, n) for f, n in samples if not any("Thread.run" in x or "_worker (" in x for x in f)]
    total = sum(n for _, n in main_samples) or 1
    us_per_sample = main_us / total
    stages = breakdown(main_samples, STAGES, us_per_sample)
    components = breakdown(main_samples, COMPONENTS, us_per_sample)
    return {
        "profile.screenings": int(screened),
        "profile.rps": round(screened / seconds),
        "profile.server_cpu_us_per_screen": round(sum(threads.values()), 1),
        "profile.main_thread": main_thread,
        "profile.main_thread_us_per_screen": round(main_us, 1),
        "profile.threads_us_per_screen": {k: round(v, 1) for k, v in threads.items() if v > 0.05},
        "profile.samples": total,
        "profile.stages": [(n, round(s, 4), round(u, 1)) for n, s, u in stages],
        "profile.components": [(n, round(s, 4), round(u, 1)) for n, s, u in components],
        "profile.load": result["load"],
        "profile.redis": after.minus(before),
        "profile.folded": folded_text,
        "versions": versions(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="sampled seconds (default 10, at most 60)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--inflight", type=int, default=16, help="calls in flight (default 16, over 2 connections)")
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="sample without pausing the server (cheaper, but stacks of resumed coroutines come out cut short)",
    )
    parser.add_argument("--folded", help="also write the folded stacks (flamegraph.pl / speedscope input) here")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 60 or not 10 <= args.rate <= 1000:
        parser.error("--seconds 1..60, --rate 10..1000")
    figures = profile(args.seconds, args.rate, args.inflight, pool_events=20_000, blocking=not args.nonblocking)
    folded = figures.pop("profile.folded")
    if args.folded:
        Path(args.folded).write_text(folded)
    threads = ", ".join(f"{k} {v:.0f}" for k, v in figures["profile.threads_us_per_screen"].items())
    top = figures["profile.stages"][0]
    print(
        f"profile: {figures['profile.rps']}/s saturated, server {figures['profile.server_cpu_us_per_screen']:.0f} us"
        f"/screen (threads: {threads}); largest step: {top[0]} {top[2]:.0f} us ({top[1]:.0%}); "
        f"{figures['profile.samples']} samples",
        flush=True,
    )
    print(_table("step", [tuple(x) for x in figures["profile.stages"]]))
    print()
    print(_table("component", [tuple(x) for x in figures["profile.components"]]))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
