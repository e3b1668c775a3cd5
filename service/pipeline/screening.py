"""The screening pipeline: validated request → risk data → rules → decision → record.

Data flows one way. This module knows no protobuf and no Redis: the risk-data
store (counters, watchlists, idempotency, decision log) and the rule
evaluator are behind the two small interfaces below, and the clock is
injected.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from service.clock import Clock
from service.domain import Decision, EventKind, Outcome, Reason, ScreenRequest
from service.pipeline.breakers import demote
from service.pipeline.facts import Scalar, facts, identifiers
from service.pipeline.money import ExchangeRates
from service.pipeline.outcome import decide, unavailable_reason

ListHits = Mapping[tuple[str, str], bool]
CounterValues = Mapping[str, int | float]


class RuleEvaluator(Protocol):
    """An immutable, compiled ruleset."""

    @property
    def revision(self) -> str: ...

    @property
    def rates(self) -> ExchangeRates:
        """The exchange rates of the same rule files: facts are in CNY at these rates."""
        ...

    def list_checks_for(self, kind: EventKind) -> Collection[tuple[str, str]]:
        """(list name, field) pairs the rules on `kind` test, e.g. ('fraud_accounts', 'transfer.payee_account')."""
        ...

    def evaluate(self, facts: Mapping[str, Scalar], counters: CounterValues, list_hits: ListHits) -> Sequence[Reason]:
        """Every rule that fires for these facts, enforced and shadow alike."""
        ...


@dataclass(frozen=True, slots=True)
class Observation:
    """What the risk-data store knows about a request, read (and counted) in one round trip."""

    counters: CounterValues = field(default_factory=dict)
    list_hits: ListHits = field(default_factory=dict)
    degraded: bool = False
    previous: Decision | None = None  # the decision already made for this request_id
    claim: bytes = b""  # this attempt's claim on the request_id: record() keeps its decision for retries
    plan: object = None  # the risk-data store's record of what it counted, for record()
    # Rules demoted to shadow by their breakers (service.pipeline.breakers) at this decision: the
    # store's last known set, also when Redis is unavailable.
    demoted: frozenset[str] = frozenset()


class RiskData(Protocol):
    async def observe(
        self,
        request: ScreenRequest,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        list_checks: Collection[tuple[str, str]],
        deadline: float | None = None,
    ) -> Observation:
        """Count the request and read what the rules need; `deadline` is on the clock's monotonic scale."""
        ...

    async def record(
        self, request: ScreenRequest, decision: Decision, observation: Observation, ids: Mapping[str, str]
    ) -> None:
        """Keep the decision for retries and log it. Never fails the screening."""
        ...


class Session(Protocol):
    """The rules and risk data one request uses, from one consistent set of rule files."""

    @property
    def rules(self) -> RuleEvaluator: ...

    @property
    def risk_data(self) -> RiskData: ...


class Screener:
    def __init__(
        self,
        session: Callable[[], AbstractContextManager[Session]],
        clock: Clock,
        fail_outcome: Outcome = Outcome.WARN,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._session = session  # leased per request: a reload swaps what it yields
        self._clock = clock
        self._new_id = new_id
        self._fail_outcome = fail_outcome

    async def screen(self, request: ScreenRequest, deadline: float | None = None) -> Decision:
        """Decide one request. `deadline` (monotonic seconds) bounds the time spent waiting on risk data."""
        started = self._clock.monotonic()
        ids = identifiers(request)
        with self._session() as session:
            rules, risk_data = session.rules, session.risk_data
            # Amounts at the rates of these rules; a currency without a rate is refused here,
            # before anything is counted.
            request_facts = facts(request, rules.rates)
            observation = await risk_data.observe(
                request, request_facts, ids, rules.list_checks_for(request.kind), deadline
            )
            if observation.previous is not None:
                return observation.previous
            # With data missing, counters and list hits are absent: rules that need them do not fire.
            reasons = list(rules.evaluate(request_facts, observation.counters, observation.list_hits))
            if observation.demoted:
                reasons = demote(reasons, observation.demoted)
            if observation.degraded:
                reasons.append(unavailable_reason(self._fail_outcome))
            decision = decide(
                request_id=request.request_id,
                decision_id=self._new_id(),
                kind=request.kind,
                reasons=reasons,
                ruleset_revision=rules.revision,
                degraded=observation.degraded,
                decided_at=self._clock.now(),
                evaluation_time=timedelta(seconds=self._clock.monotonic() - started),
            )
            await risk_data.record(request, decision, observation, ids)
        return decision
