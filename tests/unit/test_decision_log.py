"""The decision log's backlog and spool, without Redis: lines, bounds, drops, torn lines, the lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConfigError
from service.riskdata.decision_log import DecisionLog, DecisionLogConfig, LogEntry, Spool


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def now(self):  # type: ignore[no-untyped-def]
        raise AssertionError("not used")


def _entry(n: int) -> LogEntry:
    return LogEntry.of({"decision_id": f"d-{n}", "outcome": "allow", "rules": "规则,~T1"}, 1_700_000_000_000 + n)


def test_an_entry_survives_its_spool_line() -> None:
    entry = _entry(1).with_sent()
    again = LogEntry.from_line(entry.to_line())
    assert again == entry
    assert again.fields == ("decision_id", "d-1", "outcome", "allow", "rules", "规则,~T1")
    assert LogEntry.from_line(_entry(2).to_line()).sent is False


def test_the_backlog_is_bounded_and_every_drop_is_counted(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = DecisionLog(
        None,
        DecisionLogConfig(stream_key="rg:log:decisions", backlog_limit=3, spool_path=tmp_path / "spool"),
        _Clock(),
        on_dropped=dropped.append,
    )
    for n in range(5):
        log.defer(_entry(n), sent=False)
    assert log.backlog == 3
    assert log.dropped == 2 and sum(dropped) == 2
    log.release()


def test_the_next_start_reads_what_the_spool_holds_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "decision-log.spool"
    config = DecisionLogConfig(stream_key="rg:log:decisions", spool_path=path)
    first = DecisionLog(None, config, _Clock())
    for n in range(4):
        first.defer(_entry(n), sent=n % 2 == 1)
    first.release()  # what a crash leaves: the file, unlocked
    with path.open("ab") as file:
        file.write(b'["d-torn", 17')  # a write cut short by a power loss
    second = DecisionLog(None, config, _Clock())
    assert second.backlog == 4
    assert [e.decision_id for e in second._backlog] == ["d-0", "d-1", "d-2", "d-3"]
    assert [e.sent for e in second._backlog] == [False, True, False, True]
    second.release()


def test_one_process_at_a_time_owns_a_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "decision-log.spool")
    with pytest.raises(ConfigError, match="in use by another riskgate process"):
        Spool(tmp_path / "decision-log.spool")
    spool.close()
    Spool(tmp_path / "decision-log.spool").close()


def test_a_rewrite_keeps_exactly_the_entries_given(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    for n in range(5):
        spool.append(_entry(n))
    spool.rewrite([_entry(3), _entry(4)])
    spool.append(_entry(5))
    spool.close()
    reread = Spool(tmp_path / "s")
    entries, bad = reread.read()
    assert ([e.decision_id for e in entries], bad) == (["d-3", "d-4", "d-5"], 0)
    reread.clear()
    assert reread.read() == ([], 0)
    reread.close()


def test_ids_of_one_minute_share_a_set_in_the_streams_cluster_slot() -> None:
    log = DecisionLog(None, DecisionLogConfig(stream_key="rg:log:decisions"), _Clock())
    minute = 1_700_000_040_000 // 60_000
    assert log.marker_key(1_700_000_040_000) == f"{{rg:log:decisions}}:w:{minute}"
    assert log.marker_key(1_700_000_099_999) == f"{{rg:log:decisions}}:w:{minute}"
