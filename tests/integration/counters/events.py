"""Domain events for the counter tests, and a stand-in for the rules layer's `where` predicate."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime

from service.domain import (
    AccountClass,
    CardOpening,
    Carrier,
    Closure,
    CompanionRelation,
    IdentityCheck,
    Outlet,
    Person,
    ScreenRequest,
    Sex,
    SimSale,
    Transfer,
    TransferChannel,
)
from service.pipeline.facts import Scalar, facts, identifiers
from service.riskdata.counters.model import CounterSpec, Filter, counters_to_update
from service.riskdata.counters.store import CounterStore

_NAME = re.compile(r"\b[a-z_]+(?:\.[a-z_]+)+\b|\blocal_hour\b")


def where(condition: Filter, values: Mapping[str, Scalar]) -> bool:
    """Evaluates the shipped `where` texts: comparisons, and/or, parentheses (a test stand-in only)."""
    python = _NAME.sub(lambda m: f"f.get({m.group(0)!r})", condition.text)
    try:
        return bool(eval(python, {"__builtins__": {}}, {"f": values}))  # noqa: S307 - fixed texts from our own YAML
    except TypeError:  # a comparison on an absent value is false
        return False


def person(id_number: str, phone: str = "", address: str = "") -> Person:
    return Person(
        id_number=id_number,
        name="张三",
        phone=phone,
        address=address,
        birth_date=date(1990, 3, 7),
        age=35,
        sex=Sex.MALE,
        region_code=id_number[:6],
        province_code=id_number[:2],
        region_known=True,
        non_local=False,
    )


def outlet(institution: str = "BANK_A", outlet_id: str = "SH-PD-001", clerk: str = "C042") -> Outlet:
    return Outlet(institution, outlet_id, clerk, "310115", "31")


def opening(
    at: datetime,
    id_number: str,
    bank: str = "BANK_A",
    *,
    phone: str = "",
    address: str = "",
    device: str = "",
    companion: str | None = None,
    account_class: AccountClass = AccountClass.II,
    outlet_id: str = "SH-PD-001",
    clerk: str = "C042",
    request_id: str = "r",
) -> ScreenRequest:
    event = CardOpening(
        applicant=person(id_number, phone, address),
        account_class=account_class,
        companion=person(companion) if companion else None,
        companion_relation=CompanionRelation.NON_RELATIVE if companion else CompanionRelation.UNSPECIFIED,
        device_id=device,
        requested_daily_limit_fen=0,
        limited_function=False,
        identity_check=IdentityCheck.PASSED,
        has_local_tie=True,
        account_number="",
    )
    return ScreenRequest(request_id, outlet(bank, outlet_id, clerk), at, event)


def sim_sale(
    at: datetime,
    id_number: str,
    carrier: Carrier = Carrier.CHINA_MOBILE,
    quantity: int = 1,
    *,
    phone: str = "",
    device: str = "",
    shop: str = "CMCC-SH",
    outlet_id: str = "SHOP-1",
) -> ScreenRequest:
    event = SimSale(person(id_number, phone), carrier, quantity, False, device, IdentityCheck.PASSED, True)
    return ScreenRequest("r", outlet(shop, outlet_id, "A7"), at, event)


def transfer(
    at: datetime,
    payer_account: str,
    payee_account: str,
    amount_fen: int,
    payer_id: str = "110105199003071234",
    device: str = "",
) -> ScreenRequest:
    event = Transfer(
        payer_account=payer_account,
        payer=person(payer_id),
        payee_account=payee_account,
        payee_bank="BANK_B",
        amount_fen=amount_fen,
        currency="CNY",
        channel=TransferChannel.MOBILE,
        payee_account_opened_at=None,
        device_id=device,
        ip_region_code="",
        payee_country="CN",
    )
    return ScreenRequest("r", outlet("BANK_A", "ONLINE", ""), at, event)


def sim_closure(at: datetime, id_number: str, msisdn: str, carrier: Carrier = Carrier.CHINA_MOBILE) -> ScreenRequest:
    event = Closure(person(id_number), "", msisdn, None, carrier)
    return ScreenRequest("r", outlet("CMCC-SH", "SHOP-1", "A7"), at, event)


def account_closure(
    at: datetime, id_number: str, account: str, bank: str = "BANK_A", account_class: AccountClass = AccountClass.I
) -> ScreenRequest:
    event = Closure(person(id_number), account, "", account_class, None)
    return ScreenRequest("r", outlet(bank), at, event)


async def screen(store: CounterStore, spec: CounterSpec, request: ScreenRequest) -> dict[str, int | float]:
    """What the pipeline does before rules run: decide the updates, then observe."""
    request_facts = facts(request)
    return await store.observe(
        occurred_at=request.occurred_at,
        kind=request.kind,
        facts=request_facts,
        ids=identifiers(request),
        updates=counters_to_update(spec, request.kind, request_facts, where),
    )
