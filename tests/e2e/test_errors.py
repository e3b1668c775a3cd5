"""Errors a client can parse: INVALID_ARGUMENT carries a google.rpc.BadRequest with one field
violation per problem (besides the text), stream answers carry the same violations, and admin
errors name the field that is wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from tests import samples
from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations in a call's status details, as grpcio-status reads them."""
    trailing: dict[str, Any] = {m.key: m.value for m in error.trailing_metadata() or ()}
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == error.details()
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    return [(v.field, v.description) for v in bad_request.field_violations]


def _bad_transfer() -> pb.ScreenRequest:
    request = samples.transfer("err-1")
    request.transfer.payer.id_number = "110105199003071230"  # wrong check digit
    request.transfer.amount_fen = -5
    return request


def test_screen_carries_one_field_violation_per_problem(server: RunningServer) -> None:
    with server.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.ScreeningStub(channel).Screen(_bad_transfer(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(refused.value)
    assert ("transfer.payer.id_number", "check digit mismatch") in violations
    assert ("transfer.amount_fen", "must be positive") in violations
    assert len(violations) == 2
    assert refused.value.details() == "; ".join(f"{field}: {problem}" for field, problem in violations)
    assert "110105199003071230" not in str(violations)


def test_unparseable_bytes_carry_a_violation_of_the_request(server: RunningServer) -> None:
    with server.channel() as channel:
        call: Any = channel.unary_unary("/riskgate.v1.Screening/Screen")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"\xff\xff\xff", timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = _violations(refused.value)
    assert violation[0] == "request" and "protobuf parse error" in violation[1]


def test_a_stream_answer_carries_the_same_violations(server: RunningServer) -> None:
    with server.channel() as channel:
        (answer,) = list(pb_grpc.ScreeningStub(channel).ScreenStream(iter([_bad_transfer()]), timeout=10))
    assert answer.error.code == "INVALID_ARGUMENT"
    fields = {(v.field, v.description) for v in answer.error.field_violations}
    assert fields == {("transfer.payer.id_number", "check digit mismatch"), ("transfer.amount_fen", "must be positive")}


def _admin_error(call: Any, request: object) -> tuple[str, list[tuple[str, str]]]:
    with pytest.raises(grpc.RpcError) as refused:
        call(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return refused.value.details() or "", _violations(refused.value)


def test_admin_errors_name_the_field_that_is_wrong(server: RunningServer) -> None:
    past = samples.timestamp(datetime.now(UTC) - timedelta(hours=1))
    with server.channel() as channel:
        stub = admin_pb_grpc.WatchlistsStub(channel)
        cases: list[tuple[Any, object, str]] = [
            (stub.AddEntry, admin_pb.AddEntryRequest(list="fraud_accounts", value="12", reason="r"), "value"),
            (stub.AddEntry, admin_pb.AddEntryRequest(list="fraud_accounts", value="6217000099998888777"), "reason"),
            (
                stub.AddEntry,
                admin_pb.AddEntryRequest(
                    list="fraud_accounts", value="6217000099998888777", reason="r", expires_at=past
                ),
                "expires_at",
            ),
            (stub.RemoveEntry, admin_pb.RemoveEntryRequest(list="fraud_accounts", value="x1"), "value"),
            (stub.CheckEntry, admin_pb.CheckEntryRequest(list="punished_persons", value="110105199003071230"), "value"),
        ]
        for call, request, field in cases:
            message, violations = _admin_error(call, request)
            assert [name for name, _ in violations] == [field], (message, request)
            assert message.startswith(f"{field}: "), message
