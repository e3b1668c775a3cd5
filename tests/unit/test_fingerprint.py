"""Tests for the idempotency record: the request's fingerprint and the record's encoding."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from service import domain
from service._gen.riskgate.v1 import screening_pb2 as pb
from service.domain import CHINA_TZ, Decision, EventKind, Outcome, Reason
from service.pipeline.validate import TimeBounds, screen_request
from service.riskdata.records import decode_record, encode_decision, encode_record, fingerprint_text
from tests import samples

NOW = datetime.now(UTC)


def validated(
    message: pb.ScreenRequest, *, now: datetime = NOW, bounds: TimeBounds | None = None
) -> domain.ScreenRequest:
    if bounds is None:
        return screen_request(message, now=now)
    return screen_request(message, now=now, bounds=bounds)


def transfer(request_id: str = "req-xfer-1", *, ago: timedelta = timedelta(seconds=5)) -> pb.ScreenRequest:
    message = samples.transfer(request_id)
    message.occurred_at.CopyFrom(samples.timestamp(NOW - ago))
    return message


def fingerprint(message: pb.ScreenRequest) -> str:
    return fingerprint_text(validated(message))


def id_number_ending_in_x() -> str:
    """A valid resident ID number whose check character is X (about one in eleven is)."""
    birth = samples.born_aged(35)
    for sequence in range(1000):
        number = samples.resident_id("310104", birth, sequence)
        if number.endswith("X"):
            return number
    raise AssertionError("no ID number with check character X")  # pragma: no cover


# --- what stays the same ------------------------------------------------------


def test_the_same_request_has_the_same_fingerprint() -> None:
    assert fingerprint(transfer()) == fingerprint(transfer())


def test_request_id_and_occurred_at_are_left_out() -> None:
    first = validated(transfer("req-1", ago=timedelta(seconds=2)))
    retry = validated(transfer("req-2", ago=timedelta(seconds=9)))
    assert first.request_id != retry.request_id
    assert first.occurred_at != retry.occurred_at
    assert fingerprint_text(first) == fingerprint_text(retry)
    assert "req-1" not in fingerprint_text(first)


def test_occurred_at_left_unset_is_the_same_as_stamped() -> None:
    unstamped = samples.transfer("req-1")
    assert not unstamped.HasField("occurred_at")
    assert fingerprint(unstamped) == fingerprint(transfer("req-1"))


def test_derived_fields_are_left_out_so_a_retry_across_a_birthday_is_the_same() -> None:
    # The payer's birthday was yesterday (China time): screened now they are a year older than
    # in a request stamped two days ago. Age is derived from the ID number and the event date.
    yesterday = NOW.astimezone(CHINA_TZ).date() - timedelta(days=1)
    birth = yesterday.replace(year=yesterday.year - 28)  # 28: a leap day stays a leap day
    bounds = TimeBounds(max_age_seconds=3 * 86_400)

    def message(ago: timedelta) -> pb.ScreenRequest:
        request = transfer(ago=ago)
        request.transfer.payer.id_number = samples.resident_id("310104", birth, 123)
        return request

    today = validated(message(timedelta(seconds=1)), bounds=bounds)
    before = validated(message(timedelta(days=2)), bounds=bounds)
    assert isinstance(today.event, domain.Transfer) and isinstance(before.event, domain.Transfer)
    assert today.event.payer.age == before.event.payer.age + 1
    assert fingerprint_text(today) == fingerprint_text(before)


def test_a_lower_case_x_check_character_is_the_same_person() -> None:
    upper = id_number_ending_in_x()
    lower = upper[:-1] + "x"
    with_upper, with_lower = transfer(), transfer()
    with_upper.transfer.payer.id_number = upper
    with_lower.transfer.payer.id_number = lower
    validated_lower = validated(with_lower)
    assert isinstance(validated_lower.event, domain.Transfer)
    assert validated_lower.event.payer.id_number == upper  # the validator normalises it
    assert fingerprint(with_upper) == fingerprint_text(validated_lower)


def test_a_phone_with_the_country_code_is_the_same_phone() -> None:
    plain, prefixed = transfer(), transfer()
    prefixed.transfer.payer.phone = "+86" + plain.transfer.payer.phone
    assert fingerprint(plain) == fingerprint(prefixed)


def test_defaults_filled_in_are_the_same_as_given() -> None:
    implicit, explicit = transfer(), transfer()
    explicit.transfer.currency = "CNY"
    explicit.transfer.payee_country = "CN"
    assert implicit.transfer.currency == ""
    assert fingerprint(implicit) == fingerprint(explicit)


# --- what makes a different request ------------------------------------------


def _payee_account(m: pb.ScreenRequest) -> None:
    m.transfer.payee_account = "6217000010002000399"


def _amount(m: pb.ScreenRequest) -> None:
    m.transfer.amount_fen += 1


def _outlet_id(m: pb.ScreenRequest) -> None:
    m.outlet.outlet_id = "SH-PD-002"


def _payer_phone(m: pb.ScreenRequest) -> None:
    m.transfer.payer.phone = "13812345679"


def _payer_id(m: pb.ScreenRequest) -> None:
    m.transfer.payer.id_number = samples.resident_id("310104", samples.born_aged(40), 321)


def _institution(m: pb.ScreenRequest) -> None:
    m.outlet.institution_id = "BANK_C"


def _channel(m: pb.ScreenRequest) -> None:
    m.transfer.channel = pb.TRANSFER_CHANNEL_COUNTER


def _payee_opened_at(m: pb.ScreenRequest) -> None:
    m.transfer.payee_account_opened_at.CopyFrom(samples.timestamp(NOW - timedelta(days=3)))


def _payer_name(m: pb.ScreenRequest) -> None:
    m.transfer.payer.name = "李四"


@pytest.mark.parametrize(
    "change",
    [
        _payee_account,
        _amount,
        _outlet_id,
        _payer_phone,
        _payer_id,
        _institution,
        _channel,
        _payee_opened_at,
        _payer_name,
    ],
)
def test_any_other_field_makes_a_different_request(change: Callable[[pb.ScreenRequest], None]) -> None:
    original, changed = transfer(), transfer()
    change(changed)
    assert changed != original
    assert fingerprint(changed) != fingerprint(original)


def test_a_different_event_kind_is_a_different_request() -> None:
    card = samples.card_opening("req-xfer-1", at=NOW - timedelta(seconds=5))
    assert fingerprint(card) != fingerprint(transfer())


def test_a_missing_phone_is_not_an_empty_field_of_another_request() -> None:
    with_phone, without_phone = transfer(), transfer()
    without_phone.transfer.payer.ClearField("phone")
    assert fingerprint(with_phone) != fingerprint(without_phone)


# --- the record ----------------------------------------------------------------


def decision() -> Decision:
    return Decision(
        request_id="req-xfer-1",
        decision_id="0b8e6b1c-4c5d-4d3a-9f0e-2a6b7c8d9e01",
        outcome=Outcome.BLOCK,
        reasons=(
            Reason("T03_new_payee", Outcome.BLOCK, "收款账户新开", "payee account is new", (("age_days", "1"),)),
            Reason("S01_shadow", Outcome.WARN, "影子", "shadow", (), True, 3),
        ),
        ruleset_revision="rev@abc",
        degraded=False,
        decided_at=NOW,
        evaluation_time=timedelta(microseconds=250),
        kind=EventKind.TRANSFER,
    )


def test_a_record_round_trips() -> None:
    original = decision()
    fingerprint_hash = b"Zm9vYmFyLWJhei1xdXV4LQ"
    stored = encode_record(fingerprint_hash, original)
    assert stored.startswith(fingerprint_hash + b"|{")
    found, again = decode_record(stored)
    assert found == fingerprint_hash
    assert again.replayed
    assert not original.replayed
    assert again.request_id == original.request_id
    assert again.decision_id == original.decision_id
    assert again.outcome is Outcome.BLOCK
    assert again.reasons == original.reasons
    assert again.ruleset_revision == original.ruleset_revision
    assert again.degraded is False
    assert again.decided_at == NOW
    assert again.evaluation_time == original.evaluation_time
    assert again.kind is EventKind.TRANSFER


def test_a_base64url_fingerprint_with_dashes_and_underscores_round_trips() -> None:
    fingerprint_hash = b"-_aZ09-_aZ09-_aZ09-_aZ"
    found, again = decode_record(encode_record(fingerprint_hash, decision()))
    assert found == fingerprint_hash
    assert again.outcome is Outcome.BLOCK


def test_a_legacy_record_has_no_fingerprint() -> None:
    legacy = encode_decision(decision())
    assert legacy.startswith(b"{")
    found, again = decode_record(legacy)
    assert found is None
    assert again.replayed
    assert again.decision_id == decision().decision_id
    assert again.reasons == decision().reasons
