"""Reason texts with `{placeholders}` filled from the values a rule read.

    本证件30天内已在{banks_30d}家银行开户
    转账金额{transfer.amount_fen:yuan}元

`{name}` shows the value as evidence shows it; `{name:yuan}` shows an amount
in fen as yuan with two decimals (150000 -> 1,500.00). `{{` and `}}` are
literal braces. A placeholder must name a field or counter the rule's
condition reads; a value absent from the request renders as 未知 / unknown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.errors import RiskgateError
from service.rules.model import Placeholder, Template, format_value

FORMATS = ("yuan",)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
UNKNOWN = {"zh": "未知", "en": "unknown"}


class TemplateError(RiskgateError):
    pass


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


def format_yuan(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return format_value(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value / 100:,.2f}"
    fen = int(value)
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}"


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
        else:
            out.append(format_value(values[part.name]))
    return "".join(out)
