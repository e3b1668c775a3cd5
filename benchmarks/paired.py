"""A change's paired measurement: another revision's server against the working tree's, same client,
interleaved rounds.

    python -m benchmarks.paired --base REV [--mode unary|open|stream] [--rounds N] [--seconds S]
                                [--rate R] [--depth D] [--json PATH]

Two `riskgate serve`, each with its own redis-server (`benchmarks.servers.ScreeningStack`): one
from a temporary `git worktree` of REV (`benchmarks.identity.worktree`), one from the working tree,
with the same rules (this tree's `rules/`), settings and hash-secret handling. Both are warmed up,
then driven by the compiled client (`benchmarks.compiled.drive`, `make loadgen`) with the same
pre-serialised `riskgate synth` requests in `rounds` rounds of `seconds`, the order of the two
alternating every round, so that a neighbour's load falls on both. Modes: `unary` closed loop at
saturation (16 in flight over 2 connections), `open` an open loop at `rate` calls/s (Poisson),
`stream` 16 ScreenStreams with `depth` messages in flight on each. Printed and written: per server
the rounds' calls/s, server CPU per call (every thread of the serving process, /proc), Redis CPU
per call and p50 / p99 latency, their medians, and new ÷ base of the medians.

Not part of `make bench` (it needs a revision to compare with): the README's paired figures say
which command gave them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import compiled, identity
from benchmarks.common import REPO, Json, median, rounded
from benchmarks.servers import SCREEN_METHOD, STREAM_METHOD, ScreeningStack
from benchmarks.traffic import write_pool

MODES = ("unary", "open", "stream")


def _options(mode: str, rate: float, depth: int) -> dict[str, Any]:
    if mode == "open":
        return {"mode": "open", "rate": rate}
    if mode == "stream":
        return {"mode": "stream", "inflight": 16, "depth": depth}
    return {}


def _figures(runs: list[dict[str, Any]], server_pid: int, redis_pid: int) -> Json:
    per_call = [run["ok"] or 1 for run in runs]
    server = [run["watched_cpu_s"][str(server_pid)] * 1e6 / n for run, n in zip(runs, per_call, strict=True)]
    redis = [run["watched_cpu_s"][str(redis_pid)] * 1e6 / n for run, n in zip(runs, per_call, strict=True)]
    return {
        "rps": [round(run["rps"]) for run in runs],
        "server_cpu_us_per_call": [round(x) for x in server],
        "redis_cpu_us_per_call": [round(x) for x in redis],
        "p50_ms": [rounded(run["latency_ms"]["p50"], 2) for run in runs],
        "p99_ms": [rounded(run["latency_ms"]["p99"], 2) for run in runs],
        "errors": sum(int(n) for run in runs for n in run.get("errors", {}).values()),
    }


def compare(base: str, mode: str, rounds: int, seconds: float, rate: float, depth: int) -> Json:
    method = STREAM_METHOD if mode == "stream" else SCREEN_METHOD
    options = _options(mode, rate, depth)
    with tempfile.TemporaryDirectory(prefix="rg-bench-paired-") as tmp, ExitStack() as stack:
        pool = write_pool(Path(tmp) / "pool.bin", seed=1, events=20_000, now=datetime.now(UTC))
        checkout, short = stack.enter_context(identity.worktree(base, Path(tmp)))
        servers = {
            short: stack.enter_context(ScreeningStack(server_argv=checkout.riskgate("serve"))),
            "tree": stack.enter_context(ScreeningStack(server_argv=identity.Checkout(REPO).riskgate("serve"))),
        }
        for name, server in servers.items():
            compiled.drive(
                server.address, method, pool.path, seconds=2.0, warmup=0.5, unique_ids=f"warm-{name}", **options
            )
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for round_ in range(rounds):
            order = list(servers.items())
            for name, server in order if round_ % 2 == 0 else order[::-1]:
                run = compiled.drive(
                    server.address,
                    method,
                    pool.path,
                    seconds=seconds,
                    warmup=0.5,
                    unique_ids=f"r{round_}-{name}",
                    watch_pids=[server.pid, server.redis_pid],
                    **options,
                )
                runs[name].append(run)
        out: Json = {"base": base, "mode": mode, "rounds": rounds, "seconds": seconds, **options}
        for name, server in servers.items():
            out[name] = _figures(runs[name], server.pid, server.redis_pid)
    base_figures, tree_figures = out[short], out["tree"]
    out["tree_over_base"] = {
        key: rounded(median(tree_figures[key]) / median(base_figures[key]), 3)
        for key in ("rps", "server_cpu_us_per_call", "redis_cpu_us_per_call", "p50_ms", "p99_ms")
        if median(base_figures[key]) > 0
    }
    for name in servers:
        figures = out[name]
        print(
            f"paired {mode}: {name:8s} calls/s {figures['rps']} (median {median(figures['rps']):.0f}); server CPU "
            f"{figures['server_cpu_us_per_call']} us/call (median {median(figures['server_cpu_us_per_call']):.0f}); "
            f"redis {median(figures['redis_cpu_us_per_call']):.0f} us/call; p50 {median(figures['p50_ms'])} ms, "
            f"p99 {figures['p99_ms']} ms; errors {figures['errors']}"
        )
    print(f"paired {mode}: tree ÷ {short} (medians): {out['tree_over_base']}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare the working tree with")
    parser.add_argument("--mode", choices=MODES, default="unary")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=600.0, help="calls/s offered in --mode open")
    parser.add_argument("--depth", type=int, default=64, help="messages in flight per stream in --mode stream")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    try:
        out = compare(args.base, args.mode, args.rounds, args.seconds, args.rate, args.depth)
    except (identity.IdentityError, compiled.LoadgenMissingError) as error:
        print(f"paired: {error}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
