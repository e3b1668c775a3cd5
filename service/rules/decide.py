"""From matched rules to an outcome: pure functions, no engine."""

from __future__ import annotations

from collections.abc import Iterable

from service.domain import Outcome, Reason


def reason_order(reason: Reason) -> tuple[int, int, str]:
    """Most severe first, then lower priority number first, then rule id."""
    return (-int(reason.outcome), reason.priority, reason.rule_id)


def sort_reasons(reasons: Iterable[Reason]) -> tuple[Reason, ...]:
    return tuple(sorted(reasons, key=reason_order))


def decide(reasons: Iterable[Reason]) -> Outcome:
    """The most severe outcome among enforced (non-shadow) reasons; ALLOW when there is none.

    Shadow rules are evaluated and reported but never change the outcome.
    """
    return max((r.outcome for r in reasons if not r.shadow), default=Outcome.ALLOW)
