"""The console's tallies: what they cost each screening, and how fast the console reads with a million decisions logged.

    python -m benchmarks.console_bench [--quick] [--json PATH]

Against a private redis-server on loopback (`service.redis.embedded`, no persistence):

1. **Cost per screening.** Decision-log entries made from a seeded `riskgate synth` stream
   (validated, with the facts and hashes a screening logs, the few transfers in another
   currency left out; outcomes in a fixed mix: 1 in 20
   warned by one rule, 1 in 50 blocked, 1 in 10 with a shadow fire) are written by the log's
   own script, `LOG_ONCE`, in interleaved rounds with and without their tallies (the same
   script given no tally fields: the log as it was before the console). Per decision: Redis CPU
   (`INFO commandstats`: the script and every command it calls; and the redis-server process's
   own CPU), and our Python (building the script's arguments, `tallies_of` included). Medians
   over the rounds, and the difference: the tallies' cost.
2. **Memory.** Redis memory of the tallies and the flagged stream per decision (`MEMORY USAGE`
   of their keys over the decisions written).
3. **Reads at scale.** With 1,000,000 decisions logged over the last 3 hours (`--quick`:
   100,000), the console's reads (`Monitor`): the last 3 hours by minute, today's tallies, the
   24 hours of opening bursts, the latest 50 warnings, and 50 with a filter that matches
   nothing (a bounded scan of 20,000): median wall time of 15 each.

Keys `console.*` in benchmarks/results/latest.json. About 2.5 minutes (`--quick` 30 s).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from benchmarks.common import Json, part_main, rounded
from benchmarks.counters_bench import redis_cpu, script_usec
from service.domain import Decision, Outcome, Reason
from service.errors import ValidationError
from service.pipeline.facts import facts, identifiers
from service.pipeline.validate import screen_request
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.redis.keys import KeyHasher
from service.riskdata.decision_log import LOG_ONCE, DecisionLog, DecisionLogConfig, LogEntry
from service.riskdata.monitoring import Monitor
from service.riskdata.records import history_ids, log_entry
from service.riskdata.tallies import clerk_ref, local_day
from service.synth import generate

STREAM = "rg:log:decisions"
HASHER = KeyHasher(b"b" * 32)
_BATCH = 500


class _Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


def make_entries(count: int, span: timedelta, seed: int = 7) -> list[LogEntry]:
    """`count` log entries of a synth stream, decided over the last `span`, oldest first."""
    now = datetime.now(UTC)
    out: list[LogEntry] = []
    for n, (message, _) in enumerate(generate(seed, count, 0.02, now - span, population=20_000)):
        request = screen_request(message, now=now)
        try:
            request_facts, ids = facts(request), identifiers(request)
        except ValidationError:  # a transfer in another currency: no rates loaded here
            continue
        outcome, reasons = Outcome.ALLOW, []
        if n % 20 == 0:
            outcome = Outcome.WARN
            reasons.append(
                Reason("T18", Outcome.WARN, "多次转账给新收款人", "repeated new payees", (("payees_1h", "4"),))
            )
        elif n % 50 == 1:
            outcome = Outcome.BLOCK
            reasons.append(Reason("C05", Outcome.BLOCK, "名下银行卡过多", "too many cards", (("cards_30d", "6"),)))
        if n % 10 == 3:
            reasons.append(Reason("T19", Outcome.WARN, "夜间大额", "large at night", (), shadow=True))
        decided_at = now - span + span * (n / count)
        decision = Decision(
            request.request_id, str(uuid.uuid4()), outcome, tuple(reasons), "rev@1", False, decided_at, timedelta(0)
        )
        fields = log_entry(
            request,
            decision,
            subject_hash=HASHER.identifier("person.id_number", ids["person.id_number"]),
            counters={"payees_1h": 1, "cards_30d": 2},
            list_hits={},
            facts=request_facts,
            id_hashes=history_ids(ids, request_facts, HASHER.identifier),
            clerk_ref=clerk_ref(HASHER.identifier, request.outlet.clerk_id),
        )
        out.append(LogEntry.of(fields, int(decided_at.timestamp() * 1000)))
    return out


def untallied(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The script's arguments with no tally fields: the decision log without the console."""
    m, d, h, f = (int(a) for a in args[14:18])
    return (*args[:14], 0, 0, 0, 0, *args[18:22], *args[22 + m + d + h + f :])


def write(sync: redis.Redis, sha: str, argument_lists: Sequence[tuple[Any, ...]]) -> None:
    for start in range(0, len(argument_lists), _BATCH):
        pipe = sync.pipeline(transaction=False)
        for args in argument_lists[start : start + _BATCH]:
            pipe.evalsha(sha, *args)
        pipe.execute()


def cost_round(sync: redis.Redis, sha: str, argument_lists: Sequence[tuple[Any, ...]]) -> tuple[float, float]:
    """Redis CPU per decision: the script's µs (commandstats), and the process's CPU µs."""
    sync.flushall()
    sync.config_resetstat()
    before = redis_cpu(sync)
    write(sync, sha, argument_lists)
    count = len(argument_lists)
    return script_usec(sync) / count, (redis_cpu(sync) - before) / count * 1e6


def _key_bytes(sync: redis.Redis, pattern: str) -> int:
    total = 0
    for key in sync.scan_iter(match=pattern, count=1000):
        total += int(sync.memory_usage(key, samples=0) or 0)
    return total


async def _median_ms(work: Any, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await work()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def reads(url: str) -> dict[str, float]:
    client = redis.asyncio.Redis.from_url(url)
    monitor = Monitor(client, STREAM, _Clock())
    today = local_day(int(datetime.now(UTC).timestamp() * 1000))
    try:
        return {
            "minutes_3h_ms": await _median_ms(lambda: monitor.minutes(timedelta(hours=3))),
            "day_ms": await _median_ms(lambda: monitor.day(today)),
            "bursts_24h_ms": await _median_ms(lambda: monitor.hours(24)),
            "latest_50_ms": await _median_ms(lambda: monitor.flagged(limit=50)),
            "filtered_none_ms": await _median_ms(lambda: monitor.flagged(limit=50, institution="NO_SUCH_BANK")),
        }
    finally:
        await client.aclose()


def bench(quick: bool) -> Json:
    sample = 3_000 if quick else 10_000
    rounds = 3 if quick else 5
    logged = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="rg-console-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", RedisOptions(persistent=False, port=0))
        with server:
            sync = redis.Redis.from_url(server.url)
            sha = sync.script_load(LOG_ONCE)
            log = DecisionLog(None, DecisionLogConfig(stream_key=STREAM, maxlen=2_000_000), _Clock())
            entries = make_entries(sample, timedelta(hours=3))
            started = time.process_time()
            tallied = [log._args(entry) for entry in entries]
            python_us = (time.process_time() - started) / sample * 1e6
            plain = [untallied(args) for args in tallied]
            with_rows, without_rows = [], []
            for _ in range(rounds):
                without_rows.append(cost_round(sync, sha, plain))
                with_rows.append(cost_round(sync, sha, tallied))
            # Memory: the tallies' keys after one run with them, per decision.
            tally_bytes = sum(_key_bytes(sync, f"{{{STREAM}}}:{kind}:*") for kind in ("m", "t", "k")) + int(
                sync.memory_usage(f"{{{STREAM}}}:f", samples=0) or 0
            )
            flagged = int(sync.xlen(f"{{{STREAM}}}:f"))
            flagged_bytes = int(sync.memory_usage(f"{{{STREAM}}}:f", samples=0) or 0)
            # Reads at scale.
            sync.flushall()
            made = written = 0
            chunk = 20_000
            span = timedelta(hours=3)
            while made < logged:
                count = min(chunk, logged - made)
                block = make_entries(count, span * (count / logged), seed=made + 1)
                shift = int((span * (1 - (made + count) / logged)).total_seconds() * 1000)
                moved = [LogEntry(e.decision_id, e.decided_ms - shift, e.fields) for e in block]
                write(sync, sha, [log._args(entry) for entry in moved])
                made, written = made + count, written + len(moved)
            assert sync.xlen(STREAM) == written, "every decision logged"
            logged = written
            read_ms = asyncio.run(reads(server.url))
            sync.close()
    script_with = statistics.median(r[0] for r in with_rows)
    script_without = statistics.median(r[0] for r in without_rows)
    process_with = statistics.median(r[1] for r in with_rows)
    process_without = statistics.median(r[1] for r in without_rows)
    figures: Json = {
        "console.decisions_per_round": sample,
        "console.rounds": rounds,
        "console.redis_us_per_decision_with_tallies": rounded(script_with, 2),
        "console.redis_us_per_decision_without": rounded(script_without, 2),
        "console.redis_us_tallies": rounded(script_with - script_without, 2),
        "console.redis_process_us_tallies": rounded(process_with - process_without, 2),
        "console.redis_process_us_with_tallies": rounded(process_with, 2),
        "console.redis_process_us_without": rounded(process_without, 2),
        "console.python_us_per_decision_args": rounded(python_us, 2),
        "console.tally_bytes_per_decision": rounded(tally_bytes / sample, 1),
        "console.flagged_bytes_per_entry": rounded(flagged_bytes / max(1, flagged), 1),
        "console.logged_for_reads": logged,
        **{f"console.read_{name}": rounded(value, 2) for name, value in read_ms.items()},
    }
    print(
        f"console: tallies cost {figures['console.redis_process_us_tallies']} us of Redis CPU per decision "
        f"(process {process_without:.1f} -> {process_with:.1f} us; script {script_without:.1f} -> {script_with:.1f}), "
        f"{python_us:.1f} us of Python for the script's arguments; "
        f"{figures['console.tally_bytes_per_decision']} B per decision; with {logged:,} logged: "
        + ", ".join(f"{name} {value:.2f}" for name, value in read_ms.items()),
        flush=True,
    )
    return figures


def run_part(quick: bool) -> Json:
    return bench(quick)


if __name__ == "__main__":
    sys.exit(part_main("python -m benchmarks.console_bench", __doc__ or "", run_part, "100,000 decisions, 3 rounds"))
