"""`riskgate rules check DIR` and `riskgate rules test DIR` (and `report`, `breakers`, `rearm`).

The main CLI calls `add_rules_commands(subparsers)`; each registered command
stores `handler(args) -> int` (the exit code) in the parsed arguments, which
is how `service.tools.cli` dispatches every command.

Both commands load the directory as the server does (service.rules.directory):
the rule files, counters.yaml (the counter values rules may read, and the
counters' `where` filters) and lists.yaml (the watchlists rules may name).
`--counter NAME` accepts a counter name that counters.yaml does not declare
yet, for rules written before their counter.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from service.domain import Outcome
from service.errors import SourceError
from service.pipeline.money import ExchangeRates
from service.rules.cases import load_cases, run_cases
from service.rules.compiler import compile_ruleset
from service.rules.directory import load_directory
from service.rules.engine import build_ruleset
from service.rules.model import RuleSet
from service.tools.breakers import add_breaker_commands
from service.tools.rules_report import add_report_command


def _print_problems(error: SourceError, out: TextIO) -> None:
    for problem in error.problems:
        print(problem, file=out)
    count = len(error.problems)
    print(f"{count} problem{'s' if count != 1 else ''}", file=out)


def run_check(
    directory: str | Path,
    *,
    extra_counters: Iterable[str] = (),
    out: TextIO | None = None,
) -> int:
    """Validate the directory (rules, cases, counters.yaml with its filters, lists.yaml) and build the
    rules in durable_rules; 0 if all is well."""
    out = out or sys.stdout
    try:
        loaded = load_directory(directory, extra_counters=extra_counters)
        ruleset = loaded.ruleset
        cases = load_cases(directory, ruleset)
        compiled = build_ruleset(compile_ruleset(ruleset))
    except SourceError as exc:
        _print_problems(exc, out)
        return 1
    compiled.close()
    rules = ruleset.rules
    enabled = [r for r in rules if r.enabled]
    shadow = sum(1 for r in enabled if r.shadow)
    unfounded = [r.id for r in rules if not r.basis]
    if unfounded:
        print(f"note: no 'basis' (law article or practice) for {', '.join(unfounded)}", file=out)
    _print_breakers(ruleset, out)
    counters = loaded.counter_spec.counters
    print(
        f"ok: {len(rules)} rules ({len(enabled)} enabled, {shadow} shadow) in {len(ruleset.files)} files, "
        f"{len(cases)} cases; {len(counters)} counters ({len(loaded.filters)} where filters), "
        f"{len(loaded.lists)} lists; {_rates_summary(loaded.rates)}; revision {ruleset.revision}; "
        f"{compiled.shard_count} durable rulesets",
        file=out,
    )
    return 0


def _print_breakers(ruleset: RuleSet, out: TextIO) -> None:
    """One line on the rule breakers, when any rule has one: how many of the enforced block rules
    they guard, and each distinct breaker with how many rules it guards."""
    watches = ruleset.breaker_watches
    if not watches:
        return
    blocking = sum(1 for r in ruleset.rules if r.enabled and not r.shadow and r.outcome is Outcome.BLOCK)
    kinds = Counter(str(w.breaker) for w in watches)
    shown = "; ".join(f"{text} ({count})" for text, count in kinds.most_common())
    print(f"breakers: {len(watches)} of {blocking} enforced block rules; {shown}", file=out)


def run_test(
    directory: str | Path,
    *,
    extra_counters: Iterable[str] = (),
    out: TextIO | None = None,
) -> int:
    """Run every case under `directory`; 0 when all pass."""
    out = out or sys.stdout
    try:
        ruleset = load_directory(directory, extra_counters=extra_counters).ruleset
        cases = load_cases(directory, ruleset)
        compiled = build_ruleset(compile_ruleset(ruleset))
    except SourceError as exc:
        _print_problems(exc, out)
        return 1
    try:
        report = run_cases(compiled, cases)
    finally:
        compiled.close()
    for failure in report.failures:
        print(failure.render(), file=out)
    if report.never_fired:
        print(f"note: no case fires {', '.join(report.never_fired)}", file=out)
    if report.never_quiet:
        print(f"note: no near-miss case (same event kind, rule quiet) for {', '.join(report.never_quiet)}", file=out)
    passed = len(report.cases) - len(report.failures)
    print(f"{len(report.cases)} cases: {passed} passed, {len(report.failures)} failed", file=out)
    return 0 if report.ok else 1


def add_rules_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `rules check DIR`, `rules test DIR` and `rules report` on the CLI's subparsers."""
    rules = subparsers.add_parser("rules", help="check and test a rules directory; report what its rules did")
    commands = rules.add_subparsers(dest="rules_command", required=True, metavar="{check,test,report,breakers,rearm}")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "directory", help="the rules directory (*.rules.yaml, *.cases.yaml, counters.yaml, lists.yaml)"
        )
        parser.add_argument(
            "--counter",
            action="append",
            default=[],
            metavar="NAME",
            help="accept a counter value name that counters.yaml does not declare yet (repeatable)",
        )

    check = commands.add_parser(
        "check", help="validate rule, case, counter and list files; print every file:line: problem"
    )
    common(check)

    def do_check(args: argparse.Namespace) -> int:
        return run_check(args.directory, extra_counters=args.counter)

    check.set_defaults(handler=do_check)

    test = commands.add_parser("test", help="run the *.cases.yaml cases against the rules")
    common(test)

    def do_test(args: argparse.Namespace) -> int:
        return run_test(args.directory, extra_counters=args.counter)

    test.set_defaults(handler=do_test)
    add_report_command(commands)
    add_breaker_commands(commands)


def _rates_summary(rates: ExchangeRates) -> str:
    if not rates.rates:
        return (
            "CNY only (no rates.yaml)"
            if rates.as_of is None
            else f"CNY only (rates.yaml as of {rates.as_of} gives none)"
        )
    return f"{len(rates.rates)} exchange rates as of {rates.as_of}"
