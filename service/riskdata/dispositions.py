"""Dispositions in Redis: kept with their decision, once per (decision, disposition, note).

**Which decisions exist.** The decision log's script writes every decision a disposition can
follow into the decision index of its UTC day (`service.riskdata.decision_log`,
`{rg:log:decisions}:i:<YYYY-MM-DD>`: decision id → request_id), kept
`RISKGATE_DISPOSITION_DAYS` after that day. Decision ids are random UUIDs and say nothing of
when they were made, so a report looks for its id in the index of every day the retention
covers (`lookup_days`: 92 days for 90), inside one script call: one round trip, well under a
millisecond of Redis for 92 HGETs. An id in none of them is `UnknownDecision` (NOT_FOUND).

**Where they are kept.** Beside the index, in the same cluster slot (the hash tag of the log
stream), so one script reads the index and writes the disposition atomically:

* `{rg:log:decisions}:d:<day>`: a hash per day of the decision, decision id (as in the index)
  → the decision's dispositions, a JSON list oldest first, each with the reporter's principal
  and identity, the time, and a mark of (disposition, note); it expires with that day's index.
  About 250 bytes for a decision's first disposition with a short note.
* `{rg:log:decisions}:dispositions`: a stream of every recorded disposition (decision id,
  request id, disposition, note, reporter, time), for `riskgate dispositions export` and
  `riskgate rules report`, trimmed to `RISKGATE_DISPOSITION_DAYS` (by entry id, i.e. time).

**Idempotent.** The script appends a disposition only if the decision's list holds no record
with the same mark (the hash of disposition and note): a retry, or a concurrent copy, gets the
record first made back (`already_recorded`), and nothing is added to the list or the stream. A
different disposition (APPEAL_FILED, then APPEAL_UPHELD), or the same with another note, is
appended; the latest one is the decision's disposition.

**Redis trouble.** Each call has a budget (`BUDGET_SECONDS`, cut to the caller's deadline);
when Redis errs, is unreachable or is over budget, `StoreUnavailable` (UNAVAILABLE). A report
whose reply was lost may have been recorded: its retry answers `already_recorded`.

No clear identifier reaches these keys: decision and request ids are the service's and the
institution's references, and notes are refused when they look like ID, phone or account
numbers (`service.dispositions.clean_note`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from redis.exceptions import RedisError

from service.clock import Clock
from service.dispositions import Disposition, DispositionRecord
from service.errors import StoreUnavailable, UnknownDecision
from service.riskdata.decision_log import index_field, index_key
from service.riskdata.tallies import day_end_ms, day_key, local_day

BUDGET_SECONDS: Final = 1.0  # as the audit trail's writes: an administrative call, not a screening
DISPOSITIONS_STREAM: Final = "dispositions"

# KEYS[1..n]: the decision index of each day, newest first; KEYS[n+1..2n]: the dispositions of the
# same days; KEYS[2n+1]: the dispositions stream; KEYS[2n+2]: the console's tallies of the day
# of the report (`service.riskdata.tallies`).
# ARGV[1] the decision's field, ARGV[2] n, ARGV[3] the record's mark ('"k":"<hex>"'), ARGV[4] the
# record (a JSON object), ARGV[5] the stream's MINID (unix ms), ARGV[6] when the tallies expire
# (unix ms), ARGV[7] the disposition, then the stream entry's fields.
# An index value is the request_id, then (decisions logged since the console) a \x1f and the
# fired rules, which the stream entry keeps and the tallies count the disposition for
# (`dr:<rule>:<disposition>`, a shadow rule's as `ds:`).
# Returns {0} when the index holds no such decision; {1, request_id, dispositions} when the
# record was appended; {2, request_id, dispositions} when the latest record is this one already.
_REPORT: Final = """
local n = tonumber(ARGV[2])
for day = 1, n do
  local value = redis.call('HGET', KEYS[day], ARGV[1])
  if value then
    local request_id, rules = value, ''
    local cut = string.find(value, '\\31', 1, true)
    if cut then request_id, rules = string.sub(value, 1, cut - 1), string.sub(value, cut + 1) end
    local held = redis.call('HGET', KEYS[n + day], ARGV[1])
    if held then
      -- A retry of the latest report only: the same disposition again after another one is news.
      local last, at = nil, 1
      while true do
        local found = string.find(held, '"k":"', at, true)
        if not found then break end
        last, at = found, found + 1
      end
      if last and string.sub(held, last, last + #ARGV[3] - 1) == ARGV[3] then return {2, request_id, held} end
    end
    if held then held = string.sub(held, 1, -2) .. ',' .. ARGV[4] .. ']' else held = '[' .. ARGV[4] .. ']' end
    redis.call('HSET', KEYS[n + day], ARGV[1], held)
    local ttl = redis.call('PTTL', KEYS[day])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[n + day], ttl) end
    local entry = {'XADD', KEYS[2 * n + 1], 'MINID', '~', ARGV[5], '*', 'request_id', request_id, 'rules', rules}
    for i = 8, #ARGV do entry[#entry + 1] = ARGV[i] end
    redis.call(unpack(entry))
    local tally = KEYS[2 * n + 2]
    redis.call('HINCRBY', tally, 'd:' .. ARGV[7], 1)
    for rule in string.gmatch(rules, '[^,]+') do
      if string.sub(rule, 1, 1) == '~' then
        redis.call('HINCRBY', tally, 'ds:' .. string.sub(rule, 2) .. ':' .. ARGV[7], 1)
      else
        redis.call('HINCRBY', tally, 'dr:' .. rule .. ':' .. ARGV[7], 1)
      end
    end
    redis.call('PEXPIREAT', tally, ARGV[6])
    return {1, request_id, held}
  end
end
return {0}
"""

# The same keys (the stream's unused); ARGV[1] the decision's field, ARGV[2] n.
# Returns {0} when the index holds no such decision, else {1, request_id, dispositions or ''}.
_READ: Final = """
local n = tonumber(ARGV[2])
for day = 1, n do
  local value = redis.call('HGET', KEYS[day], ARGV[1])
  if value then
    local cut = string.find(value, '\\31', 1, true)
    local request_id = cut and string.sub(value, 1, cut - 1) or value
    return {1, request_id, redis.call('HGET', KEYS[n + day], ARGV[1]) or ''}
  end
end
return {0}
"""

_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def history_key(stream_key: str, index: str) -> str:
    """`{rg:log:decisions}:d:<day>`, the dispositions beside the decision index `index` of that day."""
    return index.replace(f"{{{stream_key}}}:i:", f"{{{stream_key}}}:d:", 1)


def stream_key_of(log_stream_key: str) -> str:
    """`{rg:log:decisions}:dispositions`: every disposition recorded, in the log's slot."""
    return f"{{{log_stream_key}}}:{DISPOSITIONS_STREAM}"


def lookup_days(now: datetime, retention_seconds: float) -> list[date]:
    """The UTC days whose decision index may hold a decision made up to `retention_seconds`
    before `now`, newest first: from tomorrow (another replica's clock may run ahead across
    midnight) back to the day `retention_seconds` ago, whose index lives until
    `retention_seconds` after it ends."""
    today = now.astimezone(UTC).date()
    days = math.ceil(retention_seconds / 86_400) + 2
    return [today + timedelta(days=1 - back) for back in range(days)]


def mark(disposition: Disposition, note: str) -> str:
    """What makes two reports of one decision the same: the hash of disposition and note."""
    return hashlib.sha256(f"{disposition.value}\x1f{note}".encode()).hexdigest()[:16]


def encode_record(record: DispositionRecord) -> str:
    return _COMPACT_JSON.encode(
        {
            "disposition": record.disposition.value,
            "note": record.note,
            "reported_by": record.reported_by,
            "identity": record.identity,
            "reported_at": record.reported_at.isoformat(timespec="milliseconds"),
            "k": mark(record.disposition, record.note),
        }
    )


def decode_history(text: str, decision_id: str, request_id: str) -> list[DispositionRecord]:
    """A decision's stored dispositions, oldest first. One this version does not know (written by
    a newer one) is left out."""
    records = []
    for stored in json.loads(text) if text else ():
        try:
            disposition = Disposition(stored["disposition"])
        except ValueError:
            continue
        records.append(
            DispositionRecord(
                decision_id=decision_id,
                disposition=disposition,
                note=stored.get("note", ""),
                reported_by=stored.get("reported_by", ""),
                identity=stored.get("identity", ""),
                reported_at=datetime.fromisoformat(stored["reported_at"]),
                request_id=request_id,
            )
        )
    return records


def disposition_document(entry_id: str, fields: Mapping[Any, Any]) -> dict[str, Any]:
    """A dispositions-stream entry as a JSON-ready document (`riskgate dispositions export`):
    decision_id, request_id, disposition, note (when one was given), reported_by, reported_at."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    document: dict[str, Any] = {
        "decision_id": text.get("decision_id", ""),
        "request_id": text.get("request_id", ""),
        "disposition": text.get("disposition", ""),
    }
    if text.get("note"):
        document["note"] = text["note"]
    document["reported_by"] = text.get("reported_by", "")
    document["reported_at"] = text.get("reported_at", "")
    return document


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reply_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class DispositionStore:
    """Reports and reads dispositions; `client` is the server's redis.asyncio client (cluster or not)."""

    def __init__(self, client: Any, log_stream_key: str, clock: Clock, *, retention_seconds: float) -> None:
        self._client = client
        self._log_stream_key = log_stream_key
        self.stream_key = stream_key_of(log_stream_key)
        self._clock = clock
        self.retention_seconds = retention_seconds

    def _keys(self, now: datetime) -> list[str]:
        indexes = [index_key(self._log_stream_key, day) for day in lookup_days(now, self.retention_seconds)]
        return [*indexes, *(history_key(self._log_stream_key, index) for index in indexes)]

    async def _call(self, what: Sequence[Any], deadline: float | None) -> Any:
        budget = BUDGET_SECONDS
        if deadline is not None:
            budget = min(budget, max(0.0, deadline - self._clock.monotonic()))
        try:
            async with asyncio.timeout(budget):
                return await self._client.execute_command(*what)
        except TimeoutError:
            raise StoreUnavailable(f"dispositions: redis did not answer within {budget:.2g} s") from None
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"dispositions: redis: {type(error).__name__}: {error}") from error

    async def report(
        self,
        decision_id: str,
        disposition: Disposition,
        note: str,
        *,
        reported_by: str,
        identity: str,
        deadline: float | None = None,
    ) -> DispositionRecord:
        """Record a disposition (once: see the module doc), or the one recorded before; the
        decision id must be valid (`service.dispositions.parse_decision_id`) and the note clean."""
        now = self._clock.now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as stored: to the millisecond
        record = DispositionRecord(decision_id, disposition, note, reported_by, identity, now)
        keys = self._keys(now)
        days = len(keys) // 2
        minid = int((now - timedelta(seconds=self.retention_seconds)).timestamp() * 1000)
        entry = {
            "decision_id": decision_id,
            "disposition": disposition.value,
            "note": note,
            "reported_by": reported_by,
            "identity": identity,
            "reported_at": record.reported_at.isoformat(timespec="milliseconds"),
        }
        reported_day = local_day(int(now.timestamp() * 1000))
        reply = await self._call(
            (
                "EVAL",
                _REPORT,
                len(keys) + 2,
                *keys,
                self.stream_key,
                day_key(self._log_stream_key, reported_day),
                index_field(decision_id),
                days,
                f'"k":"{mark(disposition, note)}"',
                encode_record(record),
                max(0, minid),
                day_end_ms(reported_day) + int(self.retention_seconds * 1000),
                disposition.value,
                *(part for pair in entry.items() for part in pair),
            ),
            deadline,
        )
        if not reply or int(reply[0]) == 0:
            raise UnknownDecision(self._unknown())
        request_id = _reply_text(reply[1])
        history = decode_history(_reply_text(reply[2]), decision_id, request_id)
        if int(reply[0]) == 2 and history:
            return replace(history[-1], already_recorded=True)  # the latest record is the one retried
        return replace(record, request_id=request_id)

    async def history(self, decision_id: str, *, deadline: float | None = None) -> tuple[str, list[DispositionRecord]]:
        """The request_id of a decision and its dispositions, oldest first; UnknownDecision when
        the index does not hold it."""
        keys = self._keys(self._clock.now())
        reply = await self._call(("EVAL", _READ, len(keys), *keys, index_field(decision_id), len(keys) // 2), deadline)
        if not reply or int(reply[0]) == 0:
            raise UnknownDecision(self._unknown())
        request_id = _reply_text(reply[1])
        return request_id, decode_history(_reply_text(reply[2]), decision_id, request_id)

    def _unknown(self) -> str:
        days = self.retention_seconds / 86_400
        return (
            f"no decision with this decision_id can take a disposition: unknown, made more than {days:g} days"
            " ago (RISKGATE_DISPOSITION_DAYS), or an ALLOW in which no rule fired (RISKGATE_DISPOSITION_INDEX)"
        )
