"""The counter store: every counter of one event in one pipelined round trip to Redis.

`CounterStore.observe()` groups the event's counters by entity (the hashed
key values), sends ONE `EVALSHA observe.lua` per entity, all in one pipeline
(transaction=False), and returns every value name the event can read.
Works on a single Redis and on Redis Cluster alike: each call's keys share
one hash tag, so a cluster client routes each call to its slot's node and
the pipeline becomes one round trip per node, in parallel.

Redis layout (see `service.counters.keys` for the hashing)::

    rg:c:{E}:<counter>          count/sum    hash: h<w> newest bucket, s<w> running total,
                                             <w*1000 + bucket % n> ring slot, a all-time total
                                distinct     zset member -> newest time (exact, <= exact_up_to)
                                             or hash {h: newest time} above the cap, with
    rg:c:{E}:<counter>:<w>:<b>  distinct     one HyperLogLog per window bucket
    rg:c:{E}:<counter>:a        distinct     one HyperLogLog for `all`
                                idle_days    hash: l newest time, d<w> silence before the run

Each key carries a TTL (window + one bucket + 5 min of clock skew, or
`retain` for all-time counters), refreshed by updates only: an entity
nobody updates any more vanishes. Reads never write.

The store does not decide anything else: degraded mode, budgets,
idempotency, watchlists and the decision log are the caller's. Connection
errors, timeouts and Redis errors surface as `StoreUnavailable`; by then
some entities' scripts may already have run, so an event must not be
observed again (the caller's idempotency record covers retries). For the
same reason the Redis client must not retry on its own (redis-py retries
timed-out pipelines by default, and RedisCluster re-sends a pipeline after
a connection error): build it with `retry=Retry(NoBackoff(), 0)` and let
the caller's budget decide.

Per request the Python side only hashes the key values (HMAC), looks up a
plan compiled per event kind at construction, and sends two arguments per
counter: its static layout (packed once) and the amount, member or flag.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from service.counters.kernels import FUTURE_SKEW_SECONDS, ttl_seconds
from service.counters.keys import KeyHasher, field_domain
from service.counters.spec import Aggregate, Counter, CounterSpec, Key
from service.domain import EventKind
from service.errors import StoreUnavailable
from service.facts import FIELDS, FieldType, Scalar

SCRIPT = (Path(__file__).parent / "lua" / "observe.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8"), usedforsecurity=False).hexdigest()

Value = int | float
ArgT = str | int | bytes
_Call = tuple[list[str], list[ArgT], list[tuple[str, ...]]]  # keys, arguments, value names per key
_DAY = 86400


@dataclass(frozen=True, slots=True)
class _Op:
    """One counter read (and maybe updated) within an entity's script call."""

    counter: str
    code: str  # 'c' count/sum, 'd' distinct, 'i' idle_days
    layout: bytes  # the static shape the script unpacks (see lua/observe.lua)
    names: tuple[str, ...]  # value names, in the order the script returns them
    sign: int  # +1 `on`, -1 `decrement_on`, 0 never updated under this key for this kind
    amount_field: str | None  # sum(FIELD)
    member_field: str | None  # distinct(FIELD)
    member_is_id: bool
    member_domain: str


@dataclass(frozen=True, slots=True)
class _Group:
    fields: tuple[str, ...]
    from_ids: tuple[bool, ...]
    domains: tuple[str, ...]
    ops: tuple[_Op, ...]


def _pack(code: str, *ints: int) -> bytes:
    return code.encode("ascii") + bytes((len(ints),)) + struct.pack(f"<{len(ints)}i", *ints)


def _op(counter: Counter, kind: EventKind, names: tuple[str, ...], primary: bool) -> _Op:
    sign = 0
    if primary and kind in counter.on:
        sign = 1
    elif primary and kind in counter.decrement_on:
        sign = -1
    # The script takes the longest window first (its new buckets restart the TTL and
    # prune distinct sets) and returns values in the order it takes them, `all` last.
    bucketed = sorted((w for w in counter.windows if not w.all_time), key=lambda w: -w.seconds)
    has_all = any(w.all_time for w in counter.windows)
    name_of = dict(zip((w.label for w in counter.windows), names, strict=True))
    ordered = tuple(name_of[w.label] for w in bucketed) + tuple(name_of[w.label] for w in counter.windows if w.all_time)
    ttls = [int(ttl_seconds(w.seconds, w.granularity, FUTURE_SKEW_SECONDS)) for w in bucketed]
    key_ttl = counter.retain_seconds if has_all else max(ttls, default=0)
    member_field = counter.field if counter.aggregate is Aggregate.DISTINCT else None
    if counter.aggregate is Aggregate.IDLE_DAYS:
        code = "i"
        # the script refreshes this TTL once a day
        layout = _pack(code, len(counter.windows), *(w.seconds for w in counter.windows), counter.retain_seconds + _DAY)
        ordered = names
    elif counter.aggregate is Aggregate.DISTINCT:
        code = "d"
        shape = [x for w, ttl in zip(bucketed, ttls, strict=True) for x in (w.granularity, w.buckets, ttl)]
        layout = _pack(code, len(bucketed), *shape, int(has_all), key_ttl, counter.exact_up_to)
    else:
        code = "c"
        shape = [x for w in bucketed for x in (w.granularity, w.buckets)]
        layout = _pack(code, len(bucketed), *shape, int(has_all), key_ttl)
    return _Op(
        counter=counter.name,
        code=code,
        layout=layout,
        names=ordered,
        sign=sign,
        amount_field=counter.field if counter.aggregate is Aggregate.SUM else None,
        member_field=member_field,
        member_is_id=member_field is not None and FIELDS[member_field].type is FieldType.IDENTIFIER,
        member_domain=field_domain(member_field) if member_field else "",
    )


def _plan(spec: CounterSpec, kind: EventKind) -> tuple[_Group, ...]:
    groups: dict[tuple[str, ...], tuple[Key, list[_Op]]] = {}

    def add(key: Key, op: _Op) -> None:
        fields = key.fields(kind)
        assert fields is not None
        groups.setdefault(fields, (key, []))[1].append(op)

    for counter in spec.counters:
        if kind in counter.read_on:
            add(counter.key, _op(counter, kind, counter.names(), primary=True))
        for alias in counter.read_as:
            if kind in alias.read_on:
                add(alias.key, _op(counter, kind, counter.names(alias.name), primary=False))
    out: list[_Group] = []
    for fields, (key, ops) in groups.items():
        from_ids = tuple(FIELDS[f].type is FieldType.IDENTIFIER for f in fields)
        out.append(_Group(fields, from_ids, key.domains, tuple(ops)))
    return tuple(out)


class CounterStore:
    """Declared counters over redis.asyncio (a `Redis` or a `RedisCluster`)."""

    def __init__(self, client: Redis | RedisCluster, spec: CounterSpec, hasher: KeyHasher) -> None:
        self._client = client
        self._hasher = hasher
        self.spec = spec
        self._plans = {kind: _plan(spec, kind) for kind in EventKind}

    async def load_script(self) -> None:
        """SCRIPT LOAD (on every primary of a cluster); optional, NOSCRIPT is handled anyway."""
        try:
            await self._client.script_load(SCRIPT)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def value_names(self, kind: EventKind) -> frozenset[str]:
        """Every value name an event of `kind` may be given (absent ones: key fields missing)."""
        return frozenset(name for group in self._plans[kind] for op in group.ops for name in op.names)

    async def observe(
        self,
        *,
        occurred_at: datetime,
        kind: EventKind,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        updates: Collection[str],
    ) -> dict[str, int | float]:
        """Update the counters named in `updates` (see `counters_to_update`) and read every value
        this event can read, in one round trip. Values whose key fields the event lacks are absent.
        Names in `updates` that the event's kind does not update are ignored."""
        if occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")
        t = int(occurred_at.timestamp() // 1)
        hasher = self._hasher
        calls: dict[str, _Call] = {}
        for group in self._plans[kind]:
            parts: list[tuple[str, str]] = []
            for field, from_ids, domain in zip(group.fields, group.from_ids, group.domains, strict=True):
                raw = ids.get(field) if from_ids else facts.get(field)
                if raw is None or raw == "":
                    break
                parts.append((domain, str(raw)))
            else:
                entity = hasher.entity(parts)
                call = calls.get(entity)
                if call is None:
                    call = calls[entity] = ([], [t], [])
                keys, args, names = call
                for op in group.ops:
                    keys.append(hasher.counter_key(entity, op.counter))
                    args.append(op.layout)
                    args.append(self._value(op, entity, facts, ids, op.sign != 0 and op.counter in updates))
                    names.append(op.names)
        if not calls:
            return {}
        replies = await self._run(list(calls.values()))
        values: dict[str, int | float] = {}
        for (_, _, names), reply in zip(calls.values(), replies, strict=True):
            flat = iter(reply)
            for op_names in names:
                for name in op_names:
                    values[name] = next(flat)
        return values

    def _value(self, op: _Op, entity: str, facts: Mapping[str, Scalar], ids: Mapping[str, str], update: bool) -> ArgT:
        """The per-event argument of an op: amount (0 = read), member (b'' = read), or 1/0."""
        if op.code == "c":
            if not update:
                return 0
            if op.sign < 0 or op.amount_field is None:
                return op.sign  # a count adds 1; a decrement (a closure) subtracts 1
            raw = facts.get(op.amount_field)
            if raw is None or isinstance(raw, (bool, str)):
                return 0
            return max(0, round(raw))
        if op.code == "d":
            if not update:
                return b""
            assert op.member_field is not None
            member = ids.get(op.member_field) if op.member_is_id else facts.get(op.member_field)
            if member is None or member == "":
                return b""
            return self._hasher.member(entity, op.member_domain, str(member))
        return 1 if update else 0

    async def _run(self, calls: list[_Call]) -> list[list[Value]]:
        try:
            replies = await self._pipeline(calls)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # A script flush or a restarted/failed-over Redis: the NOSCRIPT calls did
                # not run, so loading the script and sending just those again counts once.
                await self._client.script_load(SCRIPT)
                again = await self._pipeline([calls[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        for reply in replies:
            if isinstance(reply, BaseException):
                raise StoreUnavailable(f"redis: {reply}") from reply
        return replies

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args, _ in calls:
            # execute_command: redis-py's cluster pipeline blocks its evalsha() method,
            # not the command, which it routes by the keys' slot.
            pipe.execute_command("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))
