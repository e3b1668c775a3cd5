"""Reason texts with `{placeholders}` filled from the values a rule read.

    本证件30天内已在{banks_30d}家银行开户
    转账金额{transfer.amount_fen:yuan}元

    收款账户为新开账户（{transfer.payee_account_age_days:days_ago}开立）
    The account sent nothing for {out_idle_24h:days}

`{name}` shows the value as evidence shows it; `{name:yuan}` shows an amount
in fen as yuan with two decimals (150000 -> 1,500.00). A transfer's own amount
is shown with `{transfer.amount_fen:money}`, which says the currency it was
made in and brings its unit (`:yuan` on it is refused, it would hide a
foreign currency):

    CNY 150000                 1,500.00元 / 1,500.00 yuan
    USD 500000 (3559300 CNY)   5,000.00美元（约合35,593.00元）/ USD 5,000.00 (about 35,593.00 yuan)

Two formats show a
count of whole days (24-hour periods, as `transfer.payee_account_age_days`
and idle_days counters count them) the way a clerk says it:

    value   {x:days}                 {x:days_ago}
    0       不到1天 / less than a day   24小时内 / less than a day ago
    1       1天 / 1 day              1天前 / 1 day ago
    7       7天 / 7 days             7天前 / 7 days ago

0 means "less than 24 hours", not "today": an account opened at 23:00 is 0
days old at 01:00 the next day, so 今天/昨天 would be wrong. A value that
is not a whole number of days, or is negative, shows as the number with
天 / days. The formats apply to numbers only (the loader checks it).

`{{` and `}}` are literal braces. A placeholder must name a field or
counter the rule's condition reads; a value absent from the request renders
as 未知 / unknown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.errors import TemplateError
from service.pipeline.outcome import Appeal, Language, appeal_separator
from service.rules.model import Placeholder, Template, format_value

FORMATS = ("yuan", "money", "days", "days_ago")
AMOUNT = "transfer.amount_fen"  # in CNY fen (service.pipeline.money); the one field `money` formats
ORIGINAL_AMOUNT = "transfer.original_amount_fen"
CURRENCY = "transfer.currency"
# The currencies a clerk reads by name in Chinese; others show by their code (1,000.00 CHF).
_CURRENCY_ZH = {
    "USD": "美元", "EUR": "欧元", "GBP": "英镑", "HKD": "港元", "JPY": "日元", "SGD": "新加坡元",
    "AUD": "澳大利亚元", "CAD": "加拿大元", "CHF": "瑞士法郎", "NZD": "新西兰元", "MOP": "澳门元",
    "KRW": "韩元", "THB": "泰铢", "MYR": "林吉特", "RUB": "卢布",
}  # fmt: skip
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
UNKNOWN = {"zh": "未知", "en": "unknown"}


def parse_template(source: str) -> Template:
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "{" and source.startswith("{{", i):
            literal.append("{")
            i += 2
            continue
        if ch == "}" and source.startswith("}}", i):
            literal.append("}")
            i += 2
            continue
        if ch == "}":
            raise TemplateError("'}' without '{' (write '}}' for a brace)")
        if ch == "{":
            end = source.find("}", i + 1)
            if end < 0:
                raise TemplateError("'{' is not closed (write '{{' for a brace)")
            body = source[i + 1 : end]
            name, _, fmt = body.partition(":")
            name = name.strip()
            fmt = fmt.strip()
            if not _NAME.fullmatch(name):
                raise TemplateError(f"'{{{body}}}' is not a placeholder: use {{field}} or {{counter}}")
            if fmt and fmt not in FORMATS:
                raise TemplateError(f"unknown format '{fmt}' in '{{{body}}}' (known: {', '.join(FORMATS)})")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Placeholder(name, fmt))
            i = end + 1
            continue
        literal.append(ch)
        i += 1
    if literal:
        parts.append("".join(literal))
    return Template(source, tuple(parts))


def append_appeal(template: Template, appeal: Appeal, language: Language) -> Template:
    """The reason template followed by the appeal sentence (service.pipeline.outcome.with_appeal's joining)."""
    text = appeal.text(language)
    tail = appeal_separator(template.source, language) + text
    parts = list(template.parts)
    if parts and isinstance(parts[-1], str):
        parts[-1] += tail
    else:
        parts.append(tail)
    escaped = tail.replace("{", "{{").replace("}", "}}")
    return Template(template.source + escaped, tuple(parts))


def format_yuan(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return format_value(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value / 100:,.2f}"
    fen = int(value)
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}"


def _whole_days(value: object) -> int | None:
    """The value as a count of days, when it is a non-negative whole number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 0 else None


def _plain_days(value: object, language: str) -> str:
    text = format_value(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return text
    return f"{text}天" if language == "zh" else f"{text} days"


def format_days(value: object, language: str) -> str:
    """A length of time in whole days: 不到1天 / less than a day, 1天 / 1 day, 7天 / 7 days."""
    days = _whole_days(value)
    if days is None:
        return _plain_days(value, language)
    if language == "zh":
        return "不到1天" if days == 0 else f"{days}天"
    if days == 0:
        return "less than a day"
    return "1 day" if days == 1 else f"{days} days"


def format_days_ago(value: object, language: str) -> str:
    """How long ago, from an age in whole days: 24小时内 / less than a day ago, 1天前 / 1 day ago."""
    days = _whole_days(value)
    if days is None:
        plain = _plain_days(value, language)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return plain
        return plain + ("前" if language == "zh" else " ago")
    if language == "zh":
        return "24小时内" if days == 0 else f"{days}天前"
    return "less than a day ago" if days == 0 else f"{format_days(days, language)} ago"


_FORMATTERS = {"days": format_days, "days_ago": format_days_ago}


def format_money(values: Mapping[str, object], language: str) -> str:
    """A transfer's amount with its unit: in CNY, or in its own currency and about what in CNY."""
    cny = format_yuan(values[AMOUNT])
    currency = values.get(CURRENCY, "CNY")
    original = values.get(ORIGINAL_AMOUNT)
    if currency == "CNY" or not isinstance(currency, str) or original is None:
        return f"{cny}元" if language == "zh" else f"{cny} yuan"
    amount = format_yuan(original)
    if language == "zh":
        named = f"{amount}{_CURRENCY_ZH[currency]}" if currency in _CURRENCY_ZH else f"{amount} {currency}"
        return f"{named}（约合{cny}元）"
    return f"{currency} {amount} (about {cny} yuan)"


def render(template: Template, values: Mapping[str, object], language: str) -> str:
    """The text with each placeholder replaced by its value (values missing from `values` are unknown)."""
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        if part.name not in values:
            out.append(UNKNOWN[language])
        elif part.format == "yuan":
            out.append(format_yuan(values[part.name]))
        elif part.format == "money":
            out.append(format_money(values, language))
        elif part.format in _FORMATTERS:
            out.append(_FORMATTERS[part.format](values[part.name], language))
        else:
            out.append(format_value(values[part.name]))
    return "".join(out)
