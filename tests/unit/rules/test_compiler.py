"""The compiler: durable_rules JSON that avoids every documented trap, and sharding."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.domain import EventKind
from service.errors import CompileError, SourceError
from service.pipeline.facts import FieldType
from service.rules.compiler import (
    MAX_TESTS_PER_SHARD,
    _check_keys,
    compile_ruleset,
    durable_hash,
    number_text,
    write_json,
)
from service.rules.loader import SourceText, load_sources
from service.rules.logic import cost_per_kind, dnf, dnf_size, nnf
from service.rules.model import (
    And,
    CmpOp,
    CounterInfo,
    FieldRef,
    Flag,
    ListIn,
    Not,
    Number,
    NumCompare,
    NumIn,
    Or,
    TextIn,
)
from tests.unit.rules.conftest import COUNTERS, LISTS, built, load_fixture, load_text, rule_text

AGE = FieldRef("payer.age", FieldType.NUMBER)
FLAG = FieldRef("payer.non_local", FieldType.BOOL)
PAYEE = FieldRef("transfer.payee_account", FieldType.IDENTIFIER)
CHANNEL = FieldRef("transfer.channel", FieldType.STRING)


def _walk(node: Any) -> list[Any]:
    out = [node]
    if isinstance(node, dict):
        for key, value in node.items():
            out.append(key)
            out.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            out.extend(_walk(value))
    return out


def _definitions(name: str = "rich") -> list[dict[str, Any]]:
    return [json.loads(shard.definition) for shard in compile_ruleset(load_fixture(name)).shards]


def test_no_trap_operators_and_no_dotted_names() -> None:
    keys = [k for d in _definitions() for k in _walk(d) if isinstance(k, str) and k.startswith("$")]
    assert "$ne" not in keys and "$in" not in keys and "$nmt" not in keys and "$not" not in keys
    assert "$neq" in keys
    assert set(keys) <= {
        "$and", "$or", "$eq", "$neq", "$lt", "$lte", "$gt", "$gte", "$ex", "$mt", "$m", "$l", "$r",
        "$add", "$sub", "$mul", "$div",
    }  # fmt: skip
    for definition in _definitions():
        for node in _walk(definition):
            if isinstance(node, dict):
                assert all("." not in key for key in node), node


def test_every_path_starts_with_a_positive_event_test() -> None:
    for definition in _definitions():
        for rule in definition.values():
            assert list(rule) == ["all"] and len(rule["all"]) == 1 and list(rule["all"][0]) == ["m"]
            condition = rule["all"][0]["m"]
            paths = condition.get("$or", [condition])
            for path in paths:
                first = path["$and"][0]
                assert list(first) == ["$eq"] and list(first["$eq"]) == ["f_event"]
                assert first["$eq"]["f_event"] in {k.value for k in EventKind}


def test_right_hand_values_are_guarded() -> None:
    ruleset = load_text(rule_text("transfer.amount_fen >= 0.8 * inflow_fen_30m and payer.province != outlet.province"))
    definition = json.loads(compile_ruleset(ruleset).shards[0].definition)
    assert definition["r1"]["all"][0]["m"] == {
        "$and": [
            {"$eq": {"f_event": "transfer"}},
            {"$ex": {"c_inflow_fen_30m": 1}},
            {"$gte": {"f_transfer__amount_fen": {"$mul": {"$l": 0.8, "$r": {"$m": "c_inflow_fen_30m"}}}}},
            {"$ex": {"f_outlet__province": 1}},
            {"$neq": {"f_payer__province": {"$m": "f_outlet__province"}}},
        ]
    }


def test_not_and_lists_compile_into_paths() -> None:
    ruleset = load_text(
        rule_text(
            'not (payer.age > 60 and transfer.channel in ["atm", "online"]) and '
            "transfer.payee_account not in list.fraud_accounts and not payer.non_local",
            on="[transfer, closure]".replace(", closure", ""),
        )
    )
    definition = json.loads(compile_ruleset(ruleset).shards[0].definition)
    event = {"$eq": {"f_event": "transfer"}}
    tail = [{"$eq": {"l_fraud_accounts__transfer__payee_account": False}}, {"$eq": {"f_payer__non_local": False}}]
    assert definition["r1"]["all"][0]["m"] == {
        "$or": [
            {"$and": [event, {"$lte": {"f_payer__age": 60.0}}, *tail]},
            {
                "$and": [
                    event,
                    {"$neq": {"f_transfer__channel": "atm"}},
                    {"$neq": {"f_transfer__channel": "online"}},
                    *tail,
                ]
            },
        ]
    }


def test_string_lists_become_one_pattern_and_chinese_stays_raw() -> None:
    ruleset = load_text(rule_text('transfer.payee_bank in ["工商银行", "a.b"] and outlet.clerk_id in ["", "c1"]'))
    shard = compile_ruleset(ruleset).shards[0]
    assert "工商银行" in shard.definition and "\\u" not in shard.definition
    paths = json.loads(shard.definition)["r1"]["all"][0]["m"]["$or"]
    assert [p["$and"][1:] for p in paths] == [
        [{"$mt": {"p_transfer__payee_bank": "工商银行|a%.b"}}, {"$eq": {"f_outlet__clerk_id": ""}}],
        [{"$mt": {"p_transfer__payee_bank": "工商银行|a%.b"}}, {"$eq": {"f_outlet__clerk_id": "c1"}}],
    ]


def test_multi_kind_rules_get_one_path_per_kind() -> None:
    ruleset = load_text(rule_text("person.age >= 65", on="[card_opening, sim_sale]"))
    condition = json.loads(compile_ruleset(ruleset).shards[0].definition)["r1"]["all"][0]["m"]
    assert [p["$and"][0]["$eq"]["f_event"] for p in condition["$or"]] == ["card_opening", "sim_sale"]


def test_numbers_are_written_as_doubles_without_exponent() -> None:
    assert number_text(5) == "5.0"
    assert number_text(-0.5) == "-0.5"
    assert number_text(1e16) == "10000000000000000.0"
    assert float(number_text(1.2345e-7)) == 1.2345e-7 and "e" not in number_text(1.2345e-7)
    with pytest.raises(ValueError, match="not a finite number"):
        number_text(float("nan"))
    assert write_json({"a": [1, 2.0, True, "中"]}) == '{"a":[1,2.0,true,"中"]}'


def test_negation_normal_form() -> None:
    a = NumCompare(AGE, CmpOp.GT, Number(5.0))
    b = Flag(FLAG, True)
    c = ListIn(PAYEE, "fraud_accounts", False)
    d = NumIn(AGE, (1.0, 2.0), False)
    e = TextIn(CHANNEL, ("atm",), True)
    assert nnf(Not(And((a, Or((b, Not(c))))))) == Or(
        (NumCompare(AGE, CmpOp.LE, Number(5.0)), And((Flag(FLAG, False), c)))
    )
    assert nnf(Not(Not(a))) == a
    assert nnf(Not(Or((d, e)))) == And((NumIn(AGE, (1.0, 2.0), True), TextIn(CHANNEL, ("atm",), False)))
    assert nnf(And((a, And((b, c))))) == And((a, b, c))


def test_dnf_size_matches_the_expansion() -> None:
    a = NumCompare(AGE, CmpOp.GT, Number(5.0))
    b = Flag(FLAG, True)
    d = NumIn(AGE, (1.0, 2.0, 3.0), False)
    condition = And((Or((a, b)), d, Or((a, And((b, a))))))
    paths = dnf(condition)
    assert len(paths) == 2 * 3 * 2
    assert dnf_size(condition) == (len(paths), sum(len(p) for p in paths))
    assert cost_per_kind(condition) == len(paths) + sum(len(p) for p in paths)
    huge = And(tuple(Or((a, b)) for _ in range(40)))
    assert dnf_size(huge)[0] == 2**40  # measured without expanding


def test_durable_hash_is_djb2_as_in_the_engine() -> None:
    assert durable_hash("$eq") == 193419647  # the constant in durable_rules' rete.c
    assert durable_hash("Ab") == durable_hash("BA")
    with pytest.raises(CompileError, match="share a durable hash"):
        _check_keys({"Ab", "BA"})


def test_rules_are_packed_per_event_kind_within_the_budget() -> None:
    rules = "".join(
        rule_text(f"payer.age > {i}", rule_id=f"t{i}").removeprefix("rules:\n")
        + rule_text(f"applicant.age > {i}", on="[card_opening]", rule_id=f"k{i}").removeprefix("rules:\n")
        for i in range(40)
    )
    plan = compile_ruleset(load_text("rules:\n" + rules))
    for shard in plan.shards:
        assert all(tests <= MAX_TESTS_PER_SHARD for tests in shard.tests.values())
    # Each rule costs 2 tests (event + comparison) per kind: 24 rules of each kind share a shard.
    assert [len(shard.rule_ids) for shard in plan.shards] == [48, 32]
    assert plan.inputs[EventKind.TRANSFER].shards == (0, 1)
    assert plan.inputs[EventKind.SIM_SALE].shards == ()


def test_a_full_shard_evaluates_without_overflowing_durable() -> None:
    # 24 rules per kind, all true at once: 48 tests reachable per kind, 96 in the shard.
    rules = "".join(
        rule_text(f"payer.age > {i}", rule_id=f"t{i}").removeprefix("rules:\n")
        + rule_text(f"applicant.age > {i}", on="[card_opening]", rule_id=f"k{i}").removeprefix("rules:\n")
        for i in range(24)
    )
    with built("rules:\n" + rules) as compiled:
        assert compiled.shard_count == 1
        assert len(compiled.evaluate({"event": "transfer", "payer.age": 100}, {}, {})) == 24
        assert len(compiled.evaluate({"event": "card_opening", "applicant.age": 100}, {}, {})) == 24


def test_disabled_rules_are_not_compiled() -> None:
    plan = compile_ruleset(load_fixture("rich"))
    compiled_ids = {rule_id for shard in plan.shards for rule_id in shard.rule_ids}
    assert "disabled_rule" not in compiled_ids
    assert compiled_ids == {r.id for r in plan.ruleset.enabled_rules}


def test_names_colliding_in_durables_hash_are_a_source_problem() -> None:
    counters = {**COUNTERS, "Ab": CounterInfo("Ab"), "BA": CounterInfo("BA")}
    ruleset = load_sources([SourceText("t.rules.yaml", rule_text("Ab > 1 and BA > 1"))], counters=counters, lists=LISTS)
    with pytest.raises(SourceError) as caught:
        compile_ruleset(ruleset)
    assert [str(p) for p in caught.value.problems] == [
        "t.rules.yaml:2: 'BA' and 'Ab' collide in durable_rules' 32-bit name hash: rename one of them"
    ]
