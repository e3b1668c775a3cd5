"""A rules directory as one unit: rules, counters.yaml and lists.yaml, checked and hashed together."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.errors import SourceError
from service.riskdata.lists import ListKind, ListSpec, load_lists
from service.rules.directory import counters_of, load_directory, read_directory, stat_signature

RULE = """\
rules:
  - id: K05_many_banks
    on: [card_opening]
    when: banks_30d >= 3
    outcome: warn
    reason: {zh: "{banks_30d}家银行", en: "{banks_30d} banks"}
"""
COUNTERS = """\
counters:
  - name: banks
    on: card_opening
    key: person.id_number
    aggregate: distinct(outlet.institution_id)
    windows: [30d]
"""
LISTS = """\
lists:
  - name: fraud_accounts
    kind: account
"""


def _write(directory: Path, rules: str = RULE, counters: str | None = COUNTERS, lists: str | None = LISTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "a.rules.yaml").write_text(rules, encoding="utf-8")
    for name, text in (("counters.yaml", counters), ("lists.yaml", lists)):
        if text is not None:
            (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_a_directory_loads_with_its_counters_and_lists(tmp_path: Path) -> None:
    loaded = load_directory(_write(tmp_path / "r"))
    assert [r.id for r in loaded.ruleset.rules] == ["K05_many_banks"]
    assert set(loaded.ruleset.counters) == {"banks_30d"} == set(counters_of(loaded.counter_spec))
    assert loaded.lists == {"fraud_accounts": ListSpec("fraud_accounts", ListKind.ACCOUNT)}
    assert loaded.revision == loaded.ruleset.revision and len(loaded.content_hash) == 64


def test_counters_and_lists_files_are_optional(tmp_path: Path) -> None:
    rule = RULE.replace("banks_30d >= 3", "applicant.age >= 3").replace("{banks_30d}", "{applicant.age}")
    loaded = load_directory(_write(tmp_path / "r", rule, counters=None, lists=None))
    assert loaded.counter_spec.counters == () and loaded.lists == {} and len(loaded.filters) == 0


def test_the_revision_and_hash_cover_counters_and_lists_but_not_the_directory_name(tmp_path: Path) -> None:
    first = load_directory(_write(tmp_path / "one"))
    assert load_directory(_write(tmp_path / "two")).revision == first.revision
    (tmp_path / "two" / "a.cases.yaml").write_text("cases: []\n", encoding="utf-8")
    assert read_directory(tmp_path / "two").content_hash == first.content_hash  # cases are not served
    extended = COUNTERS.replace("windows: [30d]", "windows: [30d, 90d]")
    second = load_directory(_write(tmp_path / "two", counters=extended))
    assert second.revision != first.revision and second.content_hash != first.content_hash
    third = load_directory(_write(tmp_path / "three", lists=LISTS + "  - name: allowlist\n    kind: account\n"))
    assert third.revision != first.revision


def test_broken_counters_and_lists_are_reported_before_the_rules(tmp_path: Path) -> None:
    directory = _write(tmp_path / "r", counters=COUNTERS.replace("windows", "windowz"), lists="lists: 3\n")
    with pytest.raises(SourceError) as caught:
        load_directory(directory)
    assert [str(p) for p in caught.value.problems] == [
        f"{directory}/counters.yaml:2: counter 'banks': missing 'windows'",
        f"{directory}/counters.yaml:6: counter 'banks': unknown key 'windowz'; did you mean 'windows'?",
        f"{directory}/lists.yaml:1: 'lists' must be a list",
        f"{directory}:0: the rule files are checked once counters.yaml, lists.yaml and rates.yaml are valid",
    ]


def test_no_rule_files(tmp_path: Path) -> None:
    directory = _write(tmp_path / "r")
    (directory / "a.rules.yaml").unlink()
    with pytest.raises(SourceError, match=r"no rule files \(\*\.rules\.yaml\) in this directory"):
        load_directory(directory)
    with pytest.raises(SourceError, match="not a directory"):
        load_directory(tmp_path / "missing")
    assert stat_signature(tmp_path / "missing") == ()


def test_a_lists_file_edited_while_loading_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _write(tmp_path / "r")
    calls: list[int] = []

    def edit_during_first_load(root: Path) -> dict[str, ListSpec]:
        specs = load_lists(root)
        calls.append(1)
        if len(calls) == 1:
            (root / "lists.yaml").write_text(LISTS + "  - name: allowlist\n    kind: account\n", encoding="utf-8")
        return specs

    monkeypatch.setattr("service.rules.directory.load_lists", edit_during_first_load)
    loaded = load_directory(directory)
    assert len(calls) == 2 and set(loaded.lists) == {"fraud_accounts", "allowlist"}


def test_the_stat_signature_sees_edits_and_new_files(tmp_path: Path) -> None:
    directory = _write(tmp_path / "r")
    before = stat_signature(directory)
    assert [name for name, *_ in before] == ["a.rules.yaml", "counters.yaml", "lists.yaml"]
    shutil.copy(directory / "a.rules.yaml", directory / "b.rules.yaml")
    assert stat_signature(directory) != before
