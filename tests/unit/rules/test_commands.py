"""`riskgate rules check` and `riskgate rules test`, through argparse as the CLI wires them."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from service.rules.commands import add_rules_commands, run_check
from service.rules.model import CounterInfo
from tests.unit.rules.conftest import COUNTER_NAMES, COUNTERS, REPO


def _cli(args: list[str], provider: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="riskgate")
    subparsers = parser.add_subparsers(dest="command", required=True)

    def counters_for(directory: Path) -> dict[str, CounterInfo]:
        assert directory == Path(args[2])
        return dict(COUNTERS)

    add_rules_commands(subparsers, counters_provider=counters_for if provider else None)
    return parser.parse_args(args)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def test_check_passes_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["rules", "check", "tests/fixtures/rules/cases/good"])
    assert args.func(args) == 0
    note, summary = capsys.readouterr().out.splitlines()
    assert note == "note: no 'basis' (law article or practice) for T25_device"
    assert summary.startswith("ok: 4 rules (4 enabled, 1 shadow) in 1 files, 7 cases; revision cases-1@")
    assert summary.endswith("; 1 durable rulesets")


def test_check_prints_every_problem_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["rules", "check", "tests/fixtures/rules/never_fires"])
    assert args.func(args) == 1
    assert capsys.readouterr().out == (
        "tests/fixtures/rules/never_fires/bad.rules.yaml:4: field 'applicant.age' does not exist on transfer "
        "events (only on card_opening): the rule can never fire on its declared event kinds\n"
        "1 problem\n"
    )


def test_check_reports_broken_case_files_too(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["rules", "check", "tests/fixtures/rules/cases/broken"])
    assert args.func(args) == 1
    assert capsys.readouterr().out.endswith("\n18 problems\n")


def test_counters_can_be_declared_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    directory = "tests/fixtures/rules/cases/good"
    args = _cli(["rules", "check", directory], provider=False)
    assert args.func(args) == 1
    assert "unknown counter 'banks_30d'" in capsys.readouterr().out
    args = _cli(["rules", "check", directory, *[f"--counter={name}" for name in COUNTER_NAMES]], provider=False)
    assert args.func(args) == 0


def test_test_command(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["rules", "test", "tests/fixtures/rules/cases/good"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "7 cases: 7 passed, 0 failed\n"
    args = _cli(["rules", "test", "tests/fixtures/rules/cases/failing"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "FAIL tests/fixtures/rules/cases/failing/wrong.cases.yaml:2: expects the wrong rule\n" in out
    assert "note: no case fires T25_device, K05_many_banks\n" in out
    assert out.endswith("2 cases: 1 passed, 1 failed\n")
    args = _cli(["rules", "test", "tests/fixtures/rules/unknown_key"])
    assert args.func(args) == 1


def test_run_check_writes_to_the_given_stream() -> None:
    out = io.StringIO()
    assert run_check("tests/fixtures/rules/rich", counters=COUNTERS, out=out) == 0
    summary = out.getvalue().splitlines()[-1]
    assert summary.startswith("ok: 24 rules (23 enabled, 1 shadow) in 2 files, 0 cases; revision rich-1@")


def test_rules_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit):
        _cli(["rules"])
