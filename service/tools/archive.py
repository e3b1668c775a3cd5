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

Entries the stream trimmed before the drain read them are lost to the archive: when the oldest
entry left is after the checkpoint, the drain says how many the stream added that neither the
archive nor the stream holds (Redis 7 counts what a stream added), and exits 1.

Without `--follow` the drain archives what there is and stops (a scheduled export, e.g. every
few minutes from cron or a systemd timer); with `--follow` it keeps draining, writing a batch
when `--batch` entries have arrived or `--flush-seconds` have passed, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import ResponseError

from service.redis.connection import hasher_for, tool_connection
from service.riskdata.history import PARTITION, SUFFIX, day_of, write_parquet
from service.riskdata.records import LOG_STREAM, entry_document
from service.settings import Settings
from service.tools.admin import run_tail

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
            checkpoint = Checkpoint(str(data["last_id"]), int(data["entries"]), int(data["files"]))
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
        checkpoint = Checkpoint(last, self.checkpoint.entries + len(batch), self.checkpoint.files + len(by_day))
        self._write_checkpoint(checkpoint)
        self.checkpoint = checkpoint
        return len(by_day)

    def _write_checkpoint(self, checkpoint: Checkpoint) -> None:
        path = self.root / CHECKPOINT
        temporary = path.with_name(path.name + _TMP)
        document = {"last_id": checkpoint.last_id, "entries": checkpoint.entries, "files": checkpoint.files}
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


async def _trimmed(client: Any, key: str, archive: Archive) -> tuple[int, str]:
    """Entries the stream trimmed (MAXLEN) that the archive never got: (how many, before which id)."""
    try:
        info = await client.xinfo_stream(key)
    except ResponseError as error:
        if "no such key" in str(error).lower():
            return 0, ""  # no stream yet: nothing was trimmed
        raise
    first = info.get("first-entry")
    oldest = (first[0].decode() if isinstance(first[0], bytes) else str(first[0])) if first else None
    newest = info.get("last-generated-id", b"0-0")
    newest = newest.decode() if isinstance(newest, bytes) else str(newest)
    checkpoint = _order(archive.checkpoint.last_id)
    if oldest is not None and _order(oldest) <= checkpoint:
        return 0, ""  # the entries right after the checkpoint are still there
    if oldest is None and _order(newest) <= checkpoint:
        return 0, ""
    # Every entry still there is after the checkpoint: the rest of what the stream ever added,
    # beyond what was archived, was trimmed unread (Redis 7 counts what it added).
    lost = int(info.get("entries-added", 0)) - archive.checkpoint.entries - int(info.get("length", 0))
    return max(0, lost), oldest or newest


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
    """Archive the stream's entries after the checkpoint; with `follow`, until `stop` is set."""
    report = DrainReport()
    report.lost, report.lost_up_to = await _trimmed(client, key, archive)
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
            reply = await client.xread({key: last}, block=1000, count=want)
            entries = [entry for _stream, stream_entries in reply or [] for entry in stream_entries]
        else:
            entries = await client.xrange(key, min="(" + last, max="+", count=want)
        for entry_id, fields in entries:
            last = entry_id.decode()
            pending.append((last, entry_document(last, fields)))
        if len(pending) >= batch or (pending and (not follow or loop.time() - opened >= flush_seconds)):
            flush()
        if not follow and not entries:
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
    if report.lost:
        print(
            f"riskgate decisions archive: {report.lost} decision(s) before stream id {report.lost_up_to} were trimmed"
            " from the log (RISKGATE_DECISION_LOG_MAXLEN) before they were archived: archive more often",
            file=sys.stderr,
        )
        return 1
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


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
        "--batch", type=_positive_int, default=10_000, help="decisions per committed batch (default 10000)"
    )
    archive.add_argument(
        "--flush-seconds",
        type=_positive_float,
        default=60.0,
        help="with --follow: commit a smaller batch after this many seconds (default 60)",
    )
    archive.set_defaults(handler=_decisions_archive)
