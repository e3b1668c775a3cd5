"""`riskgate decisions archive`: drain the decision log from Redis into Parquet files, exactly once.

Redis holds the log as a capped stream (a buffer of `RISKGATE_DECISION_LOG_MAXLEN` entries);
the archive is where history lives (`service.riskdata.history` describes its layout). A drain
reads the stream after its checkpoint, in batches; each batch is written as one file per UTC
day it touches and then committed:

1. every file of the batch is written as `part-<first>_<last>.parquet.tmp`, fsynced, and
   renamed to its name (`<first>_<last>`: the batch's stream ids);
2. the checkpoint `_archive.json` (the last stream id archived, and counts) is replaced,
   atomically (write, fsync, rename, fsync the directory).

The checkpoint is the commit. A drain that stops anywhere (Ctrl-C, SIGKILL, a full disk, Redis
gone) resumes from it: at start it deletes `.tmp` files and any file of a batch after the
checkpoint (written, not committed), then reads again after the checkpoint. So every entry is
archived exactly once, whichever step was cut short.

Entries the stream trimmed before the drain read them are lost to the archive: every read that
reaches the end of the stream (with `--follow` too) also takes, in the same atomic step, how
many entries the stream ever added (Redis 7 counts them); those neither archived nor read are
lost. The drain logs it (`--follow`), says so at the end and exits 1. A new archive begins at
the oldest entry the log still holds: what the log had trimmed before the first drain is said
once and recorded in the checkpoint (`before`), not counted as lost.

Without `--follow` the drain archives what there is and stops (a scheduled export, e.g. every
few minutes from cron or a systemd timer); with `--follow` it keeps draining, writing a batch
when `--batch` entries have arrived or `--flush-seconds` have passed, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from service.redis.connection import hasher_for, tool_connection
from service.riskdata.history import PARTITION, SUFFIX, day_of, write_parquet
from service.riskdata.records import LOG_STREAM, entry_document
from service.settings import Settings
from service.tools.admin import run_tail
from service.tools.arguments import positive_float, positive_int

log = logging.getLogger("riskgate.archive")

CHECKPOINT = "_archive.json"
LOCK = "_archive.lock"
_TMP = ".tmp"


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    last_id: str = "0-0"  # the last stream id archived
    entries: int = 0  # entries archived, in all
    files: int = 0
    before: int = 0  # entries the log had trimmed before the archive's first drain (not lost: never archived)


class Archive:
    """An archive directory: its checkpoint, and committing a batch of log documents."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # One drain per directory: two would both read after the same checkpoint (a cron run
        # overlapping a slow one) and write the same entries twice. Held until the process ends.
        self._lock = (root / LOCK).open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ValueError(f"{root}: another drain is archiving into this directory") from None
        try:
            self.checkpoint = self._read_checkpoint()
            self.removed = self._clean()
        except BaseException:
            self.close()
            raise

    def _read_checkpoint(self) -> Checkpoint:
        path = self.root / CHECKPOINT
        if not path.exists():
            return Checkpoint()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            checkpoint = Checkpoint(
                str(data["last_id"]), int(data["entries"]), int(data["files"]), int(data.get("before", 0))
            )
            _order(checkpoint.last_id)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not an archive checkpoint ({error})") from None
        return checkpoint

    def _clean(self) -> int:
        """Delete what a drain cut short left behind: .tmp files, and files of batches after the
        checkpoint (written, never committed). How many."""
        last = _order(self.checkpoint.last_id)
        removed = 0
        for file in self.root.rglob("part-*"):
            name = file.name
            if name.endswith(_TMP):
                file.unlink()
                removed += 1
                continue
            if not name.endswith(SUFFIX):
                continue
            batch_last = name[len("part-") : -len(SUFFIX)].partition("_")[2]
            try:
                uncommitted = _order(batch_last) > last
            except ValueError:
                continue  # not one of ours
            if uncommitted:
                file.unlink()
                removed += 1
        return removed

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def commit(self, batch: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        """Archive a batch of (stream id, log document), oldest first; the files written."""
        if not batch:
            return 0
        first, last = batch[0][0], batch[-1][0]
        by_day: dict[str, list[Mapping[str, Any]]] = {}
        for _, document in batch:
            by_day.setdefault(day_of(document), []).append(document)
        for day, documents in sorted(by_day.items()):
            directory = self.root / f"{PARTITION}{day}"
            directory.mkdir(exist_ok=True)
            final = directory / f"part-{first}_{last}{SUFFIX}"
            temporary = final.with_name(final.name + _TMP)
            write_parquet(documents, temporary)
            _fsync(temporary)
            temporary.rename(final)
            _fsync(directory)
        checkpoint = Checkpoint(
            last, self.checkpoint.entries + len(batch), self.checkpoint.files + len(by_day), self.checkpoint.before
        )
        self._write_checkpoint(checkpoint)
        self.checkpoint = checkpoint
        return len(by_day)

    def begin(self, before: int) -> None:
        """Record, at a new archive's first drain, how many entries the log had trimmed already."""
        self.checkpoint = dataclasses.replace(self.checkpoint, before=before)
        self._write_checkpoint(self.checkpoint)

    @property
    def new(self) -> bool:
        return self.checkpoint.entries == 0 and self.checkpoint.last_id == "0-0" and not self.checkpoint.before

    def _write_checkpoint(self, checkpoint: Checkpoint) -> None:
        path = self.root / CHECKPOINT
        temporary = path.with_name(path.name + _TMP)
        document = {
            "last_id": checkpoint.last_id,
            "entries": checkpoint.entries,
            "files": checkpoint.files,
            "before": checkpoint.before,
        }
        temporary.write_text(json.dumps(document) + "\n", encoding="utf-8")
        _fsync(temporary)
        temporary.replace(path)
        _fsync(self.root)


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(slots=True)
class DrainReport:
    entries: int = 0
    files: int = 0
    lost: int = 0  # entries the stream trimmed before they were archived (an estimate from Redis' counts)
    lost_up_to: str = ""
    before: int = 0  # at a new archive's first drain: entries the log had trimmed before it began


# Entries after ARGV[1] (an XRANGE start), at most ARGV[2], and in the same atomic step the stream's
# length and how many entries it ever added (Redis 7; 0 before): {entries, length, added}.
_READ: Final = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {entries, 0, 0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local length, added = 0, 0
for i = 1, #info, 2 do
  if info[i] == 'length' then length = info[i + 1] elseif info[i] == 'entries-added' then added = info[i + 1] end
end
return {entries, length, added}
"""


@dataclass(frozen=True, slots=True)
class _Read:
    entries: Sequence[tuple[str, Mapping[Any, Any]]]
    length: int  # the stream's, when it was read
    added: int  # entries the stream ever added, when it was read (0: Redis before 7 does not say)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _read_after(client: Any, key: str, last: str, count: int) -> _Read:
    entries, length, added = await client.eval(_READ, 1, key, "(" + last, count)
    fields = [(_text(entry_id), dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in entries]
    return _Read(fields, int(length), int(added))


async def drain(
    client: Any,
    key: str,
    archive: Archive,
    *,
    batch: int = 10_000,
    follow: bool = False,
    flush_seconds: float = 60.0,
    stop: asyncio.Event | None = None,
) -> DrainReport:
    """Archive the stream's entries after the checkpoint; with `follow`, until `stop` is set.

    Every read that reaches the end of the stream counts, in the same atomic step, what the
    stream ever added: what is neither read (archived or pending) nor trimmed before the archive
    began was trimmed unread (`DrainReport.lost`, cumulative). At a new archive's first read,
    what the log had trimmed already is recorded as where the archive begins (`before`)."""
    report = DrainReport()
    pending: list[tuple[str, Mapping[str, Any]]] = []
    last = archive.checkpoint.last_id
    loop = asyncio.get_running_loop()
    opened = loop.time()

    def flush() -> None:
        nonlocal opened
        report.files += archive.commit(pending)
        report.entries += len(pending)
        pending.clear()
        opened = loop.time()

    while not (stop is not None and stop.is_set()):
        want = batch - len(pending)
        if follow:
            await client.xread({key: last}, block=1000, count=1)  # until something arrives, or a second
        read = await _read_after(client, key, last, want)
        if archive.new and read.added > read.length and last == "0-0":
            # The log had trimmed these before the archive's first drain: not lost, never archived.
            report.before = read.added - read.length
            archive.begin(report.before)
        for entry_id, fields in read.entries:
            last = entry_id
            pending.append((last, entry_document(last, fields)))
        if len(read.entries) < want and read.added:
            # Read to the end: every entry the stream added is accounted for, or was trimmed unread.
            lost = read.added - archive.checkpoint.before - archive.checkpoint.entries - len(pending)
            if lost > report.lost:
                report.lost, report.lost_up_to = lost, last
                if follow:
                    log.error(
                        "decisions trimmed from the log before they were archived",
                        extra={"fields": {"lost": lost, "by_stream_id": last}},
                    )
        if len(pending) >= batch or (pending and (not follow or loop.time() - opened >= flush_seconds)):
            flush()
        if not follow and not read.entries:
            break
    if pending:
        flush()
    return report


def _decisions_archive(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)
    try:
        archive = Archive(Path(args.out))
    except (OSError, ValueError) as error:
        print(f"riskgate decisions archive: {error}", file=sys.stderr)
        return 2
    if archive.removed:
        print(f"removed {archive.removed} file(s) an interrupted drain left uncommitted", file=sys.stderr)
    result: list[DrainReport] = []

    async def run(stop: asyncio.Event) -> None:
        async with tool_connection(settings) as client:
            key = f"{hasher_for(settings).prefix}:log:{LOG_STREAM}"
            result.append(
                await drain(
                    client,
                    key,
                    archive,
                    batch=args.batch,
                    follow=args.follow,
                    flush_seconds=args.flush_seconds,
                    stop=stop,
                )
            )

    with archive:
        if args.follow:
            run_tail(run)  # Ctrl-C ends the drain; a batch being written is committed first
        else:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(run(asyncio.Event()))
    checkpoint = archive.checkpoint
    report = result[0] if result else DrainReport()
    print(
        f"{report.entries} decisions archived in {report.files} file(s) under {args.out}"
        f" ({checkpoint.entries} in all, up to stream id {checkpoint.last_id})",
        file=sys.stderr,
    )
    if report.before:
        print(
            f"a new archive: it begins at the oldest decision the log still held; {report.before} earlier"
            " decision(s) had been trimmed from the log before the first drain",
            file=sys.stderr,
        )
    if report.lost:
        print(
            f"riskgate decisions archive: {report.lost} decision(s) were trimmed from the log"
            f" (RISKGATE_DECISION_LOG_MAXLEN) before they were archived (found by stream id {report.lost_up_to}):"
            " archive more often",
            file=sys.stderr,
        )
        return 1
    return 0


def add_archive_command(decision_commands: Any) -> None:
    """Register `decisions archive` beside `decisions tail|export`."""
    archive = decision_commands.add_parser(
        "archive",
        help="drain the decision log into Parquet files partitioned by day, exactly once and resumable",
        description=(
            "Archive the decision log into DIR/day=YYYY-MM-DD/*.parquet, after DIR/_archive.json's checkpoint."
            " Without --follow: archive what there is and stop (run it on a schedule); with --follow: keep"
            " draining until Ctrl-C. Exit 1 if the log trimmed decisions before they were archived."
        ),
    )
    archive.add_argument("--out", default="archive", help="the archive directory (default: ./archive)")
    archive.add_argument("--follow", action="store_true", help="keep draining as decisions are logged")
    archive.add_argument(
        "--batch", type=positive_int, default=10_000, help="decisions per committed batch (default 10000)"
    )
    archive.add_argument(
        "--flush-seconds",
        type=positive_float,
        default=60.0,
        help="with --follow: commit a smaller batch after this many seconds (default 60)",
    )
    archive.set_defaults(handler=_decisions_archive)
