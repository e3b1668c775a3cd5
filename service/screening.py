"""The screening pipeline: validated request → risk data → rules → decision → record.

Data flows one way. This module knows no protobuf and no Redis: the risk-data
store (counters, watchlists, idempotency, decision log) and the rule
evaluator are behind the two small interfaces below, and the clock is
injected.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from service.clock import Clock
from service.decision import decide
from service.domain import Decision, Outcome, Reason, ScreenRequest
from service.facts import Scalar, facts, identifiers

ListHits = Mapping[tuple[str, str], bool]
CounterValues = Mapping[str, int | float]


class RuleEvaluator(Protocol):
    """An immutable, compiled ruleset."""

    @property
    def revision(self) -> str: ...

    @property
    def list_checks(self) -> Collection[tuple[str, str]]:
        """(list name, identifier field) pairs the rules test, e.g. ('fraud_accounts', 'transfer.payee_account')."""
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
    claimed: bool = False  # this attempt holds the request_id: record() keeps its decision for retries


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

    async def record(self, request: ScreenRequest, decision: Decision, observation: Observation) -> None: ...


class Screener:
    def __init__(
        self,
        rules: Callable[[], RuleEvaluator],
        risk_data: RiskData,
        clock: Clock,
        fail_outcome: Outcome = Outcome.WARN,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._rules = rules  # called once per request: a reload swaps what it returns
        self._risk_data = risk_data
        self._clock = clock
        self._new_id = new_id
        self._fail_outcome = fail_outcome

    async def screen(self, request: ScreenRequest) -> Decision:
        started = self._clock.monotonic()
        ruleset = self._rules()
        request_facts = facts(request)
        observation = await self._risk_data.observe(request, request_facts, identifiers(request), ruleset.list_checks)
        if observation.previous is not None:
            return observation.previous
        reasons = ruleset.evaluate(request_facts, observation.counters, observation.list_hits)
        decision = decide(
            request_id=request.request_id,
            decision_id=self._new_id(),
            kind=request.kind,
            reasons=reasons,
            ruleset_revision=ruleset.revision,
            degraded=observation.degraded,
            decided_at=self._clock.now(),
            evaluation_time=timedelta(seconds=self._clock.monotonic() - started),
        )
        await self._risk_data.record(request, decision, observation)
        return decision


class NoRules:
    """The ruleset of an empty rules directory: nothing fires, every event is allowed."""

    revision = "empty"
    list_checks: Collection[tuple[str, str]] = frozenset()

    def evaluate(self, facts: Mapping[str, Scalar], counters: CounterValues, list_hits: ListHits) -> Sequence[Reason]:
        return ()


class NoRiskData:
    """A store that knows nothing and keeps nothing: for rulesets that read no counters or lists."""

    async def observe(
        self,
        request: ScreenRequest,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        list_checks: Collection[tuple[str, str]],
        deadline: float | None = None,
    ) -> Observation:
        return Observation()

    async def record(self, request: ScreenRequest, decision: Decision, observation: Observation) -> None:
        return None
