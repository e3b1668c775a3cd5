"""The backtest report as one self-contained HTML page: inline CSS, inline SVG charts, no script.

It renders the document `service.backtest.compare.compare` builds (and the gate's verdict, when
the command added one under "gate"), for a risk officer to read on screen or on paper. Nothing
is fetched: no font, no stylesheet, no script library, so the file opens offline and from a
mail attachment. Every string of the report (directories, rule ids, values) comes from files
someone else wrote, and is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

OUTCOMES = ("allow", "warn", "block")
OUTCOME_NAMES = {"allow": "allow 放行", "warn": "warn 提醒", "block": "block 拦截"}
# Stricter changes first (the ones that turn customers away), then the looser ones.
CHANGES = ("allow→warn", "allow→block", "warn→block", "warn→allow", "block→allow", "block→warn")
CHANGE_COLOURS = {
    "allow→warn": "#e8a33d",
    "allow→block": "#c0392b",
    "warn→block": "#7b241c",
    "warn→allow": "#5dade2",
    "block→allow": "#1f618d",
    "block→warn": "#48c9b0",
}
OUTCOME_COLOURS = {"allow": ("#a9dfbf", "#1e8449"), "warn": ("#f9e0a8", "#d68910"), "block": ("#f5b7b1", "#b03a2e")}
DIMENSIONS = (
    ("kind", "event kind 业务类型"),
    ("institution", "institution 机构"),
    ("outlet", "outlet 网点"),
    ("region", "region 地区"),
)
TOP = 20  # rows per dimension table

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC", "PingFang SC",
       "Microsoft YaHei", "WenQuanYi Micro Hei", sans-serif; color: #1c2833; margin: 0 auto; max-width: 1100px;
       padding: 24px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #d5d8dc; }
h3 { font-size: 15px; margin: 18px 0 6px; }
section { break-inside: avoid-page; }
table { border-collapse: collapse; margin: 6px 0 12px; width: auto; }
th, td { border: 1px solid #d5d8dc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f4f4; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: #566573; }
dl.facts dd { margin: 0; }
.box { border: 1px solid; border-radius: 4px; padding: 8px 12px; margin: 10px 0; }
.box.ok { border-color: #1e8449; background: #eafaf1; }
.box.warning { border-color: #d68910; background: #fef5e7; }
.box.bad { border-color: #b03a2e; background: #fdedec; }
.box strong { display: block; margin-bottom: 2px; }
.gate { font-size: 16px; }
.up { color: #b03a2e; font-weight: 600; }
.down { color: #1f618d; font-weight: 600; }
.muted { color: #808b96; }
tr.changed td { background: #fef9e7; }
td.same { background: #f8f9f9; color: #566573; }
td.hot { background: #fdedec; font-weight: 600; }
td.cool { background: #ebf5fb; font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 4px 0 8px; font-size: 12.5px; }
.legend span::before { content: ""; display: inline-block; width: 11px; height: 11px; margin-right: 5px;
                       vertical-align: -1px; background: var(--swatch); border: 1px solid rgba(0,0,0,.25); }
.shadow { font-style: italic; color: #566573; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font: 11px system-ui, "Noto Sans", "WenQuanYi Micro Hei", sans-serif; fill: #1c2833; }
svg .axis { stroke: #808b96; stroke-width: 1; }
svg .grid { stroke: #e5e8e8; stroke-width: 1; }
.charts { display: flex; flex-wrap: wrap; gap: 16px 32px; align-items: flex-start; }
.tables { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
footer { margin-top: 32px; color: #808b96; font-size: 12px; }
@media print {
  body { padding: 0; max-width: none; font-size: 11.5px; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2 { break-after: avoid-page; }
  tr, .box, svg { break-inside: avoid; }
}
"""


_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


def render(report: Mapping[str, Any]) -> str:
    """The whole HTML document of a backtest report."""
    baseline, candidate = report["baseline"], report["candidate"]
    title = f"Backtest 回测: {baseline['directory']} → {candidate['directory']}"
    body = [
        _header(report),
        _gate(report.get("gate")),
        _history(report["history"]),
        _agreement(report["agreement"]),
        _outcomes(baseline, candidate),
        _change_summary(report["changes"]),
        _matrix(report["changes"], baseline),
        _breakdowns(report["changes"]),
        _rules(report["rules"], report.get("labels")),
        _labels(report.get("labels")),
        _examples(report["changes"]),
        "<footer>riskgate backtest · every figure is from replaying recorded history; "
        "no personal data is in this report (events are named by decision id).</footer>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # Nothing may load from anywhere: a report must open offline, and show nothing it was not sent with.
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


# --- formatting -----------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else _number(value)


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return f"{int(value):,}"
    return f"{value:,.6g}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


def _share(value: float) -> str:
    """Shares of events are often tiny (a gate at 0.1 %): enough digits to tell them from zero."""
    return f"{value:.3%}" if 0 < value < 0.01 else f"{value:.1%}"


def _value(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _n(value)
    return str(value)


def _delta(before: int, after: int) -> str:
    """`before → after` with the difference, coloured by its sign."""
    if before == after:
        return _n(before)
    change = after - before
    css = "up" if change > 0 else "down"
    return f'{_n(before)} → {_n(after)} <span class="{css}">({change:+,})</span>'


def _rules_list(rules: Sequence[str]) -> str:
    """Fired rule ids; a shadow fire (`~id`) in italics."""
    if not rules:
        return '<span class="muted">none</span>'
    return ", ".join(
        f'<code class="shadow" title="shadow">{_e(r[1:])} (shadow)</code>'
        if r.startswith("~")
        else f"<code>{_e(r)}</code>"
        for r in rules
    )


def _outcome(label: str) -> str:
    return _e(OUTCOME_NAMES.get(label, label))


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], css: str = "", numeric: Iterable[int] = ()) -> str:
    """A table from cells that are already HTML; `numeric` columns align right."""
    numbers = set(numeric)
    th = "".join(f'<th class="num">{h}</th>' if i in numbers else f"<th>{h}</th>" for i, h in enumerate(head))
    lines = [f'<table class="{css}">' if css else "<table>", f"<thead><tr>{th}</tr></thead>", "<tbody>"]
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numbers else f"<td>{c}</td>" for i, c in enumerate(row))
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _legend(items: Iterable[tuple[str, str]]) -> str:
    spans = "".join(f'<span style="--swatch: {colour}">{_e(name)}</span>' for name, colour in items)
    return f'<div class="legend" aria-hidden="true">{spans}</div>'


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^k at least `value` (at least 1): the top of a chart's axis."""
    if value <= 1:
        return 1
    power: int = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _ticks(top: int) -> list[int]:
    step = top / 5 if top >= 5 else 1
    return sorted({round(i * step) for i in range(6) if i * step <= top})


# --- sections -------------------------------------------------------------------------


def _header(report: Mapping[str, Any]) -> str:
    baseline, candidate, history = report["baseline"], report["candidate"], report["history"]
    return (
        "<header>\n<h1>Backtest report 回测报告</h1>\n"
        '<dl class="facts">'
        f"<dt>baseline 基线</dt><dd><code>{_e(baseline['directory'])}</code>"
        f" · revision <code>{_e(baseline['revision'])}</code></dd>"
        f"<dt>candidate 候选</dt><dd><code>{_e(candidate['directory'])}</code>"
        f" · revision <code>{_e(candidate['revision'])}</code></dd>"
        f"<dt>period 时段</dt><dd>{_span(history)}</dd>"
        f"<dt>events compared 比对事件</dt><dd>{_n(history['events_compared'])}</dd>"
        "</dl>\n</header>"
    )


def _span(history: Mapping[str, Any]) -> str:
    since, until = history.get("since"), history.get("until")
    if since is None and until is None:
        return "the whole history"
    return f"{_e(since or 'the start')} → {_e(until or 'the end')}"


def _gate(gate: Mapping[str, Any] | None) -> str:
    if gate is None:
        return ""
    limits = [str(limit) for limit in gate.get("limits", [])]
    failed = [str(problem) for problem in gate.get("failed", [])]
    limits_text = "; ".join(_e(limit) for limit in limits) or "none"
    if failed:
        problems = "".join(f"<li>{_e(problem)}</li>" for problem in failed)
        return (
            '<div class="box bad gate" role="alert" id="gate"><strong>Gate failed 未通过</strong>'
            f'<ul>{problems}</ul><div class="muted">limits: {limits_text}</div></div>'
        )
    return (
        '<div class="box ok gate" id="gate"><strong>Gate passed 通过</strong>'
        f'<div class="muted">limits: {limits_text}</div></div>'
    )


def _history(history: Mapping[str, Any]) -> str:
    revisions = history.get("revisions") or {}
    revision_text = (
        ", ".join(f"<code>{_e(rev)}</code> ({_n(count)})" for rev, count in revisions.items())
        or '<span class="muted">none</span>'
    )
    window = int(history.get("longest_window_seconds") or 0)
    parts = [
        "<section>\n<h2>History 历史数据</h2>",
        '<dl class="facts">',
        f"<dt>events read</dt><dd>{_n(history['events_read'])}</dd>",
        f"<dt>events compared</dt><dd>{_n(history['events_compared'])}</dd>",
        f"<dt>first event</dt><dd>{_e(history.get('first_event') or '—')}</dd>",
        f"<dt>longest counter window</dt><dd>{_duration(window)}</dd>",
        f"<dt>recorded by revisions</dt><dd>{revision_text}</dd>",
        f"<dt>degraded decisions</dt><dd>{_n(history.get('degraded', 0))}</dd>",
        "</dl>",
    ]
    if history.get("too_short"):
        parts.append(
            '<div class="box warning" role="note" id="too-short"><strong>History too short 历史数据不足</strong>'
            f"{_e(history['too_short'])}</div>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _duration(seconds: int) -> str:
    if seconds <= 0:
        return "—"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = " ".join(f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v)
    return _e(text)


def _agreement(agreement: Mapping[str, Any]) -> str:
    compared, mismatches = int(agreement["compared"]), int(agreement["mismatches"])
    counters = int(agreement["counter_mismatches"])
    revision = f"<code>{_e(agreement['revision'])}</code>"
    parts = ["<section>\n<h2>Agreement with the log 与记录一致性</h2>"]
    if compared == 0:
        parts.append(
            f'<div class="box warning" id="agreement"><strong>Not checked</strong>No event of the history was decided'
            f" by the baseline's revision {revision}: the replay could not be checked against the log.</div>"
        )
    elif mismatches or counters:
        parts.append(
            '<div class="box bad" role="alert" id="agreement">'
            "<strong>The replay disagrees with the log 回放与记录不一致</strong>"
            f"Of {_n(compared)} events decided by revision {revision}, {_n(mismatches)} replayed to another"
            f" outcome or other rules, and {_n(counters)} read other counter values. The differences below are"
            " not caused by the candidate.</div>"
        )
    else:
        parts.append(
            f'<div class="box ok" id="agreement"><strong>The replay reproduces the log 回放与记录一致</strong>'
            f"All {_n(compared)} events decided by revision {revision} replayed to the recorded outcome and rules,"
            " with the recorded counter values.</div>"
        )
    parts.append(
        _table(
            ["compared", "mismatches", "counter mismatches"],
            [
                [
                    _n(compared),
                    f'<span class="up">{_n(mismatches)}</span>' if mismatches else "0",
                    f'<span class="up">{_n(counters)}</span>' if counters else "0",
                ]
            ],
            numeric=(0, 1, 2),
        )
    )
    examples = agreement.get("examples") or []
    if examples:
        parts.append("<h3>First mismatches</h3>")
        parts.append(
            _table(
                ["decision id", "time", "recorded", "replayed", "counters (recorded → replayed)"],
                (
                    [
                        f"<code>{_e(x['decision_id'])}</code>",
                        _e(x["occurred_at"]),
                        f"{_outcome(x['recorded']['outcome'])}: {_rules_list(x['recorded']['rules'])}",
                        f"{_outcome(x['replayed']['outcome'])}: {_rules_list(x['replayed']['rules'])}",
                        "<br>".join(
                            f"<code>{_e(name)}</code> {_e(_value(pair[0]))} → {_e(_value(pair[1]))}"
                            for name, pair in x.get("counters", {}).items()
                        )
                        or '<span class="muted">same</span>',
                    ]
                    for x in examples
                ),
                css="examples",
            )
        )
    parts.append("</section>")
    return "\n".join(parts)


def _outcomes(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> str:
    before, after = baseline["outcomes"], candidate["outcomes"]
    rows = [
        [_outcome(o), _n(before.get(o, 0)), _n(after.get(o, 0)), _delta(before.get(o, 0), after.get(o, 0))]
        for o in OUTCOMES
    ]
    table = _table(["outcome", "baseline", "candidate", "change"], rows, css="outcomes", numeric=(1, 2, 3))
    legend = _legend([("baseline 基线 (light)", "#d5d8dc"), ("candidate 候选 (dark)", "#566573")])
    return (
        "<section>\n<h2>Outcomes 决策结果</h2>\n"
        f'<div class="charts"><div>{_outcome_chart(before, after)}{legend}</div><div>{table}</div></div>\n</section>'
    )


def _outcome_chart(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    """One panel per outcome, each on its own scale: allows outnumber blocks a thousandfold, and a
    shared axis would flatten exactly the bars that matter."""
    panel, height, left, top, bottom = 190, 240, 44, 20, 36
    width = panel * len(OUTCOMES)
    plot = height - top - bottom
    bar = (panel - left - 16) / 2
    desc = "; ".join(f"{o}: baseline {_n(before.get(o, 0))}, candidate {_n(after.get(o, 0))}" for o in OUTCOMES)
    parts = [
        f'<svg id="chart-outcomes" class="chart" role="img" aria-labelledby="chart-outcomes-title chart-outcomes-desc"'
        f' width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-outcomes-title">Outcomes, baseline and candidate (each outcome on its own scale)</title>',
        f'<desc id="chart-outcomes-desc">{_e(desc)}</desc>',
    ]
    for i, outcome in enumerate(OUTCOMES):
        light, dark = OUTCOME_COLOURS[outcome]
        counts = [int(before.get(outcome, 0)), int(after.get(outcome, 0))]
        ceiling = _nice_ceiling(max(counts))
        x0 = i * panel + left
        parts += _y_axis(ceiling, x0, top, plot, x0 + panel - left - 4)
        for j, (name, count, colour) in enumerate((("baseline", counts[0], light), ("candidate", counts[1], dark))):
            h = plot * count / ceiling
            x, y = x0 + 4 + j * (bar + 4), top + plot - h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}"'
                f' stroke="{dark}"><title>{_e(outcome)}, {name}: {_n(count)}</title></rect>'
            )
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{_n(count)}</text>')
        parts.append(
            f'<text x="{x0 + bar + 6:.1f}" y="{height - bottom + 18}" text-anchor="middle">{_outcome(outcome)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _y_axis(ceiling: int, left: float, top: float, plot: float, right: float) -> list[str]:
    parts = []
    for tick in _ticks(ceiling):
        y = top + plot - plot * tick / ceiling
        parts.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{_compact(tick)}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot}"/>')
    parts.append(f'<line class="axis" x1="{left}" x2="{right}" y1="{top + plot}" y2="{top + plot}"/>')
    return parts


def _compact(tick: int) -> str:
    """An axis tick: round numbers, short (the exact figures are in the tables)."""
    for size, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (10_000, "k")):
        if tick >= size:
            scale = size if unit != "k" else 1_000
            return f"{tick / scale:,.3g}{unit}"
    return f"{tick:,}"


def _change_summary(changes: Mapping[str, Any]) -> str:
    rows = [
        ["outcome changed 结果变化", _n(changes["changed"]), _share(changes["changed_share"])],
        ["new blocks 新增拦截", _n(changes["new_blocks"]), _share(changes["new_blocks_share"])],
        ["new warnings (from allow) 新增提醒", _n(changes["new_warns"]), _share(changes["new_warns_share"])],
    ]
    if "changed_rules" in changes:
        rows.append(
            [
                "fired rules changed 命中规则变化",
                _n(changes["changed_rules"]),
                _share(_ratio(changes["changed_rules"], changes["events"])),
            ]
        )
    return (
        "<section>\n<h2>Changes 变化</h2>\n"
        f"<p>Of {_n(changes['events'])} events compared:</p>\n"
        + _table(["", "events", "share"], rows, css="change-summary", numeric=(1, 2))
        + "\n</section>"
    )


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _matrix(changes: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    """From (rows, the baseline's outcome) to (columns, the candidate's); the diagonal is what stayed."""
    matrix: Mapping[str, int] = changes["matrix"]
    head = ["baseline ↓ / candidate →", *(_outcome(o) for o in OUTCOMES), "total"]
    lines = [
        '<table class="matrix" id="change-matrix">',
        "<thead><tr>" + "".join(f'<th scope="col">{h}</th>' for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for before in OUTCOMES:
        total = int(baseline["outcomes"].get(before, 0))
        moved = sum(int(matrix.get(f"{before}→{after}", 0)) for after in OUTCOMES if after != before)
        cells = [f'<th scope="row">{_outcome(before)}</th>']
        for after in OUTCOMES:
            if after == before:
                count, css = total - moved, "same"
            else:
                count = int(matrix.get(f"{before}→{after}", 0))
                stricter = OUTCOMES.index(after) > OUTCOMES.index(before)
                css = ("hot" if stricter else "cool") if count else ""
            cells.append(
                f'<td class="num {css}" data-from="{before}" data-to="{after}"'
                f' title="{_e(before)}→{_e(after)}">{_n(count)}</td>'
            )
        cells.append(f'<td class="num">{_n(total)}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return (
        "<section>\n<h2>Change matrix 变化矩阵</h2>\n"
        "<p>Rows: the baseline's outcome; columns: the candidate's. The diagonal is the events whose outcome"
        " stayed; red cells are stricter, blue ones looser.</p>\n" + "\n".join(lines) + "\n</section>"
    )


def _present(by: Mapping[str, Mapping[str, Mapping[str, int]]]) -> list[str]:
    """The change classes that occur, in the fixed order (and any unknown one after)."""
    seen = {change for dimension in by.values() for counts in dimension.values() for change in counts}
    return [c for c in CHANGES if c in seen] + sorted(seen - set(CHANGES))


def _breakdowns(changes: Mapping[str, Any]) -> str:
    by: Mapping[str, Mapping[str, Mapping[str, int]]] = changes["by"]
    present = _present(by)
    parts = ["<section>\n<h2>Where the changes are 变化分布</h2>"]
    if not present:
        parts.append('<p class="muted">No event changed its outcome.</p>\n</section>')
        return "\n".join(parts)
    parts.append("<h3>By hour of day (local time) 按小时</h3>")
    parts.append(_hour_chart(by.get("hour", {}), present))
    parts.append(_legend((change, CHANGE_COLOURS.get(change, "#808b96")) for change in present))
    parts.append('<div class="tables">')
    for dimension, name in DIMENSIONS:
        values = by.get(dimension, {})
        ranked = sorted(values.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        rows = [
            [
                f"<code>{_e(value)}</code>",
                _n(sum(counts.values())),
                *(_n(counts.get(c, 0)) if counts.get(c) else "" for c in present),
            ]
            for value, counts in ranked[:TOP]
        ]
        more = len(ranked) - TOP
        parts.append(f"<div><h3>By {_e(name)}</h3>")
        parts.append(
            _table(
                [_e(dimension), "changed", *(_e(c) for c in present)],
                rows,
                css=f"by-{dimension}",
                numeric=range(1, 2 + len(present)),
            )
        )
        if more > 0:
            parts.append(f'<p class="muted">and {_n(more)} more not shown (the top {TOP} by changes are).</p>')
        parts.append("</div>")
    parts.append("</div>\n</section>")
    return "\n".join(parts)


def _hour_chart(hours: Mapping[str, Mapping[str, int]], present: Sequence[str]) -> str:
    width, height, left, top, bottom = 760, 240, 56, 12, 34
    plot = height - top - bottom
    totals = {f"{h:02d}": sum(hours.get(f"{h:02d}", {}).values()) for h in range(24)}
    ceiling = _nice_ceiling(max(totals.values()))
    band = (width - left - 10) / 24
    desc = "; ".join(f"{hour}h: {_n(total)}" for hour, total in totals.items() if total) or "no changes"
    parts = [
        f'<svg id="chart-hours" class="chart" role="img" aria-labelledby="chart-hours-title chart-hours-desc"'
        f' width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-hours-title">Changed outcomes by hour of day, stacked by change class</title>',
        f'<desc id="chart-hours-desc">Changed events per hour: {_e(desc)}</desc>',
    ]
    parts += _y_axis(ceiling, left, top, plot, width - 6)
    for h in range(24):
        hour = f"{h:02d}"
        x = left + h * band + band * 0.12
        y: float = top + plot
        for change in present:
            count = int(hours.get(hour, {}).get(change, 0))
            if not count:
                continue
            seg = plot * count / ceiling
            y -= seg
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{band * 0.76:.1f}" height="{seg:.1f}"'
                f' fill="{CHANGE_COLOURS.get(change, "#808b96")}">'
                f"<title>{hour}:00, {_e(change)}: {_n(count)}</title></rect>"
            )
        parts.append(
            f'<text x="{left + h * band + band / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">{hour}</text>'
        )
    parts.append(f'<text x="{left + (width - left) / 2:.1f}" y="{height - 4}" text-anchor="middle">hour 小时</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _rules(rules: Sequence[Mapping[str, Any]], labels: Mapping[str, Any] | None) -> str:
    labelled = labels is not None
    head = ["rule", "mode", "enforced fires 执行命中", "shadow fires 影子命中"]
    if labelled:
        head += ["true / false positives", "precision 精确率", "recall 召回率"]
    rows = []
    for rule in rules:
        base, cand = rule["baseline"], rule["candidate"]
        changed = (
            base.get("mode") != cand.get("mode")
            or base.get("enforced") != cand.get("enforced")
            or base.get("shadow") != cand.get("shadow")
        )
        cells = [
            f"<code>{_e(rule['rule_id'])}</code>",
            _mode(base.get("mode"), cand.get("mode")),
            _delta(int(base.get("enforced", 0)), int(cand.get("enforced", 0))),
            _delta(int(base.get("shadow", 0)), int(cand.get("shadow", 0))),
        ]
        if labelled:
            cells += [
                f"{_positives(base)} → {_positives(cand)}",
                f"{_pct(base.get('precision'))} → {_pct(cand.get('precision'))}",
                f"{_pct(base.get('recall'))} → {_pct(cand.get('recall'))}",
            ]
        rows.append((changed, cells))
    numeric = {2, 3, 4, 5, 6} if labelled else {2, 3}
    th = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(head))
    lines = ['<table class="rules" id="rules">', f"<thead><tr>{th}</tr></thead>", "<tbody>"]
    for changed, cells in rows:
        tds = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells))
        lines.append(f'<tr class="changed">{tds}</tr>' if changed else f"<tr>{tds}</tr>")
    lines.append("</tbody></table>")
    note = (
        "Fires are baseline → candidate; highlighted rows changed. Precision and recall count enforced and shadow"
        " fires against the labels; — where there is nothing to divide by."
        if labelled
        else "Fires are baseline → candidate; highlighted rows changed. No labels were given (--labels): no precision."
    )
    return f"<section>\n<h2>Rules 规则</h2>\n<p>{note}</p>\n" + "\n".join(lines) + "\n</section>"


def _mode(before: str | None, after: str | None) -> str:
    def name(mode: str | None) -> str:
        return '<span class="muted">absent</span>' if mode is None else _e(mode)

    if before == after:
        return name(before)
    return f'{name(before)} → <span class="up">{name(after)}</span>'


def _positives(entry: Mapping[str, Any]) -> str:
    if "true_positives" not in entry:
        return "—"
    return f"{_n(entry['true_positives'])} / {_n(entry['false_positives'])}"


def _labels(labels: Mapping[str, Any] | None) -> str:
    if labels is None:
        return ""
    kind = "complete (every event is labelled)" if labels.get("complete") else "partial (unlabelled events are unknown)"
    return (
        "<section>\n<h2>Labels 标注</h2>\n"
        f'<dl class="facts"><dt>source</dt><dd><code>{_e(labels["source"])}</code>, {kind}</dd>'
        f"<dt>fraud 欺诈</dt><dd>{_n(labels['positives'])}</dd>"
        f"<dt>legitimate 正常</dt><dd>{_n(labels['negatives'])}</dd>"
        f"<dt>unknown 未知</dt><dd>{_n(labels['unknown'])}</dd></dl>\n</section>"
    )


def _examples(changes: Mapping[str, Any]) -> str:
    examples: Mapping[str, Sequence[Mapping[str, Any]]] = changes.get("examples") or {}
    if not examples:
        return ""
    order = [c for c in CHANGES if c in examples] + sorted(set(examples) - set(CHANGES))
    parts = [
        "<section>\n<h2>Examples 示例</h2>",
        "<p>The first events of each change, with the values the rules that differ read.</p>",
    ]
    for change in order:
        count = changes.get("matrix", {}).get(change)
        heading = f"{_e(change)}" + (f' <span class="muted">({_n(count)} events)</span>' if count is not None else "")
        colour = CHANGE_COLOURS.get(change, "#808b96")
        parts.append(f'<h3 style="border-left: 6px solid {colour}; padding-left: 6px">{heading}</h3>')
        parts.append(
            _table(
                ["decision id", "time", "kind", "baseline rules", "candidate rules", "values"],
                (
                    [
                        f"<code>{_e(x['decision_id'])}</code>",
                        _e(x["occurred_at"]),
                        _e(x["kind"]),
                        _rules_list(x["baseline"]["rules"]),
                        _rules_list(x["candidate"]["rules"]),
                        "<br>".join(
                            f"<code>{_e(name)}</code> = {_e(_value(v))}" for name, v in x.get("values", {}).items()
                        )
                        or '<span class="muted">—</span>',
                    ]
                    for x in examples[change]
                ),
                css="examples",
            )
        )
    parts.append("</section>")
    return "\n".join(parts)
