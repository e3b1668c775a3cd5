"""Hot reload: a new revision on every real change, the old one serving on a broken one, no rebuild without change."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.domain import EventKind
from service.errors import EvaluationError, SourceError
from service.pipeline.screening import RuleEvaluator
from service.riskdata.counters.model import Predicate, counters_to_update
from service.rules import reload as reload_module
from service.rules.directory import RulesDirectory
from service.rules.reload import ActiveRules, ReloadResult, RulesManager

RULES = """\
revision: r1
rules:
  - id: K05_many_banks
    on: [card_opening]
    when: banks_30d >= 3
    outcome: warn
    reason:
      zh: 本证件30天内已在{banks_30d}家银行开户
      en: This ID opened accounts at {banks_30d} banks in 30 days
  - id: T15_fraud_payee
    on: [transfer]
    when: transfer.payee_account in list.fraud_accounts
    outcome: block
    reason: {zh: 收款账户经公安机关认定为涉诈账户, en: The payee account is identified by police as fraud-involved}
appeal: {zh: 如有异议，可向本行申诉。, en: You may appeal at this bank.}
"""
COUNTERS = """\
counters:
  - name: banks
    on: card_opening
    key: person.id_number
    aggregate: distinct(outlet.institution_id)
    windows: [30d]
  - name: night
    on: transfer
    key: transfer.payer_account
    aggregate: count
    where: local_hour < 5
    windows: [90d]
"""
LISTS = """\
lists:
  - name: fraud_accounts
    kind: account
"""
OPENING = {"event": "card_opening"}


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "k.rules.yaml").write_text(RULES, encoding="utf-8")
    (directory / "counters.yaml").write_text(COUNTERS, encoding="utf-8")
    (directory / "lists.yaml").write_text(LISTS, encoding="utf-8")
    (directory / "k.cases.yaml").write_text("cases: []\n", encoding="utf-8")
    return directory


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The content hashes the manager built durable rulesets for, in order."""
    built: list[str] = []
    real = reload_module.build

    def counting(directory: RulesDirectory) -> ActiveRules:
        built.append(directory.content_hash)
        return real(directory)

    monkeypatch.setattr(reload_module, "build", counting)
    return built


@pytest.fixture
def results() -> list[tuple[str, ReloadResult]]:
    """What the manager's on_reload listener was told."""
    return []


@pytest.fixture
def manager(rules_dir: Path, builds: list[str], results: list[tuple[str, ReloadResult]]) -> Iterator[RulesManager]:
    manager = RulesManager(rules_dir, on_reload=lambda outcome, result: results.append((outcome, result)))
    manager.load()
    yield manager
    manager.close()


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def _fired(rules: ActiveRules, counters: dict[str, int | float]) -> list[str]:
    return [r.rule_id for r in rules.evaluate(OPENING, counters, {})]


def test_load_serves_a_consistent_bundle(manager: RulesManager, rules_dir: Path) -> None:
    with manager.lease() as rules:
        # What the server plugs in: the screening pipeline's evaluator and the counters' predicate.
        evaluator: RuleEvaluator = rules
        where: Predicate = rules.where
        assert evaluator.revision == rules.revision and where is rules.where
        assert rules.revision == manager.revision and rules.revision.startswith("r1@")
        assert _fired(rules, {"banks_30d": 3}) == ["K05_many_banks"]
        assert rules.list_checks == {("fraud_accounts", "transfer.payee_account")}
        assert set(rules.lists) == {"fraud_accounts"}
        assert rules.directory == str(rules_dir)
        night = counters_to_update(rules.counter_spec, EventKind.TRANSFER, {"local_hour": 2}, rules.where)
        assert night == {"night"}
    assert manager.last_errors == () and manager.reload_counts == {"loaded": 0, "unchanged": 0, "rejected": 0}


def test_an_edit_gives_a_new_revision(
    manager: RulesManager, rules_dir: Path, builds: list[str], results: list[tuple[str, ReloadResult]]
) -> None:
    first = manager.current
    _edit(rules_dir / "k.rules.yaml", "banks_30d >= 3", "banks_30d >= 5")
    assert manager.changed_on_disk()
    result = manager.reload()
    assert result.changed and result.errors == [] and result.revision != first.revision
    assert manager.revision == result.revision and len(builds) == 2
    assert first.ruleset.closed  # no lease held it: deleted at once
    with manager.lease() as rules:
        assert _fired(rules, {"banks_30d": 3}) == []
        assert _fired(rules, {"banks_30d": 5}) == ["K05_many_banks"]
    assert not manager.changed_on_disk()
    assert results == [("loaded", result)]


def test_a_broken_file_leaves_the_old_ruleset_serving(
    manager: RulesManager, rules_dir: Path, builds: list[str]
) -> None:
    revision = manager.revision
    _edit(rules_dir / "k.rules.yaml", "banks_30d >= 3", "banks_31d >= 3")
    result = manager.reload()
    expected = [f"{rules_dir}/k.rules.yaml:5: unknown counter 'banks_31d', did you mean 'banks_30d'?"]
    assert result == ReloadResult(revision, False, expected)
    assert manager.last_errors == tuple(expected) and manager.revision == revision
    with manager.lease() as rules:
        assert _fired(rules, {"banks_30d": 3}) == ["K05_many_banks"]
    # The same broken content is neither rebuilt nor logged again, but its errors stay reported.
    assert manager.reload() == ReloadResult(revision, False, expected)
    assert len(builds) == 1
    # Put back as it was: nothing to rebuild, and no errors any more.
    _edit(rules_dir / "k.rules.yaml", "banks_31d >= 3", "banks_30d >= 3")
    assert manager.reload() == ReloadResult(revision, False, [])
    assert manager.last_errors == () and len(builds) == 1
    assert manager.reload_counts == {"loaded": 0, "unchanged": 2, "rejected": 1}


def test_broken_counters_or_lists_are_errors_too(manager: RulesManager, rules_dir: Path) -> None:
    revision = manager.revision
    _edit(rules_dir / "counters.yaml", "where: local_hour < 5", "where: local_hour < 5 and banks_30d > 1")
    result = manager.reload()
    assert result.errors == [
        f"{rules_dir}/counters.yaml:11: counter 'night': where: 'banks_30d' is not a field "
        "(a counter's where reads request fields only)",
        f"{rules_dir}:0: the rule files are checked once counters.yaml, lists.yaml and rates.yaml are valid",
    ]
    _edit(rules_dir / "counters.yaml", " and banks_30d > 1", "")
    (rules_dir / "lists.yaml").write_text("lists: []\n", encoding="utf-8")
    result = manager.reload()
    assert result.errors == [
        f"{rules_dir}/k.rules.yaml:12: unknown list 'fraud_accounts' (no lists are declared: see lists.yaml)"
    ]
    assert manager.revision == revision


def test_a_counters_change_rebuilds_the_filters_and_the_revision(manager: RulesManager, rules_dir: Path) -> None:
    before = manager.current
    _edit(rules_dir / "counters.yaml", "where: local_hour < 5", "where: local_hour < 6")
    result = manager.reload()
    assert result.changed and result.revision != before.revision
    assert result.revision.startswith("r1@")  # the rule files did not change; the revision covers counters.yaml
    with manager.lease() as rules:
        assert rules.counter_spec is not before.counter_spec
        assert counters_to_update(rules.counter_spec, EventKind.TRANSFER, {"local_hour": 5}, rules.where) == {"night"}


def test_same_content_is_never_rebuilt(manager: RulesManager, rules_dir: Path, builds: list[str]) -> None:
    assert manager.reload() == ReloadResult(manager.revision, False, [])
    path = rules_dir / "k.rules.yaml"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert manager.changed_on_disk()
    assert not manager.reload().changed
    (rules_dir / "k.cases.yaml").write_text("cases: []\n# cases do not change what is served\n", encoding="utf-8")
    assert not manager.changed_on_disk() and not manager.reload().changed
    assert len(builds) == 1


def test_a_request_finishes_on_the_ruleset_it_leased(manager: RulesManager, rules_dir: Path) -> None:
    with manager.lease() as old:
        _edit(rules_dir / "k.rules.yaml", "banks_30d >= 3", "banks_30d >= 5")
        assert manager.reload().changed
        assert manager.current is not old and not old.ruleset.closed
        assert _fired(old, {"banks_30d": 3}) == ["K05_many_banks"]
    assert old.ruleset.closed


def test_a_broken_directory_refuses_to_start(rules_dir: Path) -> None:
    _edit(rules_dir / "k.rules.yaml", "outcome: warn", "outcome: deny")
    manager = RulesManager(rules_dir)
    with pytest.raises(SourceError) as caught:
        manager.load()
    assert [str(p) for p in caught.value.problems] == [
        f"{rules_dir}/k.rules.yaml:6: unknown outcome 'deny' (expected block or warn)"
    ]
    assert not manager.loaded
    with pytest.raises(EvaluationError, match="no rules are loaded"):
        manager.reload()


def test_a_closed_manager_does_not_reload(rules_dir: Path, builds: list[str]) -> None:
    manager = RulesManager(rules_dir)
    serving = manager.load()
    manager.close()
    assert serving.ruleset.closed
    _edit(rules_dir / "k.rules.yaml", "banks_30d >= 3", "banks_30d >= 5")
    with pytest.raises(EvaluationError, match="closed"):
        manager.reload()
    assert len(builds) == 1


def test_a_failing_listener_does_not_break_reloading(rules_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken(outcome: str, result: ReloadResult) -> None:
        raise RuntimeError("listener")

    manager = RulesManager(rules_dir, on_reload=broken)
    assert manager.load() is manager.load()
    try:
        assert manager.reload().errors == []
        assert "reload listener failed" in caplog.text
    finally:
        manager.close()


async def test_watch_picks_up_edits(manager: RulesManager, rules_dir: Path) -> None:
    revision = manager.revision
    watcher = asyncio.create_task(manager.watch(0.01))
    try:
        _edit(rules_dir / "k.rules.yaml", "banks_30d >= 3", "banks_30d >= 4")
        await _until(lambda: manager.revision != revision)
        edited = manager.revision
        _edit(rules_dir / "k.rules.yaml", "outcome: warn", "outcome: deny")
        await _until(lambda: manager.last_errors != ())
        assert manager.revision == edited
        assert manager.reload_counts["rejected"] == 1
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    with pytest.raises(ValueError, match="positive"):
        await manager.watch(0)


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
