"""Reason templates and value formatting (the outcome decision is tested in tests/unit/test_decision.py)."""

from __future__ import annotations

import pytest

from service.errors import TemplateError
from service.rules.model import Placeholder, format_number, format_value
from service.rules.templates import format_yuan, parse_template, render


def test_templates_parse_and_render() -> None:
    template = parse_template("本证件{{30天}}内已在{banks_30d}家银行开户，金额{transfer.amount_fen:yuan}元")
    assert template.parts == (
        "本证件{30天}内已在",
        Placeholder("banks_30d"),
        "家银行开户，金额",
        Placeholder("transfer.amount_fen", "yuan"),
        "元",
    )
    assert render(template, {"banks_30d": 4, "transfer.amount_fen": 123456}, "zh") == (
        "本证件{30天}内已在4家银行开户，金额1,234.56元"
    )
    assert render(template, {}, "zh") == "本证件{30天}内已在未知家银行开户，金额未知元"
    assert render(parse_template("{x}"), {}, "en") == "unknown"


@pytest.mark.parametrize("source", ["{", "}", "{a b}", "{a:eur}", "{}"])
def test_bad_templates(source: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(source)


def test_value_formatting() -> None:
    assert [format_yuan(v) for v in (0, 5, 100, 123456, -150, 2.5, 12345.0, True, "x")] == [
        "0.00",
        "0.05",
        "1.00",
        "1,234.56",
        "-1.50",
        "0.03",
        "123.45",
        "true",
        "x",
    ]
    assert [format_value(v) for v in (True, False, 4, 4.0, 0.8, 1e20, 1e-7, "中")] == [
        "true",
        "false",
        "4",
        "4",
        "0.8",
        "100000000000000000000",
        "0.0000001",
        "中",
    ]
    assert format_number(-3) == "-3"
