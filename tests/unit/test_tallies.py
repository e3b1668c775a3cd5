"""What one logged decision adds to the console's tallies (pure: field names from a log entry)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.domain import CHINA_TZ
from service.redis.keys import KeyHasher
from service.riskdata.tallies import (
    CLERK_REF_LENGTH,
    FLAGGED_FIELDS,
    clerk_ref,
    day_end_ms,
    local_day,
    tallies_of,
)

NOW = datetime.now(UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def _fields(**override: str) -> dict[str, str]:
    fields = {
        "decision_id": "d-1",
        "request_id": "TX-1",
        "decided_at": NOW.isoformat(),
        "kind": "transfer",
        "institution_id": "BANK_A",
        "outlet_id": "BR-7",
        "region_code": "310115",
        "outcome": "warn",
        "rules": "T18,~T19",
        "revision": "rev@3",
        "degraded": "0",
        "clerk": "ab12cd34ef",
        "reasons": "[]",
    }
    return {**fields, **override}


def test_a_warned_transfer_counts_by_minute_day_and_place_and_is_flagged() -> None:
    tallies = tallies_of(_fields(), NOW_MS)
    assert tallies.minute == ("n:transfer:warn", "r:T18", "s:T19", "v:rev@3")
    hour = NOW.astimezone(CHINA_TZ).hour
    assert tallies.day == (
        "n:transfer:warn",
        "r:T18",
        "s:T19",
        "p:31:warn",
        "i:BANK_A:warn",
        f"h:{hour:02d}:warn",
        "c:310115:warn",
        "u:BANK_A/BR-7:warn",
    )
    assert tallies.hour == ()  # a transfer is not an opening
    summary = dict(zip(tallies.flagged[::2], tallies.flagged[1::2], strict=True))
    assert set(summary) == set(FLAGGED_FIELDS.values())
    assert summary["d"] == "d-1" and summary["x"] == "T18,~T19" and summary["c"] == "ab12cd34ef"


def test_an_allowed_opening_counts_its_clerk_and_outlet_and_is_not_flagged() -> None:
    tallies = tallies_of(_fields(kind="card_opening", outcome="allow", rules="", degraded="1"), NOW_MS)
    assert tallies.minute == ("n:card_opening:allow", "g:card_opening", "v:rev@3")
    assert "c:310115:allow" not in tallies.day and "p:31:allow" in tallies.day  # cities: warnings only
    assert tallies.hour == ("o:BANK_A/BR-7", "c:ab12cd34ef")
    assert tallies.flagged == ()
    self_service = tallies_of(_fields(kind="sim_sale", outcome="allow", clerk=""), NOW_MS)
    assert self_service.hour == ("o:BANK_A/BR-7",)


def test_the_day_is_the_local_day_of_the_centres() -> None:
    # 16:30 UTC is half past midnight in Beijing: the next local day.
    evening = NOW.replace(hour=16, minute=30, second=0, microsecond=0)
    evening_ms = int(evening.timestamp() * 1000)
    assert local_day(evening_ms) == evening.date() + timedelta(days=1)
    assert "h:00:warn" in tallies_of(_fields(), evening_ms).day
    end = day_end_ms(local_day(evening_ms))
    assert end == int(
        datetime.combine(local_day(evening_ms) + timedelta(days=1), datetime.min.time(), CHINA_TZ).timestamp() * 1000
    )


def test_a_clerk_is_shown_only_as_a_short_keyed_hash() -> None:
    hasher = KeyHasher(b"k" * 32)
    ref = clerk_ref(hasher.identifier, "CLERK-0042")
    assert len(ref) == CLERK_REF_LENGTH and "0042" not in ref
    assert ref == clerk_ref(hasher.identifier, "CLERK-0042") != clerk_ref(KeyHasher(b"j" * 32).identifier, "CLERK-0042")
    assert clerk_ref(hasher.identifier, "") == ""
