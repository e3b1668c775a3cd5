"""The rule author's loop end to end: screen a synthetic stream through the real server, archive its
decision log to Parquet, and backtest rules on it with the command line.

Agreement first: replaying the served history with the rules that served it reproduces every
decision (outcome and fired rules) and every counter value. Then a changed threshold: the diff,
the gate's exit code, the labels' precision and the HTML report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import RISKGATE, RunningServer, external_server

pytestmark = pytest.mark.e2e

EVENTS = 3000


def _environment(redis_url: str, tmp: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    environment.update(
        RISKGATE_REDIS_URL=redis_url,
        RISKGATE_HASH_SECRET_FILE=str(tmp / "hash-secret"),
        RISKGATE_RULES_DIR=str(REPO / "rules"),
    )
    return environment


def _riskgate(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RISKGATE), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _screen_synthetic_stream(server: RunningServer, env: dict[str, str], labels: Path) -> None:
    command = [str(RISKGATE), "synth", "--seed", "7", "--events", str(EVENTS), "--fraud-scale", "4"]
    with subprocess.Popen([*command, "--labels", str(labels)], stdout=subprocess.PIPE, env=env) as synth:
        screened = subprocess.run(
            [str(RISKGATE), "screen", "--target", server.address],
            stdin=synth.stdout,
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
            check=False,
        )
        assert synth.wait(timeout=60) == 0
    assert screened.returncode == 0, screened.stderr


def test_backtest_reproduces_what_was_served_and_reports_a_change(redis_url: str, tmp_path: Path) -> None:
    env = _environment(redis_url, tmp_path)
    labels = tmp_path / "labels.jsonl"
    server = external_server(tmp_path, redis_url, budget_ms=1000)
    try:
        _screen_synthetic_stream(server, env, labels)
    finally:
        assert server.terminate() == 0, server.log()

    archive = tmp_path / "archive"
    archived = _riskgate("decisions", "archive", "--out", str(archive), "--batch", "1000", env=env)
    assert archived.returncode == 0, archived.stderr
    assert f"{EVENTS} decisions archived" in archived.stderr
    again = _riskgate("decisions", "archive", "--out", str(archive), env=env)
    assert "0 decisions archived" in again.stderr  # exactly once
    rows = sum(pq.read_table(f).num_rows for f in archive.rglob("*.parquet"))
    assert rows == EVENTS

    # Agreement: the served rules on their own history.
    report_path = tmp_path / "same.json"
    same = _riskgate(
        "backtest", "--candidate", str(REPO / "rules"), "--history", str(archive), "--json", str(report_path), env=env
    )
    assert same.returncode == 0, same.stderr
    report = json.loads(report_path.read_text())
    agreement = report["agreement"]
    assert agreement["compared"] == EVENTS
    assert (agreement["mismatches"], agreement["counter_mismatches"]) == (0, 0), agreement["examples"]
    assert report["changes"]["changed"] == 0
    fired = sum(row["baseline"]["enforced"] for row in report["rules"])
    assert fired > 20  # the stream made rules fire: the agreement is not vacuous

    # A threshold lowered from 20 payers to 3: new blocks, refused by the gate.
    changed = tmp_path / "changed-rules"
    shutil.copytree(REPO / "rules", changed)
    rules_file = changed / "transfers.rules.yaml"
    text = rules_file.read_text()
    assert "when: payers_in_24h >= 20 and" in text
    rules_file.write_text(text.replace("when: payers_in_24h >= 20 and", "when: payers_in_24h >= 3 and"))
    html = tmp_path / "report.html"
    diff_path = tmp_path / "diff.json"
    gated = _riskgate(
        "backtest",
        "--candidate",
        str(changed),
        "--history",
        str(archive),
        "--labels",
        str(labels),
        "--max-new-blocks",
        "0.1%",
        "--json",
        str(diff_path),
        "--html",
        str(html),
        env=env,
    )
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert "gate: FAILED: new blocks" in gated.stdout
    diff = json.loads(diff_path.read_text())
    changes = diff["changes"]
    assert changes["new_blocks"] > 0
    assert changes["matrix"]["allow→block"] + changes["matrix"]["warn→block"] == changes["new_blocks"]
    examples = (
        changes["examples"]["allow→block"] if changes["matrix"]["allow→block"] else changes["examples"]["warn→block"]
    )
    assert "T19_many_payers_into_payee_block" in examples[0]["candidate"]["rules"]
    assert 3 <= examples[0]["values"]["payers_in_24h"] < 20
    (row,) = [r for r in diff["rules"] if r["rule_id"] == "T19_many_payers_into_payee_block"]
    assert row["candidate"]["enforced"] > row["baseline"]["enforced"]
    assert diff["labels"]["complete"] and diff["labels"]["positives"] > 0
    assert any(r["candidate"].get("precision") is not None for r in diff["rules"])
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert diff["engine"]["candidate"] == {"engine": "vector", "note": ""}

    # The vectorised evaluator against durable_rules, event by event through the same report.
    durable_path = tmp_path / "durable.json"
    command = ["backtest", "--candidate", str(changed), "--history", str(archive), "--labels", str(labels)]
    durable = _riskgate(*command, "--engine", "durable", "--json", str(durable_path), env=env)
    assert durable.returncode == 0, durable.stderr
    by_durable = json.loads(durable_path.read_text())
    for section in ("agreement", "rules", "changes", "labels", "baseline", "candidate"):
        assert by_durable[section] == diff[section], section

    # The same history as a Parquet export gives the same comparison.
    exported = tmp_path / "export.parquet"
    done = _riskgate("decisions", "export", "--format", "parquet", "--out", str(exported), env=env)
    assert done.returncode == 0, done.stderr
    assert pq.read_table(exported).num_rows == EVENTS
    from_export = _riskgate("backtest", "--candidate", str(changed), "--history", str(exported), env=env)
    assert f"new blocks {changes['new_blocks']:,}" in from_export.stdout
