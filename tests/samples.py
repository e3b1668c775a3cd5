"""Valid sample requests for every event kind, shared by the unit, integration and e2e tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.domain import CHINA_TZ
from service.pipeline.validate import resident_id_check_character


def resident_id(region: str = "310104", birth: date = date(1990, 3, 7), sequence: int = 123) -> str:
    """An 18-character resident ID number with a correct GB 11643 check character."""
    body = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return body + resident_id_check_character(body)


def born_aged(age: int) -> date:
    """A birth date that makes its holder `age` today (China time), whatever today is: a test
    about age never depends on the calendar. The birthday is half a year away, so the age
    holds for the whole run."""
    half_a_year_ago = datetime.now(CHINA_TZ).date() - timedelta(days=182)
    return half_a_year_ago.replace(year=half_a_year_ago.year - age, day=min(half_a_year_ago.day, 28))


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def outlet(region: str = "310115", institution: str = "BANK_A") -> pb.Outlet:
    return pb.Outlet(institution_id=institution, outlet_id="SH-PD-001", clerk_id="C042", region_code=region)


def person(id_number: str | None = None, phone: str = "13812345678", name: str = "张三") -> pb.Person:
    return pb.Person(id_number=id_number or resident_id(), name=name, phone=phone)


def card_opening(request_id: str = "req-card-1", at: datetime | None = None) -> pb.ScreenRequest:
    request = pb.ScreenRequest(
        request_id=request_id,
        outlet=outlet(),
        card_opening=pb.CardOpening(
            applicant=person(),
            account_class=pb.ACCOUNT_CLASS_I,
            device_id="PHONE-7",
            identity_check=pb.IDENTITY_CHECK_PASSED,
        ),
    )
    if at is not None:
        request.occurred_at.CopyFrom(timestamp(at))
    return request


def sim_sale(request_id: str = "req-sim-1") -> pb.ScreenRequest:
    return pb.ScreenRequest(
        request_id=request_id,
        outlet=outlet(institution="CMCC-SH"),
        sim_sale=pb.SimSale(buyer=person(), carrier=pb.CARRIER_CHINA_MOBILE, quantity=1),
    )


def transfer(request_id: str = "req-xfer-1", amount_fen: int = 1_000_00) -> pb.ScreenRequest:
    return pb.ScreenRequest(
        request_id=request_id,
        outlet=outlet(),
        transfer=pb.Transfer(
            payer_account="6222020200112233445",
            payer=person(),
            payee_account="6217000010002000300",
            payee_bank="BANK_B",
            amount_fen=amount_fen,
            channel=pb.TRANSFER_CHANNEL_MOBILE,
            payee_account_opened_at=timestamp(datetime(2024, 1, 2, tzinfo=UTC)),
        ),
    )


def closure(request_id: str = "req-close-1") -> pb.ScreenRequest:
    return pb.ScreenRequest(
        request_id=request_id,
        outlet=outlet(),
        closure=pb.Closure(holder=person(), account_number="6222020200112233445", account_class=pb.ACCOUNT_CLASS_I),
    )


ALL_KINDS = {"card_opening": card_opening, "sim_sale": sim_sale, "transfer": transfer, "closure": closure}
