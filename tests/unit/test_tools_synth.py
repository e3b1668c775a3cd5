"""`riskgate synth --end`: a stream placed where the caller wants it, and how long the service takes it.

Every time here is derived from the clock of the run, never a calendar date: the point is that a
file keeps passing the service's bounds (24 hours back, 5 minutes ahead) for as long as promised.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import json_format

from service import domain
from service._gen.riskgate.v1 import screening_pb2 as pb
from service.errors import ValidationError
from service.pipeline.validate import DEFAULT_TIME_BOUNDS, screen_request
from service.synth import MAX_DEFAULT_AGE, add_synth_command, generate, stream_window, to_json_line, valid_until

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(seconds=DEFAULT_TIME_BOUNDS.max_age_seconds)
SKEW = timedelta(seconds=DEFAULT_TIME_BOUNDS.max_future_skew_seconds)


def _times(requests: list[pb.ScreenRequest]) -> list[datetime]:
    return [r.occurred_at.ToDatetime().replace(tzinfo=UTC) for r in requests]


def _accepted_at(requests: list[pb.ScreenRequest], at: datetime) -> bool:
    """Whether the service, its clock at `at`, takes every request (its default bounds)."""
    try:
        for request in requests:
            screen_request(request, now=at)
    except ValidationError:
        return False
    return True


def test_an_end_places_the_window_and_the_file_stays_valid_for_a_day_less_its_span() -> None:
    end, span = NOW - timedelta(hours=2), timedelta(hours=6)
    assert stream_window(NOW, 0.25, end=end) == (end - span, end)
    requests = [r for r, _ in generate(3, 2_000, 0.25, NOW, end=end)]
    times = _times(requests)
    assert end - span <= times[0] and times[-1] <= end
    assert times[-1] >= end - timedelta(minutes=10)

    deadline = valid_until(end - span)
    assert deadline == end + DAY - span  # 18 hours after the end
    assert _accepted_at(requests, NOW)
    assert _accepted_at(requests, deadline)
    assert not _accepted_at(requests, end + DAY + timedelta(seconds=1))  # the last events too old by then


def test_a_day_ending_at_end_keeps_the_quarter_hour_margin() -> None:
    end = NOW - timedelta(hours=5)
    start, finish = stream_window(NOW, 1.0, end=end)
    assert (start, finish) == (end - MAX_DEFAULT_AGE, end)
    assert valid_until(start) == end + timedelta(minutes=15)
    with pytest.raises(ValueError, match="needs a start time"):
        stream_window(NOW, 2.0, end=end)


def test_the_same_seed_and_end_give_the_same_stream_whatever_the_clock() -> None:
    end = NOW - timedelta(hours=1)
    first = [to_json_line(r) for r, _ in generate(5, 300, 0.1, NOW, end=end)]
    later = [to_json_line(r) for r, _ in generate(5, 300, 0.1, NOW + timedelta(hours=3), end=end)]
    assert first == later


def test_an_end_at_most_the_skew_ahead_is_taken_and_passes_validation_now() -> None:
    end = NOW + SKEW
    requests = [r for r, _ in generate(2, 500, 0.05, NOW, end=end)]
    assert max(_times(requests)) <= end
    assert _accepted_at(requests, NOW)
    with pytest.raises(ValueError, match=r"301 s ahead of now.*RISKGATE_MAX_FUTURE_SKEW_SECONDS"):
        stream_window(NOW, 0.05, end=NOW + SKEW + timedelta(seconds=1))


def test_an_end_needs_an_offset_and_excludes_a_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        stream_window(NOW, 0.1, end=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="a start or an end, not both"):
        stream_window(NOW, 0.1, start=NOW - timedelta(days=3), end=NOW)


# --- the command ---------------------------------------------------------------------


def _run(*argv: str) -> int:
    root = argparse.ArgumentParser(prog="riskgate")
    add_synth_command(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["synth", *argv])
    return int(args.handler(args))


def test_the_command_writes_a_stream_ending_at_end_and_says_until_when_it_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    end = (NOW - timedelta(hours=3)).astimezone(domain.CHINA_TZ)
    out = tmp_path / "events.jsonl"
    assert _run("--seed", "9", "--events", "400", "--days", "0.25", "--end", end.isoformat(), "--out", str(out)) == 0
    with out.open(encoding="utf-8") as stream:
        requests = [json_format.ParseDict(json.loads(line), pb.ScreenRequest()) for line in stream]
    assert requests == [r for r, _ in generate(9, 400, 0.25, NOW, end=end)]
    times = _times(requests)
    assert end - timedelta(hours=6) <= times[0] and times[-1] <= end
    deadline = (end + timedelta(hours=18)).isoformat(timespec="seconds")
    assert f"the service takes it until {deadline} (24-hour limit)" in capsys.readouterr().err


def test_the_command_refuses_an_end_too_far_ahead_naive_or_with_a_start(capsys: pytest.CaptureFixture[str]) -> None:
    ahead = (datetime.now(UTC) + SKEW + timedelta(minutes=5)).isoformat()
    assert _run("--events", "10", "--end", ahead) == 2
    assert "RISKGATE_MAX_FUTURE_SKEW_SECONDS" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        _run("--end", (NOW - timedelta(hours=1)).replace(tzinfo=None).isoformat())
    assert "needs a time and a UTC offset" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        _run("--end", NOW.isoformat(), "--start", (NOW - timedelta(days=2)).isoformat())
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_help_says_how_long_a_file_stays_valid(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "stays valid for 24 h - S after its end" in text
    assert "--end END" in text
