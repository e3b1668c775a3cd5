"""The fact catalogue is the rule author's vocabulary: facts() must produce exactly what it declares."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from service.domain import (
    AccountClass,
    CardOpening,
    Carrier,
    Closure,
    CompanionRelation,
    Event,
    IdentityCheck,
    Outlet,
    Person,
    ScreenRequest,
    Sex,
    SimSale,
    Transfer,
    TransferChannel,
)
from service.pipeline.facts import FIELDS, FieldType, facts, identifiers

AT = datetime(2026, 11, 22, 17, 30, tzinfo=UTC)  # 01:30 on the 23rd in Beijing


def person(id_number: str = "11010519900307123X", phone: str = "13812345678") -> Person:
    return Person(
        id_number=id_number,
        name="张三",
        phone=phone,
        address="上海市浦东新区",
        birth_date=date(1990, 3, 7),
        age=36,
        sex=Sex.MALE,
        region_code="110105",
        province_code="11",
        region_known=True,
        non_local=True,
    )


OUTLET = Outlet("BANK_A", "SH-001", "C1", "310115", "31")

EVENTS: dict[str, Event] = {
    "card_opening": CardOpening(
        applicant=person(),
        account_class=AccountClass.I,
        companion=person("110105195001011234", ""),
        companion_relation=CompanionRelation.NON_RELATIVE,
        device_id="DEV-1",
        requested_daily_limit_fen=5_000_000,
        limited_function=False,
        identity_check=IdentityCheck.PASSED,
        has_local_tie=False,
        account_number="6222020200112233445",
    ),
    "sim_sale": SimSale(person(), Carrier.CHINA_MOBILE, 2, False, "DEV-2", IdentityCheck.PASSED, True),
    "transfer": Transfer(
        payer_account="6222020200112233445",
        payer=person(),
        payee_account="6217000010002000300",
        payee_bank="BANK_B",
        amount_fen=4_900_000,
        currency="CNY",
        channel=TransferChannel.MOBILE,
        payee_account_opened_at=datetime(2026, 11, 20, tzinfo=UTC),
        device_id="DEV-3",
        ip_region_code="440300",
        payee_country="HK",
    ),
    "closure": Closure(person(), "", "13812345678", None, Carrier.CHINA_UNICOM),
}


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_facts_and_identifiers_match_the_catalogue(kind: str) -> None:
    request = ScreenRequest("r1", OUTLET, AT, EVENTS[kind])
    values = facts(request)
    ids = identifiers(request)
    for name in values:
        spec = FIELDS[name]
        assert request.kind in spec.kinds, name
        assert spec.type is not FieldType.IDENTIFIER, name
    for name in ids:
        assert FIELDS[name].type is FieldType.IDENTIFIER, name
    required = {n for n, s in FIELDS.items() if request.kind in s.kinds and not s.optional}
    assert required <= set(values) | set(ids), required - set(values) - set(ids)


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_no_identifier_value_reaches_the_facts(kind: str) -> None:
    request = ScreenRequest("r1", OUTLET, AT, EVENTS[kind])
    clear = set(identifiers(request).values())
    assert clear
    assert not clear & {v for v in facts(request).values() if isinstance(v, str)}


def test_derived_values() -> None:
    values = facts(ScreenRequest("r1", OUTLET, AT, EVENTS["transfer"]))
    assert values["local_hour"] == 1
    assert values["transfer.payee_account_age_days"] == 2
    assert values["transfer.ip_province"] == "44"
    assert values["transfer.cross_border"] is True
    assert values["payer.non_local"] is True
    assert values["person.age"] == 36


def test_optional_values_are_absent_not_null() -> None:
    event = EVENTS["closure"]
    values = facts(ScreenRequest("r1", OUTLET, AT, event))
    assert "closure.account_class" not in values
    assert values["closure.carrier"] == "china_unicom"
    assert None not in values.values()


def test_choices_belong_to_string_fields_and_hold_every_value_facts_produce() -> None:
    with_choices = {name: spec.choices for name, spec in FIELDS.items() if spec.choices is not None}
    assert {"event", "person.sex", "card_opening.account_class", "transfer.channel", "closure.target"} <= set(
        with_choices
    )
    assert all(FIELDS[name].type is FieldType.STRING for name in with_choices)
    assert with_choices["card_opening.account_class"] == frozenset({"I", "II", "III"})
    assert with_choices["closure.target"] == frozenset({"bank_account", "sim"})
    assert with_choices["companion.sex"] == frozenset({"male", "female"})
    closed_account = Closure(person(), "6222020200112233445", "", AccountClass.II, None)
    for event in [*EVENTS.values(), closed_account]:
        for name, value in facts(ScreenRequest("r1", OUTLET, AT, event)).items():
            choices = FIELDS[name].choices
            assert choices is None or value in choices, (name, value)
