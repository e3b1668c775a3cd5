"""End to end: the real `riskgate serve` process, the generated client, loopback only."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from queue import Queue

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from tests import samples
from tests.e2e.conftest import RISKGATE, RunningServer, start_server

pytestmark = pytest.mark.e2e


def test_health_reports_each_component(server: RunningServer) -> None:
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "riskgate.v1.Screening", "redis", "rules"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_services(server: RunningServer) -> None:
    with server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"riskgate.v1.Screening", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("kind", sorted(samples.ALL_KINDS))
def test_valid_request_of_each_kind_gets_a_decision(server: RunningServer, kind: str) -> None:
    request = samples.ALL_KINDS[kind](f"e2e-{kind}-{uuid.uuid4()}")
    with server.channel() as channel:
        decision = pb_grpc.ScreeningStub(channel).Screen(request, timeout=5)
    assert decision.request_id == request.request_id
    assert decision.outcome in (pb.OUTCOME_ALLOW, pb.OUTCOME_WARN, pb.OUTCOME_BLOCK)
    assert uuid.UUID(decision.decision_id)
    assert decision.ruleset_revision
    assert decision.decided_at.seconds > 0


def _corrupt_check_digit(request: pb.ScreenRequest) -> None:
    id_number = request.card_opening.applicant.id_number
    wrong = "0" if id_number[-1] != "0" else "1"
    request.card_opening.applicant.id_number = id_number[:-1] + wrong


BAD_REQUESTS: dict[str, tuple[Callable[[pb.ScreenRequest], object], str]] = {
    "id check digit": (_corrupt_check_digit, "card_opening.applicant.id_number: check digit mismatch"),
    "id length": (
        lambda r: setattr(r.card_opening.applicant, "id_number", "11010519900307"),
        "card_opening.applicant.id_number:",
    ),
    "phone": (lambda r: setattr(r.card_opening.applicant, "phone", "2381234567"), "card_opening.applicant.phone:"),
    "region code": (lambda r: setattr(r.outlet, "region_code", "31011"), "outlet.region_code:"),
    "request id": (lambda r: setattr(r, "request_id", ""), "request_id:"),
    "account class": (lambda r: setattr(r.card_opening, "account_class", 0), "card_opening.account_class:"),
    "no event": (lambda r: r.ClearField("card_opening"), "event:"),
    "long name": (lambda r: setattr(r.card_opening.applicant, "name", "x" * 500), "card_opening.applicant.name:"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_invalid_argument_naming_the_field(server: RunningServer, case: str) -> None:
    mutate, expected = BAD_REQUESTS[case]
    request = samples.card_opening(f"bad-{uuid.uuid4()}")
    mutate(request)
    with server.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.ScreeningStub(channel).Screen(request, timeout=5)
    error: grpc.Call = raised.value  # type: ignore[assignment]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: setattr(r.transfer, "amount_fen", 0), "transfer.amount_fen:"),
        (lambda r: setattr(r.transfer, "payee_account", "12AB"), "transfer.payee_account:"),
    ],
)
def test_bad_transfer_is_invalid_argument(
    server: RunningServer, mutate: Callable[[pb.ScreenRequest], object], expected: str
) -> None:
    request = samples.transfer(f"bad-{uuid.uuid4()}")
    mutate(request)
    with server.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.ScreeningStub(channel).Screen(request, timeout=5)
    error: grpc.Call = raised.value  # type: ignore[assignment]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")


def test_error_messages_never_echo_identifiers(server: RunningServer) -> None:
    request = samples.card_opening(f"bad-{uuid.uuid4()}")
    _corrupt_check_digit(request)
    with server.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.ScreeningStub(channel).Screen(request, timeout=5)
    error: grpc.Call = raised.value  # type: ignore[assignment]
    assert request.card_opening.applicant.id_number not in (error.details() or "")
    assert request.card_opening.applicant.id_number not in server.log()


def test_stream_answers_in_order_and_survives_a_bad_request(server: RunningServer) -> None:
    good = [samples.transfer(f"stream-{i}-{uuid.uuid4()}") for i in range(3)]
    bad = samples.transfer(f"stream-bad-{uuid.uuid4()}")
    bad.transfer.amount_fen = -5
    requests = [good[0], bad, good[1], good[2]]
    with server.channel() as channel:
        answers = list(pb_grpc.ScreeningStub(channel).ScreenStream(iter(requests), timeout=10))
    assert [a.request_id for a in answers] == [r.request_id for r in requests]
    assert answers[1].error.code == "INVALID_ARGUMENT"
    assert "transfer.amount_fen" in answers[1].error.message
    assert answers[1].outcome == pb.OUTCOME_UNSPECIFIED
    assert all(a.outcome == pb.OUTCOME_ALLOW and not a.HasField("error") for a in (answers[0], *answers[2:]))


def test_metrics_count_requests_without_personal_data(server: RunningServer) -> None:
    request = samples.card_opening(f"metrics-{uuid.uuid4()}")
    with server.channel() as channel:
        pb_grpc.ScreeningStub(channel).Screen(request, timeout=5)
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert re.search(r'riskgate_requests_total\{event_kind="card_opening",outcome="allow"\} [1-9]', text)
    assert "riskgate_request_duration_seconds_bucket" in text
    assert request.card_opening.applicant.id_number not in text
    assert request.card_opening.applicant.phone not in text


def test_screen_command_sends_json_from_stdin(server: RunningServer) -> None:
    request = samples.sim_sale(f"cli-{uuid.uuid4()}")
    # A buyer of their own: this module's other tests buy SIMs as the sample person.
    request.sim_sale.buyer.id_number = samples.resident_id(birth=date(2001, 2, 3), sequence=456)
    document = json_format.MessageToJson(request)
    result = subprocess.run(
        [str(RISKGATE), "screen", "--target", server.address],
        input=document,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["request_id"] == request.request_id
    assert decision["outcome"] == "OUTCOME_ALLOW"


def test_version_command() -> None:
    result = subprocess.run([str(RISKGATE), "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert re.fullmatch(r"riskgate \d+\.\d+\.\d+\n", result.stdout)


def test_unknown_setting_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(RISKGATE), "serve"],
        env={"RISKGATE_LISTN": "127.0.0.1:1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "unknown setting RISKGATE_LISTN, did you mean RISKGATE_LISTEN?" in result.stderr


def test_sigterm_lets_an_open_stream_finish_then_exits_cleanly(tmp_path: Path) -> None:
    running = start_server(tmp_path, RISKGATE_DRAIN_SECONDS="2")
    outbox: Queue[pb.ScreenRequest | None] = Queue()

    def requests() -> Iterator[pb.ScreenRequest]:
        while (item := outbox.get()) is not None:
            yield item

    answers: list[pb.Decision] = []
    with running.channel() as channel:
        stream = pb_grpc.ScreeningStub(channel).ScreenStream(requests(), timeout=30)
        reader = threading.Thread(target=lambda: answers.extend(stream))
        reader.start()
        outbox.put(samples.transfer(f"sig-1-{uuid.uuid4()}"))
        while not answers:
            reader.join(0.05)
        running.process.send_signal(signal.SIGTERM)
        # Health flips to NOT_SERVING; through the drain the open stream is still served.
        outbox.put(samples.transfer(f"sig-2-{uuid.uuid4()}"))
        outbox.put(None)
        reader.join(20)
    assert [a.outcome for a in answers] == [pb.OUTCOME_ALLOW, pb.OUTCOME_ALLOW]
    assert running.process.wait(20) == 0
    log = running.log()
    assert '"msg": "stopping"' in log
    assert '"msg": "embedded redis-server stopped"' in log
    # The embedded redis-server shut down with it (redis removes its socket on a clean shutdown).
    assert not (running.data_dir / "redis" / "redis.sock").exists()
