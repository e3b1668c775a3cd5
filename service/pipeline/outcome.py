"""Combining fired rules into one decision: pure, no I/O.

Every BLOCK reason tells the customer how to appeal (Anti-Telecom and Online
Fraud Law, Art 32). For rule reasons the rules loader enforces it (a block
rule needs an `appeal:`, service.rules.loader) and appends the appeal with
`with_appeal`; the fail policy's own BLOCK reason carries `DEFAULT_APPEAL`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from service.domain import Decision, EventKind, Outcome, Reason

UNAVAILABLE_RULE_ID = "RISK_DATA_UNAVAILABLE"

Language = Literal["zh", "en"]


@dataclass(frozen=True, slots=True)
class Appeal:
    """How a refused customer may appeal, one sentence per language, said after the reason."""

    zh: str
    en: str

    def text(self, language: Language) -> str:
        return self.zh if language == "zh" else self.en


# The appeal route of the built-in reasons, worded as the shipped block rules word theirs.
DEFAULT_APPEAL = Appeal(
    "如有异议，可携本人身份证件向本机构或当地公安机关申诉。",
    "You may appeal with your ID at this institution or the local police.",
)

_SENTENCE_END = {"zh": ("。", "！", "？", "!", "?", "."), "en": (".", "!", "?")}


def appeal_separator(reason: str, language: Language) -> str:
    """What goes between a reason and its appeal: a sentence end when the reason lacks one, and in
    English a space, so `reason + separator + appeal` reads as two sentences."""
    ended = reason.rstrip().endswith(_SENTENCE_END[language])
    if language == "zh":
        return "" if ended else "。"
    return " " if ended else ". "


def with_appeal(reason: str, appeal: Appeal, language: Language) -> str:
    """`reason` followed by the appeal sentence in `language`."""
    text = reason.rstrip()
    return text + appeal_separator(text, language) + appeal.text(language)


def unavailable_reason(outcome: Outcome) -> Reason:
    """The fail policy's reason, added to a degraded decision (Redis unavailable or over budget).

    WARN: the clerk verifies by hand and may go on. BLOCK (fail closed): the request is refused,
    so the reason says what to do and how to appeal, as every block reason must (Art 32).
    """
    if outcome is Outcome.BLOCK:
        return Reason(
            UNAVAILABLE_RULE_ID,
            outcome,
            with_appeal("风险数据暂不可用，本次业务暂不办理，请稍后再试", DEFAULT_APPEAL, "zh"),
            with_appeal(
                "Risk data is temporarily unavailable, so this request is not processed now; try again later",
                DEFAULT_APPEAL,
                "en",
            ),
        )
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
