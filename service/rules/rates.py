"""rates.yaml: the exchange rates into CNY a rules directory screens other currencies with.

    # rules/rates.yaml
    as_of: 2026-11-30                     # the day these rates are for (required)
    source: 中国外汇交易中心 人民币汇率中间价   # where they come from (named in the stale-rates warning)
    stale_after_days: 10                  # optional (10): older rates are used, but reported
    rates:                                # CNY per ONE unit of the currency
      USD: 7.1186
      JPY: 0.046718

Read with the rules' strict YAML reader (`service.yamlsrc`), checked
whole (every problem as `file:line: problem`), and loaded, hashed and
hot-reloaded with the rule files (`service.rules.directory`): a broken
rates.yaml keeps the last good ruleset serving. A missing file means CNY only.
The model and the conversion are `service.pipeline.money`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal

from service.errors import SourceError, SourceProblem
from service.pipeline.money import CNY, STALE_AFTER_DAYS, ExchangeRates
from service.yamlsrc import YMap, YNode, YScalar, describe, parse_yaml

RATES_FILE = "rates.yaml"
# CNY per ONE unit: the dearest currency is about 23 (KWD), so a rate above 50 is a typo, most
# likely a board rate quoted per 100 units (USD 711.86), which would read every amount 100x.
MAX_RATE = 50
_KEYS = ("as_of", "source", "stale_after_days", "rates")
_CODE = re.compile(r"[A-Z]{3}")

Report = Callable[[int, str], None]  # (line, problem)


def parse_rates(text: str, file: str) -> ExchangeRates:
    """The rates in `text` (the file `file`); raises SourceError with every problem."""
    tree, problems = parse_yaml(text, file)
    rates = ExchangeRates(file=file)
    if tree is not None and not problems:
        rates = _from_tree(tree, file, problems)
    elif tree is None and not problems:
        problems.append(SourceProblem(file, 1, f"the file is empty: expected {', '.join(_KEYS)}"))
    if problems:
        raise SourceError(problems)
    return rates


def _from_tree(tree: YNode, file: str, problems: list[SourceProblem]) -> ExchangeRates:
    def problem(line: int, text: str) -> None:
        problems.append(SourceProblem(file, line, text))

    if not isinstance(tree, YMap):
        problem(tree.line, f"expected a mapping with the keys {', '.join(_KEYS)}")
        return ExchangeRates(file=file)
    for key, _ in tree.items:
        if key.value not in _KEYS:
            problem(key.line, f"unknown key '{key.value}' (expected one of {', '.join(_KEYS)})")
    as_of = _as_of(tree, problem)
    source = tree.get("source")
    if source is not None and not (isinstance(source, YScalar) and isinstance(source.value, str)):
        problem(source.line, f"'source' must be a text, not {describe(source)}")
    stale = tree.get("stale_after_days")
    stale_days = STALE_AFTER_DAYS
    if stale is not None:
        if isinstance(stale, YScalar) and type(stale.value) is int and stale.value > 0:
            stale_days = stale.value
        else:
            problem(stale.line, f"'stale_after_days' must be a whole number of days above 0, not {describe(stale)}")
    rates = tree.get("rates")
    table: dict[str, Decimal] = {}
    if not isinstance(rates, YMap):
        problem(rates.line if rates is not None else tree.line, "'rates' must be a mapping of currency: CNY per unit")
    else:
        for code, value in rates.items:
            rate = _rate(str(code.value), code.line, value, problem)
            if rate is not None:
                table[str(code.value)] = rate
    text = source.value if isinstance(source, YScalar) and isinstance(source.value, str) else ""
    return ExchangeRates(table, as_of, text, file, stale_days)


def _as_of(tree: YMap, report: Report) -> date | None:
    node = tree.get("as_of")
    if node is None:
        report(tree.line, "'as_of' is required: the day the rates are for, e.g. as_of: 2026-11-30")
        return None
    if isinstance(node, YScalar) and isinstance(node.value, str):
        try:
            return date.fromisoformat(node.value)
        except ValueError:
            pass
    report(node.line, f"'as_of' must be a date like 2026-11-30, not {describe(node)}")
    return None


def _rate(code: str, line: int, value: YNode, report: Report) -> Decimal | None:
    if code == CNY:
        report(line, "CNY needs no rate: amounts in CNY are used as they are")
        return None
    if _CODE.fullmatch(code) is None:
        report(line, f"'{code}' is not a currency code: 3 upper-case letters (ISO 4217), e.g. USD")
        return None
    if not isinstance(value, YScalar) or isinstance(value.value, bool) or not isinstance(value.value, int | float):
        report(line, f"{code}: the rate must be a number of CNY per one {code}, not {describe(value)}")
        return None
    number = value.value
    if isinstance(number, float) and not math.isfinite(number):
        report(value.line, f"{code}: the rate must be a finite number")
        return None
    if not 0 < number < MAX_RATE:
        hint = f" (a rate per 100 {code}? give it per one)" if number >= MAX_RATE else ""
        report(value.line, f"{code}: the rate must lie between 0 and {MAX_RATE} CNY per one {code}{hint}")
        return None
    # repr() of a float is its shortest exact decimal text: 7.1186 stays 7.1186.
    return Decimal(repr(number)) if isinstance(number, float) else Decimal(number)
