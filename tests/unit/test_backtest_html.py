"""The HTML report of a backtest: one self-contained, escaped, well-formed page of the report document."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from typing import Any

from service.backtest.html import render

EVIL = "<script>alert(1)</script>"
EVIL_DIRECTORY = '/rules/"><img src=x onerror=alert(2)>'


def sample_report() -> dict[str, Any]:
    """A report as `service.backtest.compare.compare` builds it, with hostile strings where files put text."""
    return {
        "history": {
            "events_read": 1_250_000,
            "events_compared": 1_234_567,
            "since": "2026-10-01T00:00:00+08:00",
            "until": "2026-10-08T00:00:00+08:00",
            "first_event": "2026-09-30T12:00:00+08:00",
            "longest_window_seconds": 86400 * 2,
            "too_short": "the history starts 2026-09-30T12:00:00+08:00, less than the longest window (2 days)",
            "revisions": {"r-2026-09-30": 1_234_000, "r-old": 567},
            "degraded": 3,
        },
        "baseline": {
            "directory": EVIL_DIRECTORY,
            "revision": "r-2026-09-30",
            "outcomes": {"allow": 1_200_000, "warn": 30_000, "block": 4_567},
            "replay_rounds": 1,
            "approximate_distinct_events": 0,
            "unobserved_list_checks": 0,
        },
        "candidate": {
            "directory": "changed-rules/",
            "revision": "r-candidate",
            "outcomes": {"allow": 1_198_000, "warn": 31_000, "block": 5_567},
            "replay_rounds": 1,
            "approximate_distinct_events": 0,
            "unobserved_list_checks": 0,
        },
        "agreement": {
            "revision": "r-2026-09-30",
            "compared": 1_234_000,
            "mismatches": 2,
            "counter_mismatches": 1,
            "examples": [
                {
                    "decision_id": "dec-agree-1",
                    "occurred_at": "2026-10-02T10:00:00+08:00",
                    "recorded": {"outcome": "warn", "rules": ["large_transfer"]},
                    "replayed": {"outcome": "allow", "rules": []},
                    "counters": {"transfers_24h": [5, 4]},
                }
            ],
        },
        "rules": [
            {
                "rule_id": EVIL,
                "baseline": {
                    "mode": "enforce",
                    "enforced": 1000,
                    "shadow": 0,
                    "true_positives": 0,
                    "false_positives": 0,
                    "precision": None,
                    "recall": None,
                },
                "candidate": {
                    "mode": "enforce",
                    "enforced": 1000,
                    "shadow": 0,
                    "true_positives": 0,
                    "false_positives": 0,
                    "precision": None,
                    "recall": None,
                },
            },
            {
                "rule_id": "night_transfer",
                "baseline": {
                    "mode": "shadow",
                    "enforced": 0,
                    "shadow": 2_500,
                    "true_positives": 40,
                    "false_positives": 60,
                    "precision": 0.4,
                    "recall": 0.25,
                },
                "candidate": {
                    "mode": "enforce",
                    "enforced": 3_500,
                    "shadow": 0,
                    "true_positives": 50,
                    "false_positives": 50,
                    "precision": 0.5,
                    "recall": 0.3125,
                },
            },
        ],
        "changes": {
            "events": 1_234_567,
            "changed": 4_000,
            "changed_share": 4_000 / 1_234_567,
            "changed_rules": 5_000,
            "new_blocks": 1_000,
            "new_blocks_share": 1_000 / 1_234_567,
            "new_warns": 2_900,
            "new_warns_share": 2_900 / 1_234_567,
            "matrix": {
                "allow→warn": 2_900,
                "allow→block": 600,
                "warn→allow": 500,
                "warn→block": 400,
                "block→allow": 0,
                "block→warn": 0,
            },
            "by": {
                "kind": {
                    "transfer": {"allow→warn": 2_900, "allow→block": 600, "warn→block": 400},
                    EVIL: {"warn→allow": 500},
                },
                "institution": {f"bank{i:02d}": {"allow→warn": 100 - i} for i in range(25)},
                "outlet": {"bank00/outlet-7": {"allow→block": 600}},
                "region": {"110101": {"allow→warn": 2_900}},
                "hour": {f"{h:02d}": {"allow→warn": 100 + h, "allow→block": 10 * (h % 3)} for h in range(0, 24, 2)},
            },
            "examples": {
                "allow→block": [
                    {
                        "decision_id": "dec-0001",
                        "occurred_at": "2026-10-03T02:15:00+08:00",
                        "kind": "transfer",
                        "baseline": {"outcome": "allow", "rules": ["~night_transfer"]},
                        "candidate": {"outcome": "block", "rules": ["night_transfer"]},
                        "values": {"amount_cny": 50_000.5, "transfers_24h": 12_345, "note": EVIL, "device_new": True},
                    }
                ],
                "warn→allow": [
                    {
                        "decision_id": "dec-0002",
                        "occurred_at": "2026-10-04T11:00:00+08:00",
                        "kind": "transfer",
                        "baseline": {"outcome": "warn", "rules": ["large_transfer"]},
                        "candidate": {"outcome": "allow", "rules": []},
                        "values": {"amount_cny": None},
                    }
                ],
            },
        },
        "labels": {"source": "labels.jsonl", "complete": True, "positives": 160, "negatives": 1_234_407, "unknown": 0},
        "gate": {"limits": ["new blocks at most 0.1%"], "failed": []},
    }


HTML_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "header",
    "footer",
    "section",
    "h1",
    "h2",
    "h3",
    "p",
    "div",
    "span",
}
HTML_TAGS |= {"dl", "dt", "dd", "table", "thead", "tbody", "tr", "th", "td", "code", "strong", "ul", "li", "br"}
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}
SVG_LEAVES = {"rect", "line", "path", "circle"}


class _Balance(HTMLParser):
    """Checks that every element is closed in order (a broken table breaks the printed report)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]} at {self.getpos()}")
        else:
            self.stack.pop()


def _parse(page: str) -> _Balance:
    parser = _Balance()
    parser.feed(page)
    parser.close()
    return parser


def _text(fragment: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment)).strip()


def _row_of(page: str, marker: str) -> str:
    """The <tr> holding `marker`."""
    index = page.index(marker)
    return page[page.rindex("<tr", 0, index) : page.index("</tr>", index)]


def test_the_page_is_one_well_formed_document() -> None:
    page = render(sample_report())
    assert page.startswith("<!DOCTYPE html>\n")
    parser = _parse(page)
    assert parser.problems == []
    assert parser.stack == []
    ids = [attrs["id"] for _, attrs in parser.tags if attrs.get("id")]
    assert len(ids) == len(set(ids)), "duplicate element ids"


def test_it_is_self_contained() -> None:
    page = render(sample_report())
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    tags = _parse(page).tags
    assert [(tag, attrs) for tag, attrs in tags if {"src", "href", "srcset", "data", "action"} & set(attrs)] == []
    assert {tag for tag, _ in tags} <= {*HTML_TAGS, "svg", "title", "desc", "rect", "line", "text"}
    assert re.findall(r"https?://[^\s\"'<>]+", page) == ["http://www.w3.org/2000/svg"] * 2  # the SVG namespace
    assert "url(" not in page
    assert "@import" not in page


def test_every_string_from_the_files_is_escaped() -> None:
    page = render(sample_report())
    assert EVIL not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # rule id, kind value, example value
    assert "/rules/&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page  # directory, also in <title>
    assert page.count("&lt;script&gt;") >= 3


def test_the_header_names_both_rulesets_the_period_and_the_events() -> None:
    page = render(sample_report())
    header = page[page.index("<header>") : page.index("</header>")]
    assert "changed-rules/" in header
    assert "r-2026-09-30" in header
    assert "r-candidate" in header
    assert "2026-10-01T00:00:00+08:00 → 2026-10-08T00:00:00+08:00" in header
    assert "1,234,567" in header


def test_a_too_short_history_is_a_warning_and_a_long_enough_one_is_not() -> None:
    report = sample_report()
    assert 'id="too-short"' in render(report)
    assert "less than the longest window (2 days)" in render(report)
    report["history"]["too_short"] = ""
    assert 'id="too-short"' not in render(report)


def test_disagreement_with_the_log_is_an_alert_with_its_examples() -> None:
    report = sample_report()
    page = render(report)
    agreement = page[page.index('id="agreement"') : page.index("<h2>Outcomes")]
    assert 'class="box bad"' in page[page.index('id="agreement"') - 40 : page.index('id="agreement"')]
    assert "dec-agree-1" in agreement
    assert "transfers_24h</code> 5 → 4" in agreement
    report["agreement"].update(mismatches=0, counter_mismatches=0, examples=[])
    page = render(report)
    assert "The replay reproduces the log" in page
    assert "dec-agree-1" not in page
    report["agreement"]["compared"] = 0
    assert "Not checked" in render(report)


def test_the_change_matrix_counts_from_rows_to_columns_with_the_unchanged_on_the_diagonal() -> None:
    page = render(sample_report())
    cells = {
        (f, t): n
        for f, t, n in re.findall(r'<td class="num[^"]*" data-from="(\w+)" data-to="(\w+)"[^>]*>([\d,]+)</td>', page)
    }
    assert len(cells) == 9
    assert cells["allow", "warn"] == "2,900"
    assert cells["allow", "block"] == "600"
    assert cells["warn", "allow"] == "500"
    assert cells["block", "allow"] == "0"
    assert cells["allow", "allow"] == f"{1_200_000 - 3_500:,}"  # the baseline's allows that stayed
    assert cells["warn", "warn"] == f"{30_000 - 900:,}"
    assert cells["block", "block"] == "4,567"


def test_outcome_totals_and_charts_are_labelled_for_screen_readers() -> None:
    page = render(sample_report())
    outcomes = page[page.index('<table class="outcomes">') :]
    assert "1,200,000" in _row_of(outcomes, "allow 放行")
    assert "(-2,000)" in _row_of(outcomes, "allow 放行")
    assert "(+1,000)" in _row_of(outcomes, "block 拦截")
    for chart in ("chart-outcomes", "chart-hours"):
        svg = page[page.index(f'<svg id="{chart}"') : page.index("</svg>", page.index(f'<svg id="{chart}"'))]
        assert 'role="img"' in svg
        assert f'aria-labelledby="{chart}-title {chart}-desc"' in svg
        assert f'<title id="{chart}-title">' in svg
        assert f'<desc id="{chart}-desc">' in svg
    assert page.count('<rect class="bar"') == 6 + 12 + 8  # 3 outcomes × 2, and the hours' non-zero segments


def test_the_hour_chart_has_24_hours() -> None:
    page = render(sample_report())
    svg = page[page.index('<svg id="chart-hours"') : page.index("</svg>", page.index('<svg id="chart-hours"'))]
    labels = re.findall(r'text-anchor="middle">(\d\d)</text>', svg)
    assert labels == [f"{h:02d}" for h in range(24)]
    assert "<title>02:00, allow→block: 20</title>" in svg


def test_breakdowns_show_the_top_20_and_say_how_many_more() -> None:
    page = render(sample_report())
    table = page[
        page.index('<table class="by-institution">') : page.index(
            "</table>", page.index('<table class="by-institution">')
        )
    ]
    assert table.count("<tr>") == 1 + 20
    assert "bank00" in table
    assert "bank19" in table
    assert "bank20" not in table
    assert "and 5 more not shown" in page
    assert "<code>bank00/outlet-7</code>" in page


def test_rule_rows_show_modes_fires_with_their_delta_and_precision() -> None:
    page = render(sample_report())
    night = _text(_row_of(page, "<code>night_transfer</code>"))
    assert "shadow → enforce" in night
    assert "0 → 3,500 (+3,500)" in night
    assert "2,500 → 0 (-2,500)" in night
    assert "40 / 60 → 50 / 50" in night
    assert "40.0% → 50.0%" in night
    assert "25.0% → 31.2%" in night
    assert 'class="changed"' in _row_of(page, "<code>night_transfer</code>")
    evil = _row_of(page[page.index('<table class="rules"') :], "<code>&lt;script&gt;")
    assert "— → —" in _text(evil)
    assert 'class="changed"' not in evil
    assert "1,000" in evil


def test_without_labels_there_is_no_precision() -> None:
    report = sample_report()
    report["labels"] = None
    for rule in report["rules"]:
        for side in ("baseline", "candidate"):
            for key in ("true_positives", "false_positives", "precision", "recall"):
                del rule[side][key]
    page = render(report)
    assert "precision 精确率" not in page
    assert "No labels were given" in page
    assert "<h2>Labels" not in page


def test_examples_per_change_class_with_the_values() -> None:
    page = render(sample_report())
    examples = page[page.index("<h2>Examples") :]
    assert examples.index("allow→block") < examples.index("warn→allow")  # stricter changes first
    row = _text(_row_of(examples, "dec-0001"))
    assert "2026-10-03T02:15:00+08:00" in row
    assert "night_transfer (shadow)" in row
    assert "amount_cny = 50,000.5" in row
    assert "transfers_24h = 12,345" in row
    assert "device_new = true" in row
    assert "amount_cny = —" in _text(_row_of(examples, "dec-0002"))


def test_the_gate_banner() -> None:
    report = sample_report()
    assert "Gate passed" in render(report)
    report["gate"] = {"limits": ["new blocks at most 0.1%"], "failed": ["new blocks: 1000 (0.081%), more than <0.05%>"]}
    page = render(report)
    assert "Gate failed" in page
    assert "more than &lt;0.05%&gt;" in page
    del report["gate"]
    page = render(report)
    assert "Gate passed" not in page
    assert "Gate failed" not in page


def test_no_change_at_all_still_renders() -> None:
    report = copy.deepcopy(sample_report())
    changes = report["changes"]
    changes.update(changed=0, changed_share=0.0, new_blocks=0, new_blocks_share=0.0, new_warns=0, new_warns_share=0.0)
    changes["matrix"] = dict.fromkeys(changes["matrix"], 0)
    changes["by"] = {d: {} for d in changes["by"]}
    changes["examples"] = {}
    report["candidate"]["outcomes"] = dict(report["baseline"]["outcomes"])
    page = render(report)
    assert _parse(page).problems == []
    assert "No event changed its outcome." in page
    assert "<h2>Examples" not in page


def test_small_shares_keep_their_digits() -> None:
    page = render(sample_report())
    assert "0.081%" in _text(_row_of(page, "new blocks 新增拦截"))
