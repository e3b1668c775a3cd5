"""The screening pipeline: validated request → risk data → rules → decision → record.

`Screener.screen` decides one request; `Screener.screen_many` decides several (what a stream has
sent) with one risk-data exchange for all their observations and one for all their records, as if
one at a time: the store observes a prefix that needs no earlier one's record (see
`RiskData.observe_many`), and the rest waits until that prefix is recorded. `screen` is a batch
of one.

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
from service.errors import InternalError, RiskgateError
from service.pipeline.breakers import demote
from service.pipeline.facts import Scalar, facts, identifiers
from service.pipeline.money import ExchangeRates
from service.pipeline.outcome import decide, unavailable_reason
from service.pipeline.turns import share_loop

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


@dataclass(frozen=True, slots=True)
class Sighting:
    """A request as the risk-data store counts it: its facts (at the rules' rates), its identifiers
    and the watchlist checks its rules make."""

    request: ScreenRequest
    facts: Mapping[str, Scalar]
    ids: Mapping[str, str]
    list_checks: Collection[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision to record, with what it was decided on."""

    sighting: Sighting
    decision: Decision
    observation: Observation


class RiskData(Protocol):
    async def observe_many(
        self, sightings: Sequence[Sighting], deadline: float | None = None
    ) -> Sequence[Observation | RiskgateError]:
        """Count the requests, in order, and read what their rules need, in one exchange; each
        request's reads see the counts of those before it. Answers a prefix of `sightings` (at least
        one): the store stops before a request that must see an earlier one's record (the same
        request_id again; counters an earlier one's BLOCK would take back), to be observed after
        the prefix is recorded. A request the store refuses (a request_id reused for another
        request, a retry whose first attempt is still deciding) has the error in its place.
        `deadline` is on the clock's monotonic scale."""
        ...

    async def record_many(self, decided: Sequence[Decided]) -> None:
        """Keep the decisions for retries and log them, in order, in one exchange. Never fails the
        screening."""
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
        (decided,) = await self.screen_many([request], deadline)
        if isinstance(decided, RiskgateError):
            raise decided
        return decided

    async def screen_many(
        self, requests: Sequence[ScreenRequest], deadline: float | None = None
    ) -> list[Decision | RiskgateError]:
        """Decide requests in order, exactly as one at a time would; a request refused (a currency
        without a rate, a request_id reused) has its error in its place."""
        started = self._clock.monotonic()
        decided: list[Decision | RiskgateError | None] = [None] * len(requests)
        with self._session() as session:
            rules, risk_data = session.rules, session.risk_data
            waiting: list[tuple[int, Sighting]] = []
            for index, request in enumerate(requests):
                try:
                    # Amounts at the rates of these rules; a currency without a rate is refused
                    # here, before anything is counted.
                    request_facts = facts(request, rules.rates)
                except RiskgateError as error:
                    decided[index] = error
                    continue
                sighting = Sighting(request, request_facts, identifiers(request), rules.list_checks_for(request.kind))
                waiting.append((index, sighting))
            while waiting:
                observations = await risk_data.observe_many([sighting for _, sighting in waiting], deadline)
                to_record: list[Decided] = []
                for done, ((index, sighting), observation) in enumerate(zip(waiting, observations, strict=False)):
                    await share_loop(done)
                    if isinstance(observation, RiskgateError):
                        decided[index] = observation
                    elif observation.previous is not None:
                        decided[index] = observation.previous
                    else:
                        decision = self._decide(rules, sighting.request, sighting.facts, observation, started)
                        to_record.append(Decided(sighting, decision, observation))
                        decided[index] = decision
                if to_record:
                    await risk_data.record_many(to_record)
                if not observations:
                    raise InternalError("the risk-data store observed none of the requests")
                waiting = waiting[len(observations) :]
        return [d if d is not None else InternalError("not decided") for d in decided]

    def _decide(
        self,
        rules: RuleEvaluator,
        request: ScreenRequest,
        request_facts: Mapping[str, Scalar],
        observation: Observation,
        started: float,
    ) -> Decision:
        # With data missing, counters and list hits are absent: rules that need them do not fire.
        reasons = list(rules.evaluate(request_facts, observation.counters, observation.list_hits))
        if observation.demoted:
            reasons = demote(reasons, observation.demoted)
        if observation.degraded:
            reasons.append(unavailable_reason(self._fail_outcome))
        return decide(
            request_id=request.request_id,
            decision_id=self._new_id(),
            kind=request.kind,
            reasons=reasons,
            ruleset_revision=rules.revision,
            degraded=observation.degraded,
            decided_at=self._clock.now(),
            evaluation_time=timedelta(seconds=self._clock.monotonic() - started),
        )
