"""The field catalogue rules can read, and the flattening of a request into facts.

This module is the contract between the domain and the rule engine: rule
files name fields by the dotted names declared in `FIELDS`, and `facts()`
produces exactly those names (minus identifiers, which never reach the rule
engine in clear text; see `identifiers()`).

Person fields exist under the person's role in the event (`applicant.*`,
`companion.*`, `buyer.*`, `payer.*`, `holder.*`) and under `person.*`, the
screened person of any event kind, so that one rule can cover openings and
SIM sales alike.

Optional values (an unknown payee account age, no companion) are absent from
the facts rather than present as null: a comparison on an absent value is
false.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from service.domain import (
    AccountClass,
    CardOpening,
    Carrier,
    Closure,
    CompanionRelation,
    EventKind,
    IdentityCheck,
    Person,
    ScreenRequest,
    Sex,
    SimSale,
    Transfer,
    TransferChannel,
    local_time,
)
from service.pipeline.money import CNY_ONLY, ExchangeRates

Scalar = int | float | bool | str


class FieldType(enum.StrEnum):
    NUMBER = "number"
    BOOL = "bool"
    STRING = "string"
    # Personal or account identifiers: usable as counter keys and in list
    # membership tests (`payee_account in list.fraud_accounts`), never
    # compared or shown in clear.
    IDENTIFIER = "identifier"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: FieldType
    kinds: frozenset[EventKind]
    description: str
    optional: bool = False
    # For enum-like STRING fields: every value facts() can produce. Rule
    # checking rejects a comparison with any other value (it could never hold).
    choices: frozenset[str] | None = None
    # Why a field is shown (evidence, reason formats) but never read by a condition, a counter's
    # sum, filter or key; None for the fields rules read.
    shown_only: str | None = None


ALL_KINDS = frozenset(EventKind)
_K = EventKind.CARD_OPENING
_S = EventKind.SIM_SALE
_T = EventKind.TRANSFER
_C = EventKind.CLOSURE


def _values(enum_type: type[enum.StrEnum]) -> frozenset[str]:
    return frozenset(member.value for member in enum_type)


# The values of the enum-like string fields (FieldSpec.choices), by field name;
# person fields by their leaf, for every role.
_CHOICES: Mapping[str, frozenset[str]] = {
    "event": _values(EventKind),
    "card_opening.account_class": _values(AccountClass),
    "card_opening.companion_relation": _values(CompanionRelation),
    "card_opening.identity_check": _values(IdentityCheck),
    "sim_sale.carrier": _values(Carrier),
    "sim_sale.identity_check": _values(IdentityCheck),
    "transfer.channel": _values(TransferChannel),
    "closure.target": frozenset({"bank_account", "sim"}),
    "closure.account_class": _values(AccountClass),
    "closure.carrier": _values(Carrier),
}
_PERSON_CHOICES: Mapping[str, frozenset[str]] = {"sex": _values(Sex)}

_PERSON_FIELDS: tuple[tuple[str, FieldType, str, bool], ...] = (
    ("id_number", FieldType.IDENTIFIER, "resident ID number", False),
    ("phone", FieldType.IDENTIFIER, "mobile number", True),
    ("address", FieldType.IDENTIFIER, "residential address", True),
    ("age", FieldType.NUMBER, "age in whole years on the event date (China local time)", False),
    ("sex", FieldType.STRING, "'male' or 'female', from the ID number", False),
    ("province", FieldType.STRING, "2-digit code of the ID's issuing province, e.g. '44'", False),
    ("region_code", FieldType.STRING, "6-digit code of the ID's issuing region", False),
    ("region_known", FieldType.BOOL, "the issuing region code was in use during the holder's lifetime", False),
    ("non_local", FieldType.BOOL, "the ID's issuing province differs from the outlet's", False),
    ("has_phone", FieldType.BOOL, "a phone number was given", False),
    ("has_address", FieldType.BOOL, "an address was given", False),
)

_ROLES: dict[str, frozenset[EventKind]] = {
    "person": ALL_KINDS,
    "applicant": frozenset({_K}),
    "companion": frozenset({_K}),
    "buyer": frozenset({_S}),
    "payer": frozenset({_T}),
    "holder": frozenset({_C}),
}

# name, type, kinds, description, optional
_EVENT_FIELDS: tuple[tuple[str, FieldType, frozenset[EventKind], str, bool], ...] = (
    ("event", FieldType.STRING, ALL_KINDS, "event kind: card_opening, sim_sale, transfer, closure", False),
    ("outlet.institution_id", FieldType.STRING, ALL_KINDS, "bank or carrier code", False),
    ("outlet.outlet_id", FieldType.STRING, ALL_KINDS, "branch or shop", False),
    ("outlet.clerk_id", FieldType.STRING, ALL_KINDS, "clerk or agent ('' for self-service)", False),
    ("outlet.region_code", FieldType.STRING, ALL_KINDS, "outlet's 6-digit region code", False),
    ("outlet.province", FieldType.STRING, ALL_KINDS, "outlet's 2-digit province code", False),
    ("local_hour", FieldType.NUMBER, ALL_KINDS, "hour of occurred_at in China local time, 0-23", False),
    ("weekday", FieldType.NUMBER, ALL_KINDS, "day of week of occurred_at, 1 = Monday ... 7 = Sunday", False),
    # card openings
    ("card_opening.account_class", FieldType.STRING, frozenset({_K}), "'I', 'II' or 'III'", False),
    ("card_opening.has_companion", FieldType.BOOL, frozenset({_K}), "a companion came along", False),
    (
        "card_opening.companion_relation",
        FieldType.STRING,
        frozenset({_K}),
        "'relative', 'non_relative' or 'unspecified'",
        False,
    ),
    (
        "card_opening.requested_daily_limit_fen",
        FieldType.NUMBER,
        frozenset({_K}),
        "requested non-counter daily limit in fen (0 = default)",
        False,
    ),
    ("card_opening.limited_function", FieldType.BOOL, frozenset({_K}), "limited-function account", False),
    (
        "card_opening.identity_check",
        FieldType.STRING,
        frozenset({_K}),
        "'passed', 'face_mismatch', 'reported_lost', 'invalid' or 'unspecified'",
        False,
    ),
    ("card_opening.has_local_tie", FieldType.BOOL, frozenset({_K}), "applicant showed a local tie", False),
    ("card_opening.has_device", FieldType.BOOL, frozenset({_K}), "a device id was given", False),
    ("card_opening.device_id", FieldType.IDENTIFIER, frozenset({_K}), "device id", True),
    ("card_opening.account_number", FieldType.IDENTIFIER, frozenset({_K}), "new account number", True),
    # SIM sales
    (
        "sim_sale.carrier",
        FieldType.STRING,
        frozenset({_S}),
        "'china_mobile', 'china_unicom', 'china_telecom' or 'china_broadnet'",
        False,
    ),
    ("sim_sale.quantity", FieldType.NUMBER, frozenset({_S}), "SIM cards in this sale", False),
    ("sim_sale.iot", FieldType.BOOL, frozenset({_S}), "IoT cards", False),
    (
        "sim_sale.identity_check",
        FieldType.STRING,
        frozenset({_S}),
        "'passed', 'face_mismatch', 'reported_lost', 'invalid' or 'unspecified'",
        False,
    ),
    ("sim_sale.has_local_tie", FieldType.BOOL, frozenset({_S}), "buyer showed a local tie", False),
    ("sim_sale.has_device", FieldType.BOOL, frozenset({_S}), "a device id was given", False),
    ("sim_sale.device_id", FieldType.IDENTIFIER, frozenset({_S}), "device id", True),
    # transfers
    ("transfer.payer_account", FieldType.IDENTIFIER, frozenset({_T}), "payer's account number", False),
    ("transfer.payee_account", FieldType.IDENTIFIER, frozenset({_T}), "payee's account number", False),
    ("transfer.payee_bank", FieldType.STRING, frozenset({_T}), "payee's bank code", False),
    (
        "transfer.amount_fen",
        FieldType.NUMBER,
        frozenset({_T}),
        "amount in CNY fen (a transfer in another currency converted at rates.yaml's rate)",
        False,
    ),
    (
        "transfer.original_amount_fen",
        FieldType.NUMBER,
        frozenset({_T}),
        "amount in hundredths of transfer.currency, as the request gave it",
        False,
    ),
    ("transfer.currency", FieldType.STRING, frozenset({_T}), "ISO 4217 code, e.g. 'CNY'", False),
    ("transfer.channel", FieldType.STRING, frozenset({_T}), "'counter', 'online', 'mobile' or 'atm'", False),
    (
        "transfer.payee_account_age_days",
        FieldType.NUMBER,
        frozenset({_T}),
        "whole days since the payee account was opened (absent when unknown)",
        True,
    ),
    ("transfer.device_id", FieldType.IDENTIFIER, frozenset({_T}), "payer's device id", True),
    ("transfer.ip_region_code", FieldType.STRING, frozenset({_T}), "device/IP 6-digit region code", True),
    ("transfer.ip_province", FieldType.STRING, frozenset({_T}), "device/IP 2-digit province code", True),
    ("transfer.payee_country", FieldType.STRING, frozenset({_T}), "payee bank's country, e.g. 'CN'", False),
    ("transfer.cross_border", FieldType.BOOL, frozenset({_T}), "payee bank is outside mainland China", False),
    (
        "transfer.same_bank",
        FieldType.BOOL,
        frozenset({_T}),
        "payee bank is the screening institution",
        False,
    ),
    # closures
    ("closure.target", FieldType.STRING, frozenset({_C}), "'bank_account' or 'sim'", False),
    (
        "closure.account_class",
        FieldType.STRING,
        frozenset({_C}),
        "class of the closed account: 'I', 'II' or 'III'",
        True,
    ),
    ("closure.carrier", FieldType.STRING, frozenset({_C}), "carrier of the closed SIM (as sim_sale.carrier)", True),
    ("closure.account_number", FieldType.IDENTIFIER, frozenset({_C}), "closed account number", True),
    ("closure.msisdn", FieldType.IDENTIFIER, frozenset({_C}), "closed SIM's mobile number", True),
)


# A transfer's amount in its own currency: shown beside the CNY amount, never compared or summed
# (thresholds and counters are in CNY, and sums across currencies would mean nothing).
_SHOWN_ONLY = {
    "transfer.original_amount_fen": (
        "is the amount in the transfer's own currency, shown in evidence and by {transfer.amount_fen:money}: "
        "compare and sum transfer.amount_fen, the amount in CNY"
    ),
}


def _catalogue() -> dict[str, FieldSpec]:
    fields: dict[str, FieldSpec] = {}
    for name, ftype, kinds, description, optional in _EVENT_FIELDS:
        fields[name] = FieldSpec(name, ftype, kinds, description, optional, _CHOICES.get(name), _SHOWN_ONLY.get(name))
    for role, kinds in _ROLES.items():
        for leaf, ftype, description, optional in _PERSON_FIELDS:
            name = f"{role}.{leaf}"
            # A companion is optional as a whole.
            is_optional = optional or role == "companion"
            fields[name] = FieldSpec(
                name, ftype, kinds, f"{role}: {description}", is_optional, _PERSON_CHOICES.get(leaf)
            )
    return fields


FIELDS: Mapping[str, FieldSpec] = _catalogue()


class _PersonFactNames(NamedTuple):
    age: str
    sex: str
    province: str
    region_code: str
    region_known: str
    non_local: str
    has_phone: str
    has_address: str


# Made once: formatting them on every call cost 0.3 µs a person (measured).
_PERSON_FACT_NAMES: Mapping[str, _PersonFactNames] = {
    role: _PersonFactNames(*(f"{role}.{leaf}" for leaf in _PersonFactNames._fields)) for role in _ROLES
}


def _person(prefix: str, person: Person, out: dict[str, Scalar]) -> None:
    names = _PERSON_FACT_NAMES[prefix]
    out[names.age] = person.age
    out[names.sex] = person.sex.value
    out[names.province] = person.province_code
    out[names.region_code] = person.region_code
    out[names.region_known] = person.region_known
    out[names.non_local] = person.non_local
    out[names.has_phone] = bool(person.phone)
    out[names.has_address] = bool(person.address)


def _person_ids(prefix: str, person: Person, out: dict[str, str]) -> None:
    out[f"{prefix}.id_number"] = person.id_number
    if person.phone:
        out[f"{prefix}.phone"] = person.phone
    if person.address:
        out[f"{prefix}.address"] = person.address


def facts(request: ScreenRequest, rates: ExchangeRates = CNY_ONLY) -> dict[str, Scalar]:
    """Every non-identifier field of `FIELDS` that has a value for `request`.

    A transfer's `transfer.amount_fen` is in CNY at `rates` (the rates of the
    rules that read it); ValidationError on `transfer.currency` when its
    currency has none.
    """
    outlet = request.outlet
    local = local_time(request.occurred_at)
    out: dict[str, Scalar] = {
        "event": request.kind.value,
        "outlet.institution_id": outlet.institution_id,
        "outlet.outlet_id": outlet.outlet_id,
        "outlet.clerk_id": outlet.clerk_id,
        "outlet.region_code": outlet.region_code,
        "outlet.province": outlet.province_code,
        "local_hour": local.hour,
        "weekday": local.isoweekday(),
    }
    _person("person", request.subject, out)

    event = request.event
    if isinstance(event, CardOpening):
        _person("applicant", event.applicant, out)
        if event.companion is not None:
            _person("companion", event.companion, out)
        out["card_opening.account_class"] = event.account_class.value
        out["card_opening.has_companion"] = event.companion is not None
        out["card_opening.companion_relation"] = event.companion_relation.value
        out["card_opening.requested_daily_limit_fen"] = event.requested_daily_limit_fen
        out["card_opening.limited_function"] = event.limited_function
        out["card_opening.identity_check"] = event.identity_check.value
        out["card_opening.has_local_tie"] = event.has_local_tie
        out["card_opening.has_device"] = bool(event.device_id)
    elif isinstance(event, SimSale):
        _person("buyer", event.buyer, out)
        out["sim_sale.carrier"] = event.carrier.value
        out["sim_sale.quantity"] = event.quantity
        out["sim_sale.iot"] = event.iot
        out["sim_sale.identity_check"] = event.identity_check.value
        out["sim_sale.has_local_tie"] = event.has_local_tie
        out["sim_sale.has_device"] = bool(event.device_id)
    elif isinstance(event, Transfer):
        _person("payer", event.payer, out)
        out["transfer.payee_bank"] = event.payee_bank
        out["transfer.amount_fen"] = rates.cny_fen(event.amount_fen, event.currency)
        out["transfer.original_amount_fen"] = event.amount_fen
        out["transfer.currency"] = event.currency
        out["transfer.channel"] = event.channel.value
        if event.payee_account_opened_at is not None:
            age = request.occurred_at - event.payee_account_opened_at
            out["transfer.payee_account_age_days"] = max(0, age.days)
        if event.ip_region_code:
            out["transfer.ip_region_code"] = event.ip_region_code
            out["transfer.ip_province"] = event.ip_region_code[:2]
        out["transfer.payee_country"] = event.payee_country
        out["transfer.cross_border"] = event.payee_country != "CN"
        out["transfer.same_bank"] = event.payee_bank == outlet.institution_id
    elif isinstance(event, Closure):
        _person("holder", event.holder, out)
        out["closure.target"] = "bank_account" if event.account_number else "sim"
        if event.account_class is not None:
            out["closure.account_class"] = event.account_class.value
        if event.carrier is not None:
            out["closure.carrier"] = event.carrier.value
    return out


def identifiers(request: ScreenRequest) -> dict[str, str]:
    """The identifier fields of `request` in clear text.

    Only the counter and watchlist layer reads these, and it hashes them
    (HMAC) before anything leaves the process.
    """
    out: dict[str, str] = {}
    _person_ids("person", request.subject, out)
    event = request.event
    if isinstance(event, CardOpening):
        _person_ids("applicant", event.applicant, out)
        if event.companion is not None:
            _person_ids("companion", event.companion, out)
        if event.device_id:
            out["card_opening.device_id"] = event.device_id
        if event.account_number:
            out["card_opening.account_number"] = event.account_number
    elif isinstance(event, SimSale):
        _person_ids("buyer", event.buyer, out)
        if event.device_id:
            out["sim_sale.device_id"] = event.device_id
    elif isinstance(event, Transfer):
        _person_ids("payer", event.payer, out)
        out["transfer.payer_account"] = event.payer_account
        out["transfer.payee_account"] = event.payee_account
        if event.device_id:
            out["transfer.device_id"] = event.device_id
    elif isinstance(event, Closure):
        _person_ids("holder", event.holder, out)
        if event.account_number:
            out["closure.account_number"] = event.account_number
        if event.msisdn:
            out["closure.msisdn"] = event.msisdn
    return out
