"""Dispositions when Redis fails, over the real server: a report ends with UNAVAILABLE saying so,
within the store's budget (or the caller's deadline), never a hang; once Redis is back, its retry
is recorded once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from service._gen.riskgate.v1 import dispositions_pb2 as pb
from service._gen.riskgate.v1 import dispositions_pb2_grpc as pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as screening_pb
from service._gen.riskgate.v1 import screening_pb2_grpc as screening_grpc
from service.riskdata.dispositions import BUDGET_SECONDS
from tests import samples
from tests.faults.conftest import RestartableRedis, external_server

SLACK = 0.5  # a loaded 2-core machine's scheduling, on top of the budget


def _report(stub: pb_grpc.DispositionsStub, decision_id: str, timeout: float = 10) -> pb.DispositionRecord:
    request = pb.ReportDispositionRequest(decision_id=decision_id, disposition=pb.DISPOSITION_STOP_PAYMENT_REQUESTED)
    record: pb.DispositionRecord = stub.Report(request, timeout=timeout)
    return record


def _refused_within(stub: pb_grpc.DispositionsStub, decision_id: str, seconds: float, timeout: float = 10) -> str:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        _report(stub, decision_id, timeout)
    assert time.monotonic() - started < seconds, refused.value
    return f"{refused.value.code().name}: {refused.value.details()}"


@pytest.mark.timeout(120)
def test_a_report_with_redis_down_is_unavailable_in_time_and_its_retry_lands_once(
    tmp_path: Path, restartable_redis: RestartableRedis
) -> None:
    server = external_server(tmp_path, restartable_redis.url)
    try:
        with server.channel() as channel:
            request = samples.transfer(f"fault-{uuid.uuid4()}", amount_fen=2_000_000)
            request.transfer.payee_account_opened_at.CopyFrom(samples.timestamp(datetime.now(UTC) - timedelta(days=1)))
            decision = screening_grpc.ScreeningStub(channel).Screen(request, timeout=10)
            assert decision.outcome == screening_pb.OUTCOME_WARN and not decision.degraded
            stub = pb_grpc.DispositionsStub(channel)
            logged_by = time.monotonic() + 10
            while True:  # the decision's log entry (and index) is written after the answer
                try:
                    stub.Get(pb.GetDispositionsRequest(decision_id=decision.decision_id), timeout=10)
                    break
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < logged_by, error
                    time.sleep(0.05)

            pid = restartable_redis.server.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # a silent peer: the connection stays, no answer comes
            try:
                answer = _refused_within(stub, decision.decision_id, BUDGET_SECONDS + SLACK)
                assert answer.startswith("UNAVAILABLE: dispositions: redis did not answer within"), answer
                # A caller's shorter deadline bounds it too.
                answer = _refused_within(stub, decision.decision_id, 0.3 + SLACK, timeout=0.3)
                assert answer.split(":")[0] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), answer
            finally:
                os.kill(pid, signal.SIGCONT)

            restartable_redis.kill()  # gone: connections refused
            answer = _refused_within(stub, decision.decision_id, BUDGET_SECONDS + SLACK)
            assert answer.startswith("UNAVAILABLE: dispositions: redis"), answer

            restartable_redis.start()
            deadline = time.monotonic() + 10
            while True:  # the server's next connection finds Redis back
                try:
                    record = _report(stub, decision.decision_id)
                    break
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, error
                    time.sleep(0.1)
            # The stopped Redis took the first report's script when it resumed: the retries found it.
            assert record.disposition == pb.DISPOSITION_STOP_PAYMENT_REQUESTED
            history = stub.Get(pb.GetDispositionsRequest(decision_id=decision.decision_id), timeout=10)
            assert [r.disposition for r in history.records] == [pb.DISPOSITION_STOP_PAYMENT_REQUESTED]
        client = restartable_redis.client()
        try:
            assert client.xlen("{rg:log:decisions}:dispositions") == 1
        finally:
            client.close()
    finally:
        assert server.terminate() == 0, server.log()[-3000:]
