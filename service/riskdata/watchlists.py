"""Watchlist entries in Redis, stored only as keyed hashes (the lists are declared in
`service.riskdata.lists`).

Layout (every identifier is an HMAC under the deployment's secret, see
`service.redis.keys`; a value is hashed with its list's *kind* as the
domain, which is also how counters hash the same entity):

* `rg:l:{<entity>}`: a hash per listed value, holding for each list it is on
  `<list>` = expiry in epoch milliseconds (`0`: never) and `<list>:m` = the
  entry's reason, author and time as JSON. The braces are the entity's
  Cluster hash tag, the same as its counters'. The key expires with its
  last-expiring entry.
* `rg:li:<list>`: a sorted set per list, entity hash → expiry (`+inf`: never),
  for sizes (`ZCOUNT now +inf`) and exports.

An entry matches while its expiry is later than the time of the decision (the
server's clock), for screening and CheckEntry alike, whatever other lists keep
the value's key alive. A look-up is one `HMGET` per screened value, sent in the
screening's pipeline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import NoScriptError

from service.errors import InvalidValue, UnknownList
from service.pipeline import validate
from service.redis.keys import KeyHasher
from service.riskdata.lists import MAX_AUTHOR, MAX_REASON, ListSpec


@dataclass(frozen=True, slots=True)
class Entry:
    list: str
    value_hash: str
    reason: str
    added_by: str
    added_at: datetime
    expires_at: datetime | None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


# Sets one entry and keeps the key alive exactly as long as its latest-expiring entry.
_ADD_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. ':m', ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local latest = 0
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, -2) ~= ':m' then
    local expiry = tonumber(fields[i + 1])
    if expiry == 0 then
      redis.call('PERSIST', KEYS[1])
      return 1
    end
    if expiry > latest then latest = expiry end
  end
end
redis.call('PEXPIREAT', KEYS[1], latest)
return 1
"""


class Watchlists:
    """Reads and writes watchlist entries; `client` is a redis.asyncio Redis or RedisCluster."""

    def __init__(self, client: Any, hasher: KeyHasher, specs: Mapping[str, ListSpec]) -> None:
        self._client = client
        self._hasher = hasher
        self.specs = dict(specs)
        self._add_sha: str | None = None

    def spec(self, name: str) -> ListSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownList(f"unknown list '{name}' (declared: {', '.join(sorted(self.specs)) or 'none'})") from None

    def entity_of(self, spec: ListSpec, value: str) -> str:
        return self._hasher.entity(((spec.kind.value, value),))

    def entry_key(self, entity: str) -> str:
        return f"{self._hasher.prefix}:l:{{{entity}}}"

    def index_key(self, name: str) -> str:
        return f"{self._hasher.prefix}:li:{name}"

    def prepare(
        self, name: str, value: str, *, reason: str, added_by: str, expires_at: datetime | None, now: datetime
    ) -> Entry:
        """Validate and hash one entry without storing it. Raises UnknownList, or InvalidValue
        naming its field (value, reason, added_by, expires_at)."""
        spec = self.spec(name)
        normalised = self.normalise(spec, value, now=now)
        try:
            reason = validate.parse_text(reason, max_length=MAX_REASON, required=True)
        except InvalidValue as error:
            raise error.at("reason") from None
        try:
            added_by = validate.parse_text(added_by, max_length=MAX_AUTHOR, required=True)
        except InvalidValue as error:
            raise error.at("added_by") from None
        if expires_at is None and spec.default_ttl is not None:
            expires_at = now + spec.default_ttl
        if expires_at is not None and expires_at <= now:
            raise InvalidValue("must be in the future", "expires_at")
        return Entry(name, self.entity_of(spec, normalised), reason, added_by, now, expires_at)

    def _queue_add(self, pipe: Any, sha: str, entry: Entry) -> None:
        meta = json.dumps({"why": entry.reason, "by": entry.added_by, "at": _ms(entry.added_at)}, ensure_ascii=False)
        expiry = _ms(entry.expires_at) if entry.expires_at else 0
        pipe.evalsha(sha, 1, self.entry_key(entry.value_hash), entry.list, expiry, meta)
        pipe.zadd(self.index_key(entry.list), {entry.value_hash: expiry if expiry else math.inf})

    async def add(
        self, name: str, value: str, *, reason: str, added_by: str, expires_at: datetime | None, now: datetime
    ) -> Entry:
        """Add or replace one entry. Raises UnknownList or InvalidValue."""
        entry = self.prepare(name, value, reason=reason, added_by=added_by, expires_at=expires_at, now=now)
        await self.add_many([entry])
        return entry

    async def add_many(self, entries: Sequence[Entry]) -> None:
        """Store prepared entries in one pipelined round trip (bulk import)."""
        for attempt in (1, 2):
            if self._add_sha is None:
                # SCRIPT LOAD reaches every primary of a cluster.
                self._add_sha = str(await self._client.script_load(_ADD_SCRIPT))
            pipe = self._client.pipeline(transaction=False)
            for entry in entries:
                self._queue_add(pipe, self._add_sha, entry)
            try:
                await pipe.execute()
                return
            except NoScriptError:
                # Redis restarted (or failed over) and lost its script cache: load again, once.
                self._add_sha = None
                if attempt == 2:
                    raise

    @staticmethod
    def normalise(spec: ListSpec, value: str, *, now: datetime) -> str:
        """`spec.normalise`, its InvalidValue located at the field `value`."""
        try:
            return spec.normalise(value, now=now)
        except InvalidValue as error:
            raise error.at("value") from None

    def value_hash(self, name: str, value: str, *, now: datetime) -> str:
        """The keyed hash a value is stored under on a list (what audit entries show)."""
        spec = self.spec(name)
        return self.entity_of(spec, self.normalise(spec, value, now=now))

    async def remove(self, name: str, value: str, *, now: datetime) -> bool:
        entity = self.value_hash(name, value, now=now)
        pipe = self._client.pipeline(transaction=False)
        pipe.hdel(self.entry_key(entity), name, f"{name}:m")
        pipe.zrem(self.index_key(name), entity)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def check(self, name: str, value: str, *, at: datetime) -> Entry | None:
        spec = self.spec(name)
        entity = self.entity_of(spec, self.normalise(spec, value, now=at))
        expiry, meta = await self._client.hmget(self.entry_key(entity), [name, f"{name}:m"])
        if expiry is None or not _live(int(expiry), _ms(at)):
            return None
        details = json.loads(meta) if meta else {}
        return Entry(
            name,
            entity,
            str(details.get("why", "")),
            str(details.get("by", "")),
            _from_ms(int(details.get("at", 0))),
            _from_ms(int(expiry)) if int(expiry) else None,
        )

    async def sizes(self, *, at: datetime) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        names = sorted(self.specs)
        for name in names:
            pipe.zcount(self.index_key(name), _ms(at) + 1, math.inf)
        return dict(zip(names, (int(n) for n in await pipe.execute()), strict=True))

    # --- the screening path -------------------------------------------------

    def plan(self, checks: Iterable[tuple[str, str]], values: Mapping[str, str]) -> dict[str, list[tuple[str, str]]]:
        """Group (list, field) checks by the entity key they read: {key: [(list, field), ...]}.

        A field with no value in this request (no device given) is left out:
        its check is absent, not false.
        """
        plan: dict[str, list[tuple[str, str]]] = {}
        for name, field in checks:
            value = values.get(field)
            spec = self.specs.get(name)
            if value is None or spec is None:
                continue
            plan.setdefault(self.entry_key(self.entity_of(spec, value)), []).append((name, field))
        return plan

    @staticmethod
    def queue_lookups(pipe: Any, plan: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        for key, checks in plan.items():
            pipe.hmget(key, [name for name, _ in checks])

    @staticmethod
    def read_lookups(
        plan: Mapping[str, Sequence[tuple[str, str]]], replies: Sequence[Sequence[bytes | None]], at: datetime
    ) -> dict[tuple[str, str], bool]:
        now_ms = _ms(at)
        hits: dict[tuple[str, str], bool] = {}
        for checks, reply in zip(plan.values(), replies, strict=True):
            for (name, field), expiry in zip(checks, reply, strict=True):
                hits[(name, field)] = expiry is not None and _live(int(expiry), now_ms)
        return hits


def _live(expiry_ms: int, at_ms: int) -> bool:
    return expiry_ms == 0 or expiry_ms > at_ms
