"""Combining fired rules into one decision: pure, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from service.domain import Decision, EventKind, Outcome, Reason

UNAVAILABLE_RULE_ID = "RISK_DATA_UNAVAILABLE"


def unavailable_reason(outcome: Outcome) -> Reason:
    """The fail policy's reason, added to a degraded decision (Redis unavailable or over budget)."""
    return Reason(
        UNAVAILABLE_RULE_ID,
        outcome,
        "风险数据暂不可用，请人工核实后再办理",
        "Risk data temporarily unavailable: verify by hand before proceeding",
    )


def order_reasons(reasons: Iterable[Reason]) -> tuple[Reason, ...]:
    """Most severe first, then by priority (lower first), then by rule id, so the order is stable."""
    return tuple(sorted(reasons, key=lambda r: (-int(r.outcome), r.priority, r.rule_id)))


def outcome_of(reasons: Iterable[Reason]) -> Outcome:
    """The most severe outcome among enforced reasons; ALLOW when none. Shadow rules never count."""
    return max((r.outcome for r in reasons if not r.shadow), default=Outcome.ALLOW)


def decide(
    *,
    request_id: str,
    decision_id: str,
    kind: EventKind,
    reasons: Iterable[Reason],
    ruleset_revision: str,
    degraded: bool,
    decided_at: datetime,
    evaluation_time: timedelta,
) -> Decision:
    ordered = order_reasons(reasons)
    return Decision(
        request_id=request_id,
        decision_id=decision_id,
        outcome=outcome_of(ordered),
        reasons=ordered,
        ruleset_revision=ruleset_revision,
        degraded=degraded,
        decided_at=decided_at,
        evaluation_time=evaluation_time,
        kind=kind,
    )
