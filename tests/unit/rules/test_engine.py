"""The durable_rules adapter: every match reported, reasons and evidence, inputs, threads, reload, recovery."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from service.domain import Outcome, Reason
from service.errors import EvaluationError, SourceError
from service.pipeline.outcome import outcome_of
from service.rules.compiler import compile_ruleset
from service.rules.engine import CompiledRuleset, LiveRuleset, build_ruleset
from tests.unit.rules.conftest import built, load_text

# The C extension, as the engine adapter imported it: patched here to simulate failures.
DURABLE = sys.modules["durable_rules_engine"]

RULES = """\
revision: e1
rules:
  - id: T15_fraud_payee
    on: [transfer]
    when: transfer.payee_account in list.fraud_accounts
    outcome: block
    priority: 10
    appeal: {zh: 如有异议，可向本行申诉。, en: You may appeal at this bank.}
    reason:
      zh: 收款账户为公安机关认定的涉诈账户
      en: The payee account is identified by police
  - id: T17_elderly
    on: [transfer]
    when: payer.age >= 60 and transfer.amount_fen >= 5_000_000
    outcome: warn
    priority: 50
    reason:
      zh: "{payer.age}岁付款人转账{transfer.amount_fen:money}"
      en: "Payer aged {payer.age} sends {transfer.amount_fen:money}"
  - id: T18_new_account
    on: [transfer]
    when: transfer.payee_account_age_days <= 7 or transfer.amount_fen >= 10_000_000
    outcome: warn
    priority: 50
    reason:
      zh: 收款账户开户{transfer.payee_account_age_days}天
      en: Payee account is {transfer.payee_account_age_days} days old
  - id: T20_rapid
    on: [transfer]
    when: outflow_fen_30m >= 0.8 * inflow_fen_30m
    outcome: block
    mode: shadow
    reason:
      zh: 快进快出 {{影子}}
      en: Rapid in and out
  - id: T21_bank
    on: [transfer]
    when: transfer.payee_bank == "工商银行" or transfer.payee_bank startswith "中国"
    outcome: warn
    reason:
      zh: 收款行{transfer.payee_bank}
      en: Payee bank {transfer.payee_bank}
  - id: K05_many_banks
    on: [card_opening]
    when: banks_30d >= 3
    outcome: warn
    reason:
      zh: 本证件30天内已在{banks_30d}家银行开户
      en: This ID opened accounts at {banks_30d} banks in 30 days
"""

TRANSFER: dict[str, Any] = {
    "event": "transfer",
    "payer.age": 65,
    "transfer.amount_fen": 12_000_000,
    "transfer.payee_bank": "ABC",
}
FRAUD = ("fraud_accounts", "transfer.payee_account")


@pytest.fixture
def compiled() -> Iterator[CompiledRuleset]:
    with built(RULES) as ruleset:
        yield ruleset


def _closed(ruleset: CompiledRuleset) -> bool:
    return ruleset.closed  # a call, so mypy does not narrow the property across the swap


def ids(reasons: tuple[Reason, ...]) -> list[str]:
    return [r.rule_id for r in reasons]


def test_every_matching_rule_is_reported_in_order(compiled: CompiledRuleset) -> None:
    reasons = compiled.evaluate(TRANSFER, {"inflow_fen_30m": 100, "outflow_fen_30m": 90}, {FRAUD: True})
    # block before warn; among warns, priority 50 before 100; then id.
    assert ids(reasons) == ["T15_fraud_payee", "T20_rapid", "T17_elderly", "T18_new_account"]
    assert outcome_of(reasons) is Outcome.BLOCK


def test_shadow_rules_are_reported_but_never_decide(compiled: CompiledRuleset) -> None:
    reasons = compiled.evaluate({"event": "transfer"}, {"inflow_fen_30m": 100, "outflow_fen_30m": 90}, {})
    assert [(r.rule_id, r.shadow, r.outcome) for r in reasons] == [("T20_rapid", True, Outcome.BLOCK)]
    assert outcome_of(reasons) is Outcome.ALLOW
    assert reasons[0].message_zh == "快进快出 {影子}"


def test_nothing_matches(compiled: CompiledRuleset) -> None:
    assert compiled.evaluate({"event": "transfer", "payer.age": 30}, {}, {FRAUD: False}) == ()


def test_reason_texts_and_evidence(compiled: CompiledRuleset) -> None:
    reasons = {r.rule_id: r for r in compiled.evaluate(TRANSFER, {}, {FRAUD: False})}
    elderly = reasons["T17_elderly"]
    assert elderly.message_zh == "65岁付款人转账120,000.00元"
    assert elderly.message_en == "Payer aged 65 sends 120,000.00 yuan"
    assert elderly.evidence == (("payer.age", "65"), ("transfer.amount_fen", "12000000"))
    assert (elderly.outcome, elderly.priority, elderly.shadow) == (Outcome.WARN, 50, False)
    # An absent value is left out of the evidence and shown as unknown in the text.
    new_account = reasons["T18_new_account"]
    assert new_account.evidence == (("transfer.amount_fen", "12000000"),)
    assert (new_account.message_zh, new_account.message_en) == (
        "收款账户开户未知天",
        "Payee account is unknown days old",
    )


def test_list_hits_are_evidence_without_the_identifier(compiled: CompiledRuleset) -> None:
    facts = {**TRANSFER, "transfer.payee_account": "6222020200112233445"}  # never sent: not a rule field
    reasons = compiled.evaluate(facts, {}, {FRAUD: True})
    assert reasons[0].evidence == (("transfer.payee_account in list.fraud_accounts", "hit"),)
    assert all("6222020200112233445" not in repr(r) for r in reasons)


def test_chinese_text_equality_and_prefix(compiled: CompiledRuleset) -> None:
    for bank, fires in (("工商银行", True), ("工商银", False), ("工商银行 ", False), ("中国银行", True), ("中", False)):
        reasons = compiled.evaluate({"event": "transfer", "transfer.payee_bank": bank}, {}, {})
        assert ids(reasons) == (["T21_bank"] if fires else []), bank
    reasons = compiled.evaluate({"event": "transfer", "transfer.payee_bank": "工商银行"}, {}, {})
    assert reasons[0].message_zh == "收款行工商银行"


def test_rules_fire_only_on_their_kinds(compiled: CompiledRuleset) -> None:
    facts = {**TRANSFER, "event": "card_opening"}
    assert ids(compiled.evaluate(facts, {"banks_30d": 3}, {FRAUD: True})) == ["K05_many_banks"]
    assert ids(compiled.evaluate({"event": "sim_sale"}, {"banks_30d": 3}, {})) == []


def test_numbers_of_every_shape(compiled: CompiledRuleset) -> None:
    for amount, fires in ((10_000_000, True), (9_999_999, False), (9_999_999.5, False), (1e16, True), (2**60, True)):
        reasons = compiled.evaluate({"event": "transfer", "transfer.amount_fen": amount}, {}, {})
        assert ("T18_new_account" in ids(reasons)) is fires, amount
    reasons = compiled.evaluate({"event": "transfer"}, {"inflow_fen_30m": 1e-7, "outflow_fen_30m": 8e-8}, {})
    assert ids(reasons) == ["T20_rapid"]


@pytest.mark.parametrize(
    ("facts", "counters", "hits", "message"),
    [
        ({"event": "wire"}, {}, {}, "event: 'wire' is not an event kind"),
        ({}, {}, {}, "event: None is not an event kind"),
        ({"event": "transfer", "payer.age": "65"}, {}, {}, "payer.age: expected a number, got str"),
        ({"event": "transfer", "payer.age": True}, {}, {}, "payer.age: expected a number, got bool"),
        ({"event": "transfer", "payer.age": float("nan")}, {}, {}, "payer.age: nan is not a finite number"),
        ({"event": "transfer", "transfer.payee_bank": 5}, {}, {}, "transfer.payee_bank: expected a string, got int"),
        (
            {"event": "transfer", "transfer.payee_bank": "x" * 70_000},
            {},
            {},
            "transfer.payee_bank: the string is longer than 65535 bytes",
        ),
        ({"event": "transfer"}, {"inflow_fen_30m": True}, {}, "counter inflow_fen_30m: expected a number, got bool"),
        (
            {"event": "transfer"},
            {},
            {FRAUD: 1},
            "transfer.payee_account in list.fraud_accounts: expected true or false, got int",
        ),
        (
            {"event": "transfer", "transfer.amount_fen": 10**400},
            {},
            {},
            "transfer.amount_fen: 1" + "0" * 400 + " is too large for a double",
        ),
    ],
)
def test_malformed_inputs_are_refused(
    compiled: CompiledRuleset, facts: dict[str, Any], counters: dict[str, Any], hits: dict[Any, Any], message: str
) -> None:
    with pytest.raises(EvaluationError) as caught:
        compiled.evaluate(facts, counters, hits)
    assert str(caught.value) == message


def test_a_closed_ruleset_refuses_to_evaluate(compiled: CompiledRuleset) -> None:
    compiled.close()
    compiled.close()  # idempotent
    with pytest.raises(EvaluationError, match="is closed"):
        compiled.evaluate(TRANSFER, {}, {})


def test_what_the_ruleset_reads(compiled: CompiledRuleset) -> None:
    assert compiled.revision.startswith("e1@")
    assert compiled.counters_used == {"inflow_fen_30m", "outflow_fen_30m", "banks_30d"}
    assert compiled.list_checks == {FRAUD}
    assert compiled.fields_used >= {"payer.age", "transfer.amount_fen", "transfer.payee_bank"}
    assert set(compiled.rules) == {
        "T15_fraud_payee",
        "T17_elderly",
        "T18_new_account",
        "T20_rapid",
        "T21_bank",
        "K05_many_banks",
    }


def test_threads_share_one_ruleset_safely(compiled: CompiledRuleset) -> None:
    requests = [
        (TRANSFER, {"inflow_fen_30m": 100, "outflow_fen_30m": 90}, {FRAUD: True}),
        ({"event": "transfer", "payer.age": 30}, {}, {FRAUD: False}),
        ({"event": "card_opening"}, {"banks_30d": 4}, {}),
        ({"event": "transfer", "transfer.payee_bank": "工商银行"}, {}, {}),
    ]
    expected = [ids(compiled.evaluate(*r)) for r in requests]
    wrong: list[str] = []

    def worker(offset: int) -> None:
        for i in range(1_500):
            index = (i + offset) % len(requests)
            got = ids(compiled.evaluate(*requests[index]))
            if got != expected[index]:
                wrong.append(f"{index}: {got}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_reload_builds_aside_and_swaps(compiled: CompiledRuleset) -> None:
    live = LiveRuleset(compiled)
    assert live.evaluate({"event": "card_opening"}, {"banks_30d": 3}, {}).outcome is Outcome.WARN
    replacement = build_ruleset(compile_ruleset(load_text(RULES.replace("banks_30d >= 3", "banks_30d >= 5"))))
    try:
        assert replacement.revision != compiled.revision
        # A request that leased the old ruleset finishes on it, even across the swap.
        with live.lease() as leased:
            old = live.swap(replacement)
            assert old is compiled and leased is compiled and not _closed(compiled)
            assert ids(leased.evaluate({"event": "card_opening"}, {"banks_30d": 3}, {})) == ["K05_many_banks"]
        assert _closed(compiled)  # deleted as its last lease ended
        result = live.evaluate({"event": "card_opening"}, {"banks_30d": 3}, {})
        assert (result.revision, result.reasons, result.outcome) == (replacement.revision, (), Outcome.ALLOW)
        assert ids(live.evaluate({"event": "card_opening"}, {"banks_30d": 5}, {}).reasons) == ["K05_many_banks"]
        assert live.current is replacement and live.revision == replacement.revision
        with pytest.raises(EvaluationError, match="closed"):
            live.swap(compiled)
    finally:
        replacement.close()


def test_swap_without_leases_deletes_the_old_ruleset_at_once(compiled: CompiledRuleset) -> None:
    live = LiveRuleset(compiled)
    with built(RULES) as other:
        assert live.swap(other) is compiled
        assert compiled.closed and not other.closed
        assert live.swap(other) is other  # swapping in the serving ruleset changes nothing


def test_a_failure_while_draining_leaves_the_engine_clean(
    compiled: CompiledRuleset, monkeypatch: pytest.MonkeyPatch
) -> None:
    hits = {FRAUD: True}
    expected = ids(compiled.evaluate(TRANSFER, {}, hits))
    real = DURABLE.complete_and_start_action

    def broken(handle: int, state: int) -> str | None:
        raise RuntimeError("boom")

    monkeypatch.setattr(DURABLE, "complete_and_start_action", broken)
    with pytest.raises(RuntimeError, match="boom"):
        compiled.evaluate(TRANSFER, {}, hits)
    monkeypatch.setattr(DURABLE, "complete_and_start_action", real)
    for _ in range(3):
        assert ids(compiled.evaluate(TRANSFER, {}, hits)) == expected


def test_a_failed_retract_is_repaired_on_the_next_request(
    compiled: CompiledRuleset, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = ids(compiled.evaluate(TRANSFER, {}, {}))
    real = DURABLE.retract_fact
    calls: list[int] = []

    def flaky(handle: int, message: str) -> object:
        calls.append(handle)
        if len(calls) == 1:
            raise DURABLE.error("Could not retract fact, error code: 999")
        return real(handle, message)

    monkeypatch.setattr(DURABLE, "retract_fact", flaky)
    with pytest.raises(DURABLE.error):
        compiled.evaluate(TRANSFER, {}, {})
    assert ids(compiled.evaluate(TRANSFER, {}, {})) == expected  # the fact was still stored: code 2, recovered
    assert ids(compiled.evaluate(TRANSFER, {}, {})) == expected


def test_an_unrecoverable_shard_is_replaced(compiled: CompiledRuleset, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = ids(compiled.evaluate(TRANSFER, {}, {}))
    old_handles = [shard.handle for shard in compiled._shards]

    def broken(*args: object) -> None:
        raise DURABLE.error("Could not complete and start action, error code: 307")

    monkeypatch.setattr(DURABLE, "complete_and_start_action", broken)
    monkeypatch.setattr(DURABLE, "abandon_action", broken)
    with pytest.raises(DURABLE.error):
        compiled.evaluate(TRANSFER, {}, {})
    monkeypatch.undo()
    assert [shard.handle for shard in compiled._shards] != old_handles
    assert ids(compiled.evaluate(TRANSFER, {}, {})) == expected


def test_durable_refusing_a_rule_is_a_source_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    real = DURABLE.create_ruleset

    def refuse_patterns(name: str, definition: str) -> int:
        if "$mt" in definition:
            raise DURABLE.error("Could not create ruleset, error code: 503")
        handle: int = real(name, definition)
        return handle

    monkeypatch.setattr(DURABLE, "create_ruleset", refuse_patterns)
    plan = compile_ruleset(load_text(RULES))
    with pytest.raises(SourceError) as caught:
        build_ruleset(plan)
    assert [str(p) for p in caught.value.problems] == [
        "t.rules.yaml:36: durable_rules rejected rule 'T21_bank' "
        "(error 503: the pattern is too complex (more than 4,096 states))"
    ]
