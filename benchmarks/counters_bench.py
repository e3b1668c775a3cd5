"""Counters alone: the counter round trip of one screening, against a private redis-server on loopback.

    python -m benchmarks.counters_bench [--events 3000] [--repeats 5] [--inflight 1] [--unix]
                                        [--population 100000] [--gap 1] [--against REV]
                                        [--json [PATH|-]]

Starts its own redis-server (`service.redis.embedded`, no persistence, loopback TCP or `--unix`
socket), loads the shipped `rules/counters.yaml`, and replays a seeded stream of transfers (the
dominant event kind: four entities, twelve counter values) over a population of 100k accounts
and 50 busy ones, about a second apart: most entities are new or seen minutes ago. `--population
3000 --gap 40` makes accounts come back every few hours to days instead (every short window has
slid past since: the steady state of a long-running service). After a warm-up of the same
size, each of `--repeats` runs sends `--events` events and measures, per event:

* round trip: wall time of `CounterStore.observe()` (sequential, or `--inflight` at a time);
* Python CPU: `time.process_time()` of this process over the run (hashing, packing, redis-py,
  asyncio), divided by the events;
* Redis CPU: the EVALSHA time from `INFO commandstats` (CONFIG RESETSTAT before each run), and
  the redis-server process's own CPU (`INFO cpu`, which adds reading, parsing and replying);
* shared: the same through `prepare` / `queue` / `read` together with two watchlist HMGETs, as a
  screening sends them, in a redis-py pipeline and in `store.pipeline()` (Python CPU and wall).

Each run gives the three paths equal slices of the stream, in rotating order (`--against`: the
other revision's store takes the whole stream too, on its own database); each figure is the
median over the runs. Then memory: one account that sent and received money
in every bucket of every window of its counters (90 nights, 24 hours, 30 minutes), summed over
its keys (`MEMORY USAGE`), and the same for an account seen once.

`--against REV` also runs `service/riskdata/counters` as of git revision REV (one with the layout by
role; extracted with `git archive` into a temporary package) through its `observe()`, on database 1
of the same server, in the same runs: the before/after of a change in one command.

Prints one summary line; `--json` writes the figures (keys `counters.us_per_request`,
`counters.python_cpu_us`, `counters.redis_cpu_us`, `counters.redis_bytes_per_entity`, ...) to
PATH, or to stdout with `-`. Bounded: at most 20,000 events per run, 10 runs; the default run
takes about ten seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.domain import EventKind
from service.pipeline.facts import Scalar
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.redis.keys import KeyHasher
from service.riskdata.counters.loader import load_counters
from service.riskdata.counters.model import CounterSpec, Filter, counters_to_update
from service.riskdata.counters.store import CounterStore

REPO = Path(__file__).resolve().parent.parent
SECRET = bytes(range(32))
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOT_PAYEES = 50
POPULATION = 100_000
BUSY_ACCOUNT = "6222020200112233445"
MAX_EVENTS = 20_000
MAX_REPEATS = 10

Event = dict[str, Any]
Observe = Callable[..., Any]


def _where(condition: Filter, values: dict[str, Scalar] | Any) -> bool:
    """The shipped transfer conditions (night, near-threshold), without the rules engine."""
    amount = values.get("transfer.amount_fen")
    if "local_hour" in condition.text:
        hour = values.get("local_hour")
        return isinstance(hour, int) and hour < 5
    if isinstance(amount, int) and "amount_fen" in condition.text:
        return 4_750_000 <= amount < 5_000_000 or 47_500_000 <= amount < 50_000_000
    return False


def transfer(spec: CounterSpec, at: datetime, payer: str, payee: str, amount: int, payer_id: str) -> Event:
    local_hour = (at.hour + 8) % 24
    facts: dict[str, Scalar] = {"transfer.amount_fen": amount, "local_hour": local_hour}
    ids = {"transfer.payer_account": payer, "transfer.payee_account": payee, "payer.id_number": payer_id}
    return {
        "occurred_at": at,
        "kind": EventKind.TRANSFER,
        "facts": facts,
        "ids": ids,
        "updates": counters_to_update(spec, EventKind.TRANSFER, facts, _where),
    }


def event_stream(
    spec: CounterSpec, count: int, seed: int = 7, population: int = POPULATION, gap: float = 1.0
) -> list[Event]:
    """Transfers `gap` seconds apart on average: payers from `population` accounts, payees 80 %
    from `population`, 20 % from 50 busy ones."""
    rng = random.Random(seed)
    at = START
    events = []
    for _ in range(count):
        at += timedelta(milliseconds=rng.randint(0, round(2000 * gap)))
        payer = rng.randrange(population)
        payee = (
            f"6217{rng.randrange(HOT_PAYEES):015d}" if rng.random() < 0.2 else f"6228{rng.randrange(population):015d}"
        )
        amount = rng.choice((10_000, 50_000, 200_000, 4_900_000, rng.randint(100, 10_000_000)))
        events.append(transfer(spec, at, f"6222{payer:015d}", payee, amount, f"110105{payer:012d}"))
    return events


@dataclass
class Run:
    wall_us: float
    python_cpu_us: float
    redis_script_us: float
    redis_process_us: float


def redis_cpu(sync: redis.Redis) -> float:
    cpu: Any = sync.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def script_usec(sync: redis.Redis) -> float:
    """The script's time (`cmdstat_evalsha`): the commands it calls included."""
    stats: Any = sync.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def _timed(sync: redis.Redis, work: Callable[[], Any], count: int) -> Run:
    sync.config_resetstat()
    process_before = redis_cpu(sync)
    cpu, wall = time.process_time(), time.perf_counter()
    await work()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Run(
        wall_us=wall / count * 1e6,
        python_cpu_us=cpu / count * 1e6,
        redis_script_us=script_usec(sync) / count,
        redis_process_us=(redis_cpu(sync) - process_before) / count * 1e6,
    )


async def measure(
    stores: Sequence[dict[str, Callable[[Event], Any]]],
    sync: redis.Redis,
    events: Sequence[Event],
    repeats: int,
    inflight: int = 1,
) -> dict[str, list[Run]]:
    """Each store's paths (name -> call) over the whole stream: a warm-up on its first share,
    then `repeats` runs on the following ones. In a run every store takes the whole chunk (so
    each sees the same entities come back), its paths an equal slice each; the order of stores
    and of paths rotates run by run, so drift and noise hit them alike."""
    size = len(events) // (repeats + 1)
    chunks = [events[i * size : (i + 1) * size] for i in range(repeats + 1)]
    for paths in stores:
        first = next(iter(paths.values()))
        for event in chunks[0]:
            await first(event)
    runs: dict[str, list[Run]] = {name: [] for paths in stores for name in paths}

    async def lane(items: Sequence[Event], call: Callable[[Event], Any]) -> None:
        for event in items:
            await call(event)

    def rotated(items: list[Any], index: int) -> list[Any]:
        return items[index % len(items) :] + items[: index % len(items)]

    for index, chunk in enumerate(chunks[1:]):
        for paths in rotated(list(stores), index):
            names = list(paths)
            share = len(chunk) // len(names)
            slices = {name: chunk[slot * share : (slot + 1) * share] for slot, name in enumerate(names)}
            for name in rotated(names, index):
                items, call = slices[name], paths[name]

                async def work(items: Sequence[Event] = items, call: Callable[[Event], Any] = call) -> None:
                    await asyncio.gather(*(lane(items[i::inflight], call) for i in range(inflight)))

                runs[name].append(await _timed(sync, work, len(items)))
    return runs


def median(runs: list[Run], name: str) -> float:
    return round(float(statistics.median(float(getattr(r, name)) for r in runs)), 1)


def observe_path(store: Any) -> Callable[[Event], Any]:
    async def call(event: Event) -> Any:
        return await store.observe(**event)

    return call


def shared_path(store: CounterStore, make_pipe: Callable[[], Any]) -> Callable[[Event], Any]:
    """The screening's shape: the counters and two watchlist HMGETs in one pipeline."""

    async def call(event: Event) -> dict[str, int | float]:
        plan = store.prepare(**event)
        pipe = make_pipe()
        pipe.hmget("rg:l:{payer}", ["fraud_accounts", "fraud_accounts:m"])
        pipe.hmget("rg:l:{payee}", ["fraud_accounts", "fraud_accounts:m"])
        n = store.queue(pipe, plan)
        replies = await pipe.execute(raise_on_error=False)
        return store.read(plan, await store.retry_noscript(plan, replies[2 : 2 + n]))

    return call


def full_window_events(spec: CounterSpec, account: str) -> list[Event]:
    """An account that sends and receives in every bucket of its windows: 90 nights, 24 h, 30 min."""
    end = START + timedelta(days=100)
    times = [(end - timedelta(days=d)).replace(hour=20, minute=0) for d in range(90, 0, -1)]  # 04:00 Beijing
    times += [end - timedelta(hours=h) + timedelta(minutes=1) for h in range(24, 0, -1)]
    times += [end - timedelta(minutes=m) for m in range(31, -1, -1)]
    events = []
    for i, at in enumerate(sorted(times)):
        other = i % 64  # 64 counterparties: distinct sets stay exact (exact_up_to 64)
        events.append(transfer(spec, at, account, f"6217{other:015d}", 1000 + i, "110105199003071234"))
        events.append(transfer(spec, at, f"6228{other:015d}", account, 2000 + i, "310115198512120019"))
    return events


async def entity_bytes(observe: Observe, sync: redis.Redis, events: Sequence[Event], account: str) -> int:
    sync.flushdb()
    for event in events:
        await observe(**event)
    tag = KeyHasher(SECRET).entity([("account", account)])
    raw: Any = sync
    return sum(int(raw.memory_usage(key, samples=0) or 0) for key in raw.scan_iter(match=f"*{{{tag}}}*", count=1000))


def _versions(sync: redis.Redis) -> dict[str, str]:
    server: Any = sync.info("server")
    return {
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "redis_server": str(server.get("redis_version")),
        "hiredis": str(redis.utils.HIREDIS_AVAILABLE),
    }


async def bench(args: argparse.Namespace, url: str) -> dict[str, Any]:
    spec = load_counters(REPO / "rules" / "counters.yaml")
    # as service.redis.connection builds it: no retries, a socket timeout
    client = redis.asyncio.Redis.from_url(url, retry=Retry(NoBackoff(), 0), health_check_interval=0, socket_timeout=1.0)
    sync = redis.Redis.from_url(url)
    store = CounterStore(client, spec, KeyHasher(SECRET))
    await store.load_script()
    # --against: the counters of another git revision, on database 1 of the same server
    other: Any = None
    other_url = _with_db(url, 1)
    other_client = redis.asyncio.Redis.from_url(
        other_url, retry=Retry(NoBackoff(), 0), health_check_interval=0, socket_timeout=1.0
    )
    other_sync = redis.Redis.from_url(other_url)
    try:
        paths = {
            "observe": observe_path(store),
            "redis_py_pipeline": shared_path(store, lambda: client.pipeline(transaction=False)),
            "direct_pipeline": shared_path(store, store.pipeline),
        }
        stores = [paths]
        if args.against:
            package = _load_revision(args.against, Path(args.tmp))
            other = package.store.CounterStore(
                other_client, package.loader.load_counters(REPO / "rules" / "counters.yaml"), KeyHasher(SECRET)
            )
            await other.load_script()
            stores.append({"against": observe_path(other)})
        events = event_stream(spec, args.events * (args.repeats + 1), population=args.population, gap=args.gap)
        runs = await measure(stores, sync, events, args.repeats, args.inflight)
        full = await entity_bytes(store.observe, sync, full_window_events(spec, BUSY_ACCOUNT), BUSY_ACCOUNT)
        once = await entity_bytes(store.observe, sync, full_window_events(spec, BUSY_ACCOUNT)[:1], BUSY_ACCOUNT)
        if other is not None:
            other_full = await entity_bytes(
                other.observe, other_sync, full_window_events(spec, BUSY_ACCOUNT), BUSY_ACCOUNT
            )
            other_once = await entity_bytes(
                other.observe, other_sync, full_window_events(spec, BUSY_ACCOUNT)[:1], BUSY_ACCOUNT
            )
        versions = _versions(sync)
    finally:
        await store.aclose()
        await client.aclose()
        await other_client.aclose()
        sync.close()
        other_sync.close()
    result: dict[str, Any] = {
        "counters.us_per_request": median(runs["observe"], "wall_us"),
        "counters.python_cpu_us": median(runs["observe"], "python_cpu_us"),
        "counters.redis_cpu_us": median(runs["observe"], "redis_script_us"),
        "counters.redis_process_cpu_us": median(runs["observe"], "redis_process_us"),
        "counters.redis_bytes_per_entity": full,
        "counters.redis_bytes_per_entity_seen_once": once,
    }
    for name in ("redis_py_pipeline", "direct_pipeline"):
        result[f"counters.shared_{name}_us_per_request"] = median(runs[name], "wall_us")
        result[f"counters.shared_{name}_python_cpu_us"] = median(runs[name], "python_cpu_us")
    if other is not None:
        result["against.revision"] = args.against
        result["against.us_per_request"] = median(runs["against"], "wall_us")
        result["against.python_cpu_us"] = median(runs["against"], "python_cpu_us")
        result["against.redis_cpu_us"] = median(runs["against"], "redis_script_us")
        result["against.redis_process_cpu_us"] = median(runs["against"], "redis_process_us")
        result["against.redis_bytes_per_entity"] = other_full
        result["against.redis_bytes_per_entity_seen_once"] = other_once
    result.update(
        {
            "counters.events_per_run": args.events,
            "counters.runs": args.repeats,
            "counters.inflight": args.inflight,
            "counters.transport": "unix" if args.unix else "tcp",
            "counters.population": args.population,
            "counters.gap_seconds": args.gap,
            "versions": versions,
            "machine": {"cores": _cores(), "platform": platform.platform()},
        }
    )
    return result


def _with_db(url: str, db: int) -> str:
    """`url` naming database `db` (a URL's own database wins over redis-py's `db=` argument)."""
    if url.startswith("unix://"):
        return f"{url.split('?', 1)[0]}?db={db}"
    return f"{url.rsplit('/', 1)[0]}/{db}"


def _load_revision(revision: str, tmp: Path) -> Any:
    """`service/riskdata/counters` as of a git revision, importable as a package of its own. A
    revision from before the layout by role cannot be loaded this way: its counters import
    modules (service.facts, ...) that have moved since."""
    import importlib
    import io
    import subprocess
    import tarfile

    folder, dotted, modules = "service/riskdata/counters", b"service.riskdata.counters.", ("model", "loader", "store")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "-d", "--name-only", revision, folder],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not listed:
        raise SystemExit(f"--against {revision}: no {folder} there (a revision before the layout by role)")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, folder],
        check=True,
        capture_output=True,
    ).stdout
    name = "counters_" + "".join(c if c.isalnum() else "_" for c in revision)
    target = tmp / name
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            data = tar.extractfile(member)
            assert data is not None
            path = target / Path(member.name).relative_to(folder)
            path.parent.mkdir(parents=True, exist_ok=True)
            content = data.read()
            if path.suffix == ".py":
                content = content.replace(dotted, name.encode() + b".")
            path.write_bytes(content)
    sys.path.insert(0, str(tmp))
    package = importlib.import_module(name)
    for module in modules:
        importlib.import_module(f"{name}.{module}")
    return package


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def summary(result: dict[str, Any]) -> str:
    shared = "counters.shared_{}_python_cpu_us"
    return (
        f"counters: {result['counters.us_per_request']:.0f} us round trip, "
        f"{result['counters.python_cpu_us']:.0f} us Python CPU, "
        f"{result['counters.redis_cpu_us']:.0f} us Redis script CPU "
        f"({result['counters.redis_process_cpu_us']:.0f} us redis-server process) per transfer; "
        f"with 2 HMGETs: {result[shared.format('redis_py_pipeline')]:.0f} us Python CPU in a redis-py "
        f"pipeline, {result[shared.format('direct_pipeline')]:.0f} us in store.pipeline(); "
        f"{result['counters.redis_bytes_per_entity']} B per account at full windows "
        f"({result['counters.redis_bytes_per_entity_seen_once']} B seen once); "
        f"median of {result['counters.runs']} runs x {result['counters.events_per_run']} events, "
        f"inflight {result['counters.inflight']}, {result['counters.transport']}, "
        f"{result['counters.population']} accounts {result['counters.gap_seconds']:g} s apart, "
        f"redis {result['versions']['redis_server']}"
    ) + (
        ""
        if "against.revision" not in result
        else (
            f"; {result['against.revision']} in the same runs: "
            f"{result['against.us_per_request']:.0f} us round trip, {result['against.python_cpu_us']:.0f} us "
            f"Python CPU, {result['against.redis_cpu_us']:.0f} us Redis script CPU "
            f"({result['against.redis_process_cpu_us']:.0f} us process), "
            f"{result['against.redis_bytes_per_entity']} B per account at full windows "
            f"({result['against.redis_bytes_per_entity_seen_once']} B seen once)"
        )
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=3000, help="events per run, shared by the paths (3000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs, after a warm-up run (default 5)")
    parser.add_argument("--inflight", type=int, default=1, help="concurrent observes (default 1)")
    parser.add_argument("--unix", action="store_true", help="a Unix socket instead of loopback TCP")
    parser.add_argument("--population", type=int, default=POPULATION, help="accounts (default 100000)")
    parser.add_argument("--gap", type=float, default=1.0, help="mean seconds between transfers (default 1)")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write JSON to PATH (or - for stdout)")
    parser.add_argument(
        "--against", metavar="REV", help="also run service/counters as of git revision REV (e.g. HEAD), alternating"
    )
    args = parser.parse_args(argv)
    if not 10 <= args.events <= MAX_EVENTS or not 1 <= args.repeats <= MAX_REPEATS or not 1 <= args.inflight <= 64:
        parser.error(f"--events 10..{MAX_EVENTS}, --repeats 1..{MAX_REPEATS}, --inflight 1..64")
    if not 100 <= args.population <= 10_000_000 or not 0 < args.gap <= 3600:
        parser.error("--population 100..10000000, --gap 0..3600 seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rg-counters-bench-") as tmp:
        args.tmp = tmp
        server = EmbeddedRedis(Path(tmp) / "redis", RedisOptions(persistent=False, port=None if args.unix else 0))
        with server:
            result = asyncio.run(bench(args, server.url))
    if args.json != "-":
        print(summary(result), flush=True)
    if args.json is not None:
        line = json.dumps(result, sort_keys=True)
        if args.json == "-":
            print(line, flush=True)
        else:
            Path(args.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
