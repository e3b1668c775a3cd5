"""Rule breakers in Redis: each guarded rule's decisions and enforced blocks counted, trips, re-arms.

What a breaker is and its arithmetic: service.pipeline.breakers. Here: where it is kept, how one
replica's trip reaches the others, and what it costs.

Keys (one Redis Cluster hash tag per rule: every call below stays in one slot)::

    rg:brk:{<rule id>@<definition hash>}           hash  tripped (ms), events, blocks (at the trip),
                                                         epoch (raised by each re-arm), rearmed (ms);
                                                         TTL 30 days, renewed while tripped
    rg:brk:{<rule id>@<definition hash>}:<epoch>:<bucket>
                                                   hash  e: decisions, b: enforced blocks in one bucket
                                                         (window / 20); TTL 21 buckets

Counting rides the screening's record round trip (service.riskdata.store `BoundRiskData.record`):
`queue` appends ONE `EVALSHA` of `COUNT` for all the rules guarding the event's kind on a single
Redis, one per rule on Redis Cluster (each call one rule's keys, routed to its slot). For each
rule the script reads its state; a demoted rule is answered as such and nothing is counted;
otherwise it adds the decision (and the block, if the rule BLOCKed enforced) to the current
bucket, and at a block sums the window's buckets and trips the rule when
`service.pipeline.breakers.tripped` says so, atomically: of two replicas racing, one trips it.

How every replica learns. The script answers every rule's state, so a replica learns of a trip
(or a re-arm) at its next screening of that kind, one decision late at most per request in
flight; and `refresh` reads every guarded rule's state once a second (the server's probe task),
so an idle replica's metrics and health know too. Nothing is read on the request path before the
decision: the demoted set is this process's memory (`demoted_ids`), handed to the pipeline in the
request's `Observation`.

Cost per screening (Redis 7.0, loopback, `INFO commandstats`, on the 2-core machine where a
one-command script costs 2 us): 14 us of Redis CPU for a transfer's 3 guarded rules, 30 us for a
card opening's 7 (a transfer's counter script: about 200 us); 8 us of client CPU to queue the
call (its RESP is packed once per rules bundle, `prepare`) and read its answer; 80-100 bytes per
rule on the wire. A block sums the window's 20 buckets (38 us): rare in a sound rule. No round
trip is added.
Its increments are strings (6 % fewer instructions than numbers, which redis.call formats
with %.17g; callgrind on a replay of recorded traffic).

Redis trouble. The breaker never blocks or fails a screening: a call that errs, or a record round
trip that does not happen (Redis down, over budget, its circuit open), counts nothing and keeps
the last known demoted set; so does a failed `refresh`. A NOSCRIPT (a restarted Redis) loads the
script and sends the refused calls once more, within the record's budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from service.domain import EventKind
from service.errors import StoreUnavailable
from service.pipeline.breakers import BUCKETS, Breaker, BreakerWatch, share_text
from service.redis.keys import KeyHasher
from service.redis.pipeline import DirectPipeline

log = logging.getLogger("riskgate.breakers")

STATE_TTL_MS = 30 * 86400 * 1000
_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError, StoreUnavailable)

# KEYS[i]: rule i's state hash. ARGV[1]: now (ms); then per rule: blocked (1 or 0), bucket
# length (ms), min_events, max share (millionths). Answers per rule: code (0 armed, 1 tripped by
# this call, 2 demoted already), tripped at (ms, 0 when armed), events and blocks (of the window
# at a block or a trip, of the trip when demoted; 0 otherwise).
# The increments are strings: a Lua number given to redis.call is formatted with %.17g first
# (measured: 2 us of the 14 us a transfer's 3 rules cost).
COUNT = f"""
local now = tonumber(ARGV[1])
local out = {{}}
for i, key in ipairs(KEYS) do
  local a = 2 + (i - 1) * 4
  local state = redis.call('HMGET', key, 'tripped', 'epoch')
  if state[1] then
    local trip = redis.call('HMGET', key, 'events', 'blocks')
    redis.call('PEXPIRE', key, {STATE_TTL_MS})
    out[#out + 1] = 2
    out[#out + 1] = tonumber(state[1])
    out[#out + 1] = tonumber(trip[1]) or 0
    out[#out + 1] = tonumber(trip[2]) or 0
  else
    local width = tonumber(ARGV[a + 1])
    local prefix = key .. ':' .. (state[2] or '0') .. ':'
    local bucket = math.floor(now / width)
    local here = prefix .. bucket
    if redis.call('HINCRBY', here, 'e', '1') == 1 then
      redis.call('PEXPIRE', here, width * {BUCKETS + 1})
    end
    local code, events, blocks = 0, 0, 0
    if ARGV[a] == '1' then
      redis.call('HINCRBY', here, 'b', '1')
      for b = bucket - {BUCKETS - 1}, bucket do
        local v = redis.call('HMGET', prefix .. b, 'e', 'b')
        events = events + (tonumber(v[1]) or 0)
        blocks = blocks + (tonumber(v[2]) or 0)
      end
      if events >= tonumber(ARGV[a + 2]) and blocks * 1000000 > tonumber(ARGV[a + 3]) * events then
        redis.call('HSET', key, 'tripped', now, 'events', events, 'blocks', blocks)
        redis.call('PEXPIRE', key, {STATE_TTL_MS})
        code = 1
      end
    end
    out[#out + 1] = code
    out[#out + 1] = code == 1 and now or 0
    out[#out + 1] = events
    out[#out + 1] = blocks
  end
end
return out
"""

# Read only. KEYS[i]: rule i's state; ARGV[1]: now (ms), then each rule's bucket length (ms).
# Answers per rule: tripped at (0: armed), events and blocks at the trip, epoch, and the
# window's events and blocks now.
STATUS = f"""
local now = tonumber(ARGV[1])
local out = {{}}
for i, key in ipairs(KEYS) do
  local width = tonumber(ARGV[i + 1])
  local state = redis.call('HMGET', key, 'tripped', 'events', 'blocks', 'epoch')
  local prefix = key .. ':' .. (state[4] or '0') .. ':'
  local bucket = math.floor(now / width)
  local events, blocks = 0, 0
  for b = bucket - {BUCKETS - 1}, bucket do
    local v = redis.call('HMGET', prefix .. b, 'e', 'b')
    events = events + (tonumber(v[1]) or 0)
    blocks = blocks + (tonumber(v[2]) or 0)
  end
  out[#out + 1] = tonumber(state[1]) or 0
  out[#out + 1] = tonumber(state[2]) or 0
  out[#out + 1] = tonumber(state[3]) or 0
  out[#out + 1] = tonumber(state[4]) or 0
  out[#out + 1] = events
  out[#out + 1] = blocks
end
return out
"""

# KEYS[1]: the rule's state; ARGV[1]: now (ms). The rule is armed with an empty window (a new
# epoch: the old buckets are never read again and expire). Answers 1 if it was demoted.
REARM = f"""
local was = redis.call('HGET', KEYS[1], 'tripped')
redis.call('HDEL', KEYS[1], 'tripped', 'events', 'blocks')
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'rearmed', ARGV[1])
redis.call('PEXPIRE', KEYS[1], {STATE_TTL_MS})
if was then return 1 end
return 0
"""


@dataclass(frozen=True, slots=True)
class Trip:
    """A rule's breaker tripped: when (ms since the epoch), and the window's events and blocks then."""

    rule_id: str
    identity: str
    tripped_at_ms: int
    events: int
    blocks: int

    def describe(self, breaker: Breaker) -> str:
        share = share_text(self.blocks * 1_000_000 // self.events) if self.events else "0%"
        return (
            f"it blocked {self.blocks} of {self.events} decisions ({share}) within {breaker.window_text}, "
            f"above its max_block_share {breaker.share_text} (min_events {breaker.min_events})"
        )


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """One guarded rule as Redis holds it now (`RuleBreakers.status`)."""

    watch: BreakerWatch
    trip: Trip | None
    epoch: int
    window_events: int
    window_blocks: int


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


_BLOCKED = (_bulk(b"0"), _bulk(b"1"))


@dataclass(frozen=True, slots=True)
class _Call:
    """One EVALSHA of COUNT, prepared: its rules, and its RESP but for the time and the flags."""

    watches: tuple[BreakerWatch, ...]
    keys: tuple[str, ...]
    head: bytes  # *<n> EVALSHA <sha> <numkeys> <keys...>
    tails: tuple[bytes, ...]  # per rule, after its flag: bucket length, min_events, share

    def packed(self, now_ms: int, flags: list[int]) -> bytes:
        parts = [self.head, _bulk(b"%d" % now_ms)]
        for flag, tail in zip(flags, self.tails, strict=True):
            parts += (_BLOCKED[flag], tail)
        return b"".join(parts)

    def args(self, sha: str, now_ms: int, flags: list[int]) -> list[str | int]:
        out: list[str | int] = ["EVALSHA", sha, len(self.keys), *self.keys, now_ms]
        for flag, watch in zip(flags, self.watches, strict=True):
            b = watch.breaker
            out += [flag, b.bucket_ms, b.min_events, b.share_ppm]
        return out


@dataclass(frozen=True, slots=True)
class BreakerPlan:
    """The calls counting a decision of one event kind for the rules guarding it (`RuleBreakers.prepare`,
    made once per rules bundle and kind): one on a single Redis, one per rule on Redis Cluster."""

    calls: tuple[_Call, ...]


@dataclass(frozen=True, slots=True)
class BreakerCalls:
    """The breaker calls one record round trip carries: `count` commands, and what they were (to
    read their replies, and to send them again after a NOSCRIPT)."""

    count: int
    plan: BreakerPlan
    now_ms: int
    flags: tuple[list[int], ...]


TripListener = Callable[[BreakerWatch, Trip], None]


class RuleBreakers:
    """The breakers of one process: what it knows to be demoted, the scripts that count and trip.

    `on_trip(watch, trip)` is called when a call of this process tripped a rule (once per trip
    across all replicas: the script trips atomically); other replicas learn of it silently, with
    an INFO line. Everything runs on the event loop.
    """

    def __init__(self, client: Any, hasher: KeyHasher) -> None:
        self._client = client
        self._hasher = hasher
        self._cluster = isinstance(client, RedisCluster)
        self._demoted: dict[str, Trip] = {}  # identity -> its trip
        self.sha = hashlib.sha1(COUNT.encode(), usedforsecurity=False).hexdigest()
        self.version = 0  # raised whenever the demoted set changes
        self.on_trip: TripListener | None = None

    # --- what this process knows ----------------------------------------------------------

    def key(self, identity: str) -> str:
        return self._hasher.breaker_key(identity)

    def trip_of(self, identity: str) -> Trip | None:
        return self._demoted.get(identity)

    def demoted_ids(self, watches: Sequence[BreakerWatch]) -> frozenset[str]:
        """The rule ids among `watches` known to be demoted (the last known set, whatever Redis does)."""
        if not self._demoted:
            return frozenset()
        return frozenset(w.rule_id for w in watches if w.identity in self._demoted)

    def _set(self, watch: BreakerWatch, trip: Trip | None, *, by_us: bool = False) -> None:
        known = self._demoted.get(watch.identity)
        if trip is None:
            if known is not None:
                del self._demoted[watch.identity]
                self.version += 1
                log.info(
                    "rule %s is enforced again: its breaker was re-armed",
                    watch.rule_id,
                    extra={"fields": {"rule": watch.rule_id, "definition": watch.identity}},
                )
            return
        if known is not None:
            return
        self._demoted[watch.identity] = trip
        self.version += 1
        fields = {
            "rule": watch.rule_id,
            "definition": watch.identity,
            "events": trip.events,
            "blocks": trip.blocks,
            "max_block_share": watch.breaker.share_text,
            "window": watch.breaker.window_text,
            "min_events": watch.breaker.min_events,
            "event_kinds": sorted(kind.value for kind in watch.kinds),
        }
        if by_us:
            log.warning(
                "rule %s demoted to shadow by its breaker: %s", watch.rule_id, trip.describe(watch.breaker),
                extra={"fields": fields},
            )  # fmt: skip
            if self.on_trip is not None:
                try:
                    self.on_trip(watch, trip)
                except Exception:  # a listener's bug must not fail a screening
                    log.exception("breaker trip listener failed")
        else:
            log.info(
                "rule %s is demoted to shadow: its breaker tripped on another replica", watch.rule_id,
                extra={"fields": fields},
            )  # fmt: skip

    # --- the record round trip -------------------------------------------------------------

    def prepare(self, watches: Sequence[BreakerWatch]) -> BreakerPlan:
        """The calls that count a decision for `watches` (the rules guarding one event kind)."""
        groups = [(w,) for w in watches] if self._cluster else ([tuple(watches)] if watches else [])
        calls = []
        for group in groups:
            keys = tuple(self.key(w.identity) for w in group)
            head = b"*%d\r\n" % (4 + 5 * len(group)) + b"".join(
                _bulk(part) for part in (b"EVALSHA", self.sha.encode(), b"%d" % len(group), *(k.encode() for k in keys))
            )
            tails = tuple(
                b"".join(_bulk(b"%d" % n) for n in (w.breaker.bucket_ms, w.breaker.min_events, w.breaker.share_ppm))
                for w in group
            )
            calls.append(_Call(group, keys, head, tails))
        return BreakerPlan(tuple(calls))

    def queue(self, pipe: Any, plan: BreakerPlan, blocked: frozenset[str], now_ms: int) -> BreakerCalls | None:
        """Append the calls counting one decision (`blocked`: the rules that BLOCKed it enforced) to
        `pipe`, the record round trip's pipeline; None when the plan has none."""
        if not plan.calls:
            return None
        flags = tuple([1 if w.rule_id in blocked else 0 for w in call.watches] for call in plan.calls)
        if isinstance(pipe, DirectPipeline):
            for call, call_flags in zip(plan.calls, flags, strict=True):
                pipe.append_packed(call.packed(now_ms, call_flags), 1)
        else:
            for call, call_flags in zip(plan.calls, flags, strict=True):
                pipe.execute_command(*call.args(self.sha, now_ms, call_flags))
        return BreakerCalls(len(plan.calls), plan, now_ms, flags)

    async def settle(self, calls: BreakerCalls, replies: Sequence[Any], budget_seconds: float) -> None:
        """Learn from the calls' replies (trips, demotions elsewhere, re-arms). Never raises: an
        error reply or a failed retry keeps the last known demoted set."""
        out = list(replies)
        missing = [i for i, reply in enumerate(out) if isinstance(reply, NoScriptError)]
        if missing:
            try:
                async with asyncio.timeout(budget_seconds):
                    await self._client.script_load(COUNT)
                    pipe = self._client.pipeline(transaction=False)
                    for i in missing:
                        pipe.execute_command(*calls.plan.calls[i].args(self.sha, calls.now_ms, calls.flags[i]))
                    again = await pipe.execute(raise_on_error=False)
                for i, reply in zip(missing, again, strict=True):
                    out[i] = reply
            except _ERRORS as error:
                log.warning("rule breakers not counted: %s", error)
                return
        for call, reply in zip(calls.plan.calls, out, strict=True):
            group = call.watches
            if isinstance(reply, BaseException) or not isinstance(reply, list) or len(reply) != 4 * len(group):
                continue
            if not self._demoted and not any(reply[0::4]):
                continue  # every rule armed, as this process knew: nothing to learn
            for index, watch in enumerate(group):
                code, at, events, blocks = (int(v) for v in reply[4 * index : 4 * index + 4])
                if code == 0:
                    self._set(watch, None)
                else:
                    self._set(watch, Trip(watch.rule_id, watch.identity, at, events, blocks), by_us=code == 1)

    async def load_script(self) -> None:
        """SCRIPT LOAD of the counting script (on every primary of a cluster)."""
        await self._client.script_load(COUNT)

    # --- off the request path ---------------------------------------------------------------

    async def refresh(self, watches: Sequence[BreakerWatch], timeout: float = 0.5) -> bool:
        """Read every guarded rule's state (one HMGET each, one round trip) and forget identities no
        longer served; False (the last known set kept) when Redis does not answer."""
        served = {w.identity for w in watches}
        for identity in [i for i in self._demoted if i not in served]:
            trip = self._demoted.pop(identity)
            self.version += 1
            if any(w.rule_id == trip.rule_id for w in watches):
                log.info(
                    "rule %s is enforced again: its definition changed, which re-arms its breaker", trip.rule_id,
                    extra={"fields": {"rule": trip.rule_id, "definition": identity}},
                )  # fmt: skip
        if not watches:
            return True
        try:
            async with asyncio.timeout(timeout):
                pipe = self._client.pipeline(transaction=False)
                for w in watches:
                    pipe.hmget(self.key(w.identity), ["tripped", "events", "blocks"])
                replies = await pipe.execute(raise_on_error=False)
        except _ERRORS:
            return False
        for watch, reply in zip(watches, replies, strict=True):
            if isinstance(reply, BaseException) or not isinstance(reply, list):
                continue
            tripped, events, blocks = (int(v) if v is not None else None for v in reply)
            if tripped is None:
                self._set(watch, None)
            else:
                self._set(watch, Trip(watch.rule_id, watch.identity, tripped, events or 0, blocks or 0))
        return True

    async def status(self, watches: Sequence[BreakerWatch], now_ms: int) -> list[BreakerStatus]:
        """Each guarded rule's state and window now, read from Redis (raises StoreUnavailable)."""
        if not watches:
            return []
        groups = [(w,) for w in watches] if self._cluster else [tuple(watches)]
        try:
            async with asyncio.timeout(2.0):
                pipe = self._client.pipeline(transaction=False)
                for group in groups:
                    keys = [self.key(w.identity) for w in group]
                    widths = [w.breaker.bucket_ms for w in group]
                    pipe.execute_command("EVAL", STATUS, len(group), *keys, now_ms, *widths)
                replies = await pipe.execute()
        except _ERRORS as error:
            raise StoreUnavailable(f"rule breakers unavailable: {error}") from error
        out: list[BreakerStatus] = []
        for group, reply in zip(groups, replies, strict=True):
            for index, watch in enumerate(group):
                tripped, events, blocks, epoch, window_events, window_blocks = (
                    int(v) for v in reply[6 * index : 6 * index + 6]
                )
                trip = Trip(watch.rule_id, watch.identity, tripped, events, blocks) if tripped else None
                self._set(watch, trip)
                out.append(BreakerStatus(watch, trip, epoch, window_events, window_blocks))
        return out

    async def rearm(self, watch: BreakerWatch, now_ms: int) -> bool:
        """Re-arm a rule's breaker (enforced again, its window empty) on every replica; whether it
        was demoted. Raises StoreUnavailable."""
        try:
            async with asyncio.timeout(2.0):
                was = await self._client.eval(REARM, 1, self.key(watch.identity), now_ms)
        except _ERRORS as error:
            raise StoreUnavailable(f"rule breakers unavailable: {error}") from error
        self._set(watch, None)
        return bool(was)


def watches_by_kind(watches: Sequence[BreakerWatch]) -> Mapping[EventKind, tuple[BreakerWatch, ...]]:
    """The watches guarding each event kind, in the given order."""
    out: dict[EventKind, list[BreakerWatch]] = {}
    for watch in watches:
        for kind in watch.kinds:
            out.setdefault(kind, []).append(watch)
    return {kind: tuple(group) for kind, group in out.items()}
