"""Day counts in reason texts, as a clerk says them: `{x:days}` (how long) and `{x:days_ago}` (when).

T18 used to say 收款账户开立仅0天 / "opened only 0 days ago". The values are whole 24-hour periods
(service.pipeline.facts: `transfer.payee_account_age_days`; idle_days counters), so 0 is "less than a day",
never "today".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from service.domain import EventKind, ScreenRequest, Transfer
from service.errors import SourceError
from service.pipeline.facts import facts
from service.rules.directory import RulesDirectory, load_directory
from service.rules.loader import SourceText, load_sources
from service.rules.reload import ActiveRules, build
from service.rules.templates import format_days, format_days_ago, parse_template, render
from tests.unit.rules.conftest import COUNTERS, LISTS, REPO
from tests.unit.test_facts import EVENTS, OUTLET


@pytest.mark.parametrize(
    ("days", "zh", "en"),
    [
        (0, "不到1天", "less than a day"),
        (1, "1天", "1 day"),
        (2, "2天", "2 days"),
        (7, "7天", "7 days"),
        (7.0, "7天", "7 days"),
        (180, "180天", "180 days"),
        (2.5, "2.5天", "2.5 days"),
    ],
)
def test_days_says_how_long(days: float, zh: str, en: str) -> None:
    assert (format_days(days, "zh"), format_days(days, "en")) == (zh, en)


@pytest.mark.parametrize(
    ("days", "zh", "en"),
    [
        (0, "24小时内", "less than a day ago"),
        (1, "1天前", "1 day ago"),
        (2, "2天前", "2 days ago"),
        (7, "7天前", "7 days ago"),
        (-1, "-1天前", "-1 days ago"),  # not a real age: shown as it is, never as "today"
    ],
)
def test_days_ago_says_when(days: int, zh: str, en: str) -> None:
    assert (format_days_ago(days, "zh"), format_days_ago(days, "en")) == (zh, en)


def test_the_formats_are_template_formats() -> None:
    template = parse_template("账户{age:days_ago}开立，此前{idle:days}无转出")
    assert render(template, {"age": 1, "idle": 0}, "zh") == "账户1天前开立，此前不到1天无转出"
    assert render(template, {}, "zh") == "账户未知开立，此前未知无转出"
    english = parse_template("opened {age:days_ago}, idle for {idle:days}")
    assert render(english, {"age": 0, "idle": 1}, "en") == "opened less than a day ago, idle for 1 day"


def test_a_day_format_on_a_value_that_is_not_a_number_is_refused() -> None:
    text = (
        'rules:\n  - id: r1\n    on: [transfer]\n    when: transfer.payee_bank == "X"\n    outcome: warn\n'
        "    reason: {zh: '{transfer.payee_bank:days}', en: b}\n"
    )
    with pytest.raises(SourceError) as caught:
        load_sources([SourceText("t.rules.yaml", text, "t.rules.yaml")], counters=COUNTERS, lists=LISTS)
    assert [str(p) for p in caught.value.problems] == [
        "t.rules.yaml:6: reason.zh placeholder '{transfer.payee_bank:days}': the 'days' format shows a number, "
        "and 'transfer.payee_bank' is not one"
    ]


# ------------------------------------------------------------- the shipped rules


@pytest.fixture(scope="module")
def shipped() -> Iterator[tuple[RulesDirectory, ActiveRules]]:
    directory = load_directory(REPO / "rules")
    active = build(directory)
    yield directory, active
    active.ruleset.close()


def _t18(active: ActiveRules, opened: timedelta) -> tuple[str, str]:
    """T18's texts for a ¥10,000 transfer to an account opened `opened` before the transfer (now)."""
    now = datetime.now(UTC)
    transfer = EVENTS["transfer"]
    assert isinstance(transfer, Transfer)
    event = replace(transfer, amount_fen=1_000_000, payee_country="CN", payee_account_opened_at=now - opened)
    request_facts = facts(ScreenRequest("r-t18", OUTLET, now, event))
    hits = dict.fromkeys(active.list_checks_for(EventKind.TRANSFER), False)
    [reason] = [r for r in active.evaluate(request_facts, {}, hits) if r.rule_id == "T18_new_payee_account"]
    return reason.message_zh, reason.message_en


@pytest.mark.parametrize(
    ("opened", "zh", "en"),
    [
        (timedelta(hours=3), "24小时内", "less than a day ago"),
        (timedelta(hours=23, minutes=59), "24小时内", "less than a day ago"),
        (timedelta(days=1, hours=5), "1天前", "1 day ago"),
        (timedelta(days=7, hours=1), "7天前", "7 days ago"),
    ],
)
def test_t18_says_when_the_payee_account_was_opened(
    shipped: tuple[RulesDirectory, ActiveRules], opened: timedelta, zh: str, en: str
) -> None:
    message_zh, message_en = _t18(shipped[1], opened)
    assert message_zh == f"收款账户为新开账户（{zh}开立），本笔转入10,000.00元，请核实收款人身份和转账原因。"
    assert (
        message_en
        == f"The payee account is new (opened {en}) and receives 10,000.00 yuan; verify the payee and the reason."
    )
    assert "0天" not in message_zh and "0 days" not in message_en


def test_t24_says_how_long_the_account_was_idle(shipped: tuple[RulesDirectory, ActiveRules]) -> None:
    counters = {
        "out_idle_24h": 200,
        "in_idle_payer_24h": 200,
        "inflow_to_payer_24h": 1_200_000,
        "outflow_24h": 1_200_000,
    }
    reasons = shipped[1].evaluate({"event": "transfer", "transfer.amount_fen": 1_200_000}, counters, {})
    [reason] = [r for r in reasons if r.rule_id == "T24_dormant_account_wakes"]
    assert reason.message_zh.startswith("付款账户此前200天无转出，")
    assert reason.message_en.startswith("The paying account sent nothing for 200 days and now")


def test_every_shipped_day_count_goes_through_a_day_format(shipped: tuple[RulesDirectory, ActiveRules]) -> None:
    # A value printed right before 天 / days would read 0天 / "1 days": it must use days or days_ago.
    for rule in shipped[0].ruleset.rules:
        for template in (rule.reason_zh, rule.reason_en):
            parts = template.parts
            for index, part in enumerate(parts[:-1]):
                following = parts[index + 1]
                if isinstance(part, str) or not isinstance(following, str):
                    continue
                if following.startswith(("天", " day")):
                    pytest.fail(f"{rule.id}: '{{{part.name}}}' is followed by '{following[:4]}' without a day format")
