"""Backtest: agreement with what the service decided, and the replay and backtest rates on one core.

    python -m benchmarks.backtest_bench [--quick] [--json FILE]

Part "backtest" of `make bench`. Steps, all through the real parts:

1. **Record.** A private redis-server and `riskgate serve` (`benchmarks.servers.ScreeningStack`);
   `riskgate synth --seed 1 --events N --labels L | riskgate screen` screens a synthetic stream
   (N = 20,000; 3,000 with --quick); `riskgate decisions archive` drains the log to Parquet.
   Figures: the log's Redis memory per entry (`MEMORY USAGE` / `XLEN`) and the archive's bytes
   per decision.
2. **Agreement.** `riskgate backtest` of the served rules on their own history: every decision
   (outcome and fired rules) and every counter value reproduced: `backtest.agreement_mismatches`
   and `backtest.counter_mismatches` must be 0. And the vectorised evaluator against durable_rules
   on every event of it (`backtest.vector_vs_durable_disagreements`: 0), with the time each takes
   per event (the baseline of the speed-up: durable_rules, in the same run).
3. **Rates.** The recorded history replicated to `SCALE` events (1,000,000; 100,000 with --quick),
   each copy with its own identifier hashes and decision ids, and backtested with a changed
   candidate (a threshold lowered): events per second of the whole backtest (read, counters of
   both rulesets, both rulesets evaluated, the report), its phases and its peak memory (the
   process's peak RSS right after it); then the counter replay in the kernels alone
   (`kernel_seconds`: events per second of one ruleset's counter file), medians of `REPEATS`
   runs of the kernels, against the NumPy set-up of the same replay.

Single process, single thread: the rates are per core (Numba kernels and durable_rules are
single-threaded here), on this 2-core machine.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import REPO, Json, median, part_main
from benchmarks.servers import ScreeningStack
from service.backtest.command import run_backtest
from service.backtest.events import Events
from service.backtest.replay import CounterReplay
from service.backtest.run import Engine, Ruleset, Verdict, evaluate
from service.domain import Outcome
from service.riskdata.history import read_rows, read_table
from service.rules.directory import load_directory

RISKGATE = Path(sys.executable).parent / "riskgate"
REPEATS = 3


def _record(events: int, tmp: Path) -> tuple[Path, Path, Json]:
    """Screen a synthetic stream through the real server and archive its decision log."""
    labels = tmp / "labels.jsonl"
    archive = tmp / "archive"
    with ScreeningStack() as stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
        env.update(RISKGATE_REDIS_URL=stack.redis.url, RISKGATE_HASH_SECRET_FILE=str(stack.tmp / "hash-secret"))
        started = time.monotonic()
        with subprocess.Popen(
            [str(RISKGATE), "synth", "--seed", "1", "--events", str(events), "--labels", str(labels)],
            stdout=subprocess.PIPE,
            env=env,
        ) as synth:
            subprocess.run(
                [str(RISKGATE), "screen", "--target", stack.address],
                stdin=synth.stdout,
                env=env,
                check=True,
                timeout=1800,
                capture_output=True,
            )
            synth.wait(timeout=60)
        screened = time.monotonic() - started
        length = int(stack.sync.xlen("rg:log:decisions"))
        memory = int(stack.sync.memory_usage("rg:log:decisions", samples=0) or 0)
        started = time.monotonic()
        subprocess.run(
            [str(RISKGATE), "decisions", "archive", "--out", str(archive)],
            env=env,
            check=True,
            timeout=1800,
            capture_output=True,
        )
        archived = time.monotonic() - started
    size = sum(f.stat().st_size for f in archive.rglob("*.parquet"))
    return (
        archive,
        labels,
        {
            "backtest.recorded_events": length,
            "backtest.screen_seconds": round(screened, 1),
            "backtest.log_redis_bytes_per_entry": round(memory / length) if length else None,
            "backtest.archive_bytes_per_event": round(size / length) if length else None,
            "backtest.archive_events_per_second": round(length / archived) if archived else None,
        },
    )


def _replicate(archive: Path, scale: int, out: Path) -> int:
    """The archive's history repeated until `scale` events, each copy with its own identifier hashes
    and decision ids (so copies are different people, accounts and devices)."""
    table = read_table(archive)
    copies = max(1, -(-scale // table.num_rows))
    out.mkdir()
    written = 0
    for copy in range(copies):
        suffix = f"~{copy}"
        ids = table.column("ids").combine_chunks()
        children = [pc.binary_join_element_wise(child, pa.scalar(suffix), "") for child in ids.flatten()]
        replicated = table.set_column(
            table.schema.get_field_index("ids"),
            "ids",
            pa.StructArray.from_arrays(children, fields=list(ids.type), mask=ids.is_null()),
        )
        for name in ("decision_id", "request_id", "subject"):
            column = pc.binary_join_element_wise(replicated.column(name), pa.scalar(suffix), "")
            replicated = replicated.set_column(replicated.schema.get_field_index(name), name, column)
        rows = min(table.num_rows, scale - written)
        pq.write_table(replicated.slice(0, rows), out / f"part-{copy:04d}.parquet", compression="zstd")
        written += rows
    return written


def _candidate(tmp: Path) -> Path:
    changed = tmp / "changed-rules"
    shutil.copytree(REPO / "rules", changed)
    rules = changed / "transfers.rules.yaml"
    text = rules.read_text(encoding="utf-8")
    rules.write_text(text.replace("when: payers_in_24h >= 20 and", "when: payers_in_24h >= 3 and"), encoding="utf-8")
    return changed


def _kernel_rate(history: Path) -> Json:
    """The counter replay alone, on the replicated history: set-up (NumPy) and kernels, per event."""
    directory = load_directory(REPO / "rules")
    events = Events(*read_rows(history))
    setups, kernels = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        replay = CounterReplay(directory.counter_spec, directory.filters, events)
        setups.append(time.perf_counter() - started)
        kernels.append(replay.run().kernel_seconds)
    return {
        "backtest.replay_events": events.n,
        "backtest.replay_kernel_events_per_second": round(events.n / median(kernels)),
        "backtest.replay_setup_events_per_second": round(events.n / median(setups)),
        "backtest.replay_kernel_vs_setup": round(median(setups) / median(kernels), 2),
    }


def _engines(archive: Path) -> Json:
    """The vectorised evaluator against durable_rules on the recorded stream: the same verdict for
    every event (outcome and fired rules), and the time each takes to evaluate the served rules."""
    events = Events(*read_rows(archive))
    selected = np.arange(events.n, dtype=np.int64)
    seconds: dict[Engine, float] = {}
    verdicts: dict[Engine, list[Verdict]] = {}
    for engine in (Engine.DURABLE, Engine.VECTOR):
        with Ruleset(REPO / "rules", engine) as ruleset:
            replay = CounterReplay(ruleset.active.counter_spec, ruleset.active.where, events)
            started = time.perf_counter()
            outcomes = evaluate(ruleset, events, selected, fail_outcome=Outcome.WARN, replay=replay)
            seconds[engine] = time.perf_counter() - started - outcomes.values.kernel_seconds
            verdicts[engine] = outcomes.verdicts
    disagreements = sum(1 for a, b in zip(verdicts[Engine.DURABLE], verdicts[Engine.VECTOR], strict=True) if a != b)
    return {
        "backtest.vector_vs_durable_events": events.n,
        "backtest.vector_vs_durable_disagreements": disagreements,
        "backtest.durable_evaluate_us_per_event": round(seconds[Engine.DURABLE] / events.n * 1e6, 2),
        "backtest.vector_evaluate_us_per_event": round(seconds[Engine.VECTOR] / events.n * 1e6, 2),
        "backtest.vector_speedup": round(seconds[Engine.DURABLE] / seconds[Engine.VECTOR], 1),
    }


def bench(events: int, scale: int) -> Json:
    # One core: Arrow reads with a thread pool otherwise.
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    with tempfile.TemporaryDirectory(prefix="rg-bench-backtest-") as name:
        tmp = Path(name)
        archive, labels, figures = _record(events, tmp)
        same = run_backtest(
            candidate_dir=str(REPO / "rules"),
            baseline_dir=str(REPO / "rules"),
            history_path=str(archive),
            since=None,
            until=None,
            labels_path=str(labels),
            limits=[],
            fail_outcome=Outcome.WARN,
        )
        figures.update(_engines(archive))
        agreement = same["agreement"]
        figures.update(
            {
                "backtest.agreement_compared": agreement["compared"],
                "backtest.agreement_mismatches": agreement["mismatches"],
                "backtest.counter_mismatches": agreement["counter_mismatches"],
                "backtest.degraded_decisions": same["history"]["degraded"],
                "backtest.labelled_fraud_events": same["labels"]["positives"],
            }
        )
        big = tmp / "replicated"
        figures["backtest.events"] = _replicate(archive, scale, big)
        report = run_backtest(
            candidate_dir=str(_candidate(tmp)),
            baseline_dir=str(REPO / "rules"),
            history_path=str(big),
            since=None,
            until=None,
            labels_path=None,
            limits=[],
            fail_outcome=Outcome.WARN,
        )
        timing = report["timing"]
        n = timing["events_read"]
        figures.update(
            {
                "backtest.events_per_second": timing["events_per_second"],
                "backtest.read_us_per_event": round(timing["read_seconds"] / n * 1e6, 2),
                "backtest.replay_setup_us_per_event": round(timing["replay_setup_seconds"] / n * 1e6, 2),
                "backtest.evaluate_us_per_event": round(timing["evaluate_seconds"] / n * 1e6, 2),
                "backtest.report_us_per_event": round(timing["report_seconds"] / n * 1e6, 2),
                "backtest.changed": report["changes"]["changed"],
                # The process's peak so far: the whole backtest's (the steps before it hold far less).
                "backtest.peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
        figures.update(_kernel_rate(big))
    print(json.dumps(figures, indent=1), flush=True)
    return figures


def run_part(quick: bool) -> Json:
    """`benchmarks.run`'s entry point."""
    return bench(events=3_000 if quick else 20_000, scale=100_000 if quick else 1_000_000)


def main(argv: list[str] | None = None) -> int:
    return part_main("python -m benchmarks.backtest_bench", __doc__, run_part, "3,000 events, 100,000 replayed", argv)


if __name__ == "__main__":
    sys.exit(main())
