"""Tests for service.pipeline.validate: the field validators alone, then whole requests.

ID numbers are built with a textbook GB 11643 check-character function
written here, independent of python-stdnum, so that the library is checked
against the standard rather than against itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import numdb
from stdnum.cn import ric
from stdnum.exceptions import ValidationError as StdnumValidationError

from service import domain
from service._gen.riskgate.v1 import screening_pb2 as pb
from service.errors import FieldProblem, ValidationError
from service.pipeline.validate import (
    _DIVISION_PERIODS,
    PROVINCES,
    REGION_PROVINCES,
    InvalidValue,
    TimeBounds,
    _periods,
    age_on,
    parse_account_number,
    parse_amount_fen,
    parse_country,
    parse_currency,
    parse_daily_limit_fen,
    parse_mobile,
    parse_occurred_at,
    parse_region_code,
    parse_request_id,
    parse_resident_id,
    parse_sim_quantity,
    parse_text,
    parse_timestamp,
    resident_id_check_character,
    screen_request,
)

NOW = datetime(2025, 6, 15, 4, 0, tzinfo=UTC)  # 12:00 in China
TODAY = date(2025, 6, 15)
EXAMPLES = settings(max_examples=60, deadline=None)

# --- building valid ID numbers -----------------------------------------------

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)  # 2^(17-i) mod 11
_CHECK_CHARACTERS = "10X98765432"  # indexed by the weighted sum mod 11


def textbook_check_character(body: str) -> str:
    return _CHECK_CHARACTERS[sum(int(d) * w for d, w in zip(body, _WEIGHTS, strict=True)) % 11]


def make_id(region: str, birth: date, sequence: int) -> str:
    body = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return body + textbook_check_character(body)


def id_ending_in_x() -> str:
    """A valid ID number whose check character is X."""
    return next(
        number for sequence in range(1000) if (number := make_id("440305", date(1990, 3, 7), sequence)).endswith("X")
    )


def anniversary_age(birth: date, on: date) -> int:
    """Age by counting birthdays, a 29 February birthday being 1 March in common years."""
    try:
        birthday = birth.replace(year=on.year)
    except ValueError:
        birthday = date(on.year, 3, 1)
    return on.year - birth.year - (1 if birthday > on else 0)


@st.composite
def id_parts(draw: st.DrawFn) -> tuple[str, date, int]:
    """A region code with a valid province, a birth date from 1900 to TODAY, and a sequence number."""
    province = draw(st.sampled_from(sorted(PROVINCES)))
    county = draw(st.integers(0, 9999))
    birth = draw(st.dates(min_value=date(1900, 1, 1), max_value=TODAY))
    return f"{province}{county:04d}", birth, draw(st.integers(0, 999))


def problem_of(parse: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The problem `parse(*args, **kwargs)` reports."""
    with pytest.raises(InvalidValue) as caught:
        parse(*args, **kwargs)
    return caught.value.problem


# --- resident ID numbers -----------------------------------------------------


@EXAMPLES
@given(st.from_regex(r"[0-9]{17}", fullmatch=True))
def test_check_character_agrees_with_the_textbook_algorithm(body: str) -> None:
    assert resident_id_check_character(body) == textbook_check_character(body)


def test_check_character_needs_17_digits() -> None:
    with pytest.raises(ValueError, match="17 ASCII digits"):
        resident_id_check_character("4403051990030712")


@EXAMPLES
@given(id_parts(), st.integers(0, 125 * 366))
def test_a_valid_id_passes_and_its_parts_are_derived(parts: tuple[str, date, int], days_later: int) -> None:
    region, birth, sequence = parts
    on = birth + timedelta(days=days_later)
    number = make_id(region, birth, sequence)
    parsed = parse_resident_id(number, on=on)
    assert parsed.number == number
    assert parsed.birth_date == birth
    assert parsed.sex is (domain.Sex.MALE if sequence % 2 else domain.Sex.FEMALE)
    assert parsed.region_code == region
    assert parsed.province_code == region[:2]
    assert parsed.age == anniversary_age(birth, on)


@EXAMPLES
@given(id_parts(), st.sampled_from("0123456789X"))
def test_a_wrong_check_character_is_a_check_digit_mismatch(parts: tuple[str, date, int], wrong: str) -> None:
    number = make_id(*parts)
    corrupted = number[:17] + wrong
    if corrupted != number:
        assert problem_of(parse_resident_id, corrupted, on=TODAY) == "check digit mismatch"


@EXAMPLES
@given(id_parts(), st.integers(0, 16), st.integers(1, 9))
def test_any_single_digit_change_is_a_check_digit_mismatch(
    parts: tuple[str, date, int], position: int, shift: int
) -> None:
    number = make_id(*parts)
    digit = str((int(number[position]) + shift) % 10)
    corrupted = number[:position] + digit + number[position + 1 :]
    assert problem_of(parse_resident_id, corrupted, on=TODAY) == "check digit mismatch"


def test_a_lower_case_x_is_accepted_and_normalised() -> None:
    number = id_ending_in_x()
    assert parse_resident_id(number[:17] + "x", on=TODAY).number == number


@EXAMPLES
@given(id_parts(), st.integers(1, 20_000))
def test_a_birth_date_after_the_event_date_is_refused(parts: tuple[str, date, int], days: int) -> None:
    region, _, sequence = parts
    number = make_id(region, TODAY + timedelta(days=days), sequence)
    assert problem_of(parse_resident_id, number, on=TODAY) == "birth date after the event date"


def test_a_birth_on_the_event_date_is_age_zero() -> None:
    assert parse_resident_id(make_id("440305", TODAY, 1), on=TODAY).age == 0


@pytest.mark.parametrize(
    ("birth_digits", "problem"),
    [
        ("18991231", "birth date before 1900"),
        ("19900230", "invalid birth date"),
        ("19901301", "invalid birth date"),
        ("20010229", "invalid birth date"),
        ("00000101", "invalid birth date"),
    ],
)
def test_a_bad_birth_date_is_refused(birth_digits: str, problem: str) -> None:
    body = f"440305{birth_digits}123"
    number = body + textbook_check_character(body)
    assert problem_of(parse_resident_id, number, on=TODAY) == problem


@pytest.mark.parametrize(
    ("on", "age"),
    [
        (date(2018, 2, 28), 17),
        (date(2018, 3, 1), 18),
        (date(2020, 2, 28), 19),
        (date(2020, 2, 29), 20),
        (date(2021, 2, 28), 20),
        (date(2021, 3, 1), 21),
    ],
)
def test_someone_born_on_29_february_ages_on_1_march_in_common_years(on: date, age: int) -> None:
    assert age_on(date(2000, 2, 29), on) == age
    assert parse_resident_id(make_id("440305", date(2000, 2, 29), 1), on=on).age == age


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "required"),
        ("44030519900307123", "must be 18 characters"),
        ("4403051990030712345", "must be 18 characters"),
        ("44030519900307123Y", "must be 17 digits and a check character 0-9 or X"),
        ("4403051990030712X3", "must be 17 digits and a check character 0-9 or X"),
        ("44030519900307١٢٣4", "must be 17 digits and a check character 0-9 or X"),  # Arabic-Indic digits
        (" 44030519900307123", "must be 17 digits and a check character 0-9 or X"),
    ],
)
def test_a_malformed_id_number_is_refused(value: str, problem: str) -> None:
    assert problem_of(parse_resident_id, value, on=TODAY) == problem


@pytest.mark.parametrize("province", ["00", "10", "16", "20", "47", "55", "66", "72", "80", "84", "91", "99"])
def test_an_id_from_an_unknown_province_is_refused(province: str) -> None:
    number = make_id(f"{province}0101", date(1990, 1, 1), 1)
    assert problem_of(parse_resident_id, number, on=TODAY) == "unknown province code"


@pytest.mark.parametrize("region", ["810000", "820000", "830000"])
def test_residence_permits_for_hong_kong_macao_and_taiwan_residents_are_accepted(region: str) -> None:
    parsed = parse_resident_id(make_id(region, date(1990, 1, 1), 1), on=TODAY)
    assert parsed.province_code in PROVINCES


@pytest.mark.parametrize(
    ("region", "birth", "on", "known"),
    [
        ("110101", date(1990, 1, 1), TODAY, True),  # Dongcheng, Beijing: always
        ("110199", date(1990, 1, 1), TODAY, False),  # never a county code
        ("830000", date(1990, 1, 1), TODAY, False),  # Taiwan residence permit: not in the table
        ("110103", date(1980, 1, 1), TODAY, True),  # Chongwen: until 2010
        ("110103", date(2012, 1, 1), TODAY, False),  # ... abolished before this holder was born
        ("110115", date(1980, 1, 1), TODAY, True),  # Daxing district: from 2001, ID issued later
        ("110115", date(1980, 1, 1), date(1999, 1, 1), False),  # ... but not before it existed
        ("810000", date(1960, 1, 1), TODAY, True),  # Hong Kong SAR: from 1997
    ],
)
def test_region_known_means_the_code_was_in_use_during_the_holders_life(
    region: str, birth: date, on: date, known: bool
) -> None:
    parsed = parse_resident_id(make_id(region, birth, 1), on=on)
    assert parsed.region_known is known


def test_an_id_first_issued_after_birth_is_accepted_where_stdnum_would_refuse_it() -> None:
    number = make_id("110115", date(1980, 1, 1), 1)  # Daxing district code, created in 2001
    with pytest.raises(StdnumValidationError):
        ric.validate(number)
    assert parse_resident_id(number, on=TODAY).region_known


@pytest.mark.parametrize("region", ["110103", "110115", "120110", "130204", "500000", "510200", "810000"])
@pytest.mark.parametrize("year", [1950, 1983, 1991, 1992, 1995, 1997, 2010, 2011, 2024])
def test_region_known_agrees_with_stdnum_when_born_in_the_event_year(region: str, year: int) -> None:
    number = make_id(region, date(year, 1, 1), 1)
    try:
        ric.get_birth_place(number)
    except StdnumValidationError:
        in_stdnum = False
    else:
        in_stdnum = True
    assert parse_resident_id(number, on=date(year, 12, 31)).region_known is in_stdnum


def test_the_division_table_read_at_import_agrees_with_stdnums_lookup() -> None:
    """`_DIVISION_PERIODS` walks stdnum's table once; a look-up through `info()` is the reference."""
    divisions = numdb.get("cn/loc")

    def periods_by_lookup(code: str) -> tuple[tuple[int, int], ...]:
        county = next((props["county"] for _, props in divisions.info(code) if "county" in props), "")
        return _periods(county)

    codes = {p + r for _, p, _, _, counties in divisions.prefixes for _, r, _, _, _ in counties}
    assert len(codes) > 6000
    # every listed code, and codes next to them, which are mostly not listed
    for code in sorted(codes | {f"{int(c) + 1:06d}" for c in codes} | {"000000", "830000", "999999"}):
        assert _DIVISION_PERIODS.get(code, ()) == periods_by_lookup(code), code


def test_a_county_entry_reads_as_its_periods_of_use() -> None:
    assert _periods("") == ()
    assert _periods("东城区") == ((0, 9999),)
    assert _periods("[-1991]东郊区,[1992-]东丽区") == ((0, 1991), (1992, 9999))
    assert _periods("[1983-2010]崇文区") == ((1983, 2010),)


# --- provinces ---------------------------------------------------------------


def test_provinces_are_the_gb_t_2260_codes_and_the_taiwan_residence_permit_code() -> None:
    assert sorted(REGION_PROVINCES) == [
        *("11", "12", "13", "14", "15", "21", "22", "23"),
        *("31", "32", "33", "34", "35", "36", "37"),
        *("41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54"),
        *("61", "62", "63", "64", "65", "71", "81", "82"),
    ]
    assert set(PROVINCES) == REGION_PROVINCES | {"83"}
    assert PROVINCES["44"] == ("广东", "Guangdong")
    assert PROVINCES["44"].en == "Guangdong"


@pytest.mark.parametrize("code", sorted(REGION_PROVINCES))
def test_every_region_province_is_a_province_in_stdnums_table(code: str) -> None:
    (_, props), *_ = numdb.get("cn/loc").info(f"{code}0000")
    assert props["province"].startswith(PROVINCES[code].zh[0])


# --- other values ------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    # Every second digit 3-9, including ranges libphonenumber refuses (149, 1749).
    ["130", "134", "145", "147", "149", "150", "162", "166", "170", "1749", "177", "180", "192", "199"],
)
def test_mobile_numbers_in_every_range_are_accepted(prefix: str) -> None:
    number = (prefix + "12345678")[:11]
    assert parse_mobile(number) == number
    assert parse_mobile("+86" + number) == number
    assert parse_mobile("86" + number) == number


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "required"),
        ("1381234567", "must be an 11-digit mobile number starting with 13-19"),
        ("138123456789", "must be an 11-digit mobile number starting with 13-19"),
        ("12812345678", "must be an 11-digit mobile number starting with 13-19"),
        ("23812345678", "must be an 11-digit mobile number starting with 13-19"),
        ("138 1234 5678", "must be an 11-digit mobile number starting with 13-19"),
        ("138-1234-5678", "must be an 11-digit mobile number starting with 13-19"),
        ("+85213812345678", "must be an 11-digit mobile number starting with 13-19"),
        ("008613812345678", "must be an 11-digit mobile number starting with 13-19"),
        ("+13812345678", "must be an 11-digit mobile number starting with 13-19"),
        ("１３８１２３４５６７８", "must be an 11-digit mobile number starting with 13-19"),  # full-width
    ],
)
def test_a_bad_mobile_number_is_refused(value: str, problem: str) -> None:
    assert problem_of(parse_mobile, value) == problem


def test_account_numbers_are_8_to_32_digits_without_a_luhn_check() -> None:
    assert parse_account_number("12345678") == "12345678"
    assert parse_account_number("6" * 32) == "6" * 32
    assert parse_account_number("6222021234567891") == "6222021234567891"  # fails Luhn
    for bad in ("1234567", "6" * 33, "6222 0212 3456 7890", "62220212345678ab"):
        assert problem_of(parse_account_number, bad) == "must be 8 to 32 digits"
    assert problem_of(parse_account_number, "") == "required"


def test_amounts_are_positive_and_at_most_10_to_the_14() -> None:
    assert parse_amount_fen(1) == 1
    assert parse_amount_fen(10**14) == 10**14
    assert problem_of(parse_amount_fen, 0) == "must be positive"
    assert problem_of(parse_amount_fen, -5) == "must be positive"
    assert problem_of(parse_amount_fen, 10**14 + 1) == "must be at most 10^14"


def test_daily_limits_are_0_to_10_to_the_14() -> None:
    assert parse_daily_limit_fen(0) == 0
    assert parse_daily_limit_fen(10**14) == 10**14
    assert problem_of(parse_daily_limit_fen, -1) == "must not be negative"
    assert problem_of(parse_daily_limit_fen, 10**14 + 1) == "must be at most 10^14"


def test_sim_quantity_is_1_to_100() -> None:
    assert parse_sim_quantity(1) == 1
    assert parse_sim_quantity(100) == 100
    assert problem_of(parse_sim_quantity, 0) == "must be 1 to 100"
    assert problem_of(parse_sim_quantity, 101) == "must be 1 to 100"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "required"),
        ("44030", "must be 6 digits"),
        ("4403050", "must be 6 digits"),
        ("44030a", "must be 6 digits"),
        ("990000", "unknown province code"),
        ("830000", "unknown province code"),  # residence-permit code, not a GB/T 2260 region
    ],
)
def test_a_bad_region_code_is_refused(value: str, problem: str) -> None:
    assert problem_of(parse_region_code, value) == problem


def test_region_codes_of_every_province_are_accepted() -> None:
    for province in REGION_PROVINCES:
        assert parse_region_code(f"{province}0000") == f"{province}0000"


def test_currency_and_country_default_and_format() -> None:
    assert parse_currency("") == "CNY"
    assert parse_currency("USD") == "USD"
    assert parse_country("") == "CN"
    assert parse_country("HK") == "HK"
    for bad in ("cny", "CN", "CNYY", "C1Y"):
        assert problem_of(parse_currency, bad) == "must be 3 upper-case letters"
    for bad in ("cn", "C", "CHN", "C1"):
        assert problem_of(parse_country, bad) == "must be 2 upper-case letters"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "required"),
        ("x" * 129, "must be at most 128 characters"),
        ("abc def", "must be printable ascii without whitespace"),
        ("abc\tdef", "must be printable ascii without whitespace"),
        ("请求-1", "must be printable ascii without whitespace"),
    ],
)
def test_a_bad_request_id_is_refused(value: str, problem: str) -> None:
    assert problem_of(parse_request_id, value) == problem


def test_request_ids_may_use_all_printable_ascii() -> None:
    value = "".join(chr(c) for c in range(0x21, 0x7F))
    assert parse_request_id(value) == value
    assert parse_request_id("x" * 128) == "x" * 128


def test_text_is_stripped_and_whitespace_only_is_not_given() -> None:
    assert parse_text("  深圳市南山区\u3000", max_length=256) == "深圳市南山区"
    assert parse_text(" \u3000 ", max_length=256) == ""
    assert problem_of(parse_text, " ", max_length=64, required=True) == "required"


def test_text_length_is_counted_in_characters() -> None:
    assert parse_text("张" * 64, max_length=64) == "张" * 64
    assert problem_of(parse_text, "张" * 65, max_length=64) == "must be at most 64 characters"


@pytest.mark.parametrize("control", ["\x00", "\n", "\x1b", "\x7f", "\x85", "\x9f"])
def test_text_with_a_control_character_inside_is_refused(control: str) -> None:
    problem = problem_of(parse_text, f"张{control}三", max_length=64)
    assert problem == "must not contain control characters"


@pytest.mark.parametrize("control", ["\x00", "\t", "\n", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"])
def test_ascii_text_with_a_control_character_inside_is_refused(control: str) -> None:
    assert problem_of(parse_text, f"ab{control}cd", max_length=64) == "must not contain control characters"


@pytest.mark.parametrize("text", ["a b~", "深圳 南山", "caf\u00e9", "x\u00a0y", "x\u2028y", "x\u200by"])
def test_printable_and_other_non_control_text_is_accepted(text: str) -> None:
    """Only Unicode category Cc is refused: not spaces, separators or format characters."""
    assert parse_text(text, max_length=64) == text


# --- times -------------------------------------------------------------------


def timestamp(moment: datetime, nanos: int | None = None) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    if nanos is not None:
        ts.nanos = nanos
    return ts


def test_occurred_at_may_be_up_to_5_minutes_ahead_and_24_hours_behind() -> None:
    ahead, behind = NOW + timedelta(minutes=5), NOW - timedelta(hours=24)
    assert parse_occurred_at(timestamp(ahead), now=NOW) == ahead
    assert parse_occurred_at(timestamp(behind), now=NOW) == behind
    too_far_ahead = timestamp(ahead, nanos=1)
    too_old = timestamp(behind - timedelta(seconds=1), nanos=999_999_999)
    assert problem_of(parse_occurred_at, too_far_ahead, now=NOW) == "more than 5 minutes in the future"
    assert problem_of(parse_occurred_at, too_old, now=NOW) == "more than 24 hours in the past"


@pytest.mark.parametrize(
    ("bounds", "future", "past"),
    [
        (TimeBounds(60, 3600), "more than 1 minute in the future", "more than 1 hour in the past"),
        (TimeBounds(90, 7200), "more than 90 seconds in the future", "more than 2 hours in the past"),
        (TimeBounds(0.5, 1), "more than 0.5 seconds in the future", "more than 1 second in the past"),
    ],
)
def test_time_bounds_are_settings_and_named_in_the_problem(bounds: TimeBounds, future: str, past: str) -> None:
    ahead = timestamp(NOW + timedelta(seconds=bounds.max_future_skew_seconds + 1))
    behind = timestamp(NOW - timedelta(seconds=bounds.max_age_seconds + 1))
    assert problem_of(parse_occurred_at, ahead, now=NOW, bounds=bounds) == future
    assert problem_of(parse_occurred_at, behind, now=NOW, bounds=bounds) == past


def test_time_bounds_must_be_finite_and_not_negative() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite and not negative"):
            TimeBounds(max_future_skew_seconds=bad)


def test_timestamps_keep_microseconds_and_check_nanos_and_range() -> None:
    assert parse_timestamp(timestamp(NOW, nanos=123_456_789)) == NOW.replace(microsecond=123_456)
    for nanos in (-1, 1_000_000_000):
        assert problem_of(parse_timestamp, timestamp(NOW, nanos)) == "nanos must be 0 to 999999999"
    assert problem_of(parse_occurred_at, timestamp(NOW, -1), now=NOW) == "nanos must be 0 to 999999999"
    assert problem_of(parse_timestamp, Timestamp(seconds=2**62)) == "seconds out of range"
    assert problem_of(parse_occurred_at, Timestamp(seconds=2**62), now=NOW) == "more than 5 minutes in the future"


# --- whole requests ----------------------------------------------------------

APPLICANT_ID = make_id("440305", date(1990, 3, 7), 123)  # Nanshan, Shenzhen; male
COMPANION_ID = make_id("110101", date(1955, 1, 1), 456)  # Dongcheng, Beijing; female
OUTLET = pb.Outlet(institution_id="ICBC", outlet_id="sz-nanshan-01", clerk_id="c042", region_code="440305")


def card_opening_request() -> pb.ScreenRequest:
    return pb.ScreenRequest(
        request_id="req-k-1",
        outlet=OUTLET,
        card_opening=pb.CardOpening(
            applicant=pb.Person(
                id_number=APPLICANT_ID, name="张三", phone="+8613812345678", address="深圳市南山区科技园"
            ),
            account_class=pb.ACCOUNT_CLASS_I,
            companion=pb.Person(id_number=COMPANION_ID),
            companion_relation=pb.COMPANION_RELATION_NON_RELATIVE,
            device_id="term-7",
            requested_daily_limit_fen=5_000_000,
            limited_function=True,
            identity_check=pb.IDENTITY_CHECK_PASSED,
            has_local_tie=True,
            account_number="6222021234567890",
        ),
    )


def sim_sale_request() -> pb.ScreenRequest:
    return pb.ScreenRequest(
        request_id="req-s-1",
        outlet=OUTLET,
        occurred_at=timestamp(NOW - timedelta(minutes=3)),
        sim_sale=pb.SimSale(
            buyer=pb.Person(id_number=COMPANION_ID, name="李四"),
            carrier=pb.CARRIER_CHINA_UNICOM,
            quantity=2,
            iot=True,
            device_id="pos-3",
            identity_check=pb.IDENTITY_CHECK_FACE_MISMATCH,
            has_local_tie=False,
        ),
    )


def transfer_request() -> pb.ScreenRequest:
    return pb.ScreenRequest(
        request_id="req-t-1",
        outlet=OUTLET,
        occurred_at=timestamp(NOW - timedelta(minutes=10)),
        transfer=pb.Transfer(
            payer_account="6222021234567890",
            payer=pb.Person(id_number=APPLICANT_ID, name="张三", phone="13812345678"),
            payee_account="6217009876543210",
            payee_bank="CCB",
            amount_fen=1_234_500,
            channel=pb.TRANSFER_CHANNEL_MOBILE,
            payee_account_opened_at=timestamp(NOW - timedelta(days=3)),
            device_id="phone-1",
            ip_region_code="110105",
        ),
    )


def closure_request() -> pb.ScreenRequest:
    return pb.ScreenRequest(
        request_id="req-c-1",
        outlet=OUTLET,
        closure=pb.Closure(
            holder=pb.Person(id_number=APPLICANT_ID, name="张三"),
            msisdn="8619912345678",
            carrier=pb.CARRIER_CHINA_TELECOM,
        ),
    )


VALID_REQUESTS: dict[str, Callable[[], pb.ScreenRequest]] = {
    "card_opening": card_opening_request,
    "sim_sale": sim_sale_request,
    "transfer": transfer_request,
    "closure": closure_request,
}


def test_a_card_opening_is_converted() -> None:
    request = screen_request(card_opening_request(), now=NOW)
    assert request.request_id == "req-k-1"
    assert request.outlet == domain.Outlet("ICBC", "sz-nanshan-01", "c042", "440305", "44")
    assert request.occurred_at == NOW
    assert request.kind is domain.EventKind.CARD_OPENING
    event = request.event
    assert isinstance(event, domain.CardOpening)
    assert event.applicant == domain.Person(
        id_number=APPLICANT_ID,
        name="张三",
        phone="13812345678",
        address="深圳市南山区科技园",
        birth_date=date(1990, 3, 7),
        age=35,
        sex=domain.Sex.MALE,
        region_code="440305",
        province_code="44",
        region_known=True,
        non_local=False,
    )
    assert event.companion is not None
    assert (event.companion.name, event.companion.age, event.companion.sex) == ("", 70, domain.Sex.FEMALE)
    assert (event.companion.province_code, event.companion.non_local) == ("11", True)
    assert event.account_class is domain.AccountClass.I
    assert event.companion_relation is domain.CompanionRelation.NON_RELATIVE
    assert event.device_id == "term-7"
    assert event.requested_daily_limit_fen == 5_000_000
    assert event.limited_function is True
    assert event.identity_check is domain.IdentityCheck.PASSED
    assert event.has_local_tie is True
    assert event.account_number == "6222021234567890"


def test_a_sim_sale_is_converted() -> None:
    request = screen_request(sim_sale_request(), now=NOW)
    assert request.occurred_at == NOW - timedelta(minutes=3)
    event = request.event
    assert isinstance(event, domain.SimSale)
    assert event.buyer.id_number == COMPANION_ID
    assert (event.buyer.name, event.buyer.phone, event.buyer.address) == ("李四", "", "")
    assert event.buyer.non_local is True
    assert event.carrier is domain.Carrier.CHINA_UNICOM
    assert event.quantity == 2
    assert event.iot is True
    assert event.device_id == "pos-3"
    assert event.identity_check is domain.IdentityCheck.FACE_MISMATCH
    assert event.has_local_tie is False


def test_a_transfer_is_converted() -> None:
    request = screen_request(transfer_request(), now=NOW)
    event = request.event
    assert isinstance(event, domain.Transfer)
    assert event.payer_account == "6222021234567890"
    assert event.payer.id_number == APPLICANT_ID
    assert event.payer.phone == "13812345678"
    assert event.payee_account == "6217009876543210"
    assert event.payee_bank == "CCB"
    assert event.amount_fen == 1_234_500
    assert event.currency == "CNY"
    assert event.channel is domain.TransferChannel.MOBILE
    assert event.payee_account_opened_at == NOW - timedelta(days=3)
    assert event.device_id == "phone-1"
    assert event.ip_region_code == "110105"
    assert event.payee_country == "CN"


def test_a_transfer_without_optional_fields_is_converted() -> None:
    msg = transfer_request()
    msg.transfer.ClearField("payee_account_opened_at")
    msg.transfer.ip_region_code = ""
    msg.transfer.payee_bank = ""
    msg.transfer.currency = "USD"
    msg.transfer.payee_country = "HK"
    event = screen_request(msg, now=NOW).event
    assert isinstance(event, domain.Transfer)
    assert (event.payee_account_opened_at, event.ip_region_code, event.payee_bank) == (None, "", "")
    assert (event.currency, event.payee_country) == ("USD", "HK")


def test_a_sim_closure_is_converted() -> None:
    event = screen_request(closure_request(), now=NOW).event
    assert isinstance(event, domain.Closure)
    assert event.holder.id_number == APPLICANT_ID
    assert (event.account_number, event.msisdn) == ("", "19912345678")
    assert (event.account_class, event.carrier) == (None, domain.Carrier.CHINA_TELECOM)


def test_a_bank_account_closure_is_converted() -> None:
    msg = closure_request()
    msg.closure.account_number = "6222021234567890"
    msg.closure.carrier = pb.CARRIER_UNSPECIFIED
    msg.closure.account_class = pb.ACCOUNT_CLASS_II
    event = screen_request(msg, now=NOW).event
    assert isinstance(event, domain.Closure)
    assert (event.account_number, event.msisdn) == ("6222021234567890", "")
    assert (event.account_class, event.carrier) == (domain.AccountClass.II, None)


def test_an_unset_occurred_at_is_now_in_utc() -> None:
    china_now = NOW.astimezone(domain.CHINA_TZ)
    request = screen_request(card_opening_request(), now=china_now)
    assert request.occurred_at == NOW
    assert request.occurred_at.utcoffset() == timedelta(0)


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        screen_request(card_opening_request(), now=NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    ("occurred_at", "age"),
    [
        (datetime(2025, 2, 28, 15, 59, tzinfo=UTC), 20),  # 23:59 on 28 February in China
        (datetime(2025, 2, 28, 16, 0, tzinfo=UTC), 21),  # 00:00 on 1 March in China
    ],
)
def test_age_is_taken_on_the_event_date_in_china(occurred_at: datetime, age: int) -> None:
    msg = card_opening_request()
    msg.card_opening.applicant.id_number = make_id("440305", date(2004, 2, 29), 1)
    msg.occurred_at.CopyFrom(timestamp(occurred_at))
    event = screen_request(msg, now=occurred_at).event
    assert isinstance(event, domain.CardOpening)
    assert event.applicant.age == age


def test_a_person_from_another_province_is_non_local_and_an_unknown_county_is_not_refused() -> None:
    msg = sim_sale_request()
    msg.sim_sale.buyer.id_number = make_id("650199", date(1990, 1, 1), 1)  # Xinjiang, no such county
    event = screen_request(msg, now=NOW).event
    assert isinstance(event, domain.SimSale)
    assert (event.buyer.province_code, event.buyer.region_known, event.buyer.non_local) == ("65", False, True)


@pytest.mark.parametrize(
    ("path", "enum_type", "domain_enum"),
    [
        ("card_opening.account_class", pb.AccountClass, domain.AccountClass),
        ("card_opening.identity_check", pb.IdentityCheck, domain.IdentityCheck),
        ("card_opening.companion_relation", pb.CompanionRelation, domain.CompanionRelation),
        ("sim_sale.carrier", pb.Carrier, domain.Carrier),
        ("transfer.channel", pb.TransferChannel, domain.TransferChannel),
    ],
)
def test_every_proto_enum_value_converts_to_its_domain_namesake(
    path: str, enum_type: EnumTypeWrapper, domain_enum: type[enum.Enum]
) -> None:
    """A value added to the proto without a domain counterpart fails here."""
    kind, field = path.split(".")
    prefix = enum_type.Name(0).removesuffix("UNSPECIFIED")
    for name, number in enum_type.items():
        member = name.removeprefix(prefix)
        if number == 0 and member not in domain_enum.__members__:
            continue  # UNSPECIFIED is refused here: see test_a_bad_field_is_reported_at_its_path
        msg = VALID_REQUESTS[kind]()
        setattr(getattr(msg, kind), field, number)
        assert getattr(screen_request(msg, now=NOW).event, field) is domain_enum[member]


WRONG_CHECK_ID = APPLICANT_ID[:17] + ("0" if APPLICANT_ID[17] != "0" else "1")
FUTURE_BIRTH_ID = make_id("440305", TODAY + timedelta(days=1), 1)


def _set(attribute: str, value: object) -> Callable[[pb.ScreenRequest], None]:
    """A change to a valid request: set the dotted `attribute` to `value`."""

    def change(msg: pb.ScreenRequest) -> None:
        *parents, leaf = attribute.split(".")
        target: Message = msg
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, Timestamp):
            getattr(target, leaf).CopyFrom(value)
        else:
            setattr(target, leaf, value)

    return change


def _clear(attribute: str) -> Callable[[pb.ScreenRequest], None]:
    """A change to a valid request: clear the dotted `attribute` (a message field or a oneof)."""

    def change(msg: pb.ScreenRequest) -> None:
        *parents, leaf = attribute.split(".")
        target: Message = msg
        for parent in parents:
            target = getattr(target, parent)
        target.ClearField(leaf)

    return change


def _both(*changes: Callable[[pb.ScreenRequest], None]) -> Callable[[pb.ScreenRequest], None]:
    def change(msg: pb.ScreenRequest) -> None:
        for one in changes:
            one(msg)

    return change


PHONE_PROBLEM = "must be an 11-digit mobile number starting with 13-19"
BAD_FIELDS: list[tuple[str, Callable[[pb.ScreenRequest], None], str, str]] = [
    # request and outlet
    ("sim_sale", _set("request_id", ""), "request_id", "required"),
    ("sim_sale", _set("request_id", "req 1"), "request_id", "must be printable ascii without whitespace"),
    ("sim_sale", _clear("outlet"), "outlet", "required"),
    ("sim_sale", _set("outlet.institution_id", ""), "outlet.institution_id", "required"),
    ("sim_sale", _set("outlet.outlet_id", "x" * 65), "outlet.outlet_id", "must be at most 64 characters"),
    ("sim_sale", _set("outlet.clerk_id", "c\x00"), "outlet.clerk_id", "must not contain control characters"),
    ("sim_sale", _set("outlet.region_code", "4403"), "outlet.region_code", "must be 6 digits"),
    ("sim_sale", _set("outlet.region_code", "960000"), "outlet.region_code", "unknown province code"),
    ("sim_sale", _clear("event"), "event", "exactly one of card_opening, sim_sale, transfer, closure must be set"),
    (
        "sim_sale",
        _set("occurred_at", timestamp(NOW + timedelta(minutes=6))),
        "occurred_at",
        "more than 5 minutes in the future",
    ),
    (
        "sim_sale",
        _set("occurred_at", timestamp(NOW - timedelta(hours=25))),
        "occurred_at",
        "more than 24 hours in the past",
    ),
    ("sim_sale", _set("occurred_at.nanos", -1), "occurred_at", "nanos must be 0 to 999999999"),
    # card openings
    ("card_opening", _clear("card_opening.applicant"), "card_opening.applicant", "required"),
    (
        "card_opening",
        _set("card_opening.applicant.id_number", WRONG_CHECK_ID),
        "card_opening.applicant.id_number",
        "check digit mismatch",
    ),
    ("card_opening", _set("card_opening.applicant.name", ""), "card_opening.applicant.name", "required"),
    ("card_opening", _set("card_opening.applicant.phone", "1381234"), "card_opening.applicant.phone", PHONE_PROBLEM),
    (
        "card_opening",
        _set("card_opening.applicant.address", "路" * 257),
        "card_opening.applicant.address",
        "must be at most 256 characters",
    ),
    (
        "card_opening",
        _set("card_opening.companion.id_number", WRONG_CHECK_ID),
        "card_opening.companion.id_number",
        "check digit mismatch",
    ),
    ("card_opening", _set("card_opening.companion.phone", "+1 555"), "card_opening.companion.phone", PHONE_PROBLEM),
    (
        "card_opening",
        _clear("card_opening.companion"),
        "card_opening.companion_relation",
        "must not be set without a companion",
    ),
    ("card_opening", _set("card_opening.account_class", 0), "card_opening.account_class", "required"),
    ("card_opening", _set("card_opening.account_class", 7), "card_opening.account_class", "unknown value 7"),
    (
        "card_opening",
        _set("card_opening.companion_relation", 5),
        "card_opening.companion_relation",
        "unknown value 5",
    ),
    ("card_opening", _set("card_opening.identity_check", 9), "card_opening.identity_check", "unknown value 9"),
    (
        "card_opening",
        _set("card_opening.requested_daily_limit_fen", -1),
        "card_opening.requested_daily_limit_fen",
        "must not be negative",
    ),
    (
        "card_opening",
        _set("card_opening.device_id", "d" * 129),
        "card_opening.device_id",
        "must be at most 128 characters",
    ),
    (
        "card_opening",
        _set("card_opening.account_number", "6222-0212"),
        "card_opening.account_number",
        "must be 8 to 32 digits",
    ),
    # SIM sales
    ("sim_sale", _clear("sim_sale.buyer"), "sim_sale.buyer", "required"),
    ("sim_sale", _set("sim_sale.buyer.name", " \u3000"), "sim_sale.buyer.name", "required"),
    ("sim_sale", _set("sim_sale.buyer.id_number", ""), "sim_sale.buyer.id_number", "required"),
    ("sim_sale", _set("sim_sale.carrier", 0), "sim_sale.carrier", "required"),
    ("sim_sale", _set("sim_sale.carrier", 8), "sim_sale.carrier", "unknown value 8"),
    ("sim_sale", _set("sim_sale.quantity", 0), "sim_sale.quantity", "must be 1 to 100"),
    ("sim_sale", _set("sim_sale.quantity", 101), "sim_sale.quantity", "must be 1 to 100"),
    ("sim_sale", _set("sim_sale.identity_check", 5), "sim_sale.identity_check", "unknown value 5"),
    # transfers
    ("transfer", _set("transfer.payer_account", ""), "transfer.payer_account", "required"),
    ("transfer", _set("transfer.payee_account", "1234"), "transfer.payee_account", "must be 8 to 32 digits"),
    (
        "transfer",
        _set("transfer.payee_account", "6222021234567890"),
        "transfer.payee_account",
        "must differ from payer_account",
    ),
    ("transfer", _clear("transfer.payer"), "transfer.payer", "required"),
    (
        "transfer",
        _set("transfer.payer.id_number", FUTURE_BIRTH_ID),
        "transfer.payer.id_number",
        "birth date after the event date",
    ),
    ("transfer", _set("transfer.amount_fen", 0), "transfer.amount_fen", "must be positive"),
    ("transfer", _set("transfer.amount_fen", 10**14 + 1), "transfer.amount_fen", "must be at most 10^14"),
    ("transfer", _set("transfer.currency", "rmb"), "transfer.currency", "must be 3 upper-case letters"),
    ("transfer", _set("transfer.channel", 0), "transfer.channel", "required"),
    ("transfer", _set("transfer.channel", 9), "transfer.channel", "unknown value 9"),
    (
        "transfer",
        _set("transfer.payee_account_opened_at", timestamp(NOW - timedelta(minutes=5))),
        "transfer.payee_account_opened_at",
        "must not be after occurred_at",
    ),
    (
        "transfer",
        _set("transfer.payee_account_opened_at", Timestamp(seconds=-(2**40))),
        "transfer.payee_account_opened_at",
        "seconds out of range",
    ),
    ("transfer", _set("transfer.payee_bank", "b" * 65), "transfer.payee_bank", "must be at most 64 characters"),
    ("transfer", _set("transfer.ip_region_code", "000000"), "transfer.ip_region_code", "unknown province code"),
    ("transfer", _set("transfer.payee_country", "CHN"), "transfer.payee_country", "must be 2 upper-case letters"),
    # closures
    ("closure", _clear("closure.holder"), "closure.holder", "required"),
    ("closure", _set("closure.holder.name", ""), "closure.holder.name", "required"),
    ("closure", _clear("closure.closed"), "closure.closed", "exactly one of account_number, msisdn must be set"),
    ("closure", _set("closure.msisdn", "12345678901"), "closure.msisdn", PHONE_PROBLEM),
    ("closure", _set("closure.carrier", 0), "closure.carrier", "required with msisdn"),
    ("closure", _set("closure.account_class", 2), "closure.account_class", "must not be set with msisdn"),
    (
        "closure",
        _both(_set("closure.account_number", ""), _set("closure.carrier", 0), _set("closure.account_class", 1)),
        "closure.account_number",
        "required",
    ),
    (
        "closure",
        _both(_set("closure.account_number", "6222021234567890"), _set("closure.account_class", 1)),
        "closure.carrier",
        "must not be set with account_number",
    ),
    (
        "closure",
        _both(_set("closure.account_number", "6222021234567890"), _set("closure.carrier", 0)),
        "closure.account_class",
        "required with account_number",
    ),
    (
        "closure",
        _both(
            _set("closure.account_number", "6222021234567890"),
            _set("closure.carrier", 0),
            _set("closure.account_class", 4),
        ),
        "closure.account_class",
        "unknown value 4",
    ),
]


@pytest.mark.parametrize(
    ("kind", "change", "path", "problem"),
    BAD_FIELDS,
    ids=[f"{path}: {problem}" for _, _, path, problem in BAD_FIELDS],
)
def test_a_bad_field_is_reported_at_its_path(
    kind: str, change: Callable[[pb.ScreenRequest], None], path: str, problem: str
) -> None:
    msg = VALID_REQUESTS[kind]()
    change(msg)
    assert problems_of(msg) == (FieldProblem(path, problem),)


def problems_of(msg: pb.ScreenRequest) -> tuple[FieldProblem, ...]:
    with pytest.raises(ValidationError) as caught:
        screen_request(msg, now=NOW)
    return caught.value.problems


def test_every_problem_in_a_request_is_reported() -> None:
    msg = transfer_request()
    msg.request_id = ""
    msg.outlet.region_code = "44"
    msg.transfer.payer.id_number = WRONG_CHECK_ID
    msg.transfer.payer.name = ""
    msg.transfer.payee_account = msg.transfer.payer_account
    msg.transfer.amount_fen = -100
    msg.transfer.channel = pb.TRANSFER_CHANNEL_UNSPECIFIED
    assert problems_of(msg) == (
        FieldProblem("request_id", "required"),
        FieldProblem("outlet.region_code", "must be 6 digits"),
        FieldProblem("transfer.payer.id_number", "check digit mismatch"),
        FieldProblem("transfer.payer.name", "required"),
        FieldProblem("transfer.payee_account", "must differ from payer_account"),
        FieldProblem("transfer.amount_fen", "must be positive"),
        FieldProblem("transfer.channel", "required"),
    )


def test_the_error_text_joins_path_and_problem() -> None:
    msg = closure_request()
    msg.closure.holder.id_number = WRONG_CHECK_ID
    with pytest.raises(ValidationError, match=r"^closure\.holder\.id_number: check digit mismatch$"):
        screen_request(msg, now=NOW)


def test_problems_never_contain_id_phone_or_account_numbers() -> None:
    msg = card_opening_request()
    applicant = msg.card_opening.applicant
    applicant.id_number = WRONG_CHECK_ID
    applicant.phone = "1281234567８"
    msg.card_opening.companion.id_number = FUTURE_BIRTH_ID
    msg.card_opening.account_number = "62220212345678901234567890123456789"
    with pytest.raises(ValidationError) as caught:
        screen_request(msg, now=NOW)
    text = str(caught.value)
    assert len(caught.value.problems) == 4
    for secret in (WRONG_CHECK_ID, "1281234567", FUTURE_BIRTH_ID, "6222021234567890123"):
        assert secret not in text


@EXAMPLES
@given(
    st.text(alphabet="0123456789Xx+- ", min_size=8, max_size=40),
    st.text(alphabet="0123456789+- ", min_size=8, max_size=20),
    st.text(alphabet="0123456789abc ", min_size=8, max_size=40),
)
def test_no_problem_echoes_the_value(id_number: str, phone: str, account: str) -> None:
    msg = transfer_request()
    msg.transfer.payer.id_number = id_number
    msg.transfer.payer.phone = phone
    msg.transfer.payee_account = account
    try:
        screen_request(msg, now=NOW)
    except ValidationError as error:
        text = str(error)
        for value in (id_number, phone, account):
            assert value not in text
