"""Transfers in other currencies: converted to CNY at rates.yaml's rates, refused without one, shown
in the currency they were made in."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from service.domain import ScreenRequest, Transfer
from service.errors import FieldProblem, SourceError, ValidationError
from service.pipeline.facts import facts
from service.pipeline.money import CNY_ONLY, ExchangeRates
from service.riskdata.counters.loader import parse_counters
from service.rules.compiler import compile_ruleset
from service.rules.engine import build_ruleset
from service.rules.rates import parse_rates
from service.rules.reload import RulesManager
from service.rules.templates import format_money
from tests.conftest import REPO
from tests.unit.rules.conftest import load_text, problems_of
from tests.unit.test_facts import AT, EVENTS, OUTLET

RATES = ExchangeRates({"USD": Decimal("7.1186"), "JPY": Decimal("0.046718")}, file="rules/rates.yaml")


def _transfer(amount_fen: int, currency: str) -> ScreenRequest:
    base = EVENTS["transfer"]
    assert isinstance(base, Transfer)
    event = dataclasses.replace(base, amount_fen=amount_fen, currency=currency)
    return ScreenRequest("r1", OUTLET, AT, event)


def test_an_amount_in_another_currency_is_read_in_cny() -> None:
    values = facts(_transfer(500_000, "USD"), RATES)  # USD 5,000
    assert values["transfer.amount_fen"] == 3_559_300  # ¥35,593.00
    assert values["transfer.original_amount_fen"] == 500_000
    assert values["transfer.currency"] == "USD"


def test_cny_is_used_as_it_is_with_or_without_rates() -> None:
    for rates in (RATES, CNY_ONLY):
        values = facts(_transfer(123_457, "CNY"), rates)
        assert values["transfer.amount_fen"] == values["transfer.original_amount_fen"] == 123_457


def test_conversion_rounds_to_the_fen_half_to_even_in_decimal() -> None:
    rates = ExchangeRates({"XAA": Decimal("0.5"), "XBB": Decimal("0.1")})
    assert rates.cny_fen(1, "XAA") == 0  # 0.5 -> 0 (even)
    assert rates.cny_fen(3, "XAA") == 2  # 1.5 -> 2 (even)
    assert rates.cny_fen(5, "XAA") == 2  # 2.5 -> 2 (even)
    assert rates.cny_fen(3, "XBB") == 0  # 0.3 exactly, not 0.30000000000000004
    assert rates.cny_fen(10**14, "XBB") == 10**13


def test_an_amount_over_the_limit_once_in_cny_is_refused() -> None:
    rates = ExchangeRates({"KWD": Decimal("23.4")})
    assert rates.cny_fen(10**14 // 24, "KWD") < 10**14
    with pytest.raises(ValidationError) as refused:
        rates.cny_fen(10**14, "KWD")  # within the wire's limit in KWD, 23x beyond it in CNY
    assert refused.value.problems == (
        FieldProblem("transfer.amount_fen", "must be at most 10^14 fen once converted to CNY (KWD)"),
    )


def test_a_currency_without_a_rate_is_refused_on_its_field() -> None:
    with pytest.raises(ValidationError) as refused:
        facts(_transfer(500_000, "EUR"), RATES)
    assert refused.value.problems == (
        FieldProblem("transfer.currency", "no exchange rate for EUR in rates.yaml (accepted: CNY, JPY, USD)"),
    )
    with pytest.raises(ValidationError) as only_cny:
        facts(_transfer(500_000, "USD"))
    assert only_cny.value.problems[0].problem == (
        "only CNY is accepted: rates.yaml in the rules directory gives no exchange rates"
    )


GOOD = """\
as_of: {as_of}
source: CFETS central parity
stale_after_days: 3
rates:
  USD: 7.1186
  JPY: 0.046718
  KWD: 23
"""


def test_a_rates_file_is_read_exactly() -> None:
    today = date.today()
    rates = parse_rates(GOOD.format(as_of=today.isoformat()), "rules/rates.yaml")
    assert rates.rates == {"USD": Decimal("7.1186"), "JPY": Decimal("0.046718"), "KWD": Decimal(23)}
    assert (rates.as_of, rates.source, rates.stale_after_days, rates.file) == (
        today,
        "CFETS central parity",
        3,
        "rules/rates.yaml",
    )
    assert rates.known() == ("CNY", "JPY", "KWD", "USD")


def test_rates_older_than_their_limit_are_stale() -> None:
    today = date.today()
    rates = parse_rates(GOOD.format(as_of=(today - timedelta(days=3)).isoformat()), "r.yaml")
    assert rates.age_days(today) == 3 and not rates.stale(today)
    assert rates.stale(today + timedelta(days=1))
    assert ExchangeRates().age_days(today) is None and not ExchangeRates().stale(today)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rates: {USD: 7.1}\n", "1: 'as_of' is required: the day the rates are for, e.g. as_of: 2026-11-30"),
        ("as_of: 30/11\nrates: {USD: 7.1}\n", "1: 'as_of' must be a date like 2026-11-30, not '30/11'"),
        ("as_of: 2026-11-30\nrates: {CNY: 1}\n", "2: CNY needs no rate: amounts in CNY are used as they are"),
        (
            "as_of: 2026-11-30\nrates: {usd: 7.1}\n",
            "2: 'usd' is not a currency code: 3 upper-case letters (ISO 4217), e.g. USD",
        ),
        ("as_of: 2026-11-30\nrates: {USD: '7.1'}\n", "2: USD: the rate must be a number of CNY per one USD, not '7.1'"),
        ("as_of: 2026-11-30\nrates: {USD: 0}\n", "2: USD: the rate must lie between 0 and 50 CNY per one USD"),
        (
            "as_of: 2026-11-30\nrates:\n  JPY: 4.6718e+00\n",
            "3: JPY: the rate must be a number of CNY per one JPY, not '4.6718e+00'",
        ),
        (
            "as_of: 2026-11-30\nrates: {USD: 711.86}\n",
            "2: USD: the rate must lie between 0 and 50 CNY per one USD (a rate per 100 USD? give it per one)",
        ),
        ("as_of: 2026-11-30\nrates: [7.1]\n", "2: 'rates' must be a mapping of currency: CNY per unit"),
        (
            "as_of: 2026-11-30\nrate: {USD: 7.1}\n",
            "2: unknown key 'rate' (expected one of as_of, source, stale_after_days, rates)",
        ),
        (
            "as_of: 2026-11-30\nstale_after_days: 0\nrates: {}\n",
            "2: 'stale_after_days' must be a whole number of days above 0, not 0",
        ),
        ("as_of: 2026-11-30\nrates: {USD: 7.1, USD: 7.2}\n", "2: duplicate key 'USD' (first at line 2)"),
        ("", "1: the file is empty: expected as_of, source, stale_after_days, rates"),
    ],
)
def test_every_problem_of_a_rates_file_names_its_line(text: str, problem: str) -> None:
    with pytest.raises(SourceError) as refused:
        parse_rates(text, "rates.yaml")
    assert f"rates.yaml:{problem}" in [str(p) for p in refused.value.problems], refused.value.problems


def test_money_shows_the_currency_the_transfer_was_made_in() -> None:
    cny = {"transfer.amount_fen": 1_500_000}
    usd = {"transfer.amount_fen": 3_559_300, "transfer.currency": "USD", "transfer.original_amount_fen": 500_000}
    chf = {"transfer.amount_fen": 805_600, "transfer.currency": "CHF", "transfer.original_amount_fen": 100_000}
    xts = {"transfer.amount_fen": 100, "transfer.currency": "XTS", "transfer.original_amount_fen": 100}
    assert format_money(cny, "zh") == "15,000.00元"
    assert format_money(cny, "en") == "15,000.00 yuan"
    assert format_money(usd, "zh") == "5,000.00美元（约合35,593.00元）"
    assert format_money(usd, "en") == "USD 5,000.00 (about 35,593.00 yuan)"
    assert format_money(chf, "zh") == "1,000.00瑞士法郎（约合8,056.00元）"
    assert format_money(xts, "zh") == "1.00 XTS（约合1.00元）"


MONEY_RULE = """\
rules:
  - id: T25
    on: [transfer]
    when: transfer.amount_fen >= 1_000_000
    outcome: warn
    reason: {zh: "转账{transfer.amount_fen:money}", en: "sends {transfer.amount_fen:money}"}
"""


def test_reasons_and_evidence_of_a_foreign_transfer_show_both_amounts() -> None:
    ruleset = build_ruleset(compile_ruleset(load_text(MONEY_RULE)))
    try:
        foreign = facts(_transfer(500_000, "USD"), RATES)
        (reason,) = ruleset.evaluate(foreign, {}, {})
        assert reason.message_zh == "转账5,000.00美元（约合35,593.00元）"
        assert reason.message_en == "sends USD 5,000.00 (about 35,593.00 yuan)"
        assert reason.evidence == (
            ("transfer.amount_fen", "3559300"),
            ("transfer.currency", "USD"),
            ("transfer.original_amount_fen", "500000"),
        )
        (local,) = ruleset.evaluate(facts(_transfer(1_000_000, "CNY"), RATES), {}, {})
        assert local.message_zh == "转账10,000.00元"
        assert local.evidence == (("transfer.amount_fen", "1000000"),)
    finally:
        ruleset.close()


def test_a_transfer_amount_must_be_shown_with_money_and_money_only_on_it() -> None:
    yuan = MONEY_RULE.replace('"转账{transfer.amount_fen:money}"', '"转账{transfer.amount_fen:yuan}元"')
    assert problems_of(yuan) == [
        "6: reason.zh placeholder '{transfer.amount_fen:yuan}': show a transfer's amount with"
        " '{transfer.amount_fen:money}', which says the currency it was made in and its unit"
    ]
    bare = MONEY_RULE.replace('"sends {transfer.amount_fen:money}"', '"sends {transfer.amount_fen}"')
    assert problems_of(bare) == [
        "6: reason.en placeholder '{transfer.amount_fen}': show a transfer's amount with"
        " '{transfer.amount_fen:money}', which says the currency it was made in and its unit"
    ]
    other = MONEY_RULE.replace("transfer.amount_fen >= 1_000_000", "inflow_fen_30m >= 1").replace(
        "{transfer.amount_fen:money}", "{inflow_fen_30m:money}"
    )
    assert problems_of(other) == [
        f"6: reason.{language} placeholder '{{inflow_fen_30m:money}}': the 'money' format shows a transfer's"
        " own amount, {transfer.amount_fen:money}; show other sums with ':yuan'"
        for language in ("zh", "en")
    ]


def test_the_original_amount_is_shown_never_compared_or_summed() -> None:
    why = (
        "is the amount in the transfer's own currency, shown in evidence and by {transfer.amount_fen:money}: "
        "compare and sum transfer.amount_fen, the amount in CNY"
    )
    rule = MONEY_RULE.replace("transfer.amount_fen >= 1_000_000", "transfer.original_amount_fen >= 1_000_000")
    assert f"4: 'transfer.original_amount_fen' {why}" in problems_of(rule)
    counters = "counters:\n  - name: foreign_sum\n    on: [transfer]\n    key: transfer.payer_account\n"
    counters += "    aggregate: sum(transfer.original_amount_fen)\n    windows: [1d]\n"
    with pytest.raises(SourceError) as refused:
        parse_counters(counters, "counters.yaml")
    assert any(str(p).endswith(f"'transfer.original_amount_fen' {why}") for p in refused.value.problems), (
        refused.value.problems
    )


def test_a_reload_never_drops_the_rates_in_force(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    manager = RulesManager(rules)
    try:
        serving = manager.load().revision
        (rules / "rates.yaml").unlink()
        result = manager.reload()
        assert (result.revision, result.changed) == (serving, False)
        assert result.errors == [
            f"{rules / 'rates.yaml'}:0: the rates in force are gone: restore rates.yaml (replace it with an"
            " atomic rename); to accept CNY only, restart without one"
        ]
        assert manager.current.rates.rates["USD"] == Decimal("7.1186")
    finally:
        manager.close()
