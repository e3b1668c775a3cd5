from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.domain import EventKind, Outcome, Reason
from service.pipeline.outcome import decide, order_reasons, outcome_of


def reason(rule_id: str, outcome: Outcome, priority: int = 100, shadow: bool = False) -> Reason:
    return Reason(rule_id, outcome, "中文", "english", (), shadow, priority)


def test_no_reasons_is_allow() -> None:
    assert outcome_of([]) is Outcome.ALLOW


def test_most_severe_enforced_reason_wins() -> None:
    assert outcome_of([reason("a", Outcome.WARN), reason("b", Outcome.BLOCK)]) is Outcome.BLOCK


def test_shadow_reasons_never_change_the_outcome() -> None:
    assert outcome_of([reason("a", Outcome.BLOCK, shadow=True)]) is Outcome.ALLOW
    assert outcome_of([reason("a", Outcome.BLOCK, shadow=True), reason("b", Outcome.WARN)]) is Outcome.WARN


def test_reasons_ordered_by_severity_then_priority_then_id() -> None:
    ordered = order_reasons(
        [
            reason("w2", Outcome.WARN, 5),
            reason("b9", Outcome.BLOCK, 9),
            reason("w1", Outcome.WARN, 5),
            reason("b1", Outcome.BLOCK, 1),
        ]
    )
    assert [r.rule_id for r in ordered] == ["b1", "b9", "w1", "w2"]


def test_decide_carries_everything() -> None:
    at = datetime(2026, 11, 23, tzinfo=UTC)
    decision = decide(
        request_id="r",
        decision_id="d",
        kind=EventKind.TRANSFER,
        reasons=[reason("a", Outcome.WARN)],
        ruleset_revision="rev",
        degraded=True,
        decided_at=at,
        evaluation_time=timedelta(microseconds=250),
    )
    assert decision.outcome is Outcome.WARN
    assert decision.degraded
    assert decision.ruleset_revision == "rev"
    assert decision.reasons[0].rule_id == "a"
