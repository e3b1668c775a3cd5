"""The daily report: one local (China) day in the shape the anti-fraud centres use, from that day's
tallies (`Monitor.day`): volumes by event kind and outcome, warnings, blocks, degraded decisions,
the dispositions reported that day, the top rules and the top regions, by institution and by hour.

Three renderings of one `DailyReport`: a JSON document (the page), CSV (one number per line, for a
spreadsheet: `CSV_COLUMNS`, README "Console") and a printable HTML page with no script.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from service.dispositions import Disposition
from service.domain import local_time
from service.server.console.views import (
    DISPOSITION_NAMES,
    KINDS,
    OUTCOMES,
    _fields,
    cities,
    kind_name,
    outcome_totals,
    precision_of,
    provinces,
    rule_dispositions,
)

TOP: Final = 10
CSV_COLUMNS: Final = ("day", "section", "key", "name", "metric", "value")


@dataclass(frozen=True, slots=True)
class DailyReport:
    day: date
    generated_at: datetime
    volumes: list[dict[str, Any]]  # per kind: allow, warn, block, total, degraded
    totals: dict[str, int]
    dispositions: list[dict[str, Any]]  # per disposition: count
    labels: dict[str, int]  # positives, negatives, pending
    rules: list[dict[str, Any]]  # the top rules by fires
    provinces: list[dict[str, Any]]
    cities: list[dict[str, Any]]
    institutions: list[dict[str, Any]]
    hours: list[dict[str, Any]]


def daily_report(day: date, tallies: Mapping[str, int], *, generated_at: datetime) -> DailyReport:
    volumes = [{"kind": k, "name": kind_name(k), **outcome_totals(tallies, k)} for k in KINDS]
    mix = {name[2:]: value for name, value in tallies.items() if name.startswith("d:")}
    positives, negatives, pending, _ = precision_of(mix)
    dispositions = [
        {
            "disposition": d.value,
            "zh": DISPOSITION_NAMES[d][0],
            "en": DISPOSITION_NAMES[d][1],
            "count": mix.get(d.value, 0),
        }
        for d in Disposition
    ]
    per_rule = rule_dispositions([tallies])
    rule_ids = {name[2:] for name in tallies if name[:2] in ("r:", "s:")} | set(per_rule)
    rules: list[dict[str, Any]] = []
    for rule_id in rule_ids:
        p, n, pend, precision = precision_of(per_rule.get(rule_id, {}))
        rules.append(
            {
                "rule_id": rule_id,
                "fires": tallies.get(f"r:{rule_id}", 0),
                "shadow_fires": tallies.get(f"s:{rule_id}", 0),
                "positives": p,
                "negatives": n,
                "pending": pend,
                "precision": precision,
            }
        )
    rules.sort(key=lambda r: (-r["fires"], -r["shadow_fires"], r["rule_id"]))
    institutions = [{"institution_id": key, **counts} for key, counts in sorted(_fields(tallies, "i").items())]
    hour_rows = _fields(tallies, "h")
    hours = [
        {"hour": f"{h:02d}", **hour_rows.get(f"{h:02d}", dict.fromkeys((*OUTCOMES, "total"), 0))} for h in range(24)
    ]
    return DailyReport(
        day=day,
        generated_at=generated_at,
        volumes=volumes,
        totals=outcome_totals(tallies),
        dispositions=dispositions,
        labels={"positives": positives, "negatives": negatives, "pending": pending},
        rules=rules[:TOP],
        provinces=provinces(tallies)[:TOP],
        cities=cities(tallies)[:TOP],
        institutions=institutions,
        hours=hours,
    )


def report_document(report: DailyReport) -> dict[str, Any]:
    return {
        "day": report.day.isoformat(),
        "generated_at": local_time(report.generated_at).isoformat(timespec="seconds"),
        "volumes": report.volumes,
        "totals": report.totals,
        "dispositions": report.dispositions,
        "labels": report.labels,
        "rules": report.rules,
        "provinces": report.provinces,
        "cities": report.cities,
        "institutions": report.institutions,
        "hours": report.hours,
    }


def csv_rows(report: DailyReport) -> list[tuple[str, str, str, str, str, str]]:
    """One number per row: (day, section, key, name, metric, value)."""
    day = report.day.isoformat()
    rows: list[tuple[str, str, str, str, str, str]] = []

    def add(section: str, key: str, name: str, metric: str, value: object) -> None:
        shown = "" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        rows.append((day, section, key, name, metric, shown))

    for metric in (*OUTCOMES, "total", "degraded"):
        add("total", "all", "all decisions 全部", metric, report.totals[metric])
    for volume in report.volumes:
        for metric in (*OUTCOMES, "total", "degraded"):
            add("volume", volume["kind"], volume["name"], metric, volume[metric])
    for row in report.dispositions:
        add("disposition", row["disposition"], f"{row['zh']} {row['en']}", "count", row["count"])
    for metric, value in report.labels.items():
        add("label", metric, metric, "count", value)
    for rule in report.rules:
        for metric in ("fires", "shadow_fires", "positives", "negatives", "pending", "precision"):
            add("rule", rule["rule_id"], rule["rule_id"], metric, rule[metric])
    for province in report.provinces:
        for metric in (*OUTCOMES, "total"):
            add("province", province["code"], f"{province['zh']} {province['en']}", metric, province[metric])
    for city in report.cities:
        for metric in ("warn", "block"):
            add("region", city["code"], city["name"], metric, city[metric])
    for institution in report.institutions:
        for metric in (*OUTCOMES, "total"):
            add(
                "institution", institution["institution_id"], institution["institution_id"], metric, institution[metric]
            )
    for hour in report.hours:
        for metric in (*OUTCOMES, "total"):
            add("hour", hour["hour"], f"{hour['hour']}:00", metric, hour[metric])
    return rows


def _safe_cell(text: str) -> str:
    """A cell a spreadsheet will not run as a formula (rule ids and codes are others' text)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def report_csv(report: DailyReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in csv_rows(report):
        writer.writerow([_safe_cell(cell) for cell in row])
    return out.getvalue()


# --- the printable page ------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int) -> str:
    return f"{value:,}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th{' class=num' if i >= numeric_from else ''}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="muted">none 无</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(report: DailyReport, *, stylesheet: str = "/static/report.css") -> str:
    """The report as a printable page: a stylesheet of the service's own, no script."""
    day = report.day.isoformat()
    t = report.totals
    flagged = t["warn"] + t["block"]
    summary = _table(
        ["", "decisions 决策", "warn 提醒", "block 拦截", "allow 放行", "degraded 降级"],
        [
            [
                _e(v["name"]),
                _n(v["total"]),
                _n(v["warn"]),
                _n(v["block"]),
                _n(v["allow"]),
                _n(v["degraded"]),
            ]
            for v in report.volumes
        ]
        + [
            [
                "<strong>all 合计</strong>",
                *(f"<strong>{_n(t[m])}</strong>" for m in ("total", "warn", "block", "allow", "degraded")),
            ]
        ],
    )
    dispositions = _table(
        ["disposition 处置", "count 数量"],
        [[f"{_e(d['zh'])} {_e(d['en'])}", _n(d["count"])] for d in report.dispositions],
    )
    labels = report.labels
    rules = _table(
        ["rule 规则", "fires 触发", "shadow 影子", "positive 正确", "negative 错误", "precision 精确率"],
        [
            [f"<code>{_e(r['rule_id'])}</code>", _n(r["fires"]), _n(r["shadow_fires"]), _n(r["positives"]),
             _n(r["negatives"]), _pct(r["precision"])]
            for r in report.rules
        ],
    )  # fmt: skip
    provinces_table = _table(
        ["province 省份", "warn 提醒", "block 拦截", "decisions 决策"],
        [
            [f"{_e(p['code'])} {_e(p['zh'])} {_e(p['en'])}", _n(p["warn"]), _n(p["block"]), _n(p["total"])]
            for p in report.provinces
        ],
    )
    cities_table = _table(
        ["region 地区", "warn 提醒", "block 拦截"],
        [[f"{_e(c['code'])} {_e(c['name'])}", _n(c["warn"]), _n(c["block"])] for c in report.cities],
    )
    institutions = _table(
        ["institution 机构", "warn 提醒", "block 拦截", "decisions 决策"],
        [
            [f"<code>{_e(i['institution_id'])}</code>", _n(i["warn"]), _n(i["block"]), _n(i["total"])]
            for i in report.institutions
        ],
    )
    hours = _table(
        ["hour 时段", "warn 提醒", "block 拦截", "decisions 决策"],
        [[f"{_e(h['hour'])}:00", _n(h["warn"]), _n(h["block"]), _n(h["total"])] for h in report.hours],
    )
    generated = local_time(report.generated_at).strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Daily report 日报 {_e(day)}</title>
<link rel="stylesheet" href="{_e(stylesheet)}">
</head>
<body class="report">
<header>
<h1>Daily report 日报 · {_e(day)}</h1>
<p class="muted">China time 北京时间 · generated 生成于 {_e(generated)} · riskgate</p>
</header>
<section id="report-summary">
<dl class="facts">
<dt>decisions 决策</dt><dd>{_n(t["total"])}</dd>
<dt>warnings 提醒</dt><dd>{_n(t["warn"])}</dd>
<dt>blocks 拦截</dt><dd>{_n(t["block"])}</dd>
<dt>flagged share 预警占比</dt><dd>{_pct(flagged / t["total"] if t["total"] else None)}</dd>
<dt>degraded 降级</dt><dd>{_n(t["degraded"])}</dd>
<dt>dispositions 处置</dt><dd>{_n(sum(d["count"] for d in report.dispositions))}
 (positive 正确 {_n(labels["positives"])}, negative 错误 {_n(labels["negatives"])},
 pending 待定 {_n(labels["pending"])})</dd>
</dl>
</section>
<section><h2>Volumes 业务量</h2>{summary}</section>
<section><h2>Dispositions 处置结果</h2>{dispositions}</section>
<section><h2>Top rules 主要规则</h2>{rules}</section>
<section class="pair"><div><h2>Top provinces 主要省份</h2>{provinces_table}</div>
<div><h2>Top regions 主要地区 (warn and block 提醒与拦截)</h2>{cities_table}</div></section>
<section><h2>Institutions 机构</h2>{institutions}</section>
<section><h2>By hour 分时段</h2>{hours}</section>
</body>
</html>
"""
