"""The screening domain as plain, frozen values: no protobuf, no Redis.

A `ScreenRequest` here has already passed validation: identifiers are
normalised, and what rules need from an ID number (age on the event date,
issuing province, whether it differs from the outlet's) is derived.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

# Mainland China has kept UTC+8 all year since 1991: local dates (ages, night
# hours) use this fixed offset, with no dependency on a tz database.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")


def local_time(moment: datetime) -> datetime:
    """`moment` (timezone-aware) in China local time."""
    return moment.astimezone(CHINA_TZ)


class EventKind(enum.StrEnum):
    CARD_OPENING = "card_opening"
    SIM_SALE = "sim_sale"
    TRANSFER = "transfer"
    CLOSURE = "closure"


class Outcome(enum.IntEnum):
    """Decision outcomes, ordered by severity so that `max()` picks the worst."""

    UNSPECIFIED = 0
    ALLOW = 1
    WARN = 2
    BLOCK = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class AccountClass(enum.StrEnum):
    I = "I"  # noqa: E741 - the regulator's name for the class
    II = "II"
    III = "III"


class IdentityCheck(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    PASSED = "passed"
    FACE_MISMATCH = "face_mismatch"
    REPORTED_LOST = "reported_lost"
    INVALID = "invalid"


class CompanionRelation(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    RELATIVE = "relative"
    NON_RELATIVE = "non_relative"


class Carrier(enum.StrEnum):
    CHINA_MOBILE = "china_mobile"
    CHINA_UNICOM = "china_unicom"
    CHINA_TELECOM = "china_telecom"
    CHINA_BROADNET = "china_broadnet"


class TransferChannel(enum.StrEnum):
    COUNTER = "counter"
    ONLINE = "online"
    MOBILE = "mobile"
    ATM = "atm"


class Sex(enum.StrEnum):
    MALE = "male"
    FEMALE = "female"


@dataclass(frozen=True, slots=True)
class Outlet:
    institution_id: str
    outlet_id: str
    clerk_id: str
    region_code: str
    province_code: str  # first two digits of region_code


@dataclass(frozen=True, slots=True)
class Person:
    """A person identified by a validated 18-character resident ID number."""

    id_number: str  # upper-case, check character verified
    name: str
    phone: str  # 11 digits, or "" when not given
    address: str  # "" when not given
    birth_date: date
    age: int  # whole years on the event date (local time)
    sex: Sex
    region_code: str  # first six digits: where the ID was first issued
    province_code: str  # first two digits
    region_known: bool  # the region code was in use at some time between birth and the event
    non_local: bool  # issuing province differs from the outlet's province


@dataclass(frozen=True, slots=True)
class CardOpening:
    applicant: Person
    account_class: AccountClass
    companion: Person | None
    companion_relation: CompanionRelation
    device_id: str
    requested_daily_limit_fen: int
    limited_function: bool
    identity_check: IdentityCheck
    has_local_tie: bool
    account_number: str

    kind = EventKind.CARD_OPENING


@dataclass(frozen=True, slots=True)
class SimSale:
    buyer: Person
    carrier: Carrier
    quantity: int
    iot: bool
    device_id: str
    identity_check: IdentityCheck
    has_local_tie: bool

    kind = EventKind.SIM_SALE


@dataclass(frozen=True, slots=True)
class Transfer:
    payer_account: str
    payer: Person
    payee_account: str
    payee_bank: str
    amount_fen: int
    currency: str
    channel: TransferChannel
    payee_account_opened_at: datetime | None
    device_id: str
    ip_region_code: str  # "" when unknown
    payee_country: str  # ISO 3166-1 alpha-2, "CN" by default

    kind = EventKind.TRANSFER


@dataclass(frozen=True, slots=True)
class Closure:
    holder: Person
    account_number: str  # "" when a SIM was closed
    msisdn: str  # "" when a bank account was closed
    account_class: AccountClass | None
    carrier: Carrier | None

    kind = EventKind.CLOSURE


Event = CardOpening | SimSale | Transfer | Closure


@dataclass(frozen=True, slots=True)
class ScreenRequest:
    request_id: str
    outlet: Outlet
    occurred_at: datetime  # timezone-aware, UTC
    event: Event

    @property
    def kind(self) -> EventKind:
        return self.event.kind

    @property
    def subject(self) -> Person:
        """The person being screened: applicant, buyer, payer or holder."""
        event = self.event
        if isinstance(event, CardOpening):
            return event.applicant
        if isinstance(event, SimSale):
            return event.buyer
        if isinstance(event, Transfer):
            return event.payer
        return event.holder


@dataclass(frozen=True, slots=True)
class Reason:
    rule_id: str
    outcome: Outcome
    message_zh: str
    message_en: str
    evidence: tuple[tuple[str, str], ...] = ()
    shadow: bool = False
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: str
    decision_id: str
    outcome: Outcome
    reasons: tuple[Reason, ...]
    ruleset_revision: str
    degraded: bool
    decided_at: datetime
    evaluation_time: timedelta
    replayed: bool = False
    kind: EventKind | None = field(default=None, compare=False)
