"""Case files beside the rules, and the runner behind `riskgate rules test`."""

from __future__ import annotations

import pytest

from service.domain import EventKind, Outcome
from service.errors import SourceError
from service.rules.cases import load_cases, run_directory_cases
from service.rules.loader import load_rules
from tests.unit.rules.conftest import COUNTERS, LISTS, REPO

GOOD = "tests/fixtures/rules/cases/good"
FAILING = "tests/fixtures/rules/cases/failing"
BROKEN = "tests/fixtures/rules/cases/broken"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


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
