"""`riskgate rules report` against a real server's decision log: the rules that fired on what was
screened, counted as the command line reports them."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from tests import samples
from tests.conftest import REPO
from tests.e2e.conftest import RISKGATE, external_server

pytestmark = pytest.mark.e2e

LISTED = "6217000099998888777"


def test_the_report_counts_what_the_rules_did(redis_url: str, tmp_path: Path) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    server = external_server(tmp_path, redis_url, budget_ms=1000)
    try:
        with server.channel() as channel:
            admin_pb_grpc.WatchlistsStub(channel).AddEntry(
                admin_pb.AddEntryRequest(list="fraud_accounts", value=LISTED, reason="notice 7"), timeout=5
            )
            screening = pb_grpc.ScreeningStub(channel)
            listed = samples.transfer(f"rep-{uuid.uuid4()}")
            listed.transfer.payee_account = LISTED
            assert "T15_fraud_payee" in [r.rule_id for r in screening.Screen(listed, timeout=5).reasons]
            assert not screening.Screen(samples.transfer(f"rep-{uuid.uuid4()}"), timeout=5).reasons
    finally:
        assert server.terminate() == 0, server.log()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    environment.update(
        RISKGATE_REDIS_URL=redis_url,
        RISKGATE_HASH_SECRET_FILE=str(tmp_path / "hash-secret"),
        RISKGATE_RULES_DIR=str(REPO / "rules"),
    )
    command = [str(RISKGATE), "rules", "report", "--since", started.isoformat(), "--json"]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["decisions"], report["by_kind"], report["degraded"]) == (2, {"transfer": 2}, 0)
    rules = {rule["rule_id"]: rule for rule in report["rules"]}
    t15 = rules["T15_fraud_payee"]
    assert (t15["fires"], t15["shadow_fires"], t15["share_of_events"], t15["outcomes"]) == (1, 0, 0.5, {"block": 1})
    never = rules["K05_multi_bank_openings"]  # screens openings: none in the window
    assert (never["fires"], never["share_of_events"]) == (0, None)
    table = subprocess.run(command[:-1], env=environment, capture_output=True, text=True, timeout=60, check=False)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("2 decisions from ")
    assert any(line.startswith("T15_fraud_payee") and "block 1" in line for line in table.stdout.splitlines())
    bad = subprocess.run(
        [str(RISKGATE), "rules", "report", "--since", "last week"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "--since takes 30m, 24h, 7d or an ISO 8601 time" in bad.stderr
