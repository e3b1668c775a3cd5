"""`riskgate backtest`: what a changed rules directory would have decided on recorded history.

    riskgate backtest --candidate DIR [--baseline DIR] --history PATH [--since T] [--until T]
                      [--labels FILE] [--json FILE] [--html FILE]
                      [--max-new-blocks N|P%] [--max-new-warns N|P%] [--max-changed N|P%]

Exit codes: 0 the backtest ran (and every gate passed), 1 a gate failed, 2 bad options or an
unreadable history, labels file or rules directory (named with file and line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.backtest.compare import Limit, compare, gate, parse_limit, read_labels
from service.backtest.events import Events
from service.backtest.html import render
from service.backtest.replay import CounterReplay
from service.backtest.run import Engine, Ruleset, evaluate, select
from service.domain import CHINA_TZ, Outcome
from service.durations import seconds_of
from service.errors import ConfigError, InvalidValue, SourceError
from service.riskdata.history import read_rows
from service.settings import FailPolicy, Settings

EXIT_GATE = 1
EXIT_USAGE = 2


def parse_time(text: str | None, now: datetime) -> datetime | None:
    """'7d' (that long before now), or an ISO 8601 time (China time when it has no offset)."""
    if not text:
        return None
    seconds = seconds_of(text)
    if seconds is not None:
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidValue(f"{text!r} is neither a length of time (7d) nor an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=CHINA_TZ)


def _limits(args: argparse.Namespace) -> list[Limit]:
    limits = []
    for measure, text in (
        ("new_blocks", args.max_new_blocks),
        ("new_warns", args.max_new_warns),
        ("changed", args.max_changed),
    ):
        if text is not None:
            limits.append(parse_limit(measure, text))
    return limits


def _percent(share: float) -> str:
    return f"{share:.2%}"


def summary(report: Mapping[str, Any]) -> str:
    """The report for a terminal: what a rule author reads first."""
    history, changes, agreement = report["history"], report["changes"], report["agreement"]
    base, cand = report["baseline"], report["candidate"]
    lines = [
        f"history: {history['events_compared']:,} events compared of {history['events_read']:,} read"
        + (f", {history['degraded']:,} decided degraded" if history["degraded"] else ""),
    ]
    if history["too_short"]:
        lines.append(f"  warning: {history['too_short']}")
    if agreement["compared"]:
        lines.append(
            f"agreement: baseline {agreement['revision']} reproduces"
            f" {agreement['compared'] - agreement['mismatches']:,} of {agreement['compared']:,} decisions it made"
            f" ({agreement['mismatches']} mismatches, {agreement['counter_mismatches']} with other counter values)"
        )
    else:
        revisions = ", ".join(f"{r} ({n:,})" for r, n in history["revisions"].items())
        lines.append(
            f"agreement: not checked: no event compared was decided by the baseline's revision"
            f" {agreement['revision']} (the history's: {revisions})"
        )
    for example in agreement["examples"]:
        lines.append(
            f"  {example['decision_id']}: recorded {example['recorded']['outcome']} {example['recorded']['rules']},"
            f" replayed {example['replayed']['outcome']} {example['replayed']['rules']}"
        )
    lines.append("outcomes        allow      warn     block")
    for name, entry in (("baseline", base), ("candidate", cand)):
        o = entry["outcomes"]
        lines.append(f"  {name:<10}{o['allow']:>10,}{o['warn']:>10,}{o['block']:>10,}   {entry['revision']}")
    lines.append(
        f"changed: {changes['changed']:,} outcomes ({_percent(changes['changed_share'])}); new blocks"
        f" {changes['new_blocks']:,} ({_percent(changes['new_blocks_share'])}), new warnings {changes['new_warns']:,}"
        f" ({_percent(changes['new_warns_share'])}); fired rules differ on {changes['changed_rules']:,} events"
    )
    for change, count in changes["matrix"].items():
        if count:
            lines.append(f"  {change:<14}{count:>8,}")
            for example in changes["examples"].get(change, [])[:2]:
                values = ", ".join(f"{k}={v}" for k, v in example["values"].items())
                lines.append(
                    f"      e.g. {example['decision_id']} {example['kind']}: {example['baseline']['rules']} →"
                    f" {example['candidate']['rules']}" + (f" ({values})" if values else "")
                )
    labelled = report["labels"] is not None
    width = max([len(row["rule_id"]) for row in report["rules"]] + [4]) + 2
    header = f"  {'rule':<{width}}{'baseline':>18}{'candidate':>18}"
    lines.append("rules (enforced/shadow fires" + (", precision, recall" if labelled else "") + "):")
    lines.append(header + ("   precision  recall" if labelled else ""))
    for row in report["rules"]:
        b, c = row["baseline"], row["candidate"]
        if not (b["enforced"] or b["shadow"] or c["enforced"] or c["shadow"]):
            continue
        text = f"  {row['rule_id']:<{width}}" + "".join(f"{e['enforced']:>10,}/{e['shadow']:<7,}" for e in (b, c))
        if labelled:
            text += f"  {_maybe(c.get('precision')):>9}  {_maybe(c.get('recall')):>6}"
        lines.append(text)
    quiet = [
        row["rule_id"]
        for row in report["rules"]
        if not any(row[n]["enforced"] or row[n]["shadow"] for n in ("baseline", "candidate"))
    ]
    if quiet:
        lines.append(f"  never fired: {', '.join(quiet)}")
    for name, entry in (("baseline", base), ("candidate", cand)):
        for check, count in entry["unobserved_list_checks"].items():
            lines.append(
                f"  note: {name} checks list {check}, which the served rules did not: taken as a miss"
                f" on {count:,} events"
            )
        if entry["approximate_distinct_events"]:
            lines.append(
                f"  note: {entry['approximate_distinct_events']:,} events read a distinct() count above its"
                " exact_up_to: HyperLogLog online (±0.81 %), exact here"
            )
    for name, entry in (report.get("engine") or {}).items():
        if entry["note"]:
            lines.append(f"  note: {name} {entry['note']}")
    if report.get("gate"):
        failed = report["gate"]["failed"]
        lines.append(
            "gate: "
            + ("FAILED: " + "; ".join(failed) if failed else "passed (" + ", ".join(report["gate"]["limits"]) + ")")
        )
    return "\n".join(lines)


def _maybe(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def run_backtest(
    *,
    candidate_dir: str,
    baseline_dir: str,
    history_path: str,
    since: datetime | None,
    until: datetime | None,
    labels_path: str | None,
    limits: Sequence[Limit],
    fail_outcome: Outcome,
    engine: Engine = Engine.VECTOR,
) -> dict[str, Any]:
    """The report document of one backtest (`service.backtest.compare`), timings included."""
    started = time.perf_counter()
    labels = read_labels(labels_path) if labels_path else None
    # Every event up to `until`: the ones before `since` warm the counters.
    events = Events(*read_rows(history_path, until=until))
    read = time.perf_counter()
    with Ruleset(baseline_dir, engine) as baseline, Ruleset(candidate_dir, engine) as candidate:
        history = select(events, since, until, baseline, candidate)
        if not len(history.selected):
            # A gate passed on nothing would wave any change through.
            span = f" from {since.isoformat()}" if since else ""
            span += f" until {until.isoformat()}" if until else ""
            raise InvalidValue(f"{history_path}: no logged decision to compare{span} ({events.n} read)")
        base_replay = CounterReplay(baseline.active.counter_spec, baseline.active.where, events)
        prepared = time.perf_counter()
        base = evaluate(baseline, events, history.selected, fail_outcome=fail_outcome, replay=base_replay)
        other_rates = baseline.rates_text != candidate.rates_text
        same_counters = baseline.counters_text == candidate.counters_text and not other_rates
        cand = evaluate(
            candidate,
            events,
            history.selected,
            fail_outcome=fail_outcome,
            observed_checks=baseline.active.ruleset.list_checks,
            replay=base_replay if same_counters else None,
            reconvert=other_rates,
        )
        evaluated = time.perf_counter()
        report = compare(history, baseline, base, candidate, cand, labels)
    done = time.perf_counter()
    if limits:
        report["gate"] = {"limits": [limit.text for limit in limits], "failed": gate(report, limits)}
    compared = len(history.selected)
    report["engine"] = {
        name: {"engine": ruleset_engine, "note": note}
        for name, ruleset_engine, note in (
            ("baseline", baseline.engine.value, baseline.engine_note),
            ("candidate", candidate.engine.value, candidate.engine_note),
        )
    }
    report["timing"] = {
        "events_read": events.n,
        "read_seconds": round(read - started, 3),
        "replay_setup_seconds": round(prepared - read, 3),
        "evaluate_seconds": round(evaluated - prepared, 3),
        "kernel_seconds": round(base.values.kernel_seconds + cand.values.kernel_seconds, 3),
        "report_seconds": round(done - evaluated, 3),
        "events_per_second": round(compared / (done - started)) if done > started else None,
    }
    return report


def _backtest(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        since, until = parse_time(args.since, now), parse_time(args.until, now)
        limits = _limits(args)
    except InvalidValue as error:
        print(f"riskgate backtest: {error}", file=sys.stderr)
        return EXIT_USAGE
    baseline, policy = args.baseline, args.fail_policy
    if baseline is None or policy is None:
        try:
            settings = Settings.from_env(os.environ)
        except ConfigError as error:
            print(f"riskgate backtest: {error}", file=sys.stderr)
            return EXIT_USAGE
        baseline = baseline or str(settings.rules_dir)
        policy = policy or settings.fail_policy.value
    fail = Outcome.BLOCK if policy == FailPolicy.BLOCK.value else Outcome.WARN
    try:
        report = run_backtest(
            candidate_dir=args.candidate,
            baseline_dir=baseline,
            history_path=args.history,
            since=since,
            until=until,
            labels_path=args.labels,
            limits=limits,
            fail_outcome=fail,
            engine=Engine(args.engine),
        )
    except SourceError as error:
        print(f"riskgate backtest: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (InvalidValue, ValueError, OSError) as error:
        print(f"riskgate backtest: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if args.html:
        Path(args.html).write_text(render(report), encoding="utf-8")
    if args.json or args.html:
        print(f"written: {', '.join(p for p in (args.json, args.html) if p)}", file=sys.stderr)
    return EXIT_GATE if report.get("gate", {}).get("failed") else 0


def add_backtest_command(commands: Any) -> None:
    parser = commands.add_parser(
        "backtest",
        help="replay recorded decisions through a baseline and a candidate rules directory and compare",
        description=(
            "Replay the decision history (an archive directory, a Parquet file or a JSON Lines export) through"
            " the baseline rules directory (default: RISKGATE_RULES_DIR) and a candidate, with counters recomputed"
            " as of each event, and report what the candidate changes. Exit 1 when a --max-* gate fails, 2 for"
            " bad options or unreadable inputs."
        ),
    )
    parser.add_argument("--candidate", required=True, help="the changed rules directory")
    parser.add_argument("--baseline", help="the rules directory to compare with (default: RISKGATE_RULES_DIR)")
    parser.add_argument("--history", required=True, help="archive directory, .parquet file or .jsonl export")
    parser.add_argument("--since", help="compare events from this time: 7d (before now) or ISO 8601 (China time)")
    parser.add_argument("--until", help="compare events before this time: 1d (before now) or ISO 8601")
    parser.add_argument("--labels", help="labels: `riskgate synth --labels` output or a dispositions export")
    parser.add_argument("--json", help="write the full report as JSON here")
    parser.add_argument("--html", help="write a self-contained HTML report here")
    parser.add_argument(
        "--fail-policy",
        choices=[p.value for p in FailPolicy],
        help="the outcome of decisions made without risk data (default: RISKGATE_FAIL_POLICY, as served)",
    )
    parser.add_argument(
        "--engine",
        choices=[e.value for e in Engine],
        default=Engine.VECTOR.value,
        help="evaluate rules over columns in NumPy (vector, default: fires exactly what durable_rules fires)"
        " or with durable_rules event by event (durable: slower, the cross-check)",
    )
    parser.add_argument("--max-new-blocks", metavar="N|P%", help="gate: at most this many (or share of) new blocks")
    parser.add_argument("--max-new-warns", metavar="N|P%", help="gate: at most this many new warnings (allow→warn)")
    parser.add_argument("--max-changed", metavar="N|P%", help="gate: at most this many changed outcomes")
    parser.set_defaults(handler=_backtest)
