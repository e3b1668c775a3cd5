"""Confidential lists (the police's vulnerable-person and warning lists) are never named in
answers: a rule's look-ups in them show as one "in a confidential list" evidence entry, hit when
any of them hit; the decision log keeps which."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import SourceError
from service.pipeline.facts import Scalar
from service.riskdata.lists import load_lists
from service.rules.directory import load_directory
from service.rules.engine import confidential_evidence
from service.rules.reload import ActiveRules, build
from tests.conftest import REPO

RULES = REPO / "rules"


@pytest.fixture(scope="module")
def shipped() -> Iterator[ActiveRules]:
    active = build(load_directory(RULES))
    yield active
    active.ruleset.close()


def _t16(active: ActiveRules, vulnerable: bool, warned: bool) -> list[tuple[str, str]]:
    facts: dict[str, Scalar] = {"event": "transfer", "transfer.amount_fen": 200_000}
    hits = {("vulnerable_persons", "payer.id_number"): vulnerable, ("police_warned", "payer.id_number"): warned}
    reasons = {r.rule_id: r for r in active.evaluate(facts, {}, hits)}
    return list(reasons["T16_protected_payer"].evidence)


def test_the_police_lists_are_declared_confidential() -> None:
    lists = load_lists(RULES)
    assert {name for name, spec in lists.items() if spec.confidential} == {"vulnerable_persons", "police_warned"}


@pytest.mark.parametrize(("vulnerable", "warned"), [(True, False), (False, True), (True, True)])
def test_evidence_never_names_a_confidential_list(shipped: ActiveRules, vulnerable: bool, warned: bool) -> None:
    evidence = _t16(shipped, vulnerable, warned)
    text = repr(evidence)
    assert "vulnerable_persons" not in text and "police_warned" not in text
    assert (confidential_evidence("payer.id_number"), "hit") in evidence
    assert [name for name, _ in evidence].count(confidential_evidence("payer.id_number")) == 1


def test_confidential_must_be_a_boolean(tmp_path: Path) -> None:
    (tmp_path / "lists.yaml").write_text("lists:\n  - {name: secret, kind: id_number, confidential: yes}\n")
    with pytest.raises(SourceError) as raised:
        load_lists(tmp_path)
    assert "lists.yaml:2: list 'secret': 'confidential' must be true or false" in str(raised.value)
