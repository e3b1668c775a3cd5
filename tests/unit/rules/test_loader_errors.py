"""Every broken rule file has a fixture, and the loader's message for it is pinned exactly."""

from __future__ import annotations

import pytest

from service.errors import SourceError
from service.rules.loader import load_rules
from service.rules.model import counters_from_names
from tests.unit.rules.conftest import COUNTERS, FIXTURE_ROOT, FIXTURES, LISTS

# The too_many_values fixture reads 220 counters.
WIDE_COUNTERS = counters_from_names(f"v{i:03d}" for i in range(1, 221))

_SHARE = (
    "breaker.max_block_share must be a percentage above 0% and at most 100%, with at most 4 decimals "
    "(e.g. 2% or 0.5%), got "
)
_WINDOW = "breaker.window must be a length of time from 1m to 24h (e.g. 10m), got "
_MIN_EVENTS = "breaker.min_events must be a whole number from 1 to 10000000, got "

EXPECTED: dict[str, list[str]] = {
    "unknown_key": [
        "bad.rules.yaml:6: unknown key 'severity' in rule 'K05_many_banks' "
        "(allowed: id, on, when, outcome, reason, mode, priority, description, owner, enabled, basis, appeal, breaker)",
    ],
    "unknown_field": [
        "bad.rules.yaml:4: unknown field 'applicant.agee', did you mean 'applicant.age'?",
    ],
    "unknown_counter": [
        "bad.rules.yaml:4: unknown counter 'banks_90d', did you mean 'banks_30d'?",
    ],
    "number_vs_string": [
        "bad.rules.yaml:4: cannot compare number 'transfer.amount_fen' with string \"1000000\"",
    ],
    "unknown_outcome": [
        "bad.rules.yaml:5: unknown outcome 'deny' (expected block or warn)",
    ],
    "duplicate_id": [
        "b.rules.yaml:9: duplicate rule id 'K05_many_banks' (first defined at {dir}/a.rules.yaml:2)",
    ],
    "empty_reason": [
        "bad.rules.yaml:7: reason.zh is empty",
    ],
    "unfilled_placeholder": [
        "bad.rules.yaml:8: reason.en placeholder '{{banks_90d}}' is not a value this rule reads (it reads: banks_30d)",
    ],
    "never_fires": [
        "bad.rules.yaml:4: field 'applicant.age' does not exist on transfer events (only on card_opening): "
        "the rule can never fire on its declared event kinds",
    ],
    "backslash_regex": [
        'bad.rules.yaml:4: pattern "\\d{{6}}" contains a backslash: durable_rules silently never matches '
        "backslash patterns; use Lua-style escapes such as %d and %.",
    ],
    "too_many_tests": [
        "bad.rules.yaml:5: rule 'K14_odd_hours' needs 128 condition tests per event kind after expanding 'or' "
        "and 'in [..]' (durable_rules evaluates at most 48 at once): split the rule or simplify the condition",
    ],
    "too_many_values": [
        "wide.rules.yaml:61: with rule 'wide_10' the rules read 221 distinct values on transfer events "
        "(fields, counters and list checks); a durable_rules message takes at most 200",
    ],
    "yaml_syntax": [
        "bad.rules.yaml:8: YAML syntax error: expected <block end>, but found '<block mapping start>'",
    ],
    "when_syntax": [
        "bad.rules.yaml:4: when: syntax error at column 48: expected a value, found 'and'",
    ],
    "identifier_compared": [
        "bad.rules.yaml:4: 'transfer.payee_account' is an identifier: it can only be tested with "
        "'in list.NAME' (identifiers are never compared or shown)",
    ],
    "unknown_choice": [
        "bad.rules.yaml:4: '1' is not a value of card_opening.account_class (one of 'I', 'II', 'III')",
        "bad.rules.yaml:4: 'Face_Mismatch' is not a value of card_opening.identity_check, "
        "did you mean 'face_mismatch'?",
        "bad.rules.yaml:9: 'transfer.channel matches \"branch.*\"' matches none of its values "
        "('atm', 'counter', 'mobile', 'online'): it can never hold",
    ],
    "list_kind": [
        "bad.rules.yaml:4: list 'fraud_accounts' is of kind 'account': 'payer.id_number' cannot be looked up in it "
        "(the account fields on transfer events: transfer.payer_account, transfer.payee_account)",
        "bad.rules.yaml:9: list 'high_risk_regions' is of kind 'region': 'card_opening.device_id' cannot be looked "
        "up in it (the region fields on card_opening events: outlet.region_code, person.region_code, "
        "applicant.region_code, companion.region_code)",
    ],
    "unknown_list": [
        "bad.rules.yaml:4: unknown list 'fraud_acounts', did you mean 'fraud_accounts'?",
        "bad.rules.yaml:4: unknown list 'mules' (declared lists: allowlist, device_blocklist, fraud_accounts, "
        "high_risk_regions, police_warned, punished_persons, vulnerable_persons)",
    ],
    "breaker_values": [
        f"bad.rules.yaml:4: {_SHARE}'0%'",
        f"bad.rules.yaml:4: {_WINDOW}'30s'",
        f"bad.rules.yaml:4: {_MIN_EVENTS}0",
        "bad.rules.yaml:13: unknown key 'per' in breaker (allowed: max_block_share, window, min_events)",
        f"bad.rules.yaml:13: {_SHARE}0.02",
        f"bad.rules.yaml:13: {_WINDOW}'25h'",
        f"bad.rules.yaml:21: {_SHARE}'150%'",
        "bad.rules.yaml:21: breaker has no 'window'",
        f"bad.rules.yaml:21: {_MIN_EVENTS}'yes'",
        f"bad.rules.yaml:29: {_SHARE}'2.12345%'",
        f"bad.rules.yaml:29: {_WINDOW}600",
        f"bad.rules.yaml:29: {_MIN_EVENTS}10000001",
        "bad.rules.yaml:37: rule 'T18_new_payee_account' warns: 'breaker' is only for block rules "
        "(it counts the rule's blocks)",
        "bad.rules.yaml:45: 'breaker' must be {{max_block_share: 2%, window: 10m, min_events: 200}}, "
        "or off (no breaker for this rule), got 'on'",
    ],
    "many_errors": [
        "bad.rules.yaml:3: rule id 'K-05' may only use letters, digits and '_'",
        "bad.rules.yaml:4: unknown event kind 'card_openings', did you mean 'card_opening'?",
        "bad.rules.yaml:12: cannot compare yes/no 'applicant.non_local' with number 1",
        "bad.rules.yaml:12: cannot use '<' on string 'applicant.province': strings compare only with == and !=",
        "bad.rules.yaml:14: unknown mode 'dry_run' (expected enforce or shadow)",
        "bad.rules.yaml:15: 'priority' must be a whole number from 0 to 65535, got 'high'",
        "bad.rules.yaml:16: 'enabled' must be true or false, got 'yes'",
        "bad.rules.yaml:18: reason has no 'en' text",
        "bad.rules.yaml:23: when: syntax error at column 26: the condition ends too early: expected a value",
    ],
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_fixture_fails_with_exact_messages(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURE_ROOT)
    directory = f"tests/fixtures/rules/{case}"
    counters = WIDE_COUNTERS if case == "too_many_values" else COUNTERS
    with pytest.raises(SourceError) as caught:
        load_rules(directory, counters=counters, lists=LISTS)
    expected = [f"{directory}/{line.format(dir=directory)}" for line in EXPECTED[case]]
    assert [str(p) for p in caught.value.problems] == expected


def test_every_error_fixture_directory_is_pinned() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir() if p.is_dir()} - {"rich", "starting25", "cases", "filters"}
    assert on_disk == set(EXPECTED)


def test_error_message_joins_all_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURE_ROOT)
    with pytest.raises(SourceError) as caught:
        load_rules("tests/fixtures/rules/many_errors", counters=COUNTERS, lists=LISTS)
    assert str(caught.value).count("\n") == len(EXPECTED["many_errors"]) - 1


def test_missing_directory_and_empty_directory(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(SourceError) as caught:
        load_rules(f"{tmp_path}/nope", counters=COUNTERS, lists=LISTS)
    assert str(caught.value) == f"{tmp_path}/nope:0: not a directory"
    with pytest.raises(SourceError) as caught:
        load_rules(str(tmp_path), counters=COUNTERS, lists=LISTS)
    assert str(caught.value) == f"{tmp_path}:0: no rule files (*.rules.yaml) in this directory"
