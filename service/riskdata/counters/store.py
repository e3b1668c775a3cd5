"""The counter store: every counter of one event in one round trip to Redis, shareable with other commands.

One event's counter work is three steps, so that a caller can put it in the
same pipeline as its other commands (watchlist look-ups) and make ONE round
trip per screening::

    plan = store.prepare(occurred_at=..., kind=..., facts=..., ids=..., updates=...)  # pure, no I/O
    pipe = store.pipeline()        # or client.pipeline(transaction=False): Redis or RedisCluster
    n = store.queue(pipe, plan)                         # appends its EVALSHA(s); n commands
    ...queue other commands...
    replies = await pipe.execute(raise_on_error=False)
    mine = await store.retry_noscript(plan, replies[:n])   # only after a SCRIPT FLUSH / failover
    values = store.read(plan, mine)                     # raises StoreUnavailable on error replies

`observe()` does exactly that for the counters alone. On a single Redis,
`store.pipeline()` is a `DirectPipeline` (`service.redis.pipeline`): commands
packed when queued, sent and read on the client's multiplexed connection
(`service.redis.mux`: one per process, concurrent requests' commands written
together, no pool checkout, no task per send), the same round trip as a
redis-py pipeline for a fraction of its CPU; `observe()` uses the same path.
Where the multiplexer does not apply (TLS, RESP3) on connections held from
the client's pool (`service.redis.pipeline.HeldConnections`). On Redis
Cluster it is the client's own pipeline.

NOSCRIPT. After a restart, a failover or SCRIPT FLUSH, a call answers
NOSCRIPT and has not run. `retry_noscript(plan, replies)` returns `replies`
unchanged when none is NOSCRIPT (no I/O); else it loads the script and
sends again only the calls that answered NOSCRIPT, so nothing counts twice.
The caller's other commands in the pipeline are unaffected. (Alternatively
call `load_script()` at start and after a NOSCRIPT, and treat that
request's counters as unavailable.)

A request's claim (single Redis): `with_claim(plan, key=..., mark=..., px=...)` makes the
plan's call first claim the request's idempotency key for an attempt, in the same script
call, so claim, counters and the caller's look-ups are one round trip; `stored_claim(plan,
replies)` gives what an earlier attempt left there (then nothing was counted). On Redis
Cluster the claim's key and the counters' are in different slots: `folds_claim` is False and
the caller claims in a round trip of its own first.

Active counts and blocked openings: `prepare_retract(plan, token=...)`
gives the undo of the event's increments of `decrement_on` counters, which
the caller queues (`queue_retract`) in its post-decision pipeline when the
outcome is BLOCK; semantics in `service.riskdata.counters.loader`.

How calls are formed. Each entity (the hashed key values) has one hash
`rg:c2:{E}` holding all its count, sum and idle_days counters and the small
state of its distinct() counters, and a set per distinct() counter beside
it once it holds two members (see `lua/observe.lua`). An event's work is a
list of segments, one per key of the event's kind (usually one per
entity), each a static program and the event's values packed into one
string: three arguments per entity, not two per counter. The programs are
compiled when the store is built and written into its script as Lua
constants (one script per counter file, `store.script`), so a call names
its program by number and Redis parses nothing per call. On a single Redis
all segments go in ONE EVALSHA; on Redis Cluster one EVALSHA per segment
(each with one key, routed to its slot's node; the pipeline makes one round
trip per node, in parallel).

Redis layout (see `service.redis.keys` for the hashing; `c2`: the second counter layout, whose
keys never meet the first one's `rg:c:` keys, which expire by their TTLs)::

    rg:c2:{E}                    hash   per counter, under its 2-byte tag T (fields are bytes):
                                        T h<w> newest bucket of window w, T v<w> its amount,
                                        T s<w> running total, T <w><bucket % n> a ring slot
                                        per older live bucket, T a all-time total;
                                        idle_days: T l newest time, T d<w> silence before
                                        the run; distinct: T m newest time (negative once
                                        approximate), T o the member while it is the only
                                        one in the windows
    rg:c2:{E}:<counter>          zset   distinct, exact, from 2 members: member -> newest time
    rg:c2:{E}:<counter>:<w>:<b>  HLL    distinct, approximate: one per window bucket
    rg:c2:{E}:<counter>:a        HLL    distinct, approximate, for `all`
    rg:c2:{E}:u:<token>:<g>      string a retract's idempotency mark (48 h)

Every key carries a TTL (window + one bucket + the future skew, or
`retain` for all-time counters; an entity's hash lives as long as its
longest-lived counter needs), raised by updates only: an entity nobody
updates any more vanishes. Reads never write.

The store does not decide anything else: degraded mode, budgets,
idempotency, watchlists and the decision log are the caller's. Connection
errors, timeouts and Redis errors surface as `StoreUnavailable`; by then
some scripts may already have run, so an event must not be observed again
(the caller's idempotency record covers retries). For the same reason the
Redis client must not retry on its own (redis-py retries timed-out
pipelines by default, and RedisCluster re-sends a pipeline after a
connection error): build it with `retry=Retry(NoBackoff(), 0)` and let the
caller's budget decide.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from service.domain import EventKind
from service.errors import StoreUnavailable, Unsupported
from service.pipeline.facts import FIELDS, FieldType, Scalar
from service.redis.keys import KeyHasher, counter_tag, field_domain
from service.redis.mux import Multiplexer
from service.redis.pipeline import DirectPipeline, HeldConnections, held_connections
from service.riskdata.counters.kernels import DEFAULT_FUTURE_SKEW_SECONDS, ttl_seconds
from service.riskdata.counters.model import Aggregate, Counter, CounterSpec, Key

TEMPLATE = (Path(__file__).parent / "lua" / "observe.lua").read_text(encoding="utf-8")
_PROGRAMS_MARK = "--@programs\n"

Value = int | float
_DAY = 86400
_ERRORS = (RedisError, RedisClusterException, OSError)
# (op code, per-event value) -> (Lua struct format, Python struct format)
_VALUE_FORMATS = {"c": ("l", "q"), "d": ("Bc8", "B8s"), "i": ("B", "B"), "u": ("l", "q")}


_Item = str | bytes | int  # one program item: an op code, a field name or a number


def _lua(item: _Item) -> str:
    """An item as a Lua literal (strings byte for byte, with decimal escapes)."""
    if isinstance(item, int):
        return str(item)
    data = item.encode("utf-8") if isinstance(item, str) else item
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03d}" for b in data) + '"'


def _dispatch(programs: Sequence[tuple[int, tuple[_Item, ...]]], indent: str = "  ") -> str:
    """Lua returning the items of program `id`: a binary search over if-chains of at most four."""
    if len(programs) <= 4:
        lines = []
        for index, (number, items) in enumerate(programs):
            keyword = "if" if index == 0 else "elseif"
            lines.append(f"{indent}{keyword} id == {number} then")
            lines.append(f"{indent}  return {{ {', '.join(_lua(item) for item in items)} }}")
        return "\n".join([*lines, f"{indent}end"])
    middle = len(programs) // 2
    return "\n".join(
        [
            f"{indent}if id < {programs[middle][0]} then",
            _dispatch(programs[:middle], indent + "  "),
            f"{indent}else",
            _dispatch(programs[middle:], indent + "  "),
            f"{indent}end",
        ]
    )


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


@dataclass(frozen=True, slots=True)
class _Op:
    """One counter read (and maybe updated) within a segment."""

    counter: str
    code: str  # 'c' count/sum, 'd' distinct, 'i' idle_days
    tag: bytes
    ttl: int  # what its writes raise the entity's TTL to
    has_all: bool
    windows: tuple[tuple[int, int, int], ...]  # (granularity, buckets, ttl) longest first; idle: (gap, 0, 0)
    cap: int  # distinct: exact_up_to
    names: tuple[str, ...]  # value names, in the order the script returns them
    sign: int  # +1 `on`, -1 `decrement_on`, 0 never updated under this key for this kind
    amount_field: str | None  # sum(FIELD)
    member_field: str | None  # distinct(FIELD)
    member_is_id: bool
    member_domain: str
    retract: bool  # an increment a BLOCK takes back (a counter with decrement_on or undo_on_block)
    all_name: str  # the value name of its `all` window ('' when it has none)


@dataclass(frozen=True, slots=True)
class _Segment:
    """Ops sent together for one entity: a program compiled into the script (its items are Lua
    constants there), named by its number; the values are packed per event."""

    ops: tuple[_Op, ...]
    items: tuple[_Item, ...]  # the program, as lua/observe.lua reads it
    number: int
    program: bytes  # its number, the argument sent
    resp_program: bytes  # the same as a RESP bulk string, for packing commands by hand
    values: struct.Struct
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Group:
    """The counters of one event kind kept under one key (one entity per event)."""

    parts: tuple[tuple[str, bool, str], ...]  # (field, from ids, hashing domain) per key position
    segments: tuple[_Segment, ...]
    undo: _Segment | None  # its retract segment: the ops with `retract`


_Call = tuple[bytes, _Segment, bytes]  # entity key, segment, packed values


class _Batch:
    __slots__ = ("calls", "header")

    def __init__(self, header: bytes, calls: list[_Call]) -> None:
        self.header = header
        self.calls = calls

    def names(self) -> list[str]:
        return [name for _, segment, _ in self.calls for name in segment.names]


class CounterPlan(_Batch):
    """One event's counter calls, from `CounterStore.prepare`: data only, no connection.

    With a `claim_key` (see `CounterStore.with_claim`) the call first claims that request."""

    __slots__ = ("claim_key", "kind", "undo")

    def __init__(
        self, kind: EventKind, header: bytes, calls: list[_Call], undo: list[_Call], claim_key: bytes | None = None
    ) -> None:
        super().__init__(header, calls)
        self.kind = kind
        self.undo = undo
        self.claim_key = claim_key


class RetractPlan(_Batch):
    """The undo of one event's increments of active counts, from `CounterStore.prepare_retract`."""

    __slots__ = ()


def _numbered(
    ops: list[_Op],
    items: list[_Item],
    values_format: str,
    names: tuple[str, ...],
    numbers: dict[tuple[_Item, ...], int],
) -> _Segment:
    """A segment, numbered by its program (the same program on two event kinds: one number)."""
    key = tuple(items)
    number = numbers.setdefault(key, len(numbers) + 1)
    return _Segment(
        ops=tuple(ops),
        items=key,
        number=number,
        program=b"%d" % number,
        resp_program=_bulk(b"%d" % number),
        values=struct.Struct(values_format),
        names=names,
    )


def _segment(ops: list[_Op], numbers: dict[tuple[_Item, ...], int]) -> _Segment:
    """The program of `ops` as lua/observe.lua reads it: the fields one HMGET fetches, a row per
    count/sum window, a row per op, then the strings and runs the rows point to."""
    fields: list[bytes] = []
    windows: list[int] = []  # g n f v per window
    rows: list[list[_Item]] = []
    extra: list[_Item] = []
    pointers: list[tuple[int, int]] = []  # (row, column) holding an index into `extra`
    value = 1
    for op in ops:
        tag = op.tag
        if op.code == "c":
            all_field = 0
            if op.has_all:
                fields.append(tag + b"a")
                all_field = len(fields)
            first = len(windows) // 4 + 1
            for j, (granularity, buckets, _) in enumerate(op.windows, start=1):
                w = bytes((j,))
                fields += (tag + b"h" + w, tag + b"s" + w, tag + b"v" + w, tag + w)
                windows += (granularity, buckets, len(fields) - 3, value)
            rows.append(["c", value, op.ttl, all_field, first, len(windows) // 4, 0, 0, 0])
            value += 1
        elif op.code == "d":
            fields += (tag + b"m", tag + b"o")  # newest time; the member while it is the only one
            pointers += [(len(rows), 4), (len(rows), 7)]  # its name, its windows
            meta, nwin = len(fields) - 1, len(op.windows)
            rows.append(["d", value, op.ttl, meta, len(extra), int(op.has_all), op.cap, len(extra) + 1, nwin])
            extra.append(":" + op.counter)
            extra += [x for window in op.windows for x in window]
            value += 2
        else:
            fields.append(tag + b"l")
            pointers.append((len(rows), 5))  # its gaps
            rows.append(["i", value, op.ttl, len(fields), len(op.windows), len(extra), 0, 0, 0])
            fields += [tag + b"d" + bytes((j,)) for j in range(1, len(op.windows) + 1)]
            extra += [gap for gap, _, _ in op.windows]
            value += 1
    base = 4 + len(fields) + len(windows) + 9 * len(rows) + 1  # the P index of extra[0]
    for row, column in pointers:
        index = rows[row][column]
        assert isinstance(index, int)
        rows[row][column] = base + index
    values_format = "<" + "".join(_VALUE_FORMATS[op.code][0] for op in ops)
    items: list[_Item] = [values_format, len(fields), len(windows) // 4, len(rows), *fields, *windows]
    items += [item for row in rows for item in row]
    python_format = "<" + "".join(_VALUE_FORMATS[op.code][1] for op in ops)
    return _numbered(ops, [*items, *extra], python_format, tuple(name for op in ops for name in op.names), numbers)


def _undo_segment(ops: list[_Op], mark: str, numbers: dict[tuple[_Item, ...], int]) -> _Segment:
    items: list[_Item] = ["<" + "l" * len(ops), mark, *(item for op in ops for item in ("u", op.tag + b"a"))]
    return _numbered(ops, items, "<" + "q" * len(ops), tuple(op.all_name for op in ops), numbers)


class CounterStore:
    """Declared counters over redis.asyncio (a `Redis` or a `RedisCluster`)."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        spec: CounterSpec,
        hasher: KeyHasher,
        *,
        max_future_skew_seconds: float = DEFAULT_FUTURE_SKEW_SECONDS,
    ) -> None:
        """`max_future_skew_seconds`: how far ahead of the server's clock validation lets
        `occurred_at` be (settings.max_future_skew_seconds); TTLs absorb it."""
        if not 0 <= max_future_skew_seconds <= 86400:
            raise ValueError("max_future_skew_seconds must be between 0 and 86400")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        # A single Redis: exchanges ride the client's multiplexed connection (`service.redis.mux`);
        # where it does not apply (TLS, RESP3), connections held from the client's pool.
        self._mux: Multiplexer | None = None
        self._held: HeldConnections | None = None
        self._encode_other: Any = None  # what a DirectPipeline packs arguments other than bytes, str, int with
        if isinstance(client, Redis):
            self._encode_other = client.get_encoder().encode  # type: ignore[no-untyped-call]  # a new Encoder per call
            try:
                self._mux = Multiplexer.for_client(client)
            except Unsupported:
                self._held = held_connections(client)
        self._hasher = hasher
        self._key_prefix = f"{hasher.prefix}:c2:{{".encode()
        self._skew = math.ceil(max_future_skew_seconds)
        self.spec = spec
        numbers: dict[tuple[_Item, ...], int] = {}
        self._plans = {kind: self._compile(kind, numbers) for kind in EventKind}
        programs = sorted((number, items) for items, number in numbers.items())
        generated = "program = function(id)\n" + (_dispatch(programs) if programs else "") + "\nend\n"
        self.script = TEMPLATE.replace(_PROGRAMS_MARK, generated, 1)
        """The Lua script: lua/observe.lua with this counter file's programs compiled in."""
        self.script_sha = hashlib.sha1(self.script.encode("utf-8"), usedforsecurity=False).hexdigest()
        self._sha = self.script_sha.encode("ascii")

    # --- compiling the counter file, once --------------------------------------------------

    def _op(self, counter: Counter, kind: EventKind, names: tuple[str, ...], primary: bool) -> _Op:
        sign = 0
        if primary and kind in counter.on:
            sign = 1
        elif primary and kind in counter.decrement_on:
            sign = -1
        tag = counter_tag(counter.name)
        # The script takes the longest window first (its new buckets raise the TTL and
        # prune distinct sets) and returns values in the order it takes them, `all` last.
        bucketed = sorted((w for w in counter.windows if not w.all_time), key=lambda w: -w.seconds)
        has_all = any(w.all_time for w in counter.windows)
        name_of = dict(zip((w.label for w in counter.windows), names, strict=True))
        ordered = tuple(name_of[w.label] for w in bucketed) + tuple(
            name_of[w.label] for w in counter.windows if w.all_time
        )
        ttls = [int(ttl_seconds(w.seconds, w.granularity, self._skew)) for w in bucketed]
        key_ttl = counter.retain_seconds if has_all else max(ttls, default=0)
        member_field = counter.field if counter.aggregate is Aggregate.DISTINCT else None
        windows: tuple[tuple[int, int, int], ...]
        if counter.aggregate is Aggregate.IDLE_DAYS:
            code = "i"
            windows = tuple((w.seconds, 0, 0) for w in counter.windows)
            key_ttl = counter.retain_seconds + _DAY  # raised once a day
            ordered = names
        else:
            code = "d" if counter.aggregate is Aggregate.DISTINCT else "c"
            windows = tuple((w.granularity, w.buckets, ttl) for w, ttl in zip(bucketed, ttls, strict=True))
        all_names = [name_of[w.label] for w in counter.windows if w.all_time]
        return _Op(
            counter=counter.name,
            code=code,
            tag=tag,
            ttl=key_ttl,
            has_all=has_all,
            windows=windows,
            cap=counter.exact_up_to,
            names=ordered,
            sign=sign,
            amount_field=counter.field if counter.aggregate is Aggregate.SUM else None,
            member_field=member_field,
            member_is_id=member_field is not None and FIELDS[member_field].type is FieldType.IDENTIFIER,
            member_domain=field_domain(member_field) if member_field else "",
            retract=sign > 0 and (bool(counter.decrement_on) or counter.undo_on_block) and code == "c" and has_all,
            all_name=all_names[0] if all_names else "",
        )

    def _compile(self, kind: EventKind, numbers: dict[tuple[_Item, ...], int]) -> tuple[_Group, ...]:
        groups: dict[tuple[str, ...], tuple[Key, list[_Op]]] = {}

        def add(key: Key, op: _Op) -> None:
            fields = key.fields(kind)
            assert fields is not None
            groups.setdefault(fields, (key, []))[1].append(op)

        for counter in self.spec.counters:
            if kind in counter.read_on:
                add(counter.key, self._op(counter, kind, counter.names(), primary=True))
            for alias in counter.read_as:
                if kind in alias.read_on:
                    add(alias.key, self._op(counter, kind, counter.names(alias.name), primary=False))
        out: list[_Group] = []
        for index, (fields, (key, ops)) in enumerate(groups.items()):
            # One segment reads its fields once, before writing: a counter met twice under
            # one key (read_as with the counter's own key) starts another segment.
            segments: list[list[_Op]] = [[]]
            for op in ops:
                if any(other.tag == op.tag for other in segments[-1]):
                    segments.append([])
                segments[-1].append(op)
            undo = [op for op in ops if op.retract]
            parts = tuple(
                (field, FIELDS[field].type is FieldType.IDENTIFIER, domain)
                for field, domain in zip(fields, key.domains, strict=True)
            )
            out.append(
                _Group(
                    parts=parts,
                    segments=tuple(_segment(ops, numbers) for ops in segments),
                    undo=_undo_segment(undo, f":{kind.value}:{index}", numbers) if undo else None,
                )
            )
        return tuple(out)

    # --- the split API: prepare, queue, read ------------------------------------------------

    def value_names(self, kind: EventKind) -> frozenset[str]:
        """Every value name an event of `kind` may be given (absent ones: key fields missing)."""
        return frozenset(name for group in self._plans[kind] for s in group.segments for name in s.names)

    def prepare(
        self,
        *,
        occurred_at: datetime,
        kind: EventKind,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        updates: Collection[str],
    ) -> CounterPlan:
        """The calls that update the counters named in `updates` (see `counters_to_update`) and
        read every value this event can read. Pure: hashing and packing, no I/O. Names in
        `updates` that the event's kind does not update are ignored."""
        if occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")
        hasher = self._hasher
        calls: list[_Call] = []
        undo: list[_Call] = []
        for group in self._plans[kind]:
            parts: list[tuple[str, str]] = []
            for field, from_ids, domain in group.parts:
                raw = ids.get(field) if from_ids else facts.get(field)
                if raw is None or raw == "":
                    break
                parts.append((domain, str(raw)))
            else:
                entity = hasher.entity(parts)
                key = self._key_prefix + entity.encode("ascii") + b"}"
                increments: list[int] = []
                for segment in group.segments:
                    values: list[int | bytes] = []
                    for op in segment.ops:
                        update = op.sign != 0 and op.counter in updates
                        if op.code == "c":
                            amount = self._amount(op, facts) if update else 0
                            values.append(amount)
                            if op.retract:
                                increments.append(amount)
                        elif op.code == "d":
                            member = self._member(op, entity, facts, ids) if update else b""
                            values.append(1 if member else 0)
                            values.append(member)
                        else:
                            values.append(1 if update else 0)
                    calls.append((key, segment, segment.values.pack(*values)))
                if group.undo is not None and any(increments):
                    undo.append((key, group.undo, group.undo.values.pack(*increments)))
        return CounterPlan(kind, b"%d" % (occurred_at.timestamp() // 1), calls, undo)

    @staticmethod
    def _amount(op: _Op, facts: Mapping[str, Scalar]) -> int:
        """What an update adds: 1 for a count, the field for a sum, -1 for a decrement (a closure)."""
        if op.sign < 0 or op.amount_field is None:
            return op.sign
        raw = facts.get(op.amount_field)
        if raw is None or isinstance(raw, (bool, str)):
            return 0
        return max(0, round(raw))

    def _member(self, op: _Op, entity: str, facts: Mapping[str, Scalar], ids: Mapping[str, str]) -> bytes:
        assert op.member_field is not None
        member = ids.get(op.member_field) if op.member_is_id else facts.get(op.member_field)
        if member is None or member == "":
            return b""
        return self._hasher.member(entity, op.member_domain, str(member))

    @property
    def folds_claim(self) -> bool:
        """Whether `with_claim` is available: on a single Redis (a claim's key and an entity's
        counters may live on different nodes of a cluster)."""
        return not self._cluster

    def with_claim(self, plan: CounterPlan, *, key: bytes, mark: bytes, px: int) -> CounterPlan:
        """`plan`, whose call first claims request `key` for an attempt, in the same script call
        (single Redis only: `folds_claim`): if `key` holds a value (an earlier attempt's decision,
        or another attempt's pending mark) the call answers it and counts nothing (see
        `stored_claim`); else it sets `key` to `mark` for `px` ms and counts. The call is sent even
        when the event has no counters."""
        if self._cluster:
            raise ValueError("with_claim: a claim is a call of its own on Redis Cluster")
        return CounterPlan(plan.kind, b"%b|%d|%b" % (plan.header, px, mark), plan.calls, plan.undo, claim_key=key)

    @staticmethod
    def stored_claim(plan: CounterPlan | RetractPlan, replies: Sequence[Any]) -> bytes | None:
        """What a claiming plan's call found under the request's key (then nothing was counted),
        or None: the claim is this attempt's and `read` gives the values."""
        if isinstance(plan, CounterPlan) and plan.claim_key is not None and isinstance(replies[0], bytes):
            return replies[0]
        return None

    def queue(self, pipe: DirectPipeline | Pipeline | ClusterPipeline, plan: CounterPlan | RetractPlan) -> int:
        """Append the plan's EVALSHA(s) to `pipe` (its client's kind: Redis or RedisCluster);
        returns how many commands were queued (0 when the event has no counters and no claim)."""
        claim_key = plan.claim_key if isinstance(plan, CounterPlan) else None
        return self._queue(pipe, plan.header, plan.calls, claim_key)

    def _queue(
        self,
        pipe: DirectPipeline | Pipeline | ClusterPipeline,
        header: bytes,
        calls: list[_Call],
        claim_key: bytes | None = None,
    ) -> int:
        sha = self.script_sha
        if not calls and claim_key is None:
            return 0
        if isinstance(pipe, DirectPipeline):
            pipe.append_packed(self._pack(header, calls, claim_key), 1)
            return 1
        if isinstance(pipe, ClusterPipeline):
            for key, segment, values in calls:
                # execute_command: redis-py's cluster pipeline blocks its evalsha() method,
                # not the command, which it routes by the key's slot.
                pipe.execute_command("EVALSHA", sha, 1, key, header, segment.program, values)
            return len(calls)
        keys = [key for key, _, _ in calls] + ([claim_key] if claim_key is not None else [])
        args: list[bytes | str | int] = ["EVALSHA", sha, len(keys), *keys, header]
        for _, segment, values in calls:
            args += (segment.program, values)
        pipe.execute_command(*args)
        return 1

    def read(self, plan: CounterPlan | RetractPlan, replies: Sequence[Any]) -> dict[str, int | float]:
        """Every value of the plan, from the replies to the commands `queue` added (in order).
        Values whose key fields the event lacks are absent. Error replies (NOSCRIPT included:
        see `retry_noscript`) raise StoreUnavailable."""
        flat: list[Value] = []
        for reply in replies:
            if isinstance(reply, NoScriptError):
                raise StoreUnavailable("redis: NOSCRIPT, the counter script is not loaded (see retry_noscript)")
            if isinstance(reply, BaseException):
                raise StoreUnavailable(f"redis: {reply}") from reply
            if isinstance(reply, bytes):
                raise ValueError("read: the claim found a stored answer and nothing was counted (see stored_claim)")
            flat += reply
        names = plan.names()
        if len(flat) != len(names):
            raise StoreUnavailable(f"redis: the counter script returned {len(flat)} values, expected {len(names)}")
        return dict(zip(names, flat, strict=True))

    async def retry_noscript(self, plan: CounterPlan | RetractPlan, replies: Sequence[Any]) -> list[Any]:
        """`replies` (the plan's slice of a pipeline's replies) with every NOSCRIPT answer
        replaced by the answer of the same call sent again after loading the script. A NOSCRIPT
        call did not run, so this counts once. No I/O when there is no NOSCRIPT."""
        out = list(replies)
        missing = [i for i, reply in enumerate(out) if isinstance(reply, NoScriptError)]
        if not missing:
            return out
        try:
            await self._client.script_load(self.script)
            if len(out) == len(plan.calls):  # one EVALSHA per call (Redis Cluster)
                again = await self._send(plan.header, [[plan.calls[i]] for i in missing], combined=False)
                for i, reply in zip(missing, again, strict=True):
                    out[i] = reply
            elif len(out) == 1 and not self._cluster:  # one EVALSHA for the whole plan
                claim_key = plan.claim_key if isinstance(plan, CounterPlan) else None
                out[0] = (await self._send(plan.header, [plan.calls], combined=True, claim_key=claim_key))[0]
            else:
                raise ValueError(f"{len(out)} replies for a plan of {len(plan.calls)} calls")
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return out

    # --- active counts: undoing a blocked opening -------------------------------------------

    def prepare_retract(self, plan: CounterPlan, *, token: str | None = None) -> RetractPlan:
        """The undo of `plan`'s increments of counters with `decrement_on` (active counts), for a
        BLOCKed event: queue it (`queue_retract`) after the decision. Nothing else is touched.
        With a `token` (e.g. the request's idempotency key) it applies once per token for 48 h,
        however often it is sent; without, every send subtracts again (never below 0)."""
        header = b"-"
        if token is not None:
            header += self._hasher.entity((("retract", token),)).encode("ascii")
        return RetractPlan(header, plan.undo)

    def queue_retract(self, pipe: DirectPipeline | Pipeline | ClusterPipeline, retract: RetractPlan) -> int:
        """Append the retract's EVALSHA(s) to `pipe`; returns how many (0: nothing to undo)."""
        return self.queue(pipe, retract)

    def read_retract(self, retract: RetractPlan, replies: Sequence[Any]) -> dict[str, int | float]:
        """The active counts after the undo (`<counter>_all`), from its replies."""
        return self.read(retract, replies)

    # --- convenience: one call does it all ---------------------------------------------------

    async def load_script(self) -> None:
        """SCRIPT LOAD (on every primary of a cluster); optional, NOSCRIPT is handled anyway."""
        try:
            await self._client.script_load(self.script)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

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
        plan = self.prepare(occurred_at=occurred_at, kind=kind, facts=facts, ids=ids, updates=updates)
        return await self.run(plan)

    async def retract(self, retract: RetractPlan) -> dict[str, int | float]:
        """Send a retract on its own (see `prepare_retract`); the active counts after it."""
        return await self.run(retract)

    async def run(self, plan: CounterPlan | RetractPlan) -> dict[str, int | float]:
        """Send a plan on its own, in one round trip, and read it (not a claiming plan: its
        caller needs `stored_claim`, so it goes in the caller's pipeline)."""
        if isinstance(plan, CounterPlan) and plan.claim_key is not None:
            raise ValueError("run: a claiming plan goes in a pipeline (queue, stored_claim, read)")
        if not plan.calls:
            return {}
        calls = [plan.calls] if not self._cluster else [[call] for call in plan.calls]
        try:
            replies = await self._send(plan.header, calls, combined=not self._cluster)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return self.read(plan, await self.retry_noscript(plan, replies))

    async def _send(
        self, header: bytes, batches: list[list[_Call]], *, combined: bool, claim_key: bytes | None = None
    ) -> list[Any]:
        """One EVALSHA per batch; replies in order, error replies as exception objects."""
        if combined:
            packed = b"".join(self._pack(header, calls, claim_key) for calls in batches)
            return await self._exchange(packed, len(batches))
        pipe = self._client.pipeline(transaction=False)
        for calls in batches:
            self._queue(pipe, header, calls)
        return list(await pipe.execute(raise_on_error=False))

    # --- a single Redis: commands packed here, on connections the store holds ----------------

    def pipeline(self) -> DirectPipeline | ClusterPipeline:
        """A pipeline for the screening's shared round trip: on a single Redis a `DirectPipeline`
        (the same round trip as a redis-py pipeline for about a third of its CPU), on Redis
        Cluster the client's own pipeline."""
        if isinstance(self._client, RedisCluster):
            return self._client.pipeline(transaction=False)
        return DirectPipeline(self._exchange, self._encode_other)

    async def aclose(self) -> None:
        """Give the connections held for direct exchanges back to the client's pool. They are
        shared by every store on the client (a store dropped at a rules reload leaves nothing
        behind) and closed with the client anyway; this is for giving them back sooner. The
        multiplexed connection is the client's too, and stays open for the others."""
        if self._held is not None:
            assert isinstance(self._client, Redis)
            await self._held.release(self._client.connection_pool)

    async def _exchange(self, packed: bytes, count: int) -> list[Any]:
        """Send `packed` (`count` commands) and read the replies: on the client's multiplexed
        connection, or a held one."""
        if self._mux is not None:
            return await self._mux.exchange(packed, count)
        assert self._held is not None and isinstance(self._client, Redis)
        return await self._held.exchange(self._client.connection_pool, packed, count)

    def _pack(self, header: bytes, calls: list[_Call], claim_key: bytes | None = None) -> bytes:
        """EVALSHA sha n key.. [claim key] header (program values).. in RESP."""
        n = len(calls)
        keys = n + (claim_key is not None)
        chunks = [b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n" % (4 + 2 * n + keys, self._sha), _bulk(b"%d" % keys)]
        chunks += [_bulk(key) for key, _, _ in calls]
        if claim_key is not None:
            chunks.append(_bulk(claim_key))
        chunks.append(_bulk(header))
        for _, segment, values in calls:
            chunks.append(segment.resp_program)
            chunks.append(_bulk(values))
        return b"".join(chunks)
