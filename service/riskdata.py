"""Risk data in Redis for one screening: idempotency, counters, watchlists, the decision log.

Per request, in order:

1. **Claim** the request id (`rg:r:{<hash of institution and request_id>}`):
   a Lua script returns the stored decision of an earlier attempt, or marks
   this attempt as pending (short TTL, so a crashed attempt does not block
   retries for long). A retry of a decided request gets that decision back,
   marked `replayed`, and counts nothing; a retry racing an attempt still in
   flight waits for its decision.
2. **Counters and watchlists**: the counter scripts and the list look-ups
   go out together (see `service.counters.store`, `service.lists`).
3. **Record**: the decision under the request id (for retries, for
   `RISKGATE_IDEMPOTENCY_HOURS`) and an entry in the decision log stream,
   in one pipelined round trip.

Degraded, never silent: each round trip has a budget
(`RISKGATE_REDIS_BUDGET_MS`, shortened to fit the caller's deadline). When
Redis is unreachable, errs or is over budget, the screening goes on without
the data: counters and list hits are absent, so rules that need them do not
fire (three-valued logic), the decision is marked `degraded`, and the fail
policy adds its reason (`RISKGATE_FAIL_POLICY`: warn, or block to fail
closed). After `BREAKER_FAILURES` failures in a row Redis is not asked at
all for `BREAKER_OPEN_SECONDS` (then one request probes it), so an outage
costs requests nothing but the fail policy. Decision-log entries that could
not be written are kept in memory (at most `PENDING_LOG_LIMIT`) and written
when Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from service.clock import Clock
from service.counters.keys import KeyHasher
from service.counters.spec import CounterSpec, Predicate, counters_to_update
from service.counters.store import CounterStore
from service.decisions import LOG_STREAM, decode_decision, encode_decision, log_entry
from service.domain import Decision, ScreenRequest
from service.errors import InFlight, StoreUnavailable
from service.facts import Scalar
from service.lists import Watchlists
from service.screening import Observation

log = logging.getLogger("riskgate.riskdata")

BREAKER_FAILURES = 3
BREAKER_OPEN_SECONDS = 1.0
PENDING_LOG_LIMIT = 100_000
PENDING_CLAIM_MS = 10_000
_PENDING = b"\x00pending"
_RETRY_POLL_SECONDS = 0.005


# Returns the stored decision, or claims the request as pending and returns nil.
_CLAIM = """
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


@dataclass(frozen=True, slots=True)
class RiskDataConfig:
    budget_seconds: float = 0.010
    idempotency_ms: int = 25 * 3600 * 1000
    log_maxlen: int = 1_000_000


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

    def success(self) -> None:
        self._failures = 0

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._limit:
            self._open_until = self._clock.monotonic() + self._open_seconds


class RedisRiskData:
    def __init__(
        self,
        *,
        client: Any,
        counters: CounterStore,
        counter_spec: CounterSpec,
        lists: Watchlists,
        hasher: KeyHasher,
        clock: Clock,
        config: RiskDataConfig,
        where: Predicate,
    ) -> None:
        self._client = client
        self._counters = counters
        self._spec = counter_spec
        self._lists = lists
        self._hasher = hasher
        self._clock = clock
        self._config = config
        self._where = where
        self.breaker = CircuitBreaker(clock)
        self._claim_sha: str | None = None
        self._pending_log: deque[dict[str, str]] = deque(maxlen=PENDING_LOG_LIMIT)

    # --- the screening path ---------------------------------------------------

    def _budget(self, deadline: float | None) -> float:
        budget = self._config.budget_seconds
        if deadline is not None:
            # Leave room to answer: rules and the reply take well under a millisecond.
            budget = min(budget, max(0.0, deadline - self._clock.monotonic() - 0.002))
        return budget

    def request_key(self, request: ScreenRequest) -> str:
        entity = self._hasher.entity((("institution", request.outlet.institution_id), ("request", request.request_id)))
        return f"{self._hasher.prefix}:r:{{{entity}}}"

    async def _bounded(self, work: Any, deadline: float | None) -> Any:
        if not self.breaker.allow():
            raise StoreUnavailable("redis: circuit open after repeated failures")
        try:
            result = await asyncio.wait_for(work, timeout=self._budget(deadline))
        except (RedisError, OSError, TimeoutError, StoreUnavailable) as error:
            self.breaker.failure()
            if isinstance(error, StoreUnavailable):
                raise
            raise StoreUnavailable(f"redis: {type(error).__name__}: {error}") from error
        self.breaker.success()
        return result

    async def _claim(self, key: str) -> bytes | None:
        for _ in (1, 2):
            if self._claim_sha is None:
                self._claim_sha = str(await self._client.script_load(_CLAIM))
            try:
                stored = await self._client.evalsha(self._claim_sha, 1, key, _PENDING, PENDING_CLAIM_MS)
            except NoScriptError:
                self._claim_sha = None
                continue
            return stored if isinstance(stored, bytes) else None
        raise StoreUnavailable("redis: the claim script could not be loaded")

    async def _await_other_attempt(self, key: str, deadline: float | None) -> Decision:
        """Another attempt of this request holds the claim: wait (within the budget) for its decision."""
        give_up = self._clock.monotonic() + max(self._config.budget_seconds * 50, 0.5)
        if deadline is not None:
            give_up = min(give_up, deadline - 0.002)
        while self._clock.monotonic() < give_up:
            await asyncio.sleep(_RETRY_POLL_SECONDS)
            stored = await self._bounded(self._client.get(key), deadline)
            if stored is not None and stored != _PENDING:
                return decode_decision(stored)
        raise InFlight("a screening with this request_id is still in progress; retry shortly")

    async def observe(
        self,
        request: ScreenRequest,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        list_checks: Collection[tuple[str, str]],
        deadline: float | None = None,
    ) -> Observation:
        key = self.request_key(request)
        try:
            stored = await self._bounded(self._claim(key), deadline)
        except StoreUnavailable as error:
            log.warning("risk data unavailable: %s", error, extra={"fields": {"step": "claim"}})
            return Observation(degraded=True)
        if stored is not None:
            if stored == _PENDING:
                return Observation(previous=await self._await_other_attempt(key, deadline))
            return Observation(previous=decode_decision(stored))

        updates = counters_to_update(self._spec, request.kind, facts, self._where)
        values: dict[str, str] = {**{k: v for k, v in facts.items() if isinstance(v, str)}, **ids}
        plan = self._lists.plan(list_checks, values)
        try:
            counters, hits = await self._bounded(self._read(request, facts, ids, updates, plan), deadline)
        except StoreUnavailable as error:
            log.warning("risk data unavailable: %s", error, extra={"fields": {"step": "counters"}})
            return Observation(degraded=True, claimed=True)
        return Observation(counters=counters, list_hits=hits, claimed=True)

    async def _read(
        self,
        request: ScreenRequest,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        updates: Collection[str],
        plan: Mapping[str, list[tuple[str, str]]],
    ) -> tuple[dict[str, int | float], dict[tuple[str, str], bool]]:
        async def lookups() -> dict[tuple[str, str], bool]:
            if not plan:
                return {}
            pipe = self._client.pipeline(transaction=False)
            self._lists.queue_lookups(pipe, plan)
            return self._lists.read_lookups(plan, await pipe.execute(), request.occurred_at)

        counters, hits = await asyncio.gather(
            self._counters.observe(
                occurred_at=request.occurred_at, kind=request.kind, facts=facts, ids=ids, updates=updates
            ),
            lookups(),
        )
        return counters, hits

    async def record(self, request: ScreenRequest, decision: Decision, observation: Observation) -> None:
        """Keep the decision for retries and log it; never fails the screening."""
        entry = log_entry(
            request,
            decision,
            subject_hash=self._hasher.identifier("person.id_number", request.subject.id_number),
            counters=observation.counters,
            list_hits=observation.list_hits,
        )
        if not self.breaker.allow():
            self._keep_for_later(entry)
            return
        try:
            await self._bounded(self._write(request, decision, entry, observation.claimed), None)
        except StoreUnavailable as error:
            log.warning("decision not recorded yet: %s", error, extra={"fields": {"step": "record"}})
            self._keep_for_later(entry)

    async def _write(self, request: ScreenRequest, decision: Decision, entry: dict[str, str], claimed: bool) -> None:
        pipe = self._client.pipeline(transaction=False)
        if claimed:
            pipe.set(self.request_key(request), encode_decision(decision), px=self._config.idempotency_ms)
        while self._pending_log:
            pipe.xadd(self.log_key, self._pending_log.popleft(), maxlen=self._config.log_maxlen, approximate=True)
        pipe.xadd(self.log_key, entry, maxlen=self._config.log_maxlen, approximate=True)
        await pipe.execute()

    @property
    def log_key(self) -> str:
        return f"{self._hasher.prefix}:log:{LOG_STREAM}"

    def _keep_for_later(self, entry: dict[str, str]) -> None:
        if len(self._pending_log) == self._pending_log.maxlen:
            log.error("decision log buffer full: the oldest unwritten entry is dropped")
        self._pending_log.append(entry)

    @property
    def unwritten_log_entries(self) -> int:
        return len(self._pending_log)

    async def close(self) -> None:
        """Write what the log buffer holds, if Redis answers."""
        if self._pending_log:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                pipe = self._client.pipeline(transaction=False)
                while self._pending_log:
                    pipe.xadd(self.log_key, self._pending_log.popleft(), maxlen=self._config.log_maxlen)
                await asyncio.wait_for(pipe.execute(), timeout=2.0)
