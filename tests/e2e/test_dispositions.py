"""Dispositions over the real server process: a warned decision's disposition reported (and its
retry recorded once), unknown and malformed reports refused naming what is wrong, a caller
without the permission refused, every report in the audit trail, and the labels out again
through `riskgate dispositions export` and into `riskgate rules report`'s precision."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.rpc import error_details_pb2, status_pb2

from service._gen.riskgate.v1 import dispositions_pb2 as pb
from service._gen.riskgate.v1 import dispositions_pb2_grpc as pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as screening_pb
from service._gen.riskgate.v1 import screening_pb2_grpc as screening_grpc
from service.server.access.tokens import new_token
from tests import samples
from tests.conftest import REPO
from tests.e2e.conftest import RISKGATE, RunningServer, external_server

pytestmark = pytest.mark.e2e

Metadata = tuple[tuple[str, str], ...]
POLICY = """
roles:
  outlet: [screen, dispositions.write]
  monitoring: [decisions.read]
  screen_only: [screen]
principals:
  - {name: branch-counters, token: t-counter, roles: [outlet]}
  - {name: anti-fraud-centre, token: t-centre, roles: [monitoring]}
  - {name: kiosk, token: t-kiosk, roles: [screen_only]}
"""
T18 = "T18_new_payee_account"


@dataclass
class Deployment:
    server: RunningServer
    redis_url: str
    tmp: Path
    tokens: dict[str, str]
    started: datetime

    def metadata(self, name: str) -> Metadata:
        return (("authorization", f"Bearer {self.tokens[name]}"),)

    def tool_env(self) -> dict[str, str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
        environment.update(
            RISKGATE_REDIS_URL=self.redis_url,
            RISKGATE_HASH_SECRET_FILE=str(self.tmp / "hash-secret"),
            RISKGATE_RULES_DIR=str(REPO / "rules"),
        )
        return environment

    def riskgate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RISKGATE), *args], env=self.tool_env(), capture_output=True, text=True, timeout=60, check=False
        )


@pytest.fixture
def deployment(redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    started = datetime.now(UTC) - timedelta(seconds=1)
    lines, tokens = [], {}
    for name in ("t-counter", "t-centre", "t-kiosk"):
        tokens[name], line = new_token(name)
        lines.append(line)
    (tmp_path / "tokens").write_text("\n".join(lines) + "\n")
    (tmp_path / "policy.yaml").write_text(POLICY)
    server = external_server(
        tmp_path,
        redis_url,
        budget_ms=1000,
        RISKGATE_POLICY_FILE=str(tmp_path / "policy.yaml"),
        RISKGATE_TOKENS_FILE=str(tmp_path / "tokens"),
    )
    try:
        yield Deployment(server, redis_url, tmp_path, tokens, started)
    finally:
        assert server.terminate() == 0, server.log()[-3000:]


def _warned(channel: grpc.Channel, metadata: Metadata) -> screening_pb.Decision:
    """A transfer of ¥20,000 to an account opened two days ago: T18 warns."""
    request = samples.transfer(f"disp-{uuid.uuid4()}", amount_fen=2_000_000)
    request.transfer.payee_account_opened_at.CopyFrom(samples.timestamp(datetime.now(UTC) - timedelta(days=2)))
    decision: screening_pb.Decision = screening_grpc.ScreeningStub(channel).Screen(
        request, timeout=10, metadata=metadata
    )
    # T18 warns; at night (China time) the night-transfer rule may warn beside it.
    assert decision.outcome == screening_pb.OUTCOME_WARN and T18 in [r.rule_id for r in decision.reasons]
    return decision


def _violations(error: grpc.RpcError) -> list[str]:
    trailing: dict[str, Any] = {m.key: m.value for m in error.trailing_metadata() or ()}
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


def _refused(call: Any, request: Any, metadata: Metadata) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call(request, timeout=10, metadata=metadata)
    return refused.value


def _audit(deployment: Deployment) -> list[dict[str, str]]:
    client = redis.Redis.from_url(deployment.redis_url, decode_responses=True)
    try:
        entries: Any = client.xrange("rg:audit")
        return [fields for _, fields in entries]
    finally:
        client.close()


def test_a_warning_is_disposed_once_audited_exported_and_counted(deployment: Deployment) -> None:
    counter = deployment.metadata("t-counter")
    with deployment.server.channel() as channel:
        dissuaded, verified = _warned(channel, counter), _warned(channel, counter)
        stub = pb_grpc.DispositionsStub(channel)
        report = pb.ReportDispositionRequest(
            decision_id=dissuaded.decision_id, disposition=pb.DISPOSITION_CUSTOMER_DISSUADED, note="called back"
        )
        first = stub.Report(report, timeout=10, metadata=counter)
        assert (first.decision_id, first.disposition, first.note) == (
            dissuaded.decision_id,
            pb.DISPOSITION_CUSTOMER_DISSUADED,
            "called back",
        )
        assert (first.reported_by, first.request_id, first.already_recorded) == (
            "branch-counters",
            dissuaded.request_id,
            False,
        )
        retried = stub.Report(report, timeout=10, metadata=counter)
        assert retried.already_recorded and retried.reported_at == first.reported_at

        unknown = pb.ReportDispositionRequest(decision_id=str(uuid.uuid4()), disposition=pb.DISPOSITION_FALSE_ALARM)
        assert _refused(stub.Report, unknown, counter).code() == grpc.StatusCode.NOT_FOUND
        id_number = samples.resident_id()
        bad = pb.ReportDispositionRequest(decision_id=id_number, note=f"customer {id_number}")
        invalid = _refused(stub.Report, bad, counter)
        assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _violations(invalid) == ["decision_id", "disposition", "note"]
        assert id_number not in (invalid.details() or "")
        kiosk = _refused(stub.Report, report, deployment.metadata("t-kiosk"))
        assert kiosk.code() == grpc.StatusCode.PERMISSION_DENIED and "dispositions.write" in (kiosk.details() or "")
        get = pb.GetDispositionsRequest(decision_id=dissuaded.decision_id)
        assert _refused(stub.Get, get, counter).code() == grpc.StatusCode.PERMISSION_DENIED

        # The second one through the command line, with the counter's token.
        token_file = deployment.tmp / "counter-token"
        token_file.write_text(deployment.tokens["t-counter"] + "\n")
        done = deployment.riskgate(
            "dispositions", "report", verified.decision_id, "verified_legitimate", "--note", "purpose checked",
            "--target", deployment.server.address, "--token-file", str(token_file),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["disposition"] == "DISPOSITION_VERIFIED_LEGITIMATE"

        history = stub.Get(get, timeout=10, metadata=deployment.metadata("t-centre"))
        assert [r.disposition for r in history.records] == [pb.DISPOSITION_CUSTOMER_DISSUADED]
        assert (history.current, history.request_id) == (pb.DISPOSITION_CUSTOMER_DISSUADED, dissuaded.request_id)

    reports = [e for e in _audit(deployment) if e["action"] == "dispositions.report"]
    assert [e["result"] for e in reports] == ["ok", "ok: already recorded", "NOT_FOUND", reports[3]["result"], "ok"]
    assert reports[3]["result"].startswith("INVALID_ARGUMENT: decision_id: ")
    assert all(e["principal"] == "branch-counters" and e["identity"] == "token:t-counter" for e in reports)
    assert reports[0]["note"] == "called back" and dissuaded.decision_id in reports[0]["detail"]
    assert all(id_number not in value for e in reports for value in e.values())
    denied = [e for e in _audit(deployment) if e["action"] == "denied"]
    assert [e["principal"] for e in denied] == ["kiosk"]
    assert "/riskgate.v1.Dispositions/Report" in denied[0]["detail"]

    since = deployment.started.isoformat()
    exported = deployment.riskgate("dispositions", "export", "--since", since)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert lines == [
        {
            "decision_id": dissuaded.decision_id,
            "request_id": dissuaded.request_id,
            "disposition": "customer_dissuaded",
            "note": "called back",
            "reported_by": "branch-counters",
            "reported_at": lines[0]["reported_at"],
        },
        {
            "decision_id": verified.decision_id,
            "request_id": verified.request_id,
            "disposition": "verified_legitimate",
            "note": "purpose checked",
            "reported_by": "branch-counters",
            "reported_at": lines[1]["reported_at"],
        },
    ]
    assert datetime.fromisoformat(lines[0]["reported_at"]) >= deployment.started

    report_json = deployment.riskgate("rules", "report", "--since", since, "--json")
    assert report_json.returncode == 0, report_json.stderr
    rules = {rule["rule_id"]: rule for rule in json.loads(report_json.stdout)["rules"]}
    t18 = rules[T18]
    assert (t18["fires"], t18["positives"], t18["negatives"], t18["disposed"], t18["precision"]) == (2, 1, 1, 2, 0.5)
    assert t18["dispositions"] == {"customer_dissuaded": 1, "verified_legitimate": 1}
    table = deployment.riskgate("rules", "report", "--since", since)
    assert table.returncode == 0, table.stderr
    (line,) = [line for line in table.stdout.splitlines() if line.startswith(T18)]
    assert "50.0% (n=2)" in line and "customer_dissuaded 1, verified_legitimate 1" in line
    assert "2 of them with a disposition" in table.stdout
