"""Dispositions without Redis: which are positives, what a caller may send, how the index and the
stored records are laid out, and the proto's values against ours."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service._gen.riskgate.v1 import dispositions_pb2 as pb
from service.dispositions import (
    DISPOSITION_CLASS,
    NOTE_MAX_CHARS,
    Disposition,
    DispositionRecord,
    clean_note,
    current_disposition,
    disposition_label,
    parse_decision_id,
    parse_disposition,
)
from service.errors import InvalidValue, ValidationError
from service.riskdata.decision_log import DecisionLog, DecisionLogConfig, LogEntry, day_of, index_field, to_index
from service.riskdata.dispositions import (
    decode_history,
    disposition_document,
    encode_record,
    history_key,
    lookup_days,
    mark,
    stream_key_of,
)
from service.server.dispositions import FROM_PROTO, TO_PROTO, parse_report
from service.tools.dispositions import latest_only
from tests import samples

STREAM = "rg:log:decisions"


# --- labels ---------------------------------------------------------------------------------


def test_positives_negatives_and_pending_are_as_the_anti_fraud_practice_reads_them() -> None:
    positives = {d for d, label in DISPOSITION_CLASS.items() if label is True}
    negatives = {d for d, label in DISPOSITION_CLASS.items() if label is False}
    pending = {d for d, label in DISPOSITION_CLASS.items() if label is None}
    assert positives == {
        Disposition.CONFIRMED_FRAUD,
        Disposition.CUSTOMER_DISSUADED,
        Disposition.STOP_PAYMENT_REQUESTED,
        Disposition.APPEAL_REJECTED,
    }
    assert negatives == {Disposition.VERIFIED_LEGITIMATE, Disposition.FALSE_ALARM, Disposition.APPEAL_UPHELD}
    assert pending == {Disposition.APPEAL_FILED}
    assert positives | negatives | pending == set(Disposition)


def test_a_label_is_read_from_a_disposition_or_its_name() -> None:
    assert disposition_label(Disposition.FALSE_ALARM) is False
    assert disposition_label("confirmed_fraud") is True
    assert disposition_label("DISPOSITION_CONFIRMED_FRAUD") is True
    assert disposition_label(" Appeal_Filed ") is None
    with pytest.raises(InvalidValue) as refused:
        parse_disposition("confirmed_frau")
    assert refused.value.field == "disposition"
    assert "did you mean confirmed_fraud?" in refused.value.problem


def test_the_latest_disposition_is_the_decisions_own() -> None:
    assert current_disposition([]) is None
    history = [Disposition.APPEAL_FILED, Disposition.APPEAL_UPHELD]
    assert current_disposition(history) is Disposition.APPEAL_UPHELD


def test_every_proto_value_but_unspecified_is_a_disposition_and_back() -> None:
    declared = {value.number for value in pb.Disposition.DESCRIPTOR.values} - {pb.DISPOSITION_UNSPECIFIED}
    assert set(FROM_PROTO) == declared
    assert {TO_PROTO[d] for d in Disposition} == declared
    for number, disposition in FROM_PROTO.items():
        assert pb.Disposition.Name(number) == f"DISPOSITION_{disposition.name}"


# --- what a caller may send ----------------------------------------------------------------


def test_a_decision_id_is_a_uuid_kept_in_lower_case() -> None:
    decision_id = str(uuid.uuid4())
    assert parse_decision_id(decision_id.upper()) == decision_id
    for bad in ("", "x", decision_id[:-1], "{" + decision_id + "}", decision_id.replace("-", ""), "110105199003071239"):
        with pytest.raises(InvalidValue) as refused:
            parse_decision_id(bad)
        assert refused.value.field == "decision_id"
        assert len(bad) < 8 or bad not in refused.value.problem  # never repeated


@pytest.mark.parametrize(
    "note",
    [
        f"customer {samples.resident_id()}",  # an 18-digit resident ID
        f"customer {samples.resident_id()[:-1]}X",  # with the check character X
        f"id {samples.resident_id()[:6]} {samples.resident_id()[6:14]} {samples.resident_id()[14:]}",  # grouped
        "called 13812345678 twice",  # a mobile number
        "called +86 138 1234 5678",  # grouped, with the country code
        "called 8613812345678",
        "called １３８１２３４５６７８",  # full-width digits
        "payee 6217000010002000300",  # a 19-digit account number
        "payee 6222-0202-0011-2233",  # a 16-digit card number in groups
        "payee 6222 0202 0011 2233 445",
        "called 138.0013.8000",  # set off by dots, slashes, underscores, full-width or middle dots
        "called 138/1234/5678",
        "payee 6222_0202_0011_2233",
        "called 138．1234．5678",
        "called 138·1234·5678",
    ],
)
def test_notes_that_look_like_identifiers_are_refused_naming_the_field(note: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        clean_note(note)
    assert refused.value.field == "note"
    digits = "".join(c for c in note if c.isdigit())
    assert digits[-6:] not in refused.value.problem  # never repeated


@pytest.mark.parametrize(
    "note",
    [
        "",
        "notice 118-7 of the centre",
        "called back at 10:30, gave up",
        "case 52, 3 cards",
        "¥50,000 held 72 h",
        "劝阻成功",
        "¥1,250.50 returned, notice 2024/118",  # amounts and short references stay
        "call at 10.30, case 7_52",
    ],
)
def test_ordinary_notes_are_kept(note: str) -> None:
    assert clean_note(note) == note


def test_a_note_is_kept_with_its_whitespace_runs_as_one_space_and_bounded() -> None:
    assert clean_note("  called back\n\tgave   up ") == "called back gave up"
    assert clean_note("a" * NOTE_MAX_CHARS) == "a" * NOTE_MAX_CHARS
    with pytest.raises(InvalidValue) as refused:
        clean_note("a" * (NOTE_MAX_CHARS + 1))
    assert (refused.value.field, refused.value.problem) == ("note", "at most 512 characters (found 513)")
    with pytest.raises(InvalidValue, match="printable"):
        clean_note("bell\x07")


def test_a_report_with_several_bad_fields_names_each() -> None:
    request = pb.ReportDispositionRequest(decision_id="x", disposition=pb.DISPOSITION_UNSPECIFIED, note="13812345678")
    with pytest.raises(ValidationError) as refused:
        parse_report(request)
    assert [p.path for p in refused.value.problems] == ["decision_id", "disposition", "note"]
    unknown = pb.ReportDispositionRequest(decision_id=str(uuid.uuid4()), disposition=99)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="disposition: unknown value 99"):
        parse_report(unknown)
    decision_id = str(uuid.uuid4())
    good = pb.ReportDispositionRequest(decision_id=decision_id, disposition=pb.DISPOSITION_FALSE_ALARM, note=" ok ")
    assert parse_report(good) == (decision_id, Disposition.FALSE_ALARM, "ok")


# --- the index and the stored records ------------------------------------------------------


def test_the_index_keeps_decisions_a_disposition_can_follow() -> None:
    assert to_index(("request_id", "r1", "outcome", "warn", "rules", "T18"), every=False) == "r1"
    assert to_index(("request_id", "r2", "outcome", "block", "rules", ""), every=False) == "r2"
    assert to_index(("request_id", "r3", "outcome", "allow", "rules", "~T19_trial"), every=False) == "r3"  # shadow
    assert to_index(("request_id", "r4", "outcome", "allow", "rules", ""), every=False) is None
    assert to_index(("request_id", "r4", "outcome", "allow", "rules", ""), every=True) == "r4"


def test_index_keys_are_per_utc_day_in_the_streams_cluster_slot() -> None:
    log = DecisionLog(None, DecisionLogConfig(stream_key=STREAM), _Clock())
    now = datetime.now(UTC)
    key = log.index_key(int(now.timestamp() * 1000))
    assert key == f"{{{STREAM}}}:i:{now.date().isoformat()}"
    assert history_key(STREAM, key) == f"{{{STREAM}}}:d:{now.date().isoformat()}"
    assert stream_key_of(STREAM) == f"{{{STREAM}}}:dispositions"
    assert day_of(int(now.timestamp() * 1000)) == now.date()
    decision_id = str(uuid.uuid4())
    assert index_field(decision_id) == uuid.UUID(decision_id).bytes
    assert index_field("dec-1") == b"dec-1"


def test_a_decision_is_indexed_with_its_request_id_until_its_days_index_expires() -> None:
    log = DecisionLog(None, DecisionLogConfig(stream_key=STREAM, index_seconds=2 * 86_400), _Clock())
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    decision_id = str(uuid.uuid4())
    entry = LogEntry.of({"decision_id": decision_id, "request_id": "TX-1", "outcome": "warn", "rules": "T18"}, now_ms)
    args = log._args(entry)
    day_end = (now_ms // 86_400_000 + 1) * 86_400_000
    assert args[:4] == (7, STREAM, log.marker_key(now_ms), log.index_key(now_ms))
    # The index keeps the request_id and the fired rules (a disposition is tallied by rule).
    assert args[11:14] == (uuid.UUID(decision_id).bytes, "TX-1\x1fT18", day_end + 2 * 86_400_000)
    # Written from the backlog after its day's index has expired: logged, not indexed.
    late = log._args(entry, now_ms=day_end + 2 * 86_400_000)
    assert late[11:13] == (b"", "")
    allowed = LogEntry.of({"decision_id": "d", "request_id": "TX-2", "outcome": "allow", "rules": ""}, now_ms)
    assert log._args(allowed)[11:13] == (b"", "")


def test_lookup_covers_every_day_whose_index_may_still_hold_a_decision() -> None:
    now = datetime.now(UTC)
    days = lookup_days(now, 90 * 86_400)
    assert len(days) == 92
    assert days[0] == (now + timedelta(days=1)).date() and days[-1] == (now - timedelta(days=90)).date()
    assert days == sorted(days, reverse=True)
    assert len(lookup_days(now, 3600)) == 3


def test_records_round_trip_and_the_mark_ignores_who_and_when() -> None:
    at = datetime.now(UTC).replace(microsecond=123000)
    record = DispositionRecord("d1", Disposition.APPEAL_FILED, "desk 3", "risk-office", "cert:office", at)
    text = "[" + encode_record(record) + "]"
    assert f'"k":"{mark(Disposition.APPEAL_FILED, "desk 3")}"' in text
    (back,) = decode_history(text, "d1", "TX-9")
    assert back == DispositionRecord("d1", Disposition.APPEAL_FILED, "desk 3", "risk-office", "cert:office", at, "TX-9")
    assert mark(Disposition.APPEAL_FILED, "desk 3") != mark(Disposition.APPEAL_FILED, "desk 4")
    assert mark(Disposition.APPEAL_FILED, "desk 3") != mark(Disposition.APPEAL_UPHELD, "desk 3")
    newer = text[:-1] + ',{"disposition":"something_new","reported_at":"' + at.isoformat() + '"}]'
    assert len(decode_history(newer, "d1", "TX-9")) == 1  # a value of a newer version is left out


def test_the_export_document_and_the_latest_of_each_decision() -> None:
    fields = {b"decision_id": b"d1", b"request_id": b"TX-1", b"disposition": b"appeal_filed", b"note": b"",
              b"reported_by": b"risk-office", b"identity": b"cert:x", b"reported_at": b"t1"}  # fmt: skip
    first = disposition_document("1-0", fields)
    assert first == {
        "decision_id": "d1",
        "request_id": "TX-1",
        "disposition": "appeal_filed",
        "reported_by": "risk-office",
        "reported_at": "t1",
    }
    second = {**first, "disposition": "appeal_upheld", "reported_at": "t3"}
    other = {**first, "decision_id": "d2", "reported_at": "t2"}
    assert latest_only([first, other, second]) == [other, second]


class _Clock:
    def monotonic(self) -> float:
        return 0.0

    def now(self) -> datetime:
        return datetime.now(UTC)
