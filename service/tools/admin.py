"""`riskgate lists ...` and `riskgate decisions ...`: bulk watchlist imports and the decision log.

Both talk to the Redis the server uses (see `service.redis.connection.tool_connection`),
with the same settings (RISKGATE_*) and the same identifier-hashing secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, TextIO

from service.clock import SystemClock
from service.domain import CHINA_TZ
from service.errors import ConfigError, InvalidValue, SourceError, UnknownList
from service.redis.connection import hasher_for, tool_connection
from service.riskdata.history import write_parquet
from service.riskdata.lists import LISTS_FILE, load_lists
from service.riskdata.records import LOG_STREAM, entry_document
from service.riskdata.watchlists import Entry, Watchlists
from service.server.access.audit import AuditEntry, AuditTrail
from service.server.access.identity import local_identity
from service.settings import Settings

IMPORT_BATCH = 1000
SHOWN_REJECTIONS = 50


def parse_expiry(text: str) -> datetime:
    """`2027-06-30` (end of that day, China time) or an ISO 8601 time with an offset."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").date()
            return datetime.combine(day + timedelta(days=1), time(0), CHINA_TZ)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidValue("expires_at must be YYYY-MM-DD or an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise InvalidValue("expires_at needs a UTC offset, e.g. 2027-06-30T18:00:00+08:00")
    return moment


def _rows(stream: TextIO) -> Iterator[tuple[int, list[str]]]:
    for number, row in enumerate(csv.reader(stream), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if number == 1 and row[0].strip().lower() == "value":
            continue  # a header line
        yield number, row


class Progress:
    """A one-line progress display on stderr (only when it is a terminal, or forced)."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = enabled

    def show(self, done: int, imported: int, rejected: int) -> None:
        if self.enabled:
            width = 30
            filled = width * done // self.total
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {done}/{self.total} lines, {imported} imported, {rejected} rejected")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")


async def import_list(
    lists: Watchlists,
    name: str,
    path: Path,
    *,
    reason: str,
    added_by: str,
    default_expiry: datetime | None,
    now: datetime,
    err: TextIO,
    progress: bool,
) -> tuple[int, int]:
    """Import a CSV of `value[,expires_at[,reason]]` rows; returns (imported, rejected)."""
    lists.spec(name)  # unknown list: fail before reading
    with path.open(encoding="utf-8-sig", newline="") as handle:
        total = sum(1 for _ in handle)
    bar = Progress(total, err, progress)
    imported = rejected = 0
    batch: list[Entry] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for number, row in _rows(handle):
            try:
                expiry = parse_expiry(row[1]) if len(row) > 1 and row[1].strip() else default_expiry
                row_reason = row[2] if len(row) > 2 and row[2].strip() else reason
                batch.append(
                    lists.prepare(name, row[0], reason=row_reason, added_by=added_by, expires_at=expiry, now=now)
                )
            except InvalidValue as problem:
                rejected += 1
                if rejected <= SHOWN_REJECTIONS:
                    bar.finish()
                    where = f"{problem.field}: " if problem.field and problem.field != "value" else ""
                    err.write(f"{path}:{number}: {where}{problem.problem}\n")
                continue
            if len(batch) >= IMPORT_BATCH:
                await lists.add_many(batch)
                imported += len(batch)
                batch = []
                bar.show(number, imported, rejected)
        if batch:
            await lists.add_many(batch)
            imported += len(batch)
    bar.show(total, imported, rejected)
    bar.finish()
    if rejected > SHOWN_REJECTIONS:
        err.write(f"... and {rejected - SHOWN_REJECTIONS} more rejected lines\n")
    return imported, rejected


def _lists_import(args: argparse.Namespace) -> int:
    """On the local-trust path (Redis and the hashing secret of this host): the entries' author
    is `local:<user>@<host>`, `--added-by` a note, and the import is audited.

    lists.yaml is read before connecting: without it (or with a broken one) nothing could be
    imported, and there is no import attempt to audit."""
    settings = Settings.from_env(os.environ)
    clock = SystemClock()
    identity = local_identity()
    try:
        specs = load_lists(settings.rules_dir, required=True)
    except (ConfigError, SourceError, OSError, UnicodeDecodeError) as error:
        print(f"riskgate lists import: {error}", file=sys.stderr)
        return 2

    async def run() -> tuple[int, int]:
        async with tool_connection(settings) as client:
            hasher = hasher_for(settings)
            lists = Watchlists(client, hasher, specs)
            expiry = parse_expiry(args.expires_at) if args.expires_at else None
            audit = AuditTrail(client, hasher.prefix, clock)
            entry = AuditEntry(
                principal="local",
                identity=identity,
                action="lists.import",
                list=args.name,
                reason=args.reason[:256],
                note=" ".join(args.added_by.split())[:64],
            )
            try:
                imported, rejected = await import_list(
                    lists,
                    args.name,
                    Path(args.file),
                    reason=args.reason,
                    added_by=identity[:64],
                    default_expiry=expiry,
                    now=clock.now(),
                    err=sys.stderr,
                    progress=args.progress or sys.stderr.isatty(),
                )
            except (UnknownList, InvalidValue, OSError) as error:
                await audit.record(dataclasses.replace(entry, result="failed", detail=str(error)))
                raise
            await audit.record(
                dataclasses.replace(
                    entry, detail=f"{imported} imported, {rejected} rejected from {Path(args.file).name}"
                )
            )
            return imported, rejected

    try:
        imported, rejected = asyncio.run(run())
    except UnknownList as error:
        # The declarations read may be another checkout's: say which file they came from.
        declared_in = (settings.rules_dir / LISTS_FILE).resolve()
        print(f"riskgate lists import: {error} in {declared_in} (RISKGATE_RULES_DIR)", file=sys.stderr)
        return 2
    except (InvalidValue, OSError) as error:
        print(f"riskgate lists import: {error}", file=sys.stderr)
        return 2
    print(f"{args.name}: {imported} imported, {rejected} rejected")
    return 0 if rejected == 0 else 1


def stream_id(moment: str | None, default: str) -> str:
    """The stream id (epoch ms) of an ISO 8601 time, China time if no offset; `default` if none.

    Raises InvalidValue for text that is not a time, so that callers can reject it before
    connecting. A time before the epoch is 0: Redis refuses negative ids, and no entry is older.
    """
    if not moment:
        return default
    try:
        parsed = datetime.fromisoformat(moment)
    except ValueError:
        raise InvalidValue(f"{moment!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=CHINA_TZ)
    return str(max(0, int(parsed.timestamp() * 1000)))


Document = Callable[[str, Mapping[Any, Any]], dict[str, Any]]


async def read_stream(client: Any, key: str, since: str, until: str) -> AsyncIterator[tuple[str, Mapping[Any, Any]]]:
    """A stream's entries from `since` to `until` (stream ids), oldest first, read 1,000 at a time."""
    start = since
    while True:
        batch = await client.xrange(key, min=start, max=until, count=1000)
        for entry_id, fields in batch:
            yield entry_id.decode(), fields
        if len(batch) < 1000:
            return
        start = "(" + batch[-1][0].decode()


async def export_stream(client: Any, key: str, out: TextIO, since: str, until: str, document: Document) -> int:
    """Write a stream's entries from `since` to `until` (stream ids) as JSON Lines; how many."""
    written = 0
    async for entry_id, fields in read_stream(client, key, since, until):
        out.write(json.dumps(document(entry_id, fields), ensure_ascii=False) + "\n")
        written += 1
    return written


async def tail_stream(
    client: Any,
    key: str,
    *,
    from_start: bool,
    count: int | None,
    document: Document,
    stop: asyncio.Event | None = None,
) -> None:
    """Print a stream's entries as JSON Lines as they are appended (from the oldest with
    `from_start`), until `count` were printed, `stop` is set, or forever.

    Without `from_start` the tail starts after the newest entry there is when it starts, read
    once: waiting from `$` again after each quiet second would skip an entry appended between
    two waits."""
    last = "0-0"
    if not from_start:
        newest = await client.xrevrange(key, count=1)
        last = newest[0][0].decode() if newest else "0-0"
    shown = 0
    while (count is None or shown < count) and not (stop is not None and stop.is_set()):
        reply = await client.xread({key: last}, block=1000, count=100)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                print(json.dumps(document(last, fields), ensure_ascii=False), flush=True)
                shown += 1
                if count is not None and shown >= count:
                    return


def run_tail(tail: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run a tail until it ends or Ctrl-C (exit 0). SIGINT sets the tail's `stop` and cancels
    its wait, so a Ctrl-C that lands while a line is printed, or that a Redis call swallows,
    still ends it (within the second a wait lasts, at worst)."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(tail(stop))

        def interrupt() -> None:
            if stop.is_set():
                return  # a second Ctrl-C must not cut the tool's own clean-up short
            stop.set()
            task.cancel()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


async def export_decisions(client: Any, key: str, out: TextIO, since: str, until: str) -> int:
    return await export_stream(client, key, out, since, until, entry_document)


def _decisions_export(args: argparse.Namespace) -> int:
    """A bad --since/--until is a usage error, found before connecting (as `audit export` does)."""
    settings = Settings.from_env(os.environ)
    try:
        since, until = stream_id(args.since, "-"), stream_id(args.until, "+")
    except InvalidValue as error:
        print(f"riskgate decisions export: {error}", file=sys.stderr)
        return 2
    if args.format == "parquet" and not args.out:
        print("riskgate decisions export: --format parquet needs --out FILE", file=sys.stderr)
        return 2

    async def run() -> int:
        async with tool_connection(settings) as client:
            key = f"{hasher_for(settings).prefix}:log:{LOG_STREAM}"
            if args.format == "parquet":
                documents = [entry_document(i, f) async for i, f in read_stream(client, key, since, until)]
                write_parquet(documents, Path(args.out))
                return len(documents)
            if args.out:
                with Path(args.out).open("w", encoding="utf-8") as out:
                    return await export_decisions(client, key, out, since, until)
            return await export_decisions(client, key, sys.stdout, since, until)

    written = asyncio.run(run())
    print(f"{written} decisions exported", file=sys.stderr)
    return 0


def _decisions_tail(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)

    async def run(stop: asyncio.Event) -> None:
        async with tool_connection(settings) as client:
            key = f"{hasher_for(settings).prefix}:log:{LOG_STREAM}"
            await tail_stream(
                client, key, from_start=args.from_start, count=args.count, document=entry_document, stop=stop
            )

    return run_tail(run)  # Ctrl-C is how a tail ends


def add_admin_commands(commands: Any) -> Any:
    """Register `lists import` and `decisions tail|export` on the main parser's subcommands; the
    `decisions` subcommands, for the others."""
    lists = commands.add_parser("lists", help="manage watchlists in bulk")
    lists_commands = lists.add_subparsers(dest="lists_command", required=True, metavar="COMMAND")
    load = lists_commands.add_parser(
        "import", help="load a CSV of value[,expires_at[,reason]] lines into a list, reporting rejected lines"
    )
    load.add_argument("name", help="the list, as declared in lists.yaml")
    load.add_argument("file", help="CSV file; a first line starting with 'value' is a header")
    load.add_argument("--reason", required=True, help="reason for rows that give none (e.g. the notice number)")
    load.add_argument(
        "--added-by",
        required=True,
        help="a note on who asked for the import (the author recorded is local:<user>@<host>)",
    )
    load.add_argument("--expires-at", help="expiry for rows that give none: YYYY-MM-DD or ISO 8601")
    load.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    load.set_defaults(handler=_lists_import)

    decisions = commands.add_parser("decisions", help="read the decision log")
    decision_commands = decisions.add_subparsers(dest="decisions_command", required=True, metavar="COMMAND")
    tail = decision_commands.add_parser("tail", help="print decisions as JSON Lines as they are made")
    tail.add_argument("--from-start", action="store_true", help="begin with the oldest logged decision")
    tail.add_argument("--count", type=int, help="stop after this many")
    tail.set_defaults(handler=_decisions_tail)
    export = decision_commands.add_parser(
        "export", help="write logged decisions as JSON Lines or a Parquet file (for a backtest, DuckDB, Spark)"
    )
    export.add_argument("--since", help="ISO 8601 time (China time if no offset)")
    export.add_argument("--until", help="ISO 8601 time (China time if no offset)")
    export.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="default: jsonl")
    export.add_argument("--out", help="file to write (default: stdout; required for parquet)")
    export.set_defaults(handler=_decisions_export)
    return decision_commands
