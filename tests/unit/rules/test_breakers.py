"""Rule files' `breaker:`: a file's default, a rule's own, `off`; which rules it guards; identities."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from service.domain import EventKind
from service.pipeline.breakers import Breaker
from service.rules.directory import load_directory
from service.tools.rules import run_check
from tests.conftest import REPO
from tests.unit.rules.conftest import FIXTURES, load_text, problems_of

APPEAL = "appeal: {zh: 如有异议，可向本行申诉。, en: You may appeal at this bank.}\n"


def _file(*rules: str, default: str = "") -> str:
    return APPEAL + (f"breaker: {default}\n" if default else "") + "rules:\n" + "".join(rules)


def _rule(rule_id: str, *, when: str = "transfer.amount_fen >= 100", outcome: str = "block", extra: str = "") -> str:
    return (
        f"  - id: {rule_id}\n    on: [transfer]\n    when: {when}\n    outcome: {outcome}\n"
        f"    reason: {{zh: 原因, en: reason}}\n{extra}"
    )


DEFAULT = "{max_block_share: 20%, window: 10m, min_events: 200}"


def test_the_file_default_guards_its_block_rules_a_rule_may_set_its_own_or_none() -> None:
    ruleset = load_text(
        _file(
            _rule("a"),
            _rule("b", extra="    breaker: {max_block_share: 0.5%, window: 1h, min_events: 50}\n"),
            _rule("c", extra="    breaker: off\n"),
            _rule("d", outcome="warn"),
            _rule("e", extra="    mode: shadow\n"),
            _rule("f", extra="    enabled: false\n"),
            default=DEFAULT,
        )
    )
    breakers = {r.id: r.breaker for r in ruleset.rules}
    assert breakers == {
        "a": Breaker(share_ppm=200_000, window_seconds=600, min_events=200),
        "b": Breaker(share_ppm=5_000, window_seconds=3600, min_events=50),
        "c": None,
        "d": None,  # a warn rule blocks nothing
        "e": Breaker(share_ppm=200_000, window_seconds=600, min_events=200),  # once promoted
        "f": Breaker(share_ppm=200_000, window_seconds=600, min_events=200),
    }
    # Only enabled, enforced block rules are counted.
    watches = ruleset.breaker_watches
    assert [w.rule_id for w in watches] == ["a", "b"]
    assert watches[0].kinds == frozenset({EventKind.TRANSFER})
    assert watches[0].identity == ruleset.rule("a").identity
    assert str(watches[1].breaker) == "max_block_share 0.5%, window 1h, min_events 50"


def test_without_a_default_only_rules_with_their_own_breaker_are_guarded() -> None:
    ruleset = load_text(
        _file(_rule("a"), _rule("b", extra="    breaker: {max_block_share: 100%, window: 24h, min_events: 1}\n"))
    )
    assert [w.rule_id for w in ruleset.breaker_watches] == ["b"]
    assert ruleset.rule("b").breaker == Breaker(share_ppm=1_000_000, window_seconds=86_400, min_events=1)


def test_shares_take_up_to_four_decimals() -> None:
    ruleset = load_text(_file(_rule("a"), default="{max_block_share: 0.0001%, window: 1m, min_events: 1}"))
    breaker = ruleset.rule("a").breaker
    assert breaker is not None and breaker.share_ppm == 1 and breaker.share_text == "0.0001%"
    assert breaker.bucket_ms == 3000


def test_a_top_level_breaker_must_be_a_mapping() -> None:
    assert problems_of(_file(_rule("a"), default="off")) == [
        "2: 'breaker' at the top level must be {max_block_share: 2%, window: 10m, min_events: 200} "
        "(the default of the file's block rules), got 'off'"
    ]


def test_unknown_top_level_key_suggests_breaker() -> None:
    text = _file(_rule("a")).replace("rules:\n", "breakers: {}\nrules:\n", 1)
    assert problems_of(text) == ["2: unknown key 'breakers' at the top level, did you mean 'breaker'?"]


def _identity(rule: str, default: str = DEFAULT) -> str:
    return load_text(_file(rule, default=default)).rules[0].identity


def test_identity_changes_with_what_the_rule_blocks_and_its_breaker_only() -> None:
    base = _identity(_rule("a"))
    assert base.startswith("a@") and len(base) == len("a@") + 12
    assert _identity(_rule("a")) == base  # stable
    assert _identity(_rule("a", when="transfer.amount_fen  >=  100")) == base  # whitespace
    texts = _rule("a").replace("{zh: 原因, en: reason}", "{zh: 另一个原因, en: another reason}")
    assert _identity(texts) == base
    assert _identity(_rule("a", extra="    priority: 5\n    basis: Art 18\n")) == base
    assert _identity(_rule("a", when="transfer.amount_fen >= 5")) != base  # the threshold typo fixed
    assert _identity(_rule("a"), default="{max_block_share: 30%, window: 10m, min_events: 200}") != base
    assert _identity(_rule("b")) != base


def test_the_shipped_rules_guard_every_enforced_block_rule_generously() -> None:
    ruleset = load_directory(REPO / "rules").ruleset
    blocking = {r.id for r in ruleset.rules if r.enabled and not r.shadow and r.outcome.label == "block"}
    watches = ruleset.breaker_watches
    assert {w.rule_id for w in watches} == blocking and blocking
    assert {w.breaker for w in watches} == {Breaker(share_ppm=200_000, window_seconds=600, min_events=200)}


def test_rules_check_refuses_a_bad_breaker_and_summarises_good_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(FIXTURES / "breaker_values", "bad")
    shutil.copy(REPO / "rules" / "lists.yaml", "bad")
    out = io.StringIO()
    assert run_check("bad", out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[-1] == "14 problems"
    assert lines[0] == (
        "bad/bad.rules.yaml:4: breaker.max_block_share must be a percentage "
        "above 0% and at most 100%, with at most 4 decimals (e.g. 2% or 0.5%), got '0%'"
    )
    out = io.StringIO()
    assert run_check(REPO / "rules", out=out) == 0
    breakers = [line for line in out.getvalue().splitlines() if line.startswith("breakers: ")]
    assert breakers == ["breakers: 14 of 14 enforced block rules; max_block_share 20%, window 10m, min_events 200 (14)"]
