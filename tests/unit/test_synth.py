"""Tests for service.synth: determinism, validity, proportions, and the shape of every planted pattern.

The planted patterns are checked from the requests alone, the way a backtest sees them: the
labels say which events belong together, the requests must then show what the label claims.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import json_format

from service import domain
from service._gen.riskgate.v1 import screening_pb2 as pb
from service.pipeline.validate import screen_request
from service.synth import (
    EVENT_SHARES,
    MAX_DEFAULT_AGE,
    PATTERNS,
    Label,
    Labelled,
    add_synth_command,
    corporate_accounts,
    generate,
    stream_window,
    to_json_line,
)

NOW = datetime(2025, 6, 15, 4, 0, tzinfo=UTC)  # 12:00 in China
START = datetime(2025, 6, 1, 0, 0, tzinfo=domain.CHINA_TZ)


@dataclass(frozen=True)
class Event:
    request: pb.ScreenRequest
    label: Label | None
    validated: domain.ScreenRequest

    @property
    def at(self) -> datetime:
        return self.validated.occurred_at

    @property
    def transfer(self) -> domain.Transfer:
        assert isinstance(self.validated.event, domain.Transfer)
        return self.validated.event


def _validated(pairs: list[Labelled]) -> list[Event]:
    return [Event(request, label, screen_request(request, now=NOW)) for request, label in pairs]


@pytest.fixture(scope="module")
def planted() -> list[Event]:
    """A stream rich in planted fraud (forty times the nominal rates), every request validated."""
    return _validated(list(generate(11, 4_000, 1.0, NOW, fraud_scale=40)))


@pytest.fixture(scope="module")
def ordinary() -> list[Event]:
    """A stream at the default rates: almost all ordinary events, for the proportions."""
    return _validated(list(generate(5, 8_000, 1.0, NOW)))


def _instances(events: list[Event], pattern: str) -> dict[str, list[Event]]:
    found: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if event.label is not None and event.label.pattern == pattern:
            found[event.label.instance].append(event)
    assert len(found) >= 3, f"too few {pattern} instances to check"
    return found


# --- the stream as a whole -----------------------------------------------------------


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    def lines(seed: int) -> list[str]:
        return [
            to_json_line(request) + repr(label) for request, label in generate(seed, 1_000, 1.0, NOW, fraud_scale=30)
        ]

    first = lines(7)
    assert first == lines(7)
    assert first != lines(8)


def test_every_request_is_valid_ordered_and_uniquely_identified(planted: list[Event]) -> None:
    assert len(planted) == 4_000  # the fixture validated each one
    times = [event.at for event in planted]
    assert times == sorted(times)
    assert len({event.request.request_id for event in planted}) == len(planted)


def test_the_default_window_ends_just_before_now_and_fits_the_service_age_limit(planted: list[Event]) -> None:
    assert planted[0].at >= NOW - MAX_DEFAULT_AGE
    assert planted[-1].at <= NOW - timedelta(minutes=1)
    assert planted[-1].at >= NOW - timedelta(minutes=10)
    assert stream_window(NOW, 0.5) == (NOW - timedelta(hours=12, minutes=1), NOW - timedelta(minutes=1))


def test_a_start_fixes_the_window_for_replays() -> None:
    pairs = list(generate(3, 500, 3.0, NOW, start=START))
    first, last = pairs[0][0].occurred_at.ToDatetime(UTC), pairs[-1][0].occurred_at.ToDatetime(UTC)
    assert START <= first < START + timedelta(hours=6)
    assert START + timedelta(days=2, hours=18) < last <= START + timedelta(days=3)
    # The same start gives the same stream whatever the clock says.
    later = list(generate(3, 500, 3.0, NOW + timedelta(days=40), start=START))
    assert [to_json_line(r) for r, _ in pairs] == [to_json_line(r) for r, _ in later]


def test_more_than_a_day_without_a_start_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a start time"):
        generate(1, 10, 2.0, NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        generate(1, 10, 1.0, datetime(2025, 6, 15))


def test_kinds_come_in_their_shares(ordinary: list[Event]) -> None:
    counts = Counter(event.validated.kind.value for event in ordinary)
    assert set(counts) == set(EVENT_SHARES)
    for kind, share in EVENT_SHARES.items():
        assert counts[kind] / len(ordinary) == pytest.approx(share, abs=max(0.01, share * 0.25)), kind


def test_nights_are_quiet_and_openings_keep_counter_hours(ordinary: list[Event]) -> None:
    by_hour = Counter(domain.local_time(event.at).hour for event in ordinary)
    assert max(by_hour[h] for h in range(2, 5)) * 5 < min(by_hour[h] for h in range(9, 12))
    openings = [e for e in ordinary if e.validated.kind is domain.EventKind.CARD_OPENING and e.request.outlet.clerk_id]
    assert all(8 <= domain.local_time(e.at).hour < 18 for e in openings)


def test_amounts_are_heavy_tailed_and_people_mostly_act_at_home(ordinary: list[Event]) -> None:
    transfers = [e.transfer for e in ordinary if e.validated.kind is domain.EventKind.TRANSFER]
    amounts = sorted(t.amount_fen for t in transfers)
    median = statistics.median(amounts)
    assert 20_000 <= median <= 100_000  # ¥200-1,000
    assert amounts[int(len(amounts) * 0.99)] > 20 * median
    assert amounts[0] >= 100
    local = sum(1 for e in ordinary if e.validated.outlet.province_code == _subject(e.validated).province_code)
    assert local / len(ordinary) > 0.85


def test_the_population_has_students_elderly_and_real_counties(ordinary: list[Event]) -> None:
    people = {p.id_number: p for p in (_subject(e.validated) for e in ordinary)}
    ages = [p.age for p in people.values()]
    assert 0.08 < sum(18 <= a <= 25 for a in ages) / len(ages) < 0.25
    assert 0.15 < sum(a >= 60 for a in ages) / len(ages) < 0.35
    assert min(ages) >= 16
    assert all(p.region_known for p in people.values() if p.province_code != "83")
    assert len({p.province_code for p in people.values()}) >= 31


def _subject(request: domain.ScreenRequest) -> domain.Person:
    event = request.event
    if isinstance(event, domain.Transfer):
        return event.payer
    if isinstance(event, domain.CardOpening):
        return event.applicant
    if isinstance(event, domain.SimSale):
        return event.buyer
    return event.holder


def test_company_payees_are_the_allowlist(ordinary: list[Event]) -> None:
    companies = set(corporate_accounts(5))
    paid = Counter(e.transfer.payee_account for e in ordinary if e.validated.kind is domain.EventKind.TRANSFER)
    assert len(companies) == 31 * 30
    assert sum(paid[account] for account in companies) / sum(paid.values()) == pytest.approx(0.1, abs=0.03)
    busiest = paid.most_common(1)[0][0]
    assert busiest in companies


# --- the planted patterns ----------------------------------------------------------


def test_every_pattern_is_planted_at_a_small_rate(planted: list[Event], ordinary: list[Event]) -> None:
    patterns = Counter(e.label.pattern for e in planted if e.label is not None)
    assert set(patterns) == set(PATTERNS)
    at_default_rates = sum(1 for e in ordinary if e.label is not None)
    assert 0 < at_default_rates / len(ordinary) < 0.01
    assert 0.02 < sum(patterns.values()) / len(planted) < 0.3


def test_batch_openings_bring_applicants_with_one_companion_to_one_outlet(planted: list[Event]) -> None:
    for instance, events in _instances(planted, "batch_opening").items():
        openings = [e.validated.event for e in events]
        assert all(isinstance(o, domain.CardOpening) for o in openings)
        companions = {o.companion.id_number for o in openings if isinstance(o, domain.CardOpening) and o.companion}
        applicants = {o.applicant.id_number for o in openings if isinstance(o, domain.CardOpening)}
        outlets = {(e.validated.outlet.institution_id, e.validated.outlet.outlet_id) for e in events}
        assert len(companions) == 1 and len(outlets) == 1, instance
        assert len(applicants) == len(events) >= 3, instance
        assert events[-1].at - events[0].at <= timedelta(hours=2), instance


def test_sim_batches_sell_twenty_cards_an_hour_to_buyers_sharing_a_phone(planted: list[Event]) -> None:
    for instance, events in _instances(planted, "sim_batch").items():
        sales = [e.validated.event for e in events]
        assert all(isinstance(s, domain.SimSale) for s in sales)
        buyers = {s.buyer.id_number for s in sales if isinstance(s, domain.SimSale)}
        phones = {s.buyer.phone for s in sales if isinstance(s, domain.SimSale)}
        outlets = {e.validated.outlet.outlet_id for e in events}
        assert len(buyers) == len(events) >= 5 and len(phones) == 1 and len(outlets) == 1, instance
        first_hour = [s for e, s in zip(events, sales, strict=True) if e.at - events[0].at <= timedelta(hours=1)]
        assert sum(s.quantity for s in first_hour if isinstance(s, domain.SimSale)) >= 20, instance


def test_multi_bank_openings_reach_three_banks_within_days(planted: list[Event]) -> None:
    for instance, events in _instances(planted, "multi_bank_opening").items():
        openings = [e.validated.event for e in events]
        applicants = {o.applicant.id_number for o in openings if isinstance(o, domain.CardOpening)}
        assert len(openings) == len(events), instance
        banks = {e.validated.outlet.institution_id for e in events}
        assert len(applicants) == 1 and len(banks) == len(events) >= 3, instance
        assert events[-1].at - events[0].at <= timedelta(days=30), instance


def test_a_mule_account_takes_from_many_payers_within_an_hour_then_pays_on(planted: list[Event]) -> None:
    for instance, events in _instances(planted, "money_mule").items():
        inflows = [e for e in events if e.label and e.label.role == "inflow"]
        payouts = [e for e in events if e.label and e.label.role == "payout"]
        (mule,) = {e.transfer.payee_account for e in inflows}
        assert len({e.transfer.payer_account for e in inflows}) == len(inflows) >= 6, instance
        assert inflows[-1].at - inflows[0].at <= timedelta(hours=1), instance
        assert payouts and all(e.transfer.payer_account == mule for e in payouts), instance
        assert payouts[0].at > inflows[-1].at, instance
        received = sum(e.transfer.amount_fen for e in inflows)
        assert 0.85 * received <= sum(e.transfer.amount_fen for e in payouts) <= received, instance
        assert all(e.transfer.ip_region_code[:2] != e.validated.outlet.province_code for e in payouts), instance


def test_a_rapid_in_out_account_sends_most_of_each_inflow_out_within_thirty_minutes(planted: list[Event]) -> None:
    for instance, events in _instances(planted, "rapid_in_out").items():
        (account,) = {e.transfer.payee_account for e in events if e.label and e.label.role == "inflow"}
        cycles: list[list[Event]] = [[events[0]]]
        for event in events[1:]:
            if event.at - cycles[-1][-1].at > timedelta(minutes=30):
                cycles.append([])
            cycles[-1].append(event)
        for cycle in cycles:
            assert cycle[-1].at - cycle[0].at <= timedelta(minutes=30), instance
            money_in = sum(e.transfer.amount_fen for e in cycle if e.transfer.payee_account == account)
            money_out = sum(e.transfer.amount_fen for e in cycle if e.transfer.payer_account == account)
            assert money_in >= 2_000_000 and 0.8 * money_in <= money_out <= money_in, instance


def test_an_elderly_victim_sends_fifty_thousand_to_a_new_payee_at_night_or_from_afar(planted: list[Event]) -> None:
    seen_pairs: set[tuple[str, str]] = set()
    instances = _instances(planted, "elderly_victim")
    labelled = {e.request.request_id for events in instances.values() for e in events}
    night = 0
    for event in planted:
        if event.validated.kind is not domain.EventKind.TRANSFER:
            continue
        transfer = event.transfer
        pair = (transfer.payer_account, transfer.payee_account)
        if event.request.request_id in labelled:
            assert pair not in seen_pairs
            assert transfer.payer.age >= 60 and transfer.amount_fen >= 5_000_000
            at_night = domain.local_time(event.at).hour < 5
            remote = transfer.ip_region_code[:2] not in (
                "",
                transfer.payer.province_code,
                event.validated.outlet.province_code,
            )
            assert at_night or remote
            night += at_night
        seen_pairs.add(pair)
    assert 0 < night < len(labelled)


# --- the command ---------------------------------------------------------------------


def _run(*argv: str) -> int:
    root = argparse.ArgumentParser(prog="riskgate")
    add_synth_command(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["synth", *argv])
    return int(args.handler(args))


def test_the_command_writes_json_lines_that_riskgate_screen_reads(tmp_path: Path) -> None:
    out, labels, allow = tmp_path / "events.jsonl", tmp_path / "labels.jsonl", tmp_path / "allow.csv"
    argv = ["--seed", "4", "--events", "800", "--start", "2025-06-01", "--fraud-scale", "50"]
    assert _run(*argv, "--out", str(out), "--labels", str(labels), "--allowlist", str(allow)) == 0

    expected = list(generate(4, 800, 1.0, NOW, start=START, fraud_scale=50))
    with out.open(encoding="utf-8") as stream:
        parsed = [json_format.ParseDict(json.loads(line), pb.ScreenRequest()) for line in stream]
    assert parsed == [request for request, _ in expected]  # read as `riskgate screen` reads JSON Lines

    written = [json.loads(line) for line in labels.read_text(encoding="utf-8").splitlines()]
    assert written == [
        {"request_id": r.request_id, "pattern": label.pattern, "instance": label.instance, "role": label.role}
        for r, label in expected
        if label is not None
    ]
    assert written
    assert allow.read_text(encoding="utf-8").split() == corporate_accounts(4)


def test_the_command_refuses_a_naive_start(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run("--start", "2025-06-01T08:00:00")
    assert "needs a UTC offset" in capsys.readouterr().err


def _pairs(events: list[Event]) -> Iterator[tuple[str, str]]:
    for event in events:
        if event.validated.kind is domain.EventKind.TRANSFER:
            yield event.transfer.payer_account, event.transfer.payee_account


def test_identifiers_do_not_collide(planted: list[Event]) -> None:
    # An account always belongs to one person, and nobody pays themselves on the same account.
    holders: dict[str, set[str]] = defaultdict(set)
    for event in planted:
        if event.validated.kind is domain.EventKind.TRANSFER:
            holders[event.transfer.payer_account].add(event.transfer.payer.id_number)
    assert all(len(ids) == 1 for ids in holders.values())
    assert all(payer != payee for payer, payee in _pairs(planted))
