"""Risk data in Redis for one screening: idempotency, counters, watchlists, the decision log.

Per request, in order:

1. **Claim** the request id (`rg:r:{<hash of institution and request_id>}`)
   and **count**: the stored decision of an earlier attempt comes back, and
   nothing is counted; or the request is marked as this attempt's (pending,
   short TTL, so a crashed attempt does not block retries for long) and the
   counters are updated and read. A retry of a decided request gets that
   decision back, marked `replayed`; a retry racing an attempt still in
   flight waits for its decision. Both only when it is the same request
   (its fingerprint, `service.riskdata.records.fingerprint_text`, is kept in the
   pending mark and the record): a different request under a used
   request_id is refused with `RequestIdReused` (ALREADY_EXISTS) and counts
   nothing. On a single Redis the claim is the first
   step of the counter script's call (`CounterStore.with_claim`), so claim,
   counters and watchlist look-ups are one round trip; on Redis Cluster the
   claim's key and the counters' live on different nodes, so the claim is a
   round trip of its own before the counters and look-ups.
2. **Record**: the decision under the request id (for retries, for
   `RISKGATE_IDEMPOTENCY_HOURS`; only if this attempt holds the claim, or
   nobody does), the undo of a BLOCKed opening's active counts, the rule
   breakers' count of the decision (service.riskdata.breakers: what it
   answers is how this process learns a rule was demoted or re-armed), and
   an entry in the decision log stream, in one pipelined round trip.

Both use the counter store's pipeline (`CounterStore.pipeline`): on a
single Redis a direct exchange on the process's multiplexed connection
(`service.redis.mux`), on Redis Cluster the client's pipeline.

**Batches** (`observe_many`, `record_many`: what a stream has sent): the
requests' commands go in one pipeline, in request order, so Redis runs each
request's counter script after the previous one's and its reads see their
counts, exactly as one at a time. What a request could only see after an
earlier one's *record* cannot be in the same exchange: `observe_many` stops
before a request_id already in the batch (a retry must find the first
attempt's decision) and before a request that reads counters an earlier
request's BLOCK would take back (active counts), and answers that prefix; the
screener records it and observes the rest after. One budget bounds each
batch's exchange, and a failure degrades every request in it, as it would
each alone. A rule breaker tripped by a decision demotes its rule from the
next batch on (as with concurrent requests).

Degraded, never silent: each round trip has a budget
(`RISKGATE_REDIS_BUDGET_MS`, shortened to fit the caller's deadline). When
Redis is unreachable, errs or is over budget, the screening goes on without
the data: counters and list hits are absent, so rules that need them do not
fire (three-valued logic), the decision is marked `degraded`, and the fail
policy adds its reason (`RISKGATE_FAIL_POLICY`: warn, or block to fail
closed). After `BREAKER_FAILURES` failures in a row Redis is not asked at
all for `BREAKER_OPEN_SECONDS` (then one request probes it), so an outage
costs requests nothing but the fail policy. Decision-log entries that could
not be written go to the decision log's backlog (`service.riskdata.decision_log`):
spooled to disk, written exactly once by a background task when Redis answers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from service.clock import Clock
from service.domain import Decision, EventKind, Outcome, ScreenRequest
from service.errors import InFlight, RequestIdReused, RiskgateError, StoreLate, StoreUnavailable
from service.logs import Throttled
from service.pipeline.breakers import BreakerWatch, blocked_by
from service.pipeline.facts import Scalar
from service.pipeline.screening import Decided, Observation, Sighting
from service.pipeline.turns import share_loop
from service.redis.keys import KeyHasher
from service.riskdata.breakers import COUNT as BREAKER_COUNT
from service.riskdata.breakers import BreakerCalls, RuleBreakers, watches_by_kind
from service.riskdata.counters.model import CounterSpec, Predicate, counters_to_update
from service.riskdata.counters.store import CounterPlan, CounterStore, RetractPlan
from service.riskdata.decision_log import LOG_ONCE, DecisionLog, DecisionLogConfig, LogEntry
from service.riskdata.lists import ListSpec
from service.riskdata.records import (
    LOG_STREAM,
    decode_record,
    encode_record,
    fingerprint_text,
    history_ids,
    log_entry,
)
from service.riskdata.tallies import clerk_ref
from service.riskdata.watchlists import Watchlists

log = logging.getLogger("riskgate.riskdata")

BREAKER_FAILURES = 3
BREAKER_OPEN_SECONDS = 1.0
PENDING_CLAIM_MS = 10_000
_PENDING = b"\x00pending:"  # followed by the request's fingerprint, ":" and the attempt's token
_RETRY_POLL_SECONDS = 0.005
T = TypeVar("T")


# Redis Cluster: returns the stored decision (or another attempt's pending mark),
# or claims the request for this attempt (ARGV[1], its pending mark) and returns
# nil. (On a single Redis the counter script does this: `CounterStore.with_claim`.)
_CLAIM = """
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# Stores the decision if this attempt holds the claim (ARGV[1]), or nobody does
# (a claim that timed out may or may not have reached Redis).
_RECORD = """
local stored = redis.call('GET', KEYS[1])
if stored and stored ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class _Attempt:
    """This attempt at a request, for `record`: its idempotency key, its request's fingerprint
    and what it counted."""

    key: str
    fingerprint: bytes
    counted: CounterPlan | None
    facts: Mapping[str, Scalar]  # the request's, for its log entry
    late: bool = False  # degraded over budget: its counters were sent and may have counted


@dataclass(frozen=True, slots=True)
class _Planned:
    """A request of a batch, ready to send: its claim and what it counts and looks up."""

    sighting: Sighting
    key: str
    fingerprint: bytes
    mark: bytes
    lookups: dict[str, list[tuple[str, str]]]
    plan: CounterPlan


@dataclass(frozen=True, slots=True)
class RiskDataConfig:
    budget_seconds: float = 0.010
    idempotency_ms: int = 25 * 3600 * 1000
    log_maxlen: int = 1_000_000
    log_dedupe_seconds: float = 3600.0
    log_backlog_limit: int = 200_000
    log_spool: Path | None = None  # None: unwritten entries are kept in memory only
    disposition_seconds: float = 90 * 86_400.0  # the decision index's life after its day
    index_every_decision: bool = False  # RISKGATE_DISPOSITION_INDEX=all
    # On a single Redis the claim rides the counter script's call (one round trip fewer); False
    # claims in a round trip of its own, as on Redis Cluster (`benchmarks.experiments` measures it).
    fold_claim: bool = True


class CircuitBreaker:
    """Stops asking a failing Redis for a while, so an outage does not cost every request a budget."""

    def __init__(self, clock: Clock, failures: int = BREAKER_FAILURES, open_seconds: float = BREAKER_OPEN_SECONDS):
        self._clock = clock
        self._limit = failures
        self._open_seconds = open_seconds
        self._failures = 0
        self._open_until = 0.0

    def allow(self) -> bool:
        return self._failures < self._limit or self._clock.monotonic() >= self._open_until

    @property
    def tripped(self) -> bool:
        """Failing: open, or letting requests probe after being open, until one succeeds."""
        return self._failures >= self._limit

    def success(self) -> None:
        self._failures = 0

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._limit:
            self._open_until = self._clock.monotonic() + self._open_seconds


class RiskDataStore:
    """The process-wide half of the risk data: the Redis client, the breaker, the log buffer.

    `for_rules` binds it to one rules bundle (counters, filters, watchlists
    from one set of files); a request uses the binding of the bundle it leased.
    """

    def __init__(
        self,
        *,
        client: Any,
        hasher: KeyHasher,
        clock: Clock,
        config: RiskDataConfig,
        max_future_skew_seconds: float,
        on_log_dropped: Callable[[int], None] | None = None,
        on_log_unverified: Callable[[int], None] | None = None,
        on_request_id_reused: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self._on_reused = on_request_id_reused
        self.hasher = hasher
        self.clock = clock
        self.config = config
        self.max_future_skew_seconds = max_future_skew_seconds
        self.breaker = CircuitBreaker(clock)
        # Rule breakers (not the circuit breaker above): what this process knows is demoted.
        self.breakers = RuleBreakers(client, hasher)
        # During an outage every request would log the same warning: one line per 5 s, with a count.
        self.warn = Throttled(log, 5.0, clock.monotonic)
        self.log = DecisionLog(
            client,
            DecisionLogConfig(
                stream_key=f"{hasher.prefix}:log:{LOG_STREAM}",
                maxlen=config.log_maxlen,
                dedupe_seconds=config.log_dedupe_seconds,
                backlog_limit=config.log_backlog_limit,
                spool_path=config.log_spool,
                index_seconds=config.disposition_seconds,
                index_every=config.index_every_decision,
            ),
            clock,
            on_dropped=on_log_dropped,
            on_unverified=on_log_unverified,
        )
        self._bound: dict[str, BoundRiskData] = {}
        # Attempt marks: unique per process (a random prefix) and attempt (a counter); a uuid4
        # each cost ~13 us.
        self._mark_prefix = os.urandom(8).hex().encode() + b":"
        self._marks = itertools.count()

    def for_rules(
        self,
        *,
        key: str,
        counter_spec: CounterSpec,
        where: Predicate,
        lists: Mapping[str, ListSpec],
        breakers: tuple[BreakerWatch, ...] = (),
    ) -> BoundRiskData:
        """The binding for a rules bundle identified by `key` (its content hash), made once;
        `breakers`: its rules with breakers (`RuleSet.breaker_watches`)."""
        bound = self._bound.get(key)
        if bound is None:
            counters = CounterStore(
                self.client, counter_spec, self.hasher, max_future_skew_seconds=self.max_future_skew_seconds
            )
            bound = BoundRiskData(
                self, counters, counter_spec, where, Watchlists(self.client, self.hasher, lists), breakers
            )
            # Keep the newest few: a request may still hold the previous bundle during a reload.
            while len(self._bound) >= 4:
                del self._bound[next(iter(self._bound))]
            self._bound[key] = bound
        return bound

    # --- budgets and the breaker ------------------------------------------------

    def budget(self, deadline: float | None) -> float:
        budget = self.config.budget_seconds
        if deadline is not None:
            # Leave room to answer: rules and the reply take well under a millisecond.
            budget = min(budget, max(0.0, deadline - self.clock.monotonic() - 0.002))
        return budget

    async def bounded(self, work: Awaitable[T], deadline: float | None) -> T:
        """`work` within the budget, or StoreUnavailable; feeds the circuit breaker."""
        if not self.breaker.allow():
            if asyncio.iscoroutine(work):
                work.close()
            raise StoreUnavailable("redis: circuit open after repeated failures")
        try:
            # asyncio.timeout rather than wait_for, which wraps the work in a Task per call
            # (measured end to end: 1.04x, within noise, but never worse).
            async with asyncio.timeout(self.budget(deadline)):
                result: T = await work
        except (RedisError, OSError, TimeoutError, StoreUnavailable) as error:
            self.breaker.failure()
            if isinstance(error, StoreUnavailable):
                raise
            if isinstance(error, TimeoutError):
                raise StoreLate(f"redis: {type(error).__name__}: {error}") from error
            raise StoreUnavailable(f"redis: {type(error).__name__}: {error}") from error
        self.breaker.success()
        return result

    # --- idempotency --------------------------------------------------------------

    def attempt_mark(self, fingerprint: bytes) -> bytes:
        """A new attempt's pending mark: what its claim stores until its decision replaces it."""
        return b"%b%b:%b%d" % (_PENDING, fingerprint, self._mark_prefix, next(self._marks))

    def fingerprint(self, request: ScreenRequest) -> bytes:
        """The keyed hash of what makes `request` the same request (`fingerprint_text`)."""
        return self.hasher.entity((("request", fingerprint_text(request)),)).encode("ascii")

    def check_same(self, stored_fingerprint: bytes | None, fingerprint: bytes) -> None:
        """Refuse a request_id already used for a different request (a legacy record without a
        fingerprint passes)."""
        if stored_fingerprint is not None and stored_fingerprint != fingerprint:
            if self._on_reused is not None:
                self._on_reused()
            raise RequestIdReused(
                "request_id was already used for a different request (only a retry of the same request,"
                " with every field but occurred_at unchanged, may reuse it); send this one with a new request_id"
            )

    def request_key(self, request: ScreenRequest) -> str:
        entity = self.hasher.entity((("institution", request.outlet.institution_id), ("request", request.request_id)))
        return f"{self.hasher.prefix}:r:{{{entity}}}"

    async def await_other_attempt(self, key: str, fingerprint: bytes, deadline: float | None) -> Decision:
        """Another attempt of this request holds the claim: wait (within limits) for its decision."""
        now = self.clock.monotonic()
        give_up = now + max(self.config.budget_seconds * 50, 0.5)
        if deadline is not None:
            # Give up early enough for ABORTED ("retry shortly") to reach the caller before its
            # deadline does: 50 ms, or a quarter of what is left when that is less.
            give_up = min(give_up, deadline - min(0.05, (deadline - now) / 4))
        while self.clock.monotonic() < give_up:
            await asyncio.sleep(_RETRY_POLL_SECONDS)
            stored = await self.bounded(cast(Awaitable[bytes | None], self.client.get(key)), deadline)
            if stored is not None and not stored.startswith(_PENDING):
                stored_fingerprint, decision = decode_record(stored)
                self.check_same(stored_fingerprint, fingerprint)
                return decision
        raise InFlight("a screening with this request_id is still in progress; retry shortly")

    # --- the decision log -----------------------------------------------------------

    @property
    def log_key(self) -> str:
        return self.log.config.stream_key

    async def close(self, budget_seconds: float = 2.0) -> int:
        """Write what the decision log's backlog holds, if Redis answers in time; the entries left
        (kept in the spool for the next start)."""
        return await self.log.close(budget_seconds)


class BoundRiskData:
    """The risk data of one rules bundle: implements `service.pipeline.screening.RiskData`."""

    def __init__(
        self,
        store: RiskDataStore,
        counters: CounterStore,
        counter_spec: CounterSpec,
        where: Predicate,
        lists: Watchlists,
        breakers: tuple[BreakerWatch, ...] = (),
    ) -> None:
        self._store = store
        self._counters = counters
        self._spec = counter_spec
        self._where = where
        self._lists = lists
        self._watches = watches_by_kind(breakers)
        self._breaker_plans = {kind: store.breakers.prepare(watches) for kind, watches in self._watches.items()}
        self._demoted: dict[EventKind, frozenset[str]] = {}
        self._demoted_version = -1
        self._folds_claim = store.config.fold_claim and counters.folds_claim

    def _demoted_for(self, kind: EventKind) -> frozenset[str]:
        """The rules guarding `kind` that are demoted now, as far as this process knows."""
        breakers = self._store.breakers
        if breakers.version != self._demoted_version:
            self._demoted = {k: breakers.demoted_ids(watches) for k, watches in self._watches.items()}
            self._demoted_version = breakers.version
        return self._demoted.get(kind, frozenset())

    async def observe(
        self,
        request: ScreenRequest,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        list_checks: Collection[tuple[str, str]],
        deadline: float | None = None,
    ) -> Observation:
        """`observe_many` of one request; its error raised."""
        (observation,) = await self.observe_many([Sighting(request, facts, ids, list_checks)], deadline)
        if isinstance(observation, RiskgateError):
            raise observation
        return observation

    async def observe_many(
        self, sightings: Sequence[Sighting], deadline: float | None = None
    ) -> list[Observation | RiskgateError]:
        """See `service.pipeline.screening.RiskData.observe_many` and the module's doc."""
        store = self._store
        planned = await self._plan_batch(sightings)
        observed: list[Observation | RiskgateError | None] = [None] * len(planned)
        counting = list(range(len(planned)))
        if not self._folds_claim:
            try:
                claims = await store.bounded(self._claim([(p.key, p.mark) for p in planned]), deadline)
            except StoreUnavailable as error:
                store.warn.warning("risk data unavailable: %s", error, fields={"step": "claim"})
                return [self._degraded(p, late=False) for p in planned]
            counting = [i for i, stored in enumerate(claims) if stored is None]
            for i, stored in enumerate(claims):
                if stored is not None:
                    observed[i] = await self._answered(stored, planned[i], deadline)
        try:
            reads = await store.bounded(self._read([planned[i] for i in counting]), deadline)
        except StoreUnavailable as error:
            store.warn.warning("risk data unavailable: %s", error, fields={"step": "counters"})
            # Over budget, the counter scripts were sent and may still run: the log says so, for replays.
            late = isinstance(error, StoreLate)
            for i in counting:
                observed[i] = self._degraded(planned[i], late=late)
            return [o for o in observed if o is not None]
        for i, read in zip(counting, reads, strict=True):
            p = planned[i]
            if isinstance(read, StoreUnavailable):
                store.breaker.failure()
                store.warn.warning("risk data unavailable: %s", read, fields={"step": "counters"})
                observed[i] = self._degraded(p, late=False)
                continue
            stored, counters, hits = read
            if stored is not None:
                observed[i] = await self._answered(stored, p, deadline)
                continue
            observed[i] = Observation(
                counters=counters,
                list_hits=hits,
                claim=p.mark,
                plan=_Attempt(p.key, p.fingerprint, p.plan, p.sighting.facts),
                demoted=self._demoted_for(p.sighting.request.kind),
            )
        return [o for o in observed if o is not None]

    async def _plan_batch(self, sightings: Sequence[Sighting]) -> list[_Planned]:
        """The claims and plans of the longest prefix of `sightings` (at least one) in which no
        request must see an earlier one's record: the module's doc says which."""
        store = self._store
        planned: list[_Planned] = []
        keys: set[str] = set()
        taken_back: set[bytes] = set()  # counter keys a BLOCK of an earlier request would retract
        for done, sighting in enumerate(sightings, 1):
            await share_loop(done)
            request = sighting.request
            key = store.request_key(request)
            lookups, plan = self._plan(request, sighting.facts, sighting.ids, sighting.list_checks)
            if planned and (key in keys or any(counted in taken_back for counted, _, _ in plan.calls)):
                break
            keys.add(key)
            taken_back.update(counted for counted, _, _ in plan.undo)
            fingerprint = store.fingerprint(request)
            mark = store.attempt_mark(fingerprint)
            if self._folds_claim:
                plan = self._counters.with_claim(plan, key=key.encode(), mark=mark, px=PENDING_CLAIM_MS)
            planned.append(_Planned(sighting, key, fingerprint, mark, lookups, plan))
        return planned

    def _degraded(self, planned: _Planned, *, late: bool) -> Observation:
        attempt = _Attempt(planned.key, planned.fingerprint, None, planned.sighting.facts, late=late)
        return Observation(
            degraded=True, claim=planned.mark, plan=attempt, demoted=self._demoted_for(planned.sighting.request.kind)
        )

    def rehearse(
        self,
        request: ScreenRequest,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        list_checks: Collection[tuple[str, str]],
        decision: Decision,
    ) -> None:
        """Everything `observe` and `record` compute for `request`, without sending it: the warm-up
        before SERVING pays first-use costs here, and Redis is left as it was."""
        _, plan = self._plan(request, facts, ids, list_checks)
        if self._folds_claim:
            fingerprint = self._store.fingerprint(request)
            mark = self._store.attempt_mark(fingerprint)
            self._counters.with_claim(plan, key=b"warm-up", mark=mark, px=PENDING_CLAIM_MS)
        encode_record(b"warm-up", decision)
        self._log_entry(request, decision, ids, facts, {}, {}).to_line()

    def _plan(
        self,
        request: ScreenRequest,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        list_checks: Collection[tuple[str, str]],
    ) -> tuple[dict[str, list[tuple[str, str]]], CounterPlan]:
        """The watchlist look-ups and the counter plan of a request (pure: nothing is sent)."""
        updates = counters_to_update(self._spec, request.kind, facts, self._where)
        values = {**{k: v for k, v in facts.items() if isinstance(v, str)}, **ids}
        lookups = self._lists.plan(list_checks, values)
        plan = self._counters.prepare(
            occurred_at=request.occurred_at, kind=request.kind, facts=facts, ids=ids, updates=updates
        )
        return lookups, plan

    def _log_entry(
        self,
        request: ScreenRequest,
        decision: Decision,
        ids: Mapping[str, str],
        facts: Mapping[str, Scalar],
        counters: Mapping[str, int | float],
        list_hits: Mapping[tuple[str, str], bool],
        late: bool = False,
        demoted: frozenset[str] = frozenset(),
    ) -> LogEntry:
        identifier = self._store.hasher.identifier
        subject = identifier("person.id_number", ids["person.id_number"])
        fields = log_entry(
            request,
            decision,
            subject_hash=subject,
            counters=counters,
            list_hits=list_hits,
            facts=facts,
            id_hashes=history_ids(ids, facts, identifier),
            late=late,
            demoted=demoted,
            clerk_ref=clerk_ref(identifier, request.outlet.clerk_id),
        )
        return LogEntry.of(fields, int(decision.decided_at.timestamp() * 1000))

    async def warm_up(self) -> None:
        """Connect and load the scripts a screening uses (nothing a rule can read is written).
        Raises StoreUnavailable when Redis does not answer: the service then starts degraded."""
        client = self._store.client
        try:
            async with asyncio.timeout(2.0):
                if not isinstance(client, RedisCluster):
                    pipe = self._counters.pipeline()
                    pipe.execute_command("PING")  # opens the multiplexed connection requests ride
                    await pipe.execute()
                for script in (_RECORD, _CLAIM, LOG_ONCE, BREAKER_COUNT):
                    await client.script_load(script)  # on Redis Cluster: on every primary
                await self._counters.load_script()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as error:
            raise StoreUnavailable(f"redis: {type(error).__name__}: {error}") from error

    async def _answered(self, stored: bytes, planned: _Planned, deadline: float | None) -> Observation | RiskgateError:
        """An earlier attempt's decision, or (when it is still deciding) the decision it makes; for
        a different request under the same request_id, RequestIdReused (nothing was counted)."""
        store = self._store
        try:
            if stored.startswith(_PENDING):
                store.check_same(stored[len(_PENDING) :].partition(b":")[0] or None, planned.fingerprint)
                return Observation(previous=await store.await_other_attempt(planned.key, planned.fingerprint, deadline))
            stored_fingerprint, decision = decode_record(stored)
            store.check_same(stored_fingerprint, planned.fingerprint)
        except RiskgateError as error:
            return error
        return Observation(previous=decision)

    async def _claim(self, claims: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        """For each (key, mark): the stored decision (or another attempt's pending mark), or None
        after claiming it; in one exchange.

        EVAL rather than EVALSHA: Redis caches the compiled script either way,
        and a restarted Redis can never answer NOSCRIPT.
        """
        pipe = self._counters.pipeline()
        for key, mark in claims:
            pipe.execute_command("EVAL", _CLAIM, 1, key, mark, PENDING_CLAIM_MS)
        found: list[bytes | None] = []
        for stored in await pipe.execute(raise_on_error=False):
            if isinstance(stored, BaseException):
                raise StoreUnavailable(f"redis: {stored}") from stored
            found.append(stored if isinstance(stored, bytes) else None)
        return found

    async def _read(
        self, batch: Sequence[_Planned]
    ) -> list[tuple[bytes | None, dict[str, int | float], dict[tuple[str, str], bool]] | StoreUnavailable]:
        """The claims (when the plans carry them), counters and watchlist look-ups of `batch` in
        one pipelined exchange, in order. For each request: what its claim found stored (then
        nothing was counted), or its values; or the StoreUnavailable of its error replies."""
        if not batch:
            return []
        pipe = self._counters.pipeline()
        spans: list[tuple[int, int]] = []
        for planned in batch:
            queued = self._counters.queue(pipe, planned.plan)
            self._lists.queue_lookups(pipe, planned.lookups)
            spans.append((queued, len(planned.lookups)))
        replies = await pipe.execute(raise_on_error=False)
        now = self._store.clock.now()
        out: list[tuple[bytes | None, dict[str, int | float], dict[tuple[str, str], bool]] | StoreUnavailable] = []
        at = 0
        for planned, (queued, looked_up) in zip(batch, spans, strict=True):
            lookup_replies = replies[at + queued : at + queued + looked_up]
            try:
                counter_replies = await self._counters.retry_noscript(planned.plan, replies[at : at + queued])
                for reply in lookup_replies:
                    if isinstance(reply, BaseException):
                        raise StoreUnavailable(f"redis: {reply}") from reply
                stored = self._counters.stored_claim(planned.plan, counter_replies)
                if stored is not None:
                    out.append((stored, {}, {}))
                else:
                    counters = self._counters.read(planned.plan, counter_replies)
                    # An entry matches while it has not expired at the time of the decision, as
                    # CheckEntry says (not at occurred_at: an event decided late is decided with
                    # what the lists say now, and an entry's value key lives on while another
                    # list holds the value).
                    out.append((None, counters, self._lists.read_lookups(planned.lookups, lookup_replies, now)))
            except StoreUnavailable as error:
                out.append(error)
            at += queued + looked_up
        return out

    async def record(
        self, request: ScreenRequest, decision: Decision, observation: Observation, ids: Mapping[str, str]
    ) -> None:
        """`record_many` of one decision."""
        facts = observation.plan.facts if isinstance(observation.plan, _Attempt) else {}
        await self.record_many([Decided(Sighting(request, facts, ids, ()), decision, observation)])

    async def record_many(self, decided: Sequence[Decided]) -> None:
        """For each decision, in order and in one exchange: keep it for retries, undo a blocked
        opening's active counts, count it for the rule breakers, and log it."""
        store = self._store
        logged: list[LogEntry] = []
        for done, one in enumerate(decided, 1):
            await share_loop(done)
            logged.append(self._logged(one))
        if not store.breaker.allow():
            for entry in logged:
                store.log.defer(entry, sent=False)
            return
        pipe = self._counters.pipeline()
        queued = []
        for done, (one, entry) in enumerate(zip(decided, logged, strict=True), 1):
            await share_loop(done)
            queued.append(self._queue_record(pipe, one, entry))
        try:
            replies = await store.bounded(pipe.execute(raise_on_error=False), None)
        except StoreUnavailable as error:
            store.warn.warning("decision not recorded yet: %s", error, fields={"step": "record"})
            for entry in logged:
                store.log.defer(entry, sent=True)
            return
        at = 0
        for entry, (commands, kept, retract, retracted, counted) in zip(logged, queued, strict=True):
            own = replies[at : at + commands]
            at += commands
            store.log.settle(entry, own[-1])
            try:
                if retract is not None:
                    # A NOSCRIPT retract did not run: load the script and send just it again.
                    await self._counters.retry_noscript(retract, own[kept : kept + retracted])
            except StoreUnavailable as error:
                store.warn.warning("blocked opening's counts not undone: %s", error, fields={"step": "retract"})
            counting = counted.count if counted is not None else 0
            if counted is not None:
                await store.breakers.settle(counted, own[-1 - counting : -1], store.budget(None))
            errors = [reply for reply in own[: len(own) - 1 - counting] if isinstance(reply, BaseException)]
            if errors and not all(isinstance(e, NoScriptError) for e in errors):
                store.warn.warning("decision not kept for retries: %s", errors[0], fields={"step": "record"})

    def _logged(self, decided: Decided) -> LogEntry:
        observation = decided.observation
        attempt = observation.plan if isinstance(observation.plan, _Attempt) else None
        request = decided.sighting.request
        return self._log_entry(
            request,
            decided.decision,
            decided.sighting.ids,
            attempt.facts if attempt is not None else {},
            observation.counters,
            observation.list_hits,
            attempt.late if attempt is not None else False,
            observation.demoted,
        )

    def _queue_record(
        self, pipe: Any, decided: Decided, logged: LogEntry
    ) -> tuple[int, int, RetractPlan | None, int, BreakerCalls | None]:
        """Queue one decision's record commands (the log entry's last); returns how many were
        queued, how many of them keep the decision, the retract and its count, and the breakers'
        calls (just before the log entry)."""
        store = self._store
        request, decision, observation = decided.sighting.request, decided.decision, decided.observation
        attempt = observation.plan if isinstance(observation.plan, _Attempt) else None
        start = len(pipe)
        kept = 0
        if observation.claim:
            key = attempt.key if attempt is not None else store.request_key(request)
            fingerprint = attempt.fingerprint if attempt is not None else store.fingerprint(request)
            record = encode_record(fingerprint, decision)
            pipe.execute_command("EVAL", _RECORD, 1, key, observation.claim, record, store.config.idempotency_ms)
            kept = 1
        retract: RetractPlan | None = None
        retracted = 0
        if decision.outcome is Outcome.BLOCK and attempt is not None and attempt.counted is not None:
            # A blocked opening never happened: it must not count as an account or SIM held.
            retract = self._counters.prepare_retract(attempt.counted, token=attempt.key)
            retracted = self._counters.queue_retract(pipe, retract)
        # The rule breakers count this decision in the same round trip, last but the log entry.
        breaker_plan = self._breaker_plans.get(request.kind)
        counted = None
        if breaker_plan is not None:
            at_ms = int(decision.decided_at.timestamp() * 1000)
            counted = store.breakers.queue(pipe, breaker_plan, blocked_by(decision.reasons), at_ms)
        store.log.queue(pipe, logged)
        return len(pipe) - start, kept, retract, retracted, counted
