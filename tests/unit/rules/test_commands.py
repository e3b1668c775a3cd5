"""`riskgate rules check` and `riskgate rules test`, through argparse as the CLI wires them."""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import pytest

from service.tools.cli import main
from service.tools.rules import add_rules_commands, run_check
from tests.unit.rules.conftest import COUNTER_NAMES, FIXTURE_ROOT


def _cli(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="riskgate")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_rules_commands(subparsers)
    return parser.parse_args(args)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURE_ROOT)


def test_check_passes_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["rules", "check", "tests/fixtures/rules/cases/good"])
    assert args.handler(args) == 0
    note, summary = capsys.readouterr().out.splitlines()
    assert note == "note: no 'basis' (law article or practice) for T25_device"
    assert summary.startswith(
        "ok: 4 rules (4 enabled, 1 shadow) in 1 files, 7 cases; 1 counters (0 where filters), 3 lists; "
        "CNY only (no rates.yaml); revision cases-1@"
    )
    assert summary.endswith("; 1 durable rulesets")


def test_check_prints_every_problem_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["rules", "check", "tests/fixtures/rules/never_fires"])
    assert args.handler(args) == 1
    assert capsys.readouterr().out == (
        "tests/fixtures/rules/never_fires/bad.rules.yaml:4: field 'applicant.age' does not exist on transfer "
        "events (only on card_opening): the rule can never fire on its declared event kinds\n"
        "1 problem\n"
    )


def test_check_reports_broken_case_files_too(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["rules", "check", "tests/fixtures/rules/cases/broken"])
    assert args.handler(args) == 1
    assert capsys.readouterr().out.endswith("\n20 problems\n")


def test_counters_can_be_declared_on_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shutil.copytree("tests/fixtures/rules/cases/good", tmp_path / "good")
    (tmp_path / "good" / "counters.yaml").unlink()
    directory = str(tmp_path / "good")
    args = _cli(["rules", "check", directory])
    assert args.handler(args) == 1
    assert "unknown counter 'banks_30d'" in capsys.readouterr().out
    args = _cli(["rules", "check", directory, *[f"--counter={name}" for name in COUNTER_NAMES]])
    assert args.handler(args) == 0


def test_test_command(capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["rules", "test", "tests/fixtures/rules/cases/good"])
    assert args.handler(args) == 0
    assert capsys.readouterr().out == "7 cases: 7 passed, 0 failed\n"
    args = _cli(["rules", "test", "tests/fixtures/rules/cases/failing"])
    assert args.handler(args) == 1
    out = capsys.readouterr().out
    assert "FAIL tests/fixtures/rules/cases/failing/wrong.cases.yaml:2: expects the wrong rule\n" in out
    assert "note: no case fires T25_device, K05_many_banks\n" in out
    assert out.endswith("2 cases: 1 passed, 1 failed\n")
    args = _cli(["rules", "test", "tests/fixtures/rules/unknown_key"])
    assert args.handler(args) == 1


def test_run_check_writes_to_the_given_stream(tmp_path: Path) -> None:
    shutil.copytree("tests/fixtures/rules/rich", tmp_path / "rich")
    shutil.copy("rules/lists.yaml", tmp_path / "rich" / "lists.yaml")
    with (tmp_path / "rich" / "lists.yaml").open("a", encoding="utf-8") as lists:
        lists.write("  - name: device_blocklist\n    kind: device\n")
    out = io.StringIO()
    assert run_check(tmp_path / "rich", extra_counters=COUNTER_NAMES, out=out) == 0
    summary = out.getvalue().splitlines()[-1]
    assert summary.startswith(
        "ok: 24 rules (23 enabled, 1 shadow) in 2 files, 0 cases; 0 counters (0 where filters), 7 lists; "
        "CNY only (no rates.yaml); revision rich-1@"
    )


def test_check_reports_counter_and_list_files_and_filters(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = tmp_path / "good"
    shutil.copytree("tests/fixtures/rules/cases/good", directory)
    counters = directory / "counters.yaml"
    counters.write_text(counters.read_text(encoding="utf-8") + "    where: applicant.agee > 1\n", encoding="utf-8")
    (directory / "lists.yaml").write_text("lists:\n  - name: fraud_accounts\n    kind: accounts\n", encoding="utf-8")
    args = _cli(["rules", "check", str(directory)])
    assert args.handler(args) == 1
    assert capsys.readouterr().out == (
        f"{directory}/counters.yaml:10: counter 'banks': where: unknown field 'applicant.agee', "
        "did you mean 'applicant.age'?\n"
        f"{directory}/lists.yaml:3: list 'fraud_accounts': 'kind' must be one of id_number, account, phone, "
        "device, region\n"
        f"{directory}:0: the rule files are checked once counters.yaml, lists.yaml and rates.yaml are valid\n"
        "3 problems\n"
    )


def test_rules_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit):
        _cli(["rules"])


def test_the_riskgate_command_runs_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", "tests/fixtures/rules/cases/good"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok: 4 rules")
    assert main(["rules", "test", "tests/fixtures/rules/cases/good"]) == 0
    assert capsys.readouterr().out == "7 cases: 7 passed, 0 failed\n"
    assert main(["rules", "test", "tests/fixtures/rules/cases/failing"]) == 1
