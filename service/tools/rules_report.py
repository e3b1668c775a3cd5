"""`riskgate rules report`: what each rule did over a period, from the decision log.

    riskgate rules report --since 7d [--until TIME] [--rules DIR] [--json]

Per rule of the rules directory (and any rule the log names that the directory no longer has):
how often it fired enforced and in shadow, its share of the events of the kinds it screens,
the outcomes of the decisions it fired in, and what happened after them: the mix of those
decisions' dispositions (`riskgate.v1.Dispositions/Report`, each decision counted by its
latest) and the rule's **precision**, positives / (positives + negatives) over the decisions it
fired in (enforced and shadow) that have one, with that number `n` (`service.dispositions`
says which dispositions are positive, negative or pending; pending ones count neither way).
A rule that never fired is listed too: a candidate to retire, or a sign that its counter or
list is not fed. The evidence a rule author needs to promote a shadow rule or retire a noisy one.

The aggregation (`tally`) is pure; the command reads the dispositions reported since `--since`
(a disposition comes after its decision, so later ones count too), then the log stream from
Redis in batches, never holding more than a batch of entries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from service.clock import SystemClock
from service.dispositions import DISPOSITION_CLASS, Disposition
from service.durations import seconds_of
from service.errors import InvalidValue, SourceError
from service.redis.connection import hasher_for, tool_connection
from service.riskdata.dispositions import disposition_document, stream_key_of
from service.riskdata.records import LOG_STREAM, entry_document
from service.rules.directory import load_directory
from service.settings import Settings
from service.tools.admin import read_stream, stream_id


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """What the rules directory says of a rule."""

    rule_id: str
    outcome: str
    shadow: bool
    kinds: tuple[str, ...]


@dataclass(slots=True)
class RuleTally:
    rule_id: str
    info: RuleInfo | None  # None: the log names it, the rules directory does not (any more)
    fires: int = 0
    shadow_fires: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # of the decisions it fired in
    dispositions: Counter[Disposition] = field(default_factory=Counter)  # their latest dispositions

    def _count(self, label: bool | None) -> int:
        return sum(n for d, n in self.dispositions.items() if DISPOSITION_CLASS[d] is label)

    @property
    def positives(self) -> int:
        return self._count(True)

    @property
    def negatives(self) -> int:
        return self._count(False)

    @property
    def pending(self) -> int:
        return self._count(None)

    @property
    def disposed(self) -> int:
        """The decisions it fired in whose disposition says whether it was right: precision's n."""
        return self.positives + self.negatives

    @property
    def precision(self) -> float | None:
        return self.positives / self.disposed if self.disposed else None

    def share(self, events_by_kind: Mapping[str, int]) -> float | None:
        """Fires (enforced and shadow) per event of the kinds the rule screens."""
        kinds = self.info.kinds if self.info is not None else tuple(events_by_kind)
        events = sum(events_by_kind.get(kind, 0) for kind in kinds)
        return (self.fires + self.shadow_fires) / events if events else None


@dataclass(slots=True)
class Report:
    decisions: int = 0
    degraded: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    revisions: Counter[str] = field(default_factory=Counter)
    rules: dict[str, RuleTally] = field(default_factory=dict)
    # decision id -> its latest disposition (`latest_dispositions`)
    labels: Mapping[str, Disposition] = field(default_factory=dict)
    by_disposition: Counter[Disposition] = field(default_factory=Counter)  # of the decisions in the period

    @classmethod
    def of(cls, rules: Iterable[RuleInfo], labels: Mapping[str, Disposition] | None = None) -> Report:
        return cls(rules={info.rule_id: RuleTally(info.rule_id, info) for info in rules}, labels=labels or {})

    def add(self, entry: Mapping[str, Any]) -> None:
        """Count one decision-log entry, as `service.riskdata.records.entry_document` reads it."""
        self.decisions += 1
        disposition = self.labels.get(entry.get("decision_id", ""))
        if disposition is not None:
            self.by_disposition[disposition] += 1
        outcome = entry.get("outcome", "")
        self.by_kind[entry.get("kind", "")] += 1
        self.by_outcome[outcome] += 1
        self.revisions[entry.get("revision", "")] += 1
        if entry.get("degraded"):
            self.degraded += 1
        for fired in entry.get("rules", ()):
            rule_id = fired.removeprefix("~")
            rule = self.rules.get(rule_id)
            if rule is None:
                rule = self.rules[rule_id] = RuleTally(rule_id, None)
            if fired.startswith("~"):
                rule.shadow_fires += 1
            else:
                rule.fires += 1
            rule.outcomes[outcome] += 1
            if disposition is not None:
                rule.dispositions[disposition] += 1

    def ordered(self) -> list[RuleTally]:
        """Busiest first; rules that never fired last, by id."""
        return sorted(self.rules.values(), key=lambda t: (-(t.fires + t.shadow_fires), t.rule_id))

    def document(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "degraded": self.degraded,
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_outcome": dict(sorted(self.by_outcome.items())),
            "revisions": dict(sorted(self.revisions.items())),
            "by_disposition": _named(self.by_disposition),
            "rules": [
                {
                    "rule_id": t.rule_id,
                    "in_rules_directory": t.info is not None,
                    "outcome": t.info.outcome if t.info else None,
                    "shadow": t.info.shadow if t.info else None,
                    "kinds": list(t.info.kinds) if t.info else None,
                    "fires": t.fires,
                    "shadow_fires": t.shadow_fires,
                    "share_of_events": t.share(self.by_kind),
                    "outcomes": dict(sorted(t.outcomes.items())),
                    "dispositions": _named(t.dispositions),
                    "positives": t.positives,
                    "negatives": t.negatives,
                    "pending": t.pending,
                    "disposed": t.disposed,
                    "precision": t.precision,
                }
                for t in self.ordered()
            ],
        }


def _named(counts: Mapping[Disposition, int]) -> dict[str, int]:
    return {d.value: n for d, n in sorted(counts.items())}


def tally(
    entries: Iterable[Mapping[str, Any]],
    rules: Iterable[RuleInfo],
    labels: Mapping[str, Disposition] | None = None,
) -> Report:
    """The report of decision-log entries (as `entry_document` reads them), for the rules of a
    directory, with the decisions' latest dispositions (`labels`, by decision id)."""
    report = Report.of(rules, labels)
    for entry in entries:
        report.add(entry)
    return report


def latest_dispositions(documents: Iterable[Mapping[str, Any]]) -> dict[str, Disposition]:
    """Each decision's latest disposition, from dispositions-stream documents oldest first
    (`service.riskdata.dispositions.disposition_document`); values this version does not know
    are left out."""
    latest: dict[str, Disposition] = {}
    for document in documents:
        try:
            latest[document["decision_id"]] = Disposition(document["disposition"])
        except ValueError:
            continue
    return latest


def precision_text(tally: RuleTally) -> str:
    """`66.7% (n=3)`, or `—` when none of the decisions it fired in was disposed."""
    precision = tally.precision
    return "—" if precision is None else f"{precision:.1%} (n={tally.disposed:,})"


def render(report: Report, out: TextIO, since: str, until: str) -> None:
    """A table for people: one line per rule."""
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(report.by_kind.items())) or "none"
    print(f"{report.decisions:,} decisions from {since} to {until} ({kinds}); {report.degraded:,} degraded", file=out)
    if len(report.revisions) > 1:
        print("revisions: " + ", ".join(f"{r} ({n:,})" for r, n in sorted(report.revisions.items())), file=out)
    disposed = sum(report.by_disposition.values())
    mix = ", ".join(f"{d} {n:,}" for d, n in _named(report.by_disposition).items())
    print(f"{disposed:,} of them with a disposition" + (f" ({mix})" if mix else ""), file=out)
    print(
        f"{'rule':<36} {'outcome':<7} {'fires':>8} {'shadow':>8} {'share':>8} {'precision':>16}"
        "  decisions it fired in; their dispositions",
        file=out,
    )
    for t in report.ordered():
        share = t.share(report.by_kind)
        shown = "-" if share is None else f"{share:.2%}"
        what = (t.info.outcome + (" (shadow)" if t.info.shadow else "")) if t.info else "(gone)"
        mix = ", ".join(f"{outcome} {count:,}" for outcome, count in sorted(t.outcomes.items())) or "never fired"
        labels = ", ".join(f"{d} {n:,}" for d, n in _named(t.dispositions).items())
        precision = precision_text(t)
        print(
            f"{t.rule_id:<36} {what:<7} {t.fires:>8,} {t.shadow_fires:>8,} {shown:>8} {precision:>16}  {mix}"
            + (f"; {labels}" if labels else ""),
            file=out,
        )


def since_id(text: str, now: datetime) -> str:
    """A stream id for `--since`: an age (`30m`, `24h`, `7d`) before `now`, or an ISO 8601 time."""
    seconds = seconds_of(text)
    if seconds is not None:
        return str(int((now - timedelta(seconds=seconds)).timestamp() * 1000))
    return stream_id(text, "-")


def rule_infos(directory: Path) -> list[RuleInfo]:
    ruleset = load_directory(directory).ruleset
    return [
        RuleInfo(rule.id, rule.outcome.label, rule.shadow, tuple(sorted(kind.value for kind in rule.on)))
        for rule in ruleset.rules
    ]


def run_report(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)
    try:
        since = since_id(args.since, SystemClock().now())
        until = stream_id(args.until, "+")
    except InvalidValue as error:
        print(f"riskgate rules report: {error} (--since takes 30m, 24h, 7d or an ISO 8601 time)", file=sys.stderr)
        return 2
    directory = Path(args.rules) if args.rules else settings.rules_dir
    try:
        rules = rule_infos(directory)
    except SourceError as error:
        print(f"riskgate rules report: the rules directory has problems:\n{error}", file=sys.stderr)
        return 2

    async def read() -> Report:
        async with tool_connection(settings) as client:
            key = f"{hasher_for(settings).prefix}:log:{LOG_STREAM}"
            reported = read_stream(client, stream_key_of(key), since, "+")
            labels = latest_dispositions([disposition_document(i, f) async for i, f in reported])
            report = Report.of(rules, labels)
            async for entry_id, fields in read_stream(client, key, since, until):
                report.add(entry_document(entry_id, fields))
        return report

    report = asyncio.run(read())
    if args.json:
        print(json.dumps(report.document(), ensure_ascii=False, indent=2, sort_keys=True))
    else:
        render(report, sys.stdout, args.since, args.until or "now")
    return 0


def add_report_command(commands: Any) -> None:
    """Register `rules report` on the `rules` command's subparsers."""
    report = commands.add_parser(
        "report",
        help="per rule, from the decision log: fires, shadow fires, share of events, outcomes, dispositions, precision",
    )
    report.add_argument("--since", default="7d", help="30m, 24h, 7d (default) or an ISO 8601 time (China time)")
    report.add_argument("--until", help="an ISO 8601 time (default: now)")
    report.add_argument("--rules", help="the rules directory (default: $RISKGATE_RULES_DIR)")
    report.add_argument("--json", action="store_true", help="the report as one JSON document")
    report.set_defaults(handler=run_report)
