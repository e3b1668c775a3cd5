"""The `when` language: parsing, name resolution and type checking, with their exact messages."""

from __future__ import annotations

import pytest

from service.domain import EventKind
from service.errors import SourceError
from service.pipeline.facts import FieldType
from service.rules import expr as ast
from service.rules.loader import SourceText, load_sources
from service.rules.model import (
    And,
    Arith,
    ArithOp,
    CmpOp,
    CounterInfo,
    CounterRef,
    FieldRef,
    Flag,
    ListCheck,
    ListIn,
    Not,
    Number,
    NumCompare,
    NumIn,
    Or,
    Text,
    TextCompare,
    TextIn,
)
from tests.unit.rules.conftest import COUNTERS, LISTS, load_text, problems_of, rule_text


def when_of(condition: str, on: str = "[transfer]") -> object:
    return load_text(rule_text(condition, on)).rules[0].when


AMOUNT = FieldRef("transfer.amount_fen", FieldType.NUMBER)
AGE = FieldRef("payer.age", FieldType.NUMBER)
CHANNEL = FieldRef("transfer.channel", FieldType.STRING)
INFLOW = CounterRef("inflow_fen_30m")


# ----------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("payer.age >", "column 12: the condition ends too early: expected a value"),
        ("payer.age > 1 == 2", "column 15: comparisons cannot be chained: join them with 'and'"),
        ("payer.age = 1", "column 11: unexpected character '=': use '==' to compare"),
        ("payer.age > 1 && payer.age < 5", "column 15: unexpected character '&': use 'and'"),
        ("payer.age > 1 || payer.non_local", "column 15: unexpected character '|': use 'or'"),
        ('transfer.channel == "atm', "column 21: string is not closed"),
        ("(payer.age > 1", "column 15: expected ')', found end of condition"),
        ("payer.age > 1)", "column 14: ')' without a matching '('"),
        ("payer.age in []", "column 15: the list is empty"),
        ("payer.age in [a]", "column 15: list items must be numbers or strings, found 'a'"),
        ("payer.age in [1 2]", "column 17: expected ',' or ']', found '2'"),
        ("payer.age in 5", "column 14: expected '[' or list.NAME after 'in', found '5'"),
        ("transfer.payee_account in list.a.b", "column 32: 'a.b' is not a list name"),
        ("payer.age > 1__0", "column 13: '1__0' is not a number"),
        ("payer.age > 1.2.3", "column 13: '1.2.3' is not a number"),
        ("payer.age > 1e16", "column 13: '1e16' is not a number"),
        ("transfer.channel startswith payer.age", "column 29: expected a string after 'startswith', found 'payer.age'"),
        ("payer.age > 1 payer.age", "column 15: expected 'and', 'or' or the end of the condition, found 'payer.age'"),
        ("and payer.age > 1", "column 1: expected a value, found 'and'"),
        ("payer.age > 1 and", "column 18: the condition ends too early: expected a value"),
    ],
)
def test_syntax_errors_name_the_column(condition: str, message: str) -> None:
    assert problems_of(rule_text(condition)) == [f"4: when: syntax error at {message}"]


def test_empty_condition() -> None:
    assert problems_of(rule_text("")) == ["4: when: syntax error at column 1: the condition is empty"]


def test_deep_nesting_is_refused() -> None:
    condition = "(" * 60 + "payer.age > 1" + ")" * 60
    assert problems_of(rule_text(condition)) == [
        "4: when: syntax error at column 42: the condition is nested too deeply"
    ]


def test_precedence_and_associativity() -> None:
    tree = ast.parse_condition("a or b and not c")
    assert isinstance(tree, ast.Logical) and tree.op == "or"
    assert isinstance(tree.items[1], ast.Logical) and tree.items[1].op == "and"
    assert isinstance(tree.items[1].items[1], ast.NotOp)
    arith = ast.parse_condition("x > 1 - 2 - 3 * 4 / 5")
    assert isinstance(arith, ast.Compare)
    # (1 - 2) - ((3 * 4) / 5)
    right = arith.right
    assert isinstance(right, ast.Binary) and right.op == "-"
    assert isinstance(right.left, ast.Binary) and right.left.op == "-"
    assert isinstance(right.right, ast.Binary) and right.right.op == "/"


def test_literal_block_reports_the_line_and_column_inside_the_block() -> None:
    text = (
        "rules:\n  - id: r1\n    on: [transfer]\n    when: |\n      payer.age > 1\n      and payer.age <\n"
        "    outcome: warn\n    reason: {zh: 原因, en: reason}\n"
    )
    assert problems_of(text) == ["6: when: syntax error at column 16: the condition ends too early: expected a value"]


# ------------------------------------------------------- types and names


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("banks_30d", "counter 'banks_30d' is not a yes/no test: compare it, e.g. 'banks_30d >= 3'"),
        ("transfer.channel", "string 'transfer.channel' is not a yes/no test: compare it with == or !="),
        ("payer.non_local == payer.has_phone", "compare a yes/no field only with true or false"),
        ("payer.non_local > true", "cannot use '>' on yes/no values: they compare only with == and !="),
        ("payer.non_local == 1", "cannot compare yes/no 'payer.non_local' with number 1"),
        ("true", "a condition cannot be the constant true or false"),
        ("5 > 3", "the comparison has no field or counter: it compares two constants"),
        ('"a" == "b"', "the comparison has no field or counter: it compares two constants"),
        (
            "transfer.amount_fen * 2 > inflow_fen_30m * 3",
            "a comparison needs a single field or counter on one side, "
            "e.g. 'transfer.amount_fen >= 0.8 * inflow_fen_30m'",
        ),
        (
            "transfer.amount_fen > inflow_fen_30m / outflow_fen_30m",
            "'/' can only divide by a non-zero number constant, e.g. 'x / 100'",
        ),
        (
            "transfer.amount_fen > inflow_fen_30m / (2 - 2)",
            "'/' can only divide by a non-zero number constant, e.g. 'x / 100'",
        ),
        ("transfer.amount_fen > 10_000_000_000_000_000", "number 10_000_000_000_000_000 is too large (at most 10^15)"),
        ("transfer.amount_fen > 1_000_000_000 * 10_000_000", "a constant expression is too large (at most 10^15)"),
        (
            "transfer.amount_fen > inflow_fen_30m + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1",
            "the arithmetic is too long (at most 8 operations per comparison)",
        ),
        (
            "transfer.payee_account in list.fraud_acounts",
            "unknown list 'fraud_acounts', did you mean 'fraud_accounts'?",
        ),
        (
            "transfer.amount_fen in list.fraud_accounts",
            "only identifier and string fields can be looked up in a list, not number 'transfer.amount_fen'",
        ),
        (
            'transfer.payee_account in ["1"]',
            "'transfer.payee_account' is an identifier: it can only be tested with 'in list.NAME' "
            "(identifiers are never compared or shown)",
        ),
        (
            'transfer.payee_account startswith "62"',
            "'transfer.payee_account' is an identifier: it can only be tested with 'in list.NAME' "
            "(identifiers are never compared or shown)",
        ),
        (
            'transfer.amount_fen startswith "1"',
            "'startswith' needs a string field on its left, not number 'transfer.amount_fen'",
        ),
        (
            'not (transfer.channel matches "a.*")',
            "'not' cannot apply to 'matches' (durable_rules has no negated pattern match): "
            "rewrite the condition without it",
        ),
        (
            "list.fraud_accounts",
            "'list.fraud_accounts' can only follow 'in', as in 'transfer.payee_account in list.fraud_accounts'",
        ),
        ('payer.age in [1, "a"]', "cannot compare number 'payer.age' with string \"a\" in the list"),
        (
            "payer.non_local in [1]",
            "yes/no 'payer.non_local' is yes/no: test it alone or with 'not', not with 'in [..]'",
        ),
        ("payer.age + 1 in [1]", "'in [..]' needs a single field or counter on its left"),
        ("amount_fen > 1", "unknown counter 'amount_fen', did you mean 'transfer.amount_fen'?"),
        ("transfer.amont_fen > 1", "unknown field 'transfer.amont_fen', did you mean 'transfer.amount_fen'?"),
        ("xyzzy > 1", "unknown counter 'xyzzy'"),
        ('transfer.channel matches "%a+"', "pattern \"%a+\": unsupported class '%a': use %d or a set such as [A-Za-z]"),
        ('transfer.channel startswith ""', "startswith needs a non-empty prefix"),
        ("payer.age > (payer.age > 1)", "a condition (comparison, 'and', 'or', 'not', 'in') cannot be used as a value"),
        ("-payer.age", "number expression is not a yes/no test: compare it, e.g. 'x >= 3'"),
        ("-transfer.channel > 1", "'-' needs numbers, but string 'transfer.channel' is not a number"),
    ],
)
def test_type_and_name_errors(condition: str, message: str) -> None:
    assert problems_of(rule_text(condition.replace("'", "''"))) == [f"4: {message}"]


def test_string_constants_refuse_characters_the_engine_sees_escaped() -> None:
    # YAML double-quoted scalars turn \\ into one backslash and \t into a tab.
    text = (
        "rules:\n  - id: r1\n    on: [transfer]\n"
        "    when: \"transfer.channel == 'a\\\\b' or transfer.channel in ['x\\ty']\"\n"
        "    outcome: warn\n    reason: {zh: 原因, en: reason}\n"
    )
    assert problems_of(text) == [
        '4: string "a\\b" contains a backslash, which the engine cannot compare reliably',
        '4: string "x\ty" contains a control character, which the engine cannot compare reliably',
    ]


def test_unknown_names_are_reported_once_each_and_all_together() -> None:
    assert problems_of(rule_text("payer.agee > 1 or payer.agee < 0 or banks_31d > 2")) == [
        "4: unknown field 'payer.agee', did you mean 'payer.age'?",
        "4: unknown counter 'banks_31d', did you mean 'banks_30d'?",
    ]


def test_a_field_missing_on_some_kinds_suggests_the_person_field() -> None:
    assert problems_of(rule_text("applicant.age >= 60", on="[card_opening, sim_sale]")) == [
        "4: field 'applicant.age' does not exist on sim_sale events (only on card_opening): "
        "narrow 'on' or split the rule; use 'person.age'",
    ]


def test_a_counter_not_kept_for_the_kind_cannot_fire() -> None:
    counters = {**COUNTERS, "sims_24h": CounterInfo("sims_24h", frozenset({EventKind.SIM_SALE}))}
    with pytest.raises(SourceError) as caught:
        load_sources([SourceText("t.rules.yaml", rule_text("sims_24h >= 2"))], counters=counters, lists=LISTS)
    assert [str(p) for p in caught.value.problems] == [
        "t.rules.yaml:4: counter 'sims_24h' does not exist on transfer events (only on sim_sale): "
        "the rule can never fire on its declared event kinds"
    ]


def test_enum_like_fields_accept_only_their_values() -> None:
    assert problems_of(rule_text('"I" == card_opening.account_class', on="[card_opening]")) == []
    assert problems_of(rule_text('transfer.channel not in ["atm", "ATM", "branch"]')) == [
        "4: 'ATM' is not a value of transfer.channel, did you mean 'atm'?",
        "4: 'branch' is not a value of transfer.channel (one of 'atm', 'counter', 'mobile', 'online')",
    ]
    assert problems_of(rule_text('event != "transfers" and person.sex == "F"')) == [
        "4: 'transfers' is not a value of event, did you mean 'transfer'?",
        "4: 'F' is not a value of person.sex (one of 'female', 'male')",
    ]
    # Field against field, and patterns that match some value, are not constants to check.
    assert (
        problems_of(
            rule_text('closure.carrier == closure.target or closure.carrier startswith "china_"', on="[closure]")
        )
        == []
    )


def test_a_list_with_no_lists_declared() -> None:
    with pytest.raises(SourceError) as caught:
        load_sources(
            [SourceText("t.rules.yaml", rule_text("transfer.payee_account in list.fraud_accounts"))],
            counters=COUNTERS,
            lists={},
        )
    assert [str(p) for p in caught.value.problems] == [
        "t.rules.yaml:4: unknown list 'fraud_accounts' (no lists are declared: see lists.yaml)"
    ]


def test_a_list_accepts_the_fields_of_its_kind_on_every_event_kind_of_the_rule() -> None:
    assert problems_of(rule_text("person.id_number in list.punished_persons", on="[card_opening, sim_sale]")) == []
    assert problems_of(rule_text("transfer.ip_region_code in list.high_risk_regions")) == []
    assert problems_of(rule_text("person.phone in list.fraud_accounts", on="[sim_sale]")) == [
        "4: list 'fraud_accounts' is of kind 'account': 'person.phone' cannot be looked up in it "
        "(there are no account fields on sim_sale events)",
    ]


# -------------------------------------------------------- the typed model


def test_comparisons_put_the_field_on_the_left() -> None:
    assert when_of("100000 < transfer.amount_fen") == NumCompare(AMOUNT, CmpOp.GT, Number(100000.0))
    assert when_of("0.8 * inflow_fen_30m <= transfer.amount_fen") == NumCompare(
        AMOUNT, CmpOp.GE, Arith(ArithOp.MUL, Number(0.8), INFLOW)
    )


def test_constants_fold_and_unary_minus() -> None:
    assert when_of("transfer.amount_fen == 2 * 3 * 1_000") == NumCompare(AMOUNT, CmpOp.EQ, Number(6000.0))
    assert when_of("transfer.amount_fen > -payer.age") == NumCompare(
        AMOUNT, CmpOp.GT, Arith(ArithOp.MUL, AGE, Number(-1.0))
    )
    assert when_of("transfer.amount_fen > -(2 + 3)") == NumCompare(AMOUNT, CmpOp.GT, Number(-5.0))


def test_yes_no_fields() -> None:
    non_local = FieldRef("payer.non_local", FieldType.BOOL)
    assert when_of("payer.non_local") == Flag(non_local, True)
    assert when_of("payer.non_local == false") == Flag(non_local, False)
    assert when_of("payer.non_local != false") == Flag(non_local, True)
    assert when_of("true != payer.non_local") == Flag(non_local, False)
    assert when_of("not payer.non_local") == Not(Flag(non_local, True))


def test_strings_lists_and_logic() -> None:
    assert when_of('"atm" == transfer.channel') == TextCompare(CHANNEL, CmpOp.EQ, Text("atm"))
    assert when_of('transfer.channel not in ["atm", "atm", "online"]') == TextIn(CHANNEL, ("atm", "online"), True)
    assert when_of("payer.age in [60, 60.0, 61]") == NumIn(AGE, (60.0, 61.0), False)
    payee = FieldRef("transfer.payee_account", FieldType.IDENTIFIER)
    assert when_of("transfer.payee_account not in list.fraud_accounts or payer.age > 1 and payer.age < 9") == Or(
        (
            ListIn(payee, "fraud_accounts", True),
            And((NumCompare(AGE, CmpOp.GT, Number(1.0)), NumCompare(AGE, CmpOp.LT, Number(9.0)))),
        )
    )


def test_reads_are_in_order_of_appearance_without_duplicates() -> None:
    rule = load_text(
        rule_text(
            "transfer.amount_fen >= 0.8 * inflow_fen_30m and payer.age > 1 and transfer.amount_fen > 0 "
            "and transfer.payee_account in list.fraud_accounts"
        )
    ).rules[0]
    assert rule.reads == (
        AMOUNT,
        INFLOW,
        AGE,
        ListCheck("fraud_accounts", "transfer.payee_account"),
    )


def test_bare_field_names_win_over_counters_of_the_same_name() -> None:
    counters = {**COUNTERS, "local_hour": CounterInfo("local_hour")}
    ruleset = load_sources([SourceText("t.rules.yaml", rule_text("local_hour < 5"))], counters=counters, lists=LISTS)
    assert ruleset.rules[0].reads == (FieldRef("local_hour", FieldType.NUMBER),)
