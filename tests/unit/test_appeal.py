"""Art 32: every refusal tells the customer how to appeal, the fail policy's own and every rule's.

A block rule gives its appeal route as `appeal: {zh, en}` (its own, or its file's); the loader refuses
an enforced block rule without one, so `riskgate rules check` and hot reload refuse it too.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.domain import Decision, EventKind, Outcome, Reason, ScreenRequest
from service.errors import SourceError
from service.pipeline.facts import Scalar
from service.pipeline.money import CNY_ONLY
from service.pipeline.outcome import DEFAULT_APPEAL, UNAVAILABLE_RULE_ID, Appeal, unavailable_reason, with_appeal
from service.pipeline.screening import CounterValues, Decided, ListHits, Observation, Screener, Sighting
from service.rules.compiler import compile_ruleset
from service.rules.directory import load_directory
from service.rules.engine import build_ruleset
from service.rules.loader import SourceText, load_sources
from service.rules.model import RuleSet
from service.rules.reload import ReloadResult, RulesManager
from service.tools.rules import run_check
from tests.unit.rules.conftest import COUNTERS, LISTS, REPO
from tests.unit.test_facts import EVENTS, OUTLET

ZH = "如有异议，可携本人身份证件向本行或当地公安机关申诉。"
EN = "You may appeal with your ID at this bank or the local police."
NO_ROUTE = (
    "blocks but gives no appeal route (Art 32: a refused customer is told how to appeal): add "
    "'appeal: {zh: ..., en: ...}' to the rule, or once at the top of the file for all its block rules"
)


def load(text: str) -> RuleSet:
    return load_sources([SourceText("t.rules.yaml", text, "t.rules.yaml")], counters=COUNTERS, lists=LISTS)


def problems(text: str) -> list[str]:
    with pytest.raises(SourceError) as caught:
        load(text)
    return [str(p) for p in caught.value.problems]


def block_rule(
    rule_id: str = "T15_fraud_payee",
    extra: str = "",
    zh: str = "收款账户涉诈",
    en: str = "Fraud payee",
    when: str = "transfer.payee_account in list.fraud_accounts",
) -> str:
    return (
        f"  - id: {rule_id}\n"
        "    on: [transfer]\n"
        f"    when: {when}\n"
        "    outcome: block\n"
        f"    reason: {{zh: '{zh}', en: '{en}'}}\n"
        f"{extra}"
    )


FILE_APPEAL = f"appeal:\n  zh: {ZH}\n  en: {EN}\n"
WARN_RULE = (
    "  - id: T17_elderly\n"
    "    on: [transfer]\n"
    "    when: payer.age >= 60\n"
    "    outcome: warn\n"
    "    reason: {zh: '付款人{payer.age}岁', en: 'The payer is {payer.age}'}\n"
)


# ------------------------------------------------------------- the fail policy's reason


def test_a_fail_closed_block_says_what_to_do_and_how_to_appeal() -> None:
    reason = unavailable_reason(Outcome.BLOCK)
    assert (reason.rule_id, reason.outcome) == (UNAVAILABLE_RULE_ID, Outcome.BLOCK)
    assert reason.message_zh == (
        "风险数据暂不可用，本次业务暂不办理，请稍后再试。如有异议，可携本人身份证件向本机构或当地公安机关申诉。"
    )
    assert reason.message_en == (
        "Risk data is temporarily unavailable, so this request is not processed now; try again later. "
        "You may appeal with your ID at this institution or the local police."
    )


def test_a_fail_open_warning_is_unchanged() -> None:
    reason = unavailable_reason(Outcome.WARN)
    assert (reason.message_zh, reason.message_en) == (
        "风险数据暂不可用，请人工核实后再办理",
        "Risk data temporarily unavailable: verify by hand before proceeding",
    )


class _NowClock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return 0.0


class _NoRules:
    revision = "none@1"
    rates = CNY_ONLY

    def list_checks_for(self, kind: EventKind) -> Collection[tuple[str, str]]:
        return ()

    def evaluate(self, facts: Mapping[str, Scalar], counters: CounterValues, list_hits: ListHits) -> Sequence[Reason]:
        return ()


@dataclass
class _RedisDown:
    recorded: list[Decision] = field(default_factory=list)

    async def observe(self, *args: object, **kwargs: object) -> Observation:
        return Observation(degraded=True)

    async def record(self, request: ScreenRequest, decision: Decision, *args: object) -> None:
        self.recorded.append(decision)

    async def observe_many(self, sightings: Sequence[Sighting], deadline: float | None = None) -> list[Observation]:
        return [Observation(degraded=True) for _ in sightings]

    async def record_many(self, decided: Sequence[Decided]) -> None:
        self.recorded.extend(d.decision for d in decided)


@dataclass
class _Session:
    rules: _NoRules
    risk_data: _RedisDown


async def test_with_redis_down_and_fail_policy_block_the_refusal_carries_the_appeal() -> None:
    clock = _NowClock()

    @contextmanager
    def session() -> Iterator[_Session]:
        yield _Session(_NoRules(), _RedisDown())

    screener = Screener(session, clock, fail_outcome=Outcome.BLOCK)
    decision = await screener.screen(ScreenRequest("r-1", OUTLET, clock.now(), EVENTS["transfer"]))
    assert decision.degraded and decision.outcome is Outcome.BLOCK
    [reason] = decision.reasons
    assert reason.message_zh.endswith(DEFAULT_APPEAL.zh) and reason.message_en.endswith(DEFAULT_APPEAL.en)


def test_the_appeal_is_its_own_sentence() -> None:
    appeal = Appeal(ZH, EN)
    assert with_appeal("本次不予办理", appeal, "zh") == "本次不予办理。" + ZH
    assert with_appeal("本次不予办理。", appeal, "zh") == "本次不予办理。" + ZH
    assert with_appeal("Refused", appeal, "en") == "Refused. " + EN
    assert with_appeal("Refused.", appeal, "en") == "Refused. " + EN
    assert with_appeal("Refused! ", appeal, "en") == "Refused! " + EN


# ------------------------------------------------------------- loading: the criterion


def test_a_block_rule_without_an_appeal_route_is_refused_naming_it() -> None:
    assert problems("rules:\n" + block_rule()) == [f"t.rules.yaml:2: rule 'T15_fraud_payee' {NO_ROUTE}"]


def test_mentioning_an_appeal_in_the_reason_is_not_a_route() -> None:
    # A reason that happens to say 申诉 / appeal does not pass: the route must be given as `appeal:`.
    text = "rules:\n" + block_rule(zh="不予办理，如有异议可申诉", en="Refused; you may appeal")
    assert problems(text) == [f"t.rules.yaml:2: rule 'T15_fraud_payee' {NO_ROUTE}"]


def test_a_disabled_block_rule_needs_one_too() -> None:
    # Validated like any rule: enabling it must not be the moment its text is found wanting.
    text = "rules:\n" + block_rule(extra="    enabled: false\n")
    assert problems(text) == [f"t.rules.yaml:2: rule 'T15_fraud_payee' {NO_ROUTE}"]


def test_every_block_rule_without_a_route_is_named() -> None:
    text = "rules:\n" + block_rule("T15_a") + block_rule("T15_b") + WARN_RULE
    assert problems(text) == [
        f"t.rules.yaml:2: rule 'T15_a' {NO_ROUTE}",
        f"t.rules.yaml:7: rule 'T15_b' {NO_ROUTE}",
    ]


def test_a_rules_own_appeal_is_appended_to_its_reasons() -> None:
    text = "rules:\n" + block_rule(extra=f"    appeal: {{zh: {ZH}, en: {EN}}}\n")
    [rule] = load(text).rules
    assert rule.appeal == Appeal(ZH, EN)
    assert rule.reason_zh.source == "收款账户涉诈。" + ZH
    assert rule.reason_en.source == "Fraud payee. " + EN


def test_the_files_appeal_serves_its_block_rules_and_a_rules_own_wins() -> None:
    own = "    appeal: {zh: 如有异议，请到柜台申诉。, en: You may appeal at the counter.}\n"
    text = FILE_APPEAL + "rules:\n" + block_rule("T15_a") + block_rule("T15_b", extra=own) + WARN_RULE
    rules = {rule.id: rule for rule in load(text).rules}
    assert rules["T15_a"].appeal == Appeal(ZH, EN)
    assert rules["T15_b"].appeal == Appeal("如有异议，请到柜台申诉。", "You may appeal at the counter.")
    # A warning refuses nothing: the file's appeal is not added to it.
    assert rules["T17_elderly"].appeal is None
    assert rules["T17_elderly"].reason_zh.source == "付款人{payer.age}岁"


def test_a_shadow_block_rule_needs_none_but_gets_the_files() -> None:
    shadow = "    mode: shadow\n"
    [alone] = load("rules:\n" + block_rule(extra=shadow)).rules
    assert alone.appeal is None and alone.reason_zh.source == "收款账户涉诈"
    [with_file] = load(FILE_APPEAL + "rules:\n" + block_rule(extra=shadow)).rules
    assert with_file.reason_en.source == "Fraud payee. " + EN  # what promotion to enforce will show


def test_an_appeal_on_a_warn_rule_is_an_error() -> None:
    text = "rules:\n" + WARN_RULE + f"    appeal: {{zh: {ZH}, en: {EN}}}\n"
    assert problems(text) == [
        "t.rules.yaml:7: rule 'T17_elderly' warns: 'appeal' is only for block rules (a warning refuses "
        "nothing; the clerk acts on the reason)"
    ]


def test_a_reason_that_already_says_the_appeal_is_an_error() -> None:
    text = FILE_APPEAL + "rules:\n" + block_rule(zh=f"收款账户涉诈。{ZH}")
    assert problems(text) == [
        "t.rules.yaml:9: reason.zh already says the appeal text, which is appended to it: remove it from the reason"
    ]


@pytest.mark.parametrize(
    ("appeal", "expected"),
    [
        ("appeal: 可申诉", ["t.rules.yaml:1: 'appeal' must have 'zh' and 'en' texts, got '可申诉'"]),
        (f"appeal: {{zh: {ZH}}}", ["t.rules.yaml:1: appeal has no 'en' text"]),
        (f"appeal: {{zh: {ZH}, en: ''}}", ["t.rules.yaml:1: appeal.en is empty"]),
        (
            f"appeal: {{zh: {ZH}, en: {EN}, fr: Appel}}",
            ["t.rules.yaml:1: unknown key 'fr' in appeal (allowed: zh, en)"],
        ),
        (
            "appeal: {zh: '向{outlet.region_code}申诉', en: Appeal}",
            [
                "t.rules.yaml:1: appeal.zh cannot show values ('{outlet.region_code}'): the appeal route is "
                "the same for every customer"
            ],
        ),
    ],
)
def test_a_broken_file_appeal_is_reported_once(appeal: str, expected: list[str]) -> None:
    # Its own problem only: the block rules relying on it are not also reported as lacking a route.
    assert problems(appeal + "\nrules:\n" + block_rule()) == expected


# ------------------------------------------------------------- what is said


def test_the_engine_says_the_reason_then_the_appeal() -> None:
    listed_and_paid = "transfer.payee_account in list.fraud_accounts and transfer.amount_fen >= 0"
    text = (
        FILE_APPEAL
        + "rules:\n"
        + block_rule(zh="收款账户涉诈，本笔{transfer.amount_fen:money}未执行", when=listed_and_paid)
        + block_rule("T15_static", zh="未执行 {{注意}}", en="Not made")
    )
    compiled = build_ruleset(compile_ruleset(load(text)))
    try:
        reasons = {
            r.rule_id: r
            for r in compiled.evaluate(
                {"event": "transfer", "transfer.amount_fen": 150_000},
                {},
                {("fraud_accounts", "transfer.payee_account"): True},
            )
        }
    finally:
        compiled.close()
    assert reasons["T15_fraud_payee"].message_zh == "收款账户涉诈，本笔1,500.00元未执行。" + ZH
    assert reasons["T15_fraud_payee"].message_en == "Fraud payee. " + EN
    assert reasons["T15_static"].message_zh == "未执行 {注意}。" + ZH


# ------------------------------------------------------------- rules check, hot reload, shipped rules

COUNTERS_YAML = "counters: []\n"
LISTS_YAML = "lists:\n  - name: fraud_accounts\n    kind: account\n"


def _directory(tmp_path: Path, rules: str) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    (directory / "t.rules.yaml").write_text(rules, encoding="utf-8")
    (directory / "counters.yaml").write_text(COUNTERS_YAML, encoding="utf-8")
    (directory / "lists.yaml").write_text(LISTS_YAML, encoding="utf-8")
    return directory


def test_rules_check_refuses_a_block_rule_without_a_route(tmp_path: Path) -> None:
    directory = _directory(tmp_path, "rules:\n" + block_rule())
    out = io.StringIO()
    assert run_check(directory, out=out) == 1
    assert out.getvalue().splitlines() == [
        f"{directory}/t.rules.yaml:2: rule 'T15_fraud_payee' {NO_ROUTE}",
        "1 problem",
    ]


def test_hot_reload_rejects_it_and_keeps_the_last_good_ruleset(tmp_path: Path) -> None:
    good = FILE_APPEAL + "rules:\n" + block_rule()
    directory = _directory(tmp_path, good)
    manager = RulesManager(directory)
    try:
        revision = manager.load().revision
        # The fraud team drops the file's appeal: the rule would refuse customers without a route.
        (directory / "t.rules.yaml").write_text("rules:\n" + block_rule(), encoding="utf-8")
        expected = [f"{directory}/t.rules.yaml:2: rule 'T15_fraud_payee' {NO_ROUTE}"]
        assert manager.reload() == ReloadResult(revision, False, expected)
        with manager.lease() as rules:
            [reason] = rules.evaluate({"event": "transfer"}, {}, {("fraud_accounts", "transfer.payee_account"): True})
        assert reason.message_zh == "收款账户涉诈。" + ZH
    finally:
        manager.close()


def test_every_shipped_block_rule_ends_with_its_files_appeal() -> None:
    ruleset = load_directory(REPO / "rules").ruleset
    blocks = [rule for rule in ruleset.rules if rule.outcome is Outcome.BLOCK]
    assert len(blocks) >= 10
    for rule in blocks:
        assert rule.appeal is not None, rule.id
        assert rule.reason_zh.source.endswith("。" + rule.appeal.zh), rule.id
        assert rule.reason_en.source.endswith(". " + rule.appeal.en), rule.id
        assert rule.reason_zh.source.count("申诉") == 1 and rule.reason_en.source.count("appeal") == 1, rule.id
    assert all(rule.appeal is None for rule in ruleset.rules if rule.outcome is Outcome.WARN)


def test_a_broken_own_appeal_is_reported_beside_the_rules_other_problems() -> None:
    # The rule is broken anyway: no "no appeal route" on top, but its appeal's own problem is shown.
    text = "rules:\n" + block_rule(when="payer.agee > 1", extra="    appeal: {zh: 可申诉}\n")
    assert problems(text) == [
        "t.rules.yaml:4: unknown field 'payer.agee', did you mean 'payer.age'?",
        "t.rules.yaml:7: appeal has no 'en' text",
    ]
    assert problems("rules:\n" + block_rule(when="payer.agee > 1")) == [
        "t.rules.yaml:4: unknown field 'payer.agee', did you mean 'payer.age'?"
    ]
