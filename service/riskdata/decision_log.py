"""Writing the decision log: every answered decision in the stream exactly once, whatever Redis does.

A decision's entry (`service.riskdata.records.log_entry`) normally goes out in the
screening's record round trip. When that write fails, is over budget or is
skipped (the circuit breaker is open), the entry joins a **backlog** that a
background task (`DecisionLog.run`) writes in chunks of `chunk` entries, each
with its own budget, off the request path: a recovering Redis is never sent
the whole backlog inside a request's 10 ms.

**Exactly once.** A write whose reply was lost (a timeout, a dropped
connection, a Redis stopped mid-way) may or may not have landed, and may
even land later, when a stopped Redis resumes. Every write is therefore the
script `LOG_ONCE`: it appends the entry only if its decision id is not yet in
the set of written ids for the entry's minute (`{rg:log:decisions}:w:<minute>`,
in the stream's cluster slot), and adds the id in the same atomic step. Copies
of one write, in whatever order they reach Redis, append once. The sets live
`dedupe_seconds` past their minute (`RISKGATE_DECISION_LOG_DEDUPE_HOURS`,
94 bytes of Redis memory per decision kept); an entry whose first write
was sent with its outcome unknown and that is written again only after that
(an outage longer than the horizon) could appear twice, and is counted in
`riskgate_decision_log_unverified_total`.

**The decision index.** So that a disposition can be reported for a decision
(`service.riskdata.dispositions`) long after the stream has trimmed its entry,
the same script writes the decision's id into the index of its UTC day,
`{rg:log:decisions}:i:<YYYY-MM-DD of decided_at>` (a hash in the stream's
cluster slot): field the id (its 16 UUID bytes), value the request_id and, after
a \x1f, the fired rules (`T01,~T19`: a disposition is tallied by rule). The
hash expires `index_seconds` after its day ends (`RISKGATE_DISPOSITION_DAYS`).
Only decisions a disposition can follow are indexed: WARN or BLOCK, or a rule
fired (shadow rules included, so a shadow rule's precision can be measured);
`index_every` (`RISKGATE_DISPOSITION_INDEX=all`) indexes every decision. About
100 bytes of Redis memory per indexed decision (98-109 B with a 20-character
request_id, as the hash table's fill varies; MEMORY USAGE over 100,000 and
300,000 decisions of one day, Redis 7.0). The index is written after XADD and
before the id joins the written set, in the same atomic step: a decision is
indexed exactly when it is logged, and a copy of the write, which appends
nothing, indexes nothing again.

**The console's tallies.** The same step adds the decision to the per-minute,
per-day and per-hour counts and (a WARN or BLOCK) to the stream of flagged
decisions that the monitoring console reads (`service.riskdata.tallies`), so
they count each logged decision exactly once. An entry written so late that a
tally has expired is not added to it.

**Bounded.** The backlog holds at most `backlog_limit` entries
(`RISKGATE_DECISION_LOG_BACKLOG`); the oldest is dropped beyond it, counted
(`riskgate_decision_log_dropped_total`) and logged, never silently.

**Durable.** Each entry that joins the backlog is appended to a spool file
(`$RISKGATE_DATA_DIR/decision-log.spool`, one JSON line per entry, no clear
identifiers: the entry's own fields) with one `write` before the screening
answers, so a crash of the process loses nothing the kernel holds; the file
is fsynced once a second while it changes and at stop (a power cut may lose
the last second). It is emptied when the backlog is, rewritten when most of
it has been written, and read back at the next start, which writes what it
holds (once, by the same script).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from service.clock import Clock
from service.errors import ConfigError, Unsupported
from service.redis.mux import Multiplexer, pack_command
from service.riskdata.tallies import (
    HOUR_MS,
    HOURS_KEPT,
    MINUTE_MS,
    MINUTES_KEPT,
    day_end_ms,
    day_key,
    flagged_key,
    hour_key,
    local_day,
    minute_key,
    tallies_of,
)

log = logging.getLogger("riskgate.decision_log")

# KEYS[1] the stream, KEYS[2] the written ids of the entry's minute, KEYS[3] the decision index of
# its day, KEYS[4..7] the console's tallies (`service.riskdata.tallies`): the minute's, the local
# day's, the hour's openings, and the flagged stream.
# ARGV: decision id, when the id set expires (unix ms), the stream's MAXLEN, the decision's field
# in the index ('' for a decision not indexed) and its value there (request_id, then the fired
# rules after a \x1f), when the index expires (unix ms); then how many tally fields of the
# minute, the day and the hour follow, and how many fields of the flagged summary (0: not
# flagged); when the minute's, the day's and the hour's tallies expire (unix ms); the flagged
# stream's MAXLEN; the tally fields, the flagged summary, and last the entry's fields.
# The id is added after XADD: a write that fails half-way (out of memory) leaves no mark, so
# its retry is not taken for a copy; once XADD has written, Redis refuses none of the script's
# later writes, so the index and the tallies hold exactly the logged decisions. Returns 1 when
# appended, 0 when the id was written before.
# The increments are the string '1': a Lua number given to redis.call is formatted with %.17g
# first (6 % of the script's instructions, measured).
LOG_ONCE: Final = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
local m, d, h, f = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local at = 15
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, at + m + d + h + f))
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
  redis.call('PEXPIREAT', KEYS[3], ARGV[6])
end
for part, count in ipairs({m, d, h}) do
  if count > 0 then
    local key = KEYS[3 + part]
    -- A new key's first field is new: its expiry is set then (and when a new field comes first).
    if redis.call('HINCRBY', key, ARGV[at], '1') == 1 then redis.call('PEXPIREAT', key, ARGV[10 + part]) end
    for i = at + 1, at + count - 1 do redis.call('HINCRBY', key, ARGV[i], '1') end
    at = at + count
  end
end
if f > 0 then redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[14], '*', 'e', id, unpack(ARGV, at, at + f - 1)) end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
return 1
"""
_BUCKET_MS: Final = 60_000
DAY_MS: Final = 86_400_000
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_BACKOFF_FIRST: Final = 0.05
_BACKOFF_MAX: Final = 1.0
_SYNC_SECONDS: Final = 1.0
_DROP_LOG_SECONDS: Final = 10.0


LOG_ONCE_SHA: Final = hashlib.sha1(LOG_ONCE.encode(), usedforsecurity=False).hexdigest()


def index_key(stream_key: str, day: date) -> str:
    """`{rg:log:decisions}:i:<YYYY-MM-DD>`: the decision index of one UTC day of decided_at."""
    return f"{{{stream_key}}}:i:{day.isoformat()}"


def index_field(decision_id: str) -> bytes:
    """A decision id's field in the index: a UUID's 16 bytes (20 fewer than its text), any
    other id's own bytes."""
    if len(decision_id) == 36:
        try:
            return bytes.fromhex(decision_id.replace("-", ""))
        except ValueError:
            pass
    return decision_id.encode()


def day_of(unix_ms: int) -> date:
    """The UTC day of a unix time in ms."""
    return date.fromordinal(_EPOCH_ORDINAL + unix_ms // DAY_MS)


def to_index(fields: Sequence[str], every: bool) -> str | None:
    """The request_id of a log entry the index keeps (its flat fields, name, value, ...), or None
    for a decision it leaves out: an ALLOW in which no rule fired, unless `every`."""
    request_id, flagged = "", every
    for position in range(0, len(fields) - 1, 2):
        name = fields[position]
        if name == "request_id":
            request_id = fields[position + 1]
        elif name == "rules":
            flagged = flagged or bool(fields[position + 1])
        elif name == "outcome":
            flagged = flagged or fields[position + 1] in ("warn", "block")
    return request_id if flagged else None


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One decision's log entry, ready to write: its id, when it was decided, its flat fields."""

    decision_id: str
    decided_ms: int
    fields: tuple[str, ...]  # name, value, name, value, ...
    sent: bool = False  # a write of it went out and its outcome is unknown

    @classmethod
    def of(cls, fields: dict[str, str], decided_ms: int) -> LogEntry:
        return cls(fields["decision_id"], decided_ms, tuple(part for pair in fields.items() for part in pair))

    def to_line(self) -> bytes:
        return json.dumps([self.decision_id, self.decided_ms, self.sent, *self.fields], ensure_ascii=False).encode() + (
            b"\n"
        )

    @classmethod
    def from_line(cls, line: bytes) -> LogEntry:
        decision_id, decided_ms, sent, *fields = json.loads(line)
        if not isinstance(decision_id, str) or not isinstance(decided_ms, int) or len(fields) % 2:
            raise ValueError("not a decision-log spool line")
        return cls(decision_id, decided_ms, tuple(str(f) for f in fields), bool(sent))

    def with_sent(self) -> LogEntry:
        return self if self.sent else LogEntry(self.decision_id, self.decided_ms, self.fields, True)


@dataclass(frozen=True, slots=True)
class DecisionLogConfig:
    stream_key: str
    maxlen: int = 1_000_000
    dedupe_seconds: float = 3600.0
    backlog_limit: int = 200_000
    chunk: int = 50  # entries per round trip: ~0.5 ms of Redis, ~1 ms of our event loop
    flush_budget_seconds: float = 1.0
    spool_path: Path | None = None
    index_seconds: float = 90 * 86_400.0  # the decision index, after its day (RISKGATE_DISPOSITION_DAYS)
    index_every: bool = False  # index every decision, not only the flagged ones
    flagged_maxlen: int = 50_000  # the console's stream of warnings and blocks (service.riskdata.tallies)


class Spool:
    """The backlog on disk: an append-only file of JSON lines, locked by one process at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = (path.parent / (path.name + ".lock")).open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ConfigError(
                f"{path} is in use by another riskgate process: give each instance its own RISKGATE_DATA_DIR"
            ) from None
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._dirty = False
        self.lines = 0  # lines in the file, written or not

    def read(self) -> tuple[list[LogEntry], int]:
        """The entries the file holds, and how many lines could not be read (a torn last line)."""
        entries: list[LogEntry] = []
        bad = 0
        with open(self.path, "rb") as file:
            for line in file:
                if not line.strip():
                    continue
                try:
                    entries.append(LogEntry.from_line(line))
                except (ValueError, TypeError):
                    bad += 1
        self.lines = len(entries) + bad
        return entries, bad

    def append(self, entry: LogEntry) -> None:
        os.write(self._fd, entry.to_line())  # one write: whole in the kernel before the answer goes out
        self._dirty = True
        self.lines += 1

    def sync(self) -> None:
        """fsync what was appended (safe on a worker thread while the event loop appends: a write
        during the fsync marks the file dirty again for the next call)."""
        if self._dirty:
            self._dirty = False
            os.fsync(self._fd)

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)
        # The next sync makes the truncation durable; a crash before it replays entries that
        # LOG_ONCE then finds written.
        self._dirty = True
        self.lines = 0

    def rewrite(self, entries: Iterable[LogEntry]) -> None:
        """Replace the file by `entries`, atomically (a crash leaves the old file or the new one)."""
        temporary = self.path.with_name(self.path.name + ".new")
        count = 0
        with open(temporary, "wb") as file:
            for entry in entries:
                file.write(entry.to_line())
                count += 1
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._dirty = False
        self.lines = count

    def close(self) -> None:
        self.sync()
        os.close(self._fd)
        self._lock.close()


class DecisionLog:
    """The decision log stream's writer: request-path writes, the backlog, the spool, the flusher."""

    def __init__(
        self,
        client: Any,
        config: DecisionLogConfig,
        clock: Clock,
        *,
        on_dropped: Callable[[int], None] | None = None,
        on_unverified: Callable[[int], None] | None = None,
    ) -> None:
        self._client = client
        self._mux: Multiplexer | None = None
        if isinstance(client, Redis):
            with contextlib.suppress(Unsupported):
                self._mux = Multiplexer.for_client(client)
        self.config = config
        self._clock = clock
        self._on_dropped = on_dropped
        self._on_unverified = on_unverified
        self._backlog: deque[LogEntry] = deque()
        self._wake = asyncio.Event()
        self._spool = Spool(config.spool_path) if config.spool_path is not None else None
        self._written_since_rewrite = 0
        self._index_day = -1
        self._index_key = ""
        self._tally_day: date | None = None
        self._tally_key = ("", 0)
        self.dropped = 0
        self.written_later = 0  # entries written from the backlog
        self.copies_skipped = 0  # writes that found their decision already in the log
        self.unverified = 0
        self._unlogged_drops = 0
        self._last_drop_log = float("-inf")
        self._last_sync = 0.0
        # The spool's fsync runs on a worker thread: a slow disk (200 ms and more, seen on shared
        # machines) must not hold the event loop, and with it every request, while it syncs.
        self._syncing: asyncio.Task[None] | None = None
        if self._spool is not None:
            entries, bad = self._spool.read()
            if bad:
                log.error("decision-log spool: %d unreadable lines skipped", bad, extra={"fields": {"lines": bad}})
            if entries:
                log.warning(
                    "decision-log spool holds %d entries from an earlier run: writing them",
                    len(entries),
                    extra={"fields": {"entries": len(entries), "spool": str(self._spool.path)}},
                )
            for entry in entries:
                self._add(entry, spool=False)

    # --- the request path -------------------------------------------------------------

    def marker_key(self, decided_ms: int) -> str:
        return f"{{{self.config.stream_key}}}:w:{decided_ms // _BUCKET_MS}"

    def index_key(self, decided_ms: int) -> str:
        """The decision index of the day of `decided_ms` (the key of the last day asked, kept)."""
        day = decided_ms // DAY_MS
        if day != self._index_day:
            self._index_day, self._index_key = day, index_key(self.config.stream_key, day_of(decided_ms))
        return self._index_key

    def _day_tallies(self, decided_ms: int) -> tuple[str, int]:
        """The key of the console's tallies of the local day of `decided_ms`, and when they
        expire (the key of the last day asked, kept)."""
        day = local_day(decided_ms)
        if day != self._tally_day:
            expires = day_end_ms(day) + int(self.config.index_seconds * 1000)
            self._tally_day, self._tally_key = day, (day_key(self.config.stream_key, day), expires)
        return self._tally_key

    def _args(self, entry: LogEntry, now_ms: int | None = None) -> tuple[Any, ...]:
        """EVAL's arguments after the script. `now_ms` (for entries written late): an entry whose
        day's index, or whose tallies, have expired by then is not indexed, or not tallied
        (PEXPIREAT in the past would delete them)."""
        decided_ms, key = entry.decided_ms, self.config.stream_key
        bucket_end = (decided_ms // _BUCKET_MS + 1) * _BUCKET_MS
        expires_ms = bucket_end + int(self.config.dedupe_seconds * 1000)
        named = dict(zip(entry.fields[::2], entry.fields[1::2], strict=True))
        request_id = to_index(entry.fields, self.config.index_every)
        index_expires_ms = (decided_ms // DAY_MS + 1) * DAY_MS + int(self.config.index_seconds * 1000)
        if request_id is None or (now_ms is not None and index_expires_ms <= now_ms):
            index_name, index_value = b"", ""
        else:
            index_name, index_value = index_field(entry.decision_id), f"{request_id}\x1f{named.get('rules', '')}"
        counted = tallies_of(named, decided_ms)
        minute_expires = (decided_ms // MINUTE_MS + 1) * MINUTE_MS + int(MINUTES_KEPT.total_seconds() * 1000)
        day_tallies, day_expires = self._day_tallies(decided_ms)
        hour_expires = (decided_ms // HOUR_MS + 1) * HOUR_MS + int(HOURS_KEPT.total_seconds() * 1000)
        late_ms = now_ms if now_ms is not None else 0
        minute = counted.minute if minute_expires > late_ms else ()
        day_fields = counted.day if day_expires > late_ms else ()
        hour = counted.hour if hour_expires > late_ms else ()
        return (
            7,
            key,
            self.marker_key(decided_ms),
            self.index_key(decided_ms),
            minute_key(key, decided_ms),
            day_tallies,
            hour_key(key, decided_ms),
            flagged_key(key),
            entry.decision_id,
            expires_ms,
            self.config.maxlen,
            index_name,
            index_value,
            index_expires_ms,
            len(minute),
            len(day_fields),
            len(hour),
            len(counted.flagged),
            minute_expires,
            day_expires,
            hour_expires,
            self.config.flagged_maxlen,
            *minute,
            *day_fields,
            *hour,
            *counted.flagged,
            *entry.fields,
        )

    def queue(self, pipe: Any, entry: LogEntry) -> None:
        """Queue the entry's write into a request's pipeline (one command); see `settle`."""
        pipe.execute_command("EVALSHA", LOG_ONCE_SHA, *self._args(entry))

    def settle(self, entry: LogEntry, reply: object) -> None:
        """The reply to `queue`'s command: written, or the entry joins the backlog."""
        if reply == 1:
            return
        if reply == 0:
            self.copies_skipped += 1
            return
        # NOSCRIPT (a restarted Redis): nothing ran; the backlog's EVAL loads the script again.
        self.defer(entry, sent=not isinstance(reply, NoScriptError))

    def defer(self, entry: LogEntry, *, sent: bool) -> None:
        """Write `entry` later; `sent`: a write of it went out and may have landed."""
        self._add(entry.with_sent() if sent else entry, spool=True)
        self._wake.set()

    def _add(self, entry: LogEntry, *, spool: bool) -> None:
        if len(self._backlog) >= self.config.backlog_limit:
            self._backlog.popleft()
            self._drop(1)
        self._backlog.append(entry)
        if spool and self._spool is not None:
            self._spool.append(entry)

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._unlogged_drops += count
        if self._on_dropped is not None:
            self._on_dropped(count)
        now = self._clock.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_SECONDS:
            log.error(
                "decision-log backlog full (%d entries): %d oldest unwritten entries dropped",
                self.config.backlog_limit,
                self._unlogged_drops,
                extra={"fields": {"dropped": self._unlogged_drops, "limit": self.config.backlog_limit}},
            )
            self._unlogged_drops = 0
            self._last_drop_log = now

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    # --- the backlog ------------------------------------------------------------------

    async def flush_once(self) -> int:
        """Write one chunk of the backlog, within its budget; how many entries left the backlog.

        Raises RedisError, OSError or TimeoutError when Redis does not answer: the chunk stays."""
        count = min(len(self._backlog), self.config.chunk)
        if not count:
            return 0
        chunk = [self._backlog.popleft() for _ in range(count)]
        sending_ms = int(self._clock.now().timestamp() * 1000)
        try:
            async with asyncio.timeout(self.config.flush_budget_seconds):
                replies = await self._send([("EVAL", LOG_ONCE, *self._args(entry, sending_ms)) for entry in chunk])
        except BaseException:
            # Back at the head, in order, marked: this attempt may have landed.
            self._backlog.extendleft(entry.with_sent() for entry in reversed(chunk))
            self._trim()
            raise
        horizon_ms = int(self.config.dedupe_seconds * 1000)
        now_ms = int(self._clock.now().timestamp() * 1000)
        failed: list[LogEntry] = []
        for entry, reply in zip(chunk, replies, strict=True):
            if reply == 1:
                self.written_later += 1
                if entry.sent and now_ms - entry.decided_ms > horizon_ms:
                    self.unverified += 1
                    if self._on_unverified is not None:
                        self._on_unverified(1)
            elif reply == 0:
                self.copies_skipped += 1
            else:
                failed.append(entry.with_sent())
        if failed:
            self._backlog.extendleft(reversed(failed))
            reason = failed_reason(replies)
            log.warning("decision-log entries refused by Redis: %s", reason, extra={"fields": {"n": len(failed)}})
        done = count - len(failed)
        self._written_since_rewrite += done
        self._compact()
        return done

    def _trim(self) -> None:
        excess = len(self._backlog) - self.config.backlog_limit
        if excess > 0:
            for _ in range(excess):
                self._backlog.popleft()
            self._drop(excess)

    def _compact(self) -> None:
        spool = self._spool
        if spool is None:
            return
        if not self._backlog:
            if spool.lines:
                spool.clear()
            self._written_since_rewrite = 0
        elif self._written_since_rewrite > max(10_000, len(self._backlog)) and self._syncing is None:
            spool.rewrite(self._backlog)
            self._written_since_rewrite = 0

    async def _send(self, commands: list[tuple[Any, ...]]) -> Sequence[Any]:
        """The commands in one round trip, replies (errors as exception objects) in order: on a
        single Redis on the process's multiplexed connection, packed here (redis-py's pipeline
        packs and parses a chunk in ~100 us per entry, holding the event loop from requests for
        longer than their 10 ms budget); on Redis Cluster, or TLS, with the client's pipeline."""
        if self._mux is not None:
            return await self._mux.exchange(b"".join(pack_command(c) for c in commands), len(commands))
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    def sync(self) -> None:
        """fsync the spool if it changed since the last call."""
        if self._spool is not None:
            self._spool.sync()

    async def run(self) -> None:
        """Write the backlog whenever it holds entries; back off while Redis does not answer."""
        backoff = _BACKOFF_FIRST
        while True:
            if not self._backlog:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_SYNC_SECONDS):
                        await self._wake.wait()
            self._sync_due()
            if not self._backlog:
                continue
            try:
                await self.flush_once()
            except (RedisError, OSError, TimeoutError) as error:
                log.debug("decision-log backlog not written yet: %s", error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except Exception:  # the writer must outlive a bug: its backlog is the log
                log.exception("decision-log writer failed; trying again in 1 s")
                await asyncio.sleep(_BACKOFF_MAX)
                continue
            backoff = _BACKOFF_FIRST
            await asyncio.sleep(0)  # let requests run between chunks

    def _sync_due(self) -> None:
        """Start the spool's fsync on a worker thread once a second (one at a time)."""
        now = self._clock.monotonic()
        if self._spool is None or self._syncing is not None or now - self._last_sync < _SYNC_SECONDS:
            return
        self._last_sync = now
        self._syncing = asyncio.get_running_loop().create_task(asyncio.to_thread(self._spool.sync))
        self._syncing.add_done_callback(self._synced)

    def _synced(self, task: asyncio.Task[None]) -> None:
        self._syncing = None
        if not task.cancelled() and task.exception() is not None:
            log.error("decision-log spool: fsync failed: %s", task.exception())

    async def _sync_done(self) -> None:
        if self._syncing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._syncing)

    async def close(self, budget_seconds: float) -> int:
        """Write what the backlog holds within `budget_seconds`; the rest stays in the spool for the
        next start (or, without a spool, is lost: said loudly). Returns the entries left."""
        deadline = self._clock.monotonic() + budget_seconds
        while self._backlog and self._clock.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.0, deadline - self._clock.monotonic())):
                    await self.flush_once()
            except (RedisError, OSError, TimeoutError):
                break
        left = len(self._backlog)
        await self._sync_done()
        if left:
            if self._spool is not None:
                log.warning(
                    "%d decision-log entries not written: kept in %s, written at the next start",
                    left,
                    self._spool.path,
                    extra={"fields": {"entries": left, "spool": str(self._spool.path)}},
                )
            else:
                log.error("%d decision-log entries lost at stop (no spool)", left, extra={"fields": {"entries": left}})
        self.release()
        return left

    def release(self) -> None:
        """fsync and close the spool, and let go of its lock (what is in it stays for the next start)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def failed_reason(replies: Sequence[Any]) -> str:
    for reply in replies:
        if isinstance(reply, BaseException):
            return f"{type(reply).__name__}: {reply}"
    return "unexpected reply"
