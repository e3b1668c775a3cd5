"""The pipeline's own logic, with in-memory stand-ins for the rules and the risk data (pure code)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from service.domain import Decision, EventKind, Outcome, Reason, ScreenRequest
from service.errors import RiskgateError
from service.pipeline.facts import Scalar
from service.pipeline.money import CNY_ONLY
from service.pipeline.outcome import UNAVAILABLE_RULE_ID
from service.pipeline.screening import CounterValues, Decided, ListHits, Observation, Screener, Sighting
from tests.unit.test_facts import EVENTS, OUTLET

AT = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return AT

    def monotonic(self) -> float:
        return 100.0


class Rules:
    revision = "test@1"
    rates = CNY_ONLY

    def list_checks_for(self, kind: EventKind) -> Collection[tuple[str, str]]:
        return {("fraud_accounts", "transfer.payee_account")} if kind is EventKind.TRANSFER else set()

    def evaluate(self, facts: Mapping[str, Scalar], counters: CounterValues, list_hits: ListHits) -> Sequence[Reason]:
        reasons = []
        if list_hits.get(("fraud_accounts", "transfer.payee_account")):
            reasons.append(Reason("T15", Outcome.BLOCK, "涉诈", "fraud"))
        if counters.get("payers_in_1h", 0) >= 5:
            reasons.append(Reason("T19", Outcome.WARN, "跑分", "mule"))
        return reasons


@dataclass
class RiskData:
    observation: Observation
    seen_checks: list[Collection[tuple[str, str]]] = field(default_factory=list)
    recorded: list[Decision] = field(default_factory=list)

    async def observe(
        self,
        request: ScreenRequest,
        facts: Mapping[str, Scalar],
        ids: Mapping[str, str],
        list_checks: Collection[tuple[str, str]],
        deadline: float | None = None,
    ) -> Observation:
        self.seen_checks.append(list_checks)
        return self.observation

    async def record(
        self, request: ScreenRequest, decision: Decision, observation: Observation, ids: Mapping[str, str]
    ) -> None:
        self.recorded.append(decision)

    async def observe_many(
        self, sightings: Sequence[Sighting], deadline: float | None = None
    ) -> Sequence[Observation | RiskgateError]:
        return [await self.observe(s.request, s.facts, s.ids, s.list_checks, deadline) for s in sightings]

    async def record_many(self, decided: Sequence[Decided]) -> None:
        for d in decided:
            await self.record(d.sighting.request, d.decision, d.observation, d.sighting.ids)


@dataclass
class Session:
    rules: Rules
    risk_data: RiskData


def screener(risk: RiskData, fail: Outcome = Outcome.WARN) -> Screener:
    @contextmanager
    def session() -> Iterator[Session]:
        yield Session(Rules(), risk)

    return Screener(session, FixedClock(), fail_outcome=fail, new_id=lambda: "decision-1")


TRANSFER = ScreenRequest("r-1", OUTLET, AT, EVENTS["transfer"])


async def test_rules_read_what_the_risk_data_observed() -> None:
    risk = RiskData(
        Observation(counters={"payers_in_1h": 6}, list_hits={("fraud_accounts", "transfer.payee_account"): True})
    )
    decision = await screener(risk).screen(TRANSFER)
    assert decision.outcome is Outcome.BLOCK
    assert [r.rule_id for r in decision.reasons] == ["T15", "T19"]
    assert decision.ruleset_revision == "test@1"
    assert decision.decision_id == "decision-1"
    assert risk.seen_checks == [{("fraud_accounts", "transfer.payee_account")}]
    assert risk.recorded == [decision]


async def test_degraded_adds_the_fail_policy_reason() -> None:
    warn = await screener(RiskData(Observation(degraded=True))).screen(TRANSFER)
    assert warn.degraded
    assert warn.outcome is Outcome.WARN
    assert [r.rule_id for r in warn.reasons] == [UNAVAILABLE_RULE_ID]
    block = await screener(RiskData(Observation(degraded=True)), fail=Outcome.BLOCK).screen(TRANSFER)
    assert block.outcome is Outcome.BLOCK


async def test_a_decided_request_is_answered_from_the_store_and_not_recorded_again() -> None:
    previous = Decision("r-1", "earlier", Outcome.WARN, (), "old@1", False, AT, timedelta(0), replayed=True)
    risk = RiskData(Observation(previous=previous))
    assert await screener(risk).screen(TRANSFER) is previous
    assert risk.recorded == []
