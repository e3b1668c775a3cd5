"""`riskgate rules check DIR` and `riskgate rules test DIR`.

The main CLI calls `add_rules_commands(subparsers, counters_provider=...)`;
each registered command stores `func(args) -> int` (the exit code) in the
parsed arguments, so the CLI dispatches with `sys.exit(args.func(args))`.

Counters: rules read counters by name, and the names come from the counters
module (`counters_provider(rules_dir)`, e.g. reading rules/counters.yaml);
`--counter NAME` declares more, for rules written before their counter.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TextIO

from service.errors import SourceError
from service.rules.cases import load_cases, run_cases
from service.rules.compiler import compile_ruleset
from service.rules.engine import build_ruleset
from service.rules.loader import load_rules
from service.rules.model import DEFAULT_LISTS, CounterInfo

CountersProvider = Callable[[Path], Mapping[str, CounterInfo]]


def _print_problems(error: SourceError, out: TextIO) -> None:
    for problem in error.problems:
        print(problem, file=out)
    count = len(error.problems)
    print(f"{count} problem{'s' if count != 1 else ''}", file=out)


def run_check(
    directory: str | Path,
    *,
    counters: Mapping[str, CounterInfo],
    lists: Iterable[str] = DEFAULT_LISTS,
    out: TextIO | None = None,
) -> int:
    """Validate the rules (and their cases) under `directory`, build them in durable_rules; 0 if all is well."""
    out = out or sys.stdout
    try:
        ruleset = load_rules(directory, counters=counters, lists=lists)
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
    print(
        f"ok: {len(rules)} rules ({len(enabled)} enabled, {shadow} shadow) in {len(ruleset.files)} files, "
        f"{len(cases)} cases; revision {ruleset.revision}; {compiled.shard_count} durable rulesets",
        file=out,
    )
    return 0


def run_test(
    directory: str | Path,
    *,
    counters: Mapping[str, CounterInfo],
    lists: Iterable[str] = DEFAULT_LISTS,
    out: TextIO | None = None,
) -> int:
    """Run every case under `directory`; 0 when all pass."""
    out = out or sys.stdout
    try:
        ruleset = load_rules(directory, counters=counters, lists=lists)
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


def _counters(args: argparse.Namespace, provider: CountersProvider | None) -> dict[str, CounterInfo]:
    declared: dict[str, CounterInfo] = dict(provider(Path(args.directory))) if provider else {}
    for name in args.counter:
        declared.setdefault(name, CounterInfo(name))
    return declared


def add_rules_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    counters_provider: CountersProvider | None = None,
    lists: Iterable[str] = DEFAULT_LISTS,
) -> None:
    """Register `rules check DIR` and `rules test DIR` on the CLI's subparsers."""
    known_lists = tuple(lists)
    rules = subparsers.add_parser("rules", help="check and test rule files")
    commands = rules.add_subparsers(dest="rules_command", required=True, metavar="{check,test}")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("directory", help="the rules directory (*.rules.yaml, *.cases.yaml)")
        parser.add_argument(
            "--counter",
            action="append",
            default=[],
            metavar="NAME",
            help="declare a counter name rules may read (repeatable), besides the declared counters",
        )

    check = commands.add_parser("check", help="validate rule and case files; print file:line: problem")
    common(check)

    def do_check(args: argparse.Namespace) -> int:
        return run_check(args.directory, counters=_counters(args, counters_provider), lists=known_lists)

    check.set_defaults(func=do_check)

    test = commands.add_parser("test", help="run the *.cases.yaml cases against the rules")
    common(test)

    def do_test(args: argparse.Namespace) -> int:
        return run_test(args.directory, counters=_counters(args, counters_provider), lists=known_lists)

    test.set_defaults(func=do_test)
