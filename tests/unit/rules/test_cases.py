"""Case files beside the rules, and the runner behind `riskgate rules test`."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.domain import EventKind, Outcome
from service.errors import SourceError
from service.rules.cases import load_cases, run_directory_cases
from service.rules.loader import load_rules
from tests.unit.rules.conftest import COUNTERS, FIXTURE_ROOT, LISTS

GOOD = "tests/fixtures/rules/cases/good"
FAILING = "tests/fixtures/rules/cases/failing"
BROKEN = "tests/fixtures/rules/cases/broken"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURE_ROOT)


def test_cases_are_read_with_mirrored_person_fields() -> None:
    cases = load_cases(GOOD, load_rules(GOOD, counters=COUNTERS, lists=LISTS))
    assert [c.name for c in cases][:2] == [
        "four banks in 30 days, Guangdong ID",
        "region codes stay strings even unquoted with a leading zero",
    ]
    elderly = next(c for c in cases if c.name.startswith("elderly"))
    assert elderly.kind is EventKind.TRANSFER
    assert elderly.facts == {
        "event": "transfer",
        "transfer.amount_fen": 6_000_000,
        "payer.age": 66,
        "person.age": 66,
    }
    assert (elderly.expected_outcome, elderly.expected_fired) == (Outcome.WARN, frozenset({"T17_elderly"}))
    assert next(c for c in cases if "leading zero" in c.name).facts["applicant.region_code"] == "010101"
    absent = next(c for c in cases if c.name.startswith("no device"))
    checks = {("device_blocklist", "transfer.device_id"), ("high_risk_regions", "transfer.ip_region_code")}
    assert absent.list_hits(checks) == {("high_risk_regions", "transfer.ip_region_code"): True}


def test_good_cases_pass_and_cover_every_rule() -> None:
    report = run_directory_cases(GOOD, counters=COUNTERS, lists=LISTS)
    assert report.ok and len(report.cases) == 7
    assert (report.never_fired, report.never_quiet) == ((), ())


def test_failures_show_a_diff() -> None:
    report = run_directory_cases(FAILING, counters=COUNTERS, lists=LISTS)
    assert not report.ok
    assert [f.render() for f in report.failures] == [
        f"FAIL {FAILING}/wrong.cases.yaml:2: expects the wrong rule\n"
        "  outcome: expected warn, got block\n"
        "  fired:   expected [K05_many_banks, T17_elderly]\n"
        "           got      [T15_fraud_payee, T17_elderly]\n"
        "           - K05_many_banks (expected, did not fire)\n"
        "           + T15_fraud_payee (fired, not expected)"
    ]
    assert report.never_fired == ("T25_device", "K05_many_banks")
    assert report.never_quiet == ("T15_fraud_payee", "T17_elderly")


def test_broken_case_files_name_every_problem() -> None:
    with pytest.raises(SourceError) as caught:
        load_cases(BROKEN, load_rules(BROKEN, counters=COUNTERS, lists=LISTS))
    prefix = f"{BROKEN}/bad.cases.yaml:"
    assert [str(p).removeprefix(prefix) for p in caught.value.problems] == [
        "3: unknown event kind 'transfers', did you mean 'transfer'?",
        "10: unknown field 'transfer.amount', did you mean 'transfer.amount_fen'?",
        "11: field 'applicant.age' does not exist on transfer events",
        "12: 'transfer.payee_account' is an identifier: give its list memberships under 'lists'",
        "13: 'payer.age' must be a number, got '66'",
        "15: 'payer.province' must be a string (quote codes: '44'), got 44",
        "16: set the event kind with 'event:', not under 'facts'",
        "18: unknown counter 'banks_3d', did you mean 'banks_30d'?",
        "19: counter 'banks_30d' must be a number, got 'many'",
        "21: unknown list 'fraud_acounts', did you mean 'fraud_accounts'?",
        "22: 'transfer.amount_fen' is not an identifier or string field",
        "22: unknown field 'payer.agee', did you mean 'payer.age'?",
        "24: unknown outcome 'deny' (expected allow, warn or block)",
        "25: no rule has the id 'T17_elderley', did you mean 'T17_elderly'?",
        "26: unknown key 'extra' in case (allowed: name, event, facts, counters, lists, absent, expect)",
        "31: 'person.age' differs from 'payer.age' (the payer is the person)",
        "35: case #4 needs a 'name'",
        "36: expect has no 'fired' (the rule ids that match; [] for none)",
        "40: 'ATM' is not a value of transfer.channel, did you mean 'atm'?",
        "42: list 'punished_persons' is of kind 'id_number': 'transfer.payee_account' cannot be looked up in it "
        "(the id_number fields on transfer events: person.id_number, payer.id_number)",
    ]


PINNED_RULES = """\
appeal: {zh: 如有异议，可向本行申诉。, en: You may appeal at this bank.}
rules:
  - id: T15_fraud_payee
    on: [transfer]
    when: transfer.payee_account in list.fraud_accounts and transfer.amount_fen > 0
    outcome: block
    reason: {zh: '本笔{transfer.amount_fen:money}未执行', en: Not made}
  - id: T17_elderly
    on: [transfer]
    when: payer.age >= 60
    outcome: warn
    reason: {zh: 老年人, en: Elderly}
"""


def _pinned(tmp_path: Path, reasons: str) -> Path:
    (tmp_path / "t.rules.yaml").write_text(PINNED_RULES, encoding="utf-8")
    case = (
        "cases:\n  - name: a listed payee\n    event: transfer\n    facts: {transfer.amount_fen: 150_000}\n"
        "    lists: {fraud_accounts: [transfer.payee_account]}\n"
        f"    expect:\n      outcome: block\n      fired: [T15_fraud_payee]\n{reasons}"
    )
    (tmp_path / "t.cases.yaml").write_text(case, encoding="utf-8")
    return tmp_path


def test_pinned_texts_pass_when_said_exactly(tmp_path: Path) -> None:
    directory = _pinned(
        tmp_path,
        "      reasons:\n        T15_fraud_payee:\n"
        "          zh: 本笔1,500.00元未执行。如有异议，可向本行申诉。\n"
        "          en: Not made. You may appeal at this bank.\n",
    )
    report = run_directory_cases(directory, counters=COUNTERS, lists=LISTS)
    assert report.ok and report.cases[0].expected_texts == {
        ("T15_fraud_payee", "zh"): "本笔1,500.00元未执行。如有异议，可向本行申诉。",
        ("T15_fraud_payee", "en"): "Not made. You may appeal at this bank.",
    }


def test_a_pinned_text_that_differs_is_a_failure_with_both_texts(tmp_path: Path) -> None:
    directory = _pinned(tmp_path, "      reasons:\n        T15_fraud_payee: {en: Not made.}\n")
    report = run_directory_cases(directory, counters=COUNTERS, lists=LISTS)
    assert [f.render() for f in report.failures] == [
        f"FAIL {directory}/t.cases.yaml:2: a listed payee\n"
        "  reason T15_fraud_payee en: expected Not made.\n"
        "                             got      Not made. You may appeal at this bank."
    ]


def test_pinned_texts_must_belong_to_expected_rules(tmp_path: Path) -> None:
    directory = _pinned(
        tmp_path,
        "      reasons:\n        T17_elderly: {zh: x}\n        T99: {zh: x}\n        T15_fraud_payee: {de: x}\n",
    )
    with pytest.raises(SourceError) as caught:
        load_cases(directory, load_rules(directory, counters=COUNTERS, lists=LISTS))
    prefix = f"{directory}/t.cases.yaml:"
    assert [str(p).removeprefix(prefix) for p in caught.value.problems] == [
        "10: reasons: 'T17_elderly' is not in 'fired' (only the texts of expected rules are pinned)",
        "11: reasons: 'T99' is not a rule id (only the texts of expected rules are pinned)",
        "12: unknown key 'de' in reasons.T15_fraud_payee (allowed: zh, en)",
    ]


def test_pinned_texts_need_a_text(tmp_path: Path) -> None:
    directory = _pinned(tmp_path, "      reasons:\n        T15_fraud_payee: {}\n")
    with pytest.raises(SourceError) as caught:
        load_cases(directory, load_rules(directory, counters=COUNTERS, lists=LISTS))
    assert [str(p) for p in caught.value.problems] == [
        f"{directory}/t.cases.yaml:10: reasons.T15_fraud_payee must have a 'zh' or 'en' text, or both"
    ]
