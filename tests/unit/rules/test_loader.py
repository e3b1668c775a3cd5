"""Rule files: structure errors, YAML strictness, file discovery and the revision."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.domain import EventKind, Outcome
from service.errors import SourceError
from service.rules.loader import RULES_SUFFIX, find_files, load_rules
from service.rules.model import Mode, Placeholder
from tests.unit.rules.conftest import COUNTERS, FIXTURES, LISTS, load_text, problems_of, rule_text

GOOD = """\
revision: v1
rules:
  - id: T17_elderly
    on: [transfer]
    when: payer.age >= 60 and transfer.amount_fen >= 5_000_000
    outcome: warn
    mode: shadow
    priority: 20
    description: elderly payer sends a large amount
    owner: fraud-team
    basis: 反电信网络诈骗法 第十八条
    enabled: false
    reason:
      zh: 60岁以上付款人转账{transfer.amount_fen:money} {{注意}}
      en: payer aged {payer.age}
"""


def test_every_key_is_read() -> None:
    rule = load_text(GOOD).rules[0]
    assert rule.id == "T17_elderly"
    assert rule.on == (EventKind.TRANSFER,)
    assert rule.outcome is Outcome.WARN
    assert rule.mode is Mode.SHADOW and rule.shadow
    assert rule.priority == 20
    assert rule.description == "elderly payer sends a large amount"
    assert rule.owner == "fraud-team"
    assert rule.basis == "反电信网络诈骗法 第十八条"
    assert rule.enabled is False
    assert rule.when_text == "payer.age >= 60 and transfer.amount_fen >= 5_000_000"
    assert rule.reason_zh.parts == ("60岁以上付款人转账", Placeholder("transfer.amount_fen", "money"), " {注意}")
    assert (rule.file, rule.line) == ("t.rules.yaml", 3)


def test_defaults() -> None:
    rule = load_text(rule_text("payer.age > 1")).rules[0]
    assert (rule.mode, rule.priority, rule.enabled, rule.owner, rule.basis) == (Mode.ENFORCE, 100, True, "", "")


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        ("- a\n- b\n", ["1: expected a mapping with 'rules:' at the top level"]),
        (
            "rule: []\n",
            ["1: unknown key 'rule' at the top level, did you mean 'rules'?", "1: missing 'rules:' (a list of rules)"],
        ),
        ("rules: 5\n", ["1: 'rules' must be a list of rules, got 5"]),
        ("rules:\n  - just text\n", ["2: rule #1 must be a mapping, got 'just text'"]),
        (
            "revision: 'a b'\nrules: []\n",
            ["1: 'revision' must be a short label of letters, digits and . _ + - (e.g. 2024-06-01)"],
        ),
        ("rules: []\n---\nrules: []\n", ["3: only one YAML document per file"]),
        ("rules: []\nrules: []\n", ["2: duplicate key 'rules' (first at line 1)"]),
        (
            "rules: !!python/object:os.system []\n",
            ["1: unsupported YAML tag tag:yaml.org,2002:python/object:os.system"],
        ),
        (
            "rules:\n  - id: r1\n",
            [
                "2: rule 'r1' has no 'on'",
                "2: rule 'r1' has no 'when'",
                "2: rule 'r1' has no 'outcome'",
                "2: rule 'r1' has no 'reason'",
            ],
        ),
    ],
)
def test_structure_errors(text: str, messages: list[str]) -> None:
    assert problems_of(text) == messages


@pytest.mark.parametrize(
    ("extra_key", "message"),
    [
        ("on: transfer", "'on' must be a list of event kinds, e.g. [transfer], got 'transfer'"),
        ("on: []", "'on' must list at least one event kind"),
        ("on: [transfer, transfer]", "event kind 'transfer' is listed twice"),
        ("on: [wire]", "unknown event kind 'wire' (expected one of: card_opening, sim_sale, transfer, closure)"),
        ("reason: {zh: a, en: b, fr: c}", "unknown key 'fr' in reason (allowed: zh, en)"),
        ("reason: text", "'reason' must have 'zh' and 'en' texts, got 'text'"),
        ("reason: {zh: a, en: 5}", "reason.en must be text, got 5"),
        ("reason: {zh: '{x', en: b}", "reason.zh: '{' is not closed (write '{{' for a brace)"),
        ("reason: {zh: 'a}', en: b}", "reason.zh: '}' without '{' (write '}}' for a brace)"),
        (
            "reason: {zh: '{payer.age:usd}', en: b}",
            "reason.zh: unknown format 'usd' in '{payer.age:usd}' (known: yuan, money, days, days_ago)",
        ),
        ("reason: {zh: '{1x}', en: b}", "reason.zh: '{1x}' is not a placeholder: use {field} or {counter}"),
        (
            "reason: {zh: '{transfer.payee_account}', en: b}",
            "reason.zh placeholder '{transfer.payee_account}' is not a value this rule reads (it reads: payer.age)",
        ),
        ("owner: [a]", "'owner' must be text, got a list"),
        ("priority: -1", "'priority' must be a whole number from 0 to 65535, got -1"),
        ("priority: true", "'priority' must be a whole number from 0 to 65535, got true"),
        ("outcome: allow", "unknown outcome 'allow' (expected block or warn)"),
        ("when: [a]", "'when' must be a condition written as text, got a list"),
    ],
)
def test_rule_key_errors(extra_key: str, message: str) -> None:
    base = {
        "id": "r1",
        "on": "[transfer]",
        "when": "payer.age > 1",
        "outcome": "warn",
        "reason": "{zh: a, en: b}",
    }
    key, _, value = extra_key.partition(": ")
    base[key] = value
    text = "rules:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in base.items()) + "\n"
    line = list(base).index(key) + 2
    assert problems_of(text) == [f"{line}: {message}"]


def test_placeholder_from_a_list_lookup_is_not_fillable() -> None:
    text = rule_text("transfer.payee_account in list.fraud_accounts").replace(
        "{zh: 原因, en: reason}", "{zh: '{transfer.payee_account}', en: b}"
    )
    assert problems_of(text) == [
        "6: reason.zh placeholder '{transfer.payee_account}' is not a value this rule reads "
        "(it reads no field or counter)"
    ]


def test_yaml_is_strict_about_implicit_types() -> None:
    # `on:` stays a key (PyYAML's YAML 1.1 would read it as True); integer ids are accepted.
    ruleset = load_text(rule_text("payer.age > 1", rule_id="15"))
    assert ruleset.rules[0].id == "15"
    assert problems_of(rule_text("payer.age > 1", extra="    enabled: no\n")) == [
        "7: 'enabled' must be true or false, got 'no'"
    ]


def test_the_revision_is_the_labels_and_a_content_hash(tmp_path: Path) -> None:
    first = tmp_path / "first"
    second = tmp_path / "second-name"
    shutil.copytree(FIXTURES / "rich", first)
    shutil.copytree(FIXTURES / "rich", second)
    revision = load_rules(first, counters=COUNTERS, lists=LISTS).revision
    assert revision.startswith("rich-1@") and len(revision.split("@")[1]) == 12
    assert (
        load_rules(second, counters=COUNTERS, lists=LISTS).revision == revision
    )  # the directory's name does not count
    path = second / "openings.rules.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "# a comment\n", encoding="utf-8")
    assert load_rules(second, counters=COUNTERS, lists=LISTS).revision != revision
    (second / "transfers.rules.yaml").write_text(
        (second / "transfers.rules.yaml").read_text(encoding="utf-8").replace("revision: rich-1", "revision: b2"),
        encoding="utf-8",
    )
    path.write_text("revision: a1\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_rules(second, counters=COUNTERS, lists=LISTS).revision.startswith("a1+b2@")


def test_without_labels_the_revision_is_the_hash() -> None:
    assert len(load_text(rule_text("payer.age > 1")).revision) == 12


def test_which_files_are_rule_files(tmp_path: Path) -> None:
    (tmp_path / "sub" / ".hidden").mkdir(parents=True)
    for name in (
        "a.rules.yaml",
        "sub/b.rules.yaml",
        "sub/.hidden/c.rules.yaml",
        ".d.rules.yaml",
        "a.cases.yaml",
        "counters.yaml",
        "e.rules.yaml~",
        "f.rules.yml",
    ):
        (tmp_path / name).write_text(rule_text("payer.age > 1", rule_id=name.replace(".", "_").replace("/", "_")))
    found = [p.relative_to(tmp_path).as_posix() for p in find_files(tmp_path, RULES_SUFFIX)]
    assert found == ["a.rules.yaml", "sub/b.rules.yaml"]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    (tmp_path / "a.rules.yaml").write_bytes(b"rules:\n  - id: \xff\n")
    with pytest.raises(SourceError) as caught:
        load_rules(tmp_path, counters=COUNTERS, lists=LISTS)
    assert [str(p) for p in caught.value.problems] == [f"{tmp_path}/a.rules.yaml:2: the file is not valid UTF-8"]


def test_an_empty_rule_file_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "empty.rules.yaml").write_text("# nothing yet\n")
    (tmp_path / "none.rules.yaml").write_text("rules:\n")
    assert load_rules(tmp_path, counters=COUNTERS, lists=LISTS).rules == ()


def test_problems_are_sorted_by_file_then_line(tmp_path: Path) -> None:
    (tmp_path / "a.rules.yaml").write_text(rule_text("payer.agee > 1") + "  - id: r2\n")
    (tmp_path / "b.rules.yaml").write_text("rules: 5\n")
    with pytest.raises(SourceError) as caught:
        load_rules(tmp_path, counters=COUNTERS, lists=LISTS)
    assert [(Path(p.file).name, p.line) for p in caught.value.problems] == [
        ("a.rules.yaml", 4),
        ("a.rules.yaml", 7),
        ("a.rules.yaml", 7),
        ("a.rules.yaml", 7),
        ("a.rules.yaml", 7),
        ("b.rules.yaml", 1),
    ]
