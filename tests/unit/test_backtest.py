"""The backtest's pure parts: no future data in the counter replay, the comparison, labels, the gate."""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from service.backtest.command import parse_time
from service.backtest.compare import gate, parse_limit, read_labels
from service.backtest.events import Event, Events
from service.backtest.replay import CounterReplay, Replayed
from service.domain import CHINA_TZ, EventKind
from service.errors import InvalidValue
from service.pipeline.facts import facts, identifiers
from service.redis.keys import KeyHasher
from service.riskdata.records import history_ids
from service.rules.directory import load_directory
from service.tools.cli import main
from tests.conftest import REPO
from tests.integration.counters.test_backtest_replay import _request

HASHER = KeyHasher(b"s" * 32)


def _history(seed: int, count: int) -> list[Event]:
    rng = random.Random(seed)
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)
    out = []
    for _ in range(count):
        moment += timedelta(seconds=rng.choice([1, 30, 600]))
        request = _request(rng, moment - timedelta(seconds=rng.choice([0, 0, 120])))
        request_facts = facts(request)
        ids = identifiers(request)
        hashed = history_ids(ids, request_facts, HASHER.identifier)
        hashed.update({k: HASHER.identifier(k, v) for k, v in ids.items()})
        out.append(Event(int(request.occurred_at.timestamp()), request.kind, request_facts, hashed))
    return out


def _values(replayed: Replayed) -> list[dict[str, int]]:
    n = len(next(iter(replayed.columns.values())).values) if replayed.columns else 0
    return [replayed.values_of(i) for i in range(n)]


@pytest.mark.parametrize("seed", [3, 4])
def test_an_event_never_sees_a_later_event(seed: int) -> None:
    """Each event's values from the whole history equal those from the history that ends with it."""
    directory = load_directory(REPO / "rules")
    history = _history(seed, 160)
    blocked = np.array([i % 7 == 0 for i in range(len(history))])
    whole = _values(CounterReplay(directory.counter_spec, directory.filters, Events.of(history)).run(blocked))
    for end in range(1, len(history) + 1, 13):
        replay = CounterReplay(directory.counter_spec, directory.filters, Events.of(history[:end]))
        assert _values(replay.run(blocked[:end])) == whole[:end]
    assert sum(1 for values in whole if any(values.values())) > 50


def test_a_degraded_event_counts_nothing() -> None:
    directory = load_directory(REPO / "rules")
    (event,) = _history(5, 1)
    later = Event(event.time + 1, event.kind, event.facts, event.ids)
    not_counted = Event(event.time, event.kind, event.facts, event.ids, counted=False)
    counted = CounterReplay(directory.counter_spec, directory.filters, Events.of([event, later])).run().values_of(1)
    skipped = (
        CounterReplay(directory.counter_spec, directory.filters, Events.of([not_counted, later])).run().values_of(1)
    )
    assert counted != skipped


def test_labels_from_synth_are_complete_and_dispositions_are_not(tmp_path: Path) -> None:
    synth = tmp_path / "synth.jsonl"
    synth.write_text(json.dumps({"request_id": "r1", "pattern": "mule", "instance": "m-1", "role": "payee"}) + "\n")
    labels = read_labels(synth)
    assert labels.complete and labels.by_request == {"r1": True}
    dispositions = tmp_path / "dispositions.jsonl"
    lines = [
        {"decision_id": "d1", "disposition": "appeal_filed"},
        {"decision_id": "d2", "disposition": "confirmed_fraud"},
        {"decision_id": "d3", "disposition": "false_alarm"},
        {"decision_id": "d2", "disposition": "appeal_filed"},  # the latest: not known any more
    ]
    dispositions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    labels = read_labels(dispositions)
    assert not labels.complete
    assert labels.by_decision == {"d3": False}


def test_a_bad_label_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"request_id": "r1", "pattern": "x"}\n{"what": 1}\n')
    with pytest.raises(InvalidValue, match=r"labels.jsonl:2: not a label"):
        read_labels(path)


def test_limits_read_counts_and_shares() -> None:
    changes = {"events": 1000, "new_blocks": 3, "new_blocks_share": 0.003, "changed": 10, "changed_share": 0.01}
    report = {"changes": changes}
    assert gate(report, [parse_limit("new_blocks", "0.5%")]) == []
    (problem,) = gate(report, [parse_limit("new_blocks", "0.1%")])
    assert "new blocks: 3 (0.300% of 1000)" in problem
    assert gate(report, [parse_limit("changed", "10")]) == []
    assert gate(report, [parse_limit("changed", "9")]) == ["changed: 10, more than the 9 allowed"]
    for text in ("-1", "x", "101%"):
        with pytest.raises(InvalidValue):
            parse_limit("changed", text)


def test_times_are_lengths_before_now_or_iso_in_china_time() -> None:
    now = datetime.now(UTC)
    assert parse_time("7d", now) == now - timedelta(days=7)
    local = (now - timedelta(hours=3)).astimezone(CHINA_TZ).replace(tzinfo=None, microsecond=0)
    assert parse_time(local.isoformat(), now) == local.replace(tzinfo=CHINA_TZ)
    assert parse_time(None, now) is None
    with pytest.raises(InvalidValue):
        parse_time("yesterday", now)


def test_every_kind_can_be_replayed() -> None:
    kinds = {event.kind for event in _history(6, 200)}
    assert kinds == set(EventKind)


def test_an_unreadable_history_or_a_broken_candidate_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = str(REPO / "rules")
    missing = ["backtest", "--candidate", rules, "--baseline", rules, "--history", str(tmp_path / "none")]
    assert main(missing) == 2
    assert "none: no such file or directory" in capsys.readouterr().err
    history = tmp_path / "history.jsonl"
    history.write_text("")
    broken = tmp_path / "broken"
    shutil.copytree(REPO / "rules", broken)
    (broken / "transfers.rules.yaml").write_text("rules: [")
    assert main(["backtest", "--candidate", str(broken), "--baseline", rules, "--history", str(history)]) == 2
    assert "transfers.rules.yaml:1" in capsys.readouterr().err
    assert main(["backtest", "--candidate", rules, "--history", str(history), "--max-changed", "lots"]) == 2
    assert "neither a count" in capsys.readouterr().err
    assert main(["backtest", "--candidate", rules, "--baseline", rules, "--history", str(history)]) == 2
    assert "no logged decision to compare (0 read)" in capsys.readouterr().err


def test_a_distinct_count_over_all_time_is_replayed(tmp_path: Path) -> None:
    (tmp_path / "counters.yaml").write_text(
        "counters:\n"
        "  - name: payers_ever\n"
        "    on: transfer\n"
        "    key: transfer.payee_account\n"
        "    aggregate: distinct(transfer.payer_account)\n"
        "    windows: [all]\n"
    )
    (tmp_path / "t.rules.yaml").write_text(
        "revision: t\nrules:\n  - id: T_any\n    on: [transfer]\n    when: payers_ever_all >= 2\n"
        "    outcome: warn\n    reason: {zh: 测试, en: test}\n"
    )
    directory = load_directory(tmp_path)
    start = int(datetime.now(UTC).timestamp()) - 86400 * 300
    ids = [{"transfer.payee_account": "P", "transfer.payer_account": payer} for payer in ("A", "B", "A", "C")]
    events = [Event(start + i * 86400 * 90, EventKind.TRANSFER, {"transfer.amount_fen": 100}, ids[i]) for i in range(4)]
    replayed = CounterReplay(directory.counter_spec, directory.filters, Events.of(events)).run()
    assert [replayed.values_of(i)["payers_ever_all"] for i in range(4)] == [1, 2, 2, 3]
