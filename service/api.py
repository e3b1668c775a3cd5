"""Protobuf ↔ domain for answers, and riskgate errors ↔ gRPC status codes, in one place.

Requests are turned into domain values by `service.validate`, which is where
every field is checked.
"""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.domain import Decision, Outcome, Reason
from service.errors import InFlight, RiskgateError, StoreUnavailable, ValidationError

_OUTCOMES = {
    Outcome.UNSPECIFIED: pb.OUTCOME_UNSPECIFIED,
    Outcome.ALLOW: pb.OUTCOME_ALLOW,
    Outcome.WARN: pb.OUTCOME_WARN,
    Outcome.BLOCK: pb.OUTCOME_BLOCK,
}


def status_of(error: RiskgateError) -> grpc.StatusCode:
    """The gRPC status code for an error that reaches the API edge."""
    if isinstance(error, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, InFlight):
        return grpc.StatusCode.ABORTED
    if isinstance(error, StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def reason_to_proto(reason: Reason) -> pb.Reason:
    return pb.Reason(
        rule_id=reason.rule_id,
        outcome=_OUTCOMES[reason.outcome],
        message_zh=reason.message_zh,
        message_en=reason.message_en,
        evidence=[pb.Evidence(name=name, value=value) for name, value in reason.evidence],
        shadow=reason.shadow,
    )


def decision_to_proto(decision: Decision) -> pb.Decision:
    decided_at = Timestamp()
    decided_at.FromDatetime(decision.decided_at)
    evaluation_time = Duration()
    evaluation_time.FromTimedelta(decision.evaluation_time)
    return pb.Decision(
        request_id=decision.request_id,
        decision_id=decision.decision_id,
        outcome=_OUTCOMES[decision.outcome],
        reasons=[reason_to_proto(r) for r in decision.reasons],
        ruleset_revision=decision.ruleset_revision,
        degraded=decision.degraded,
        decided_at=decided_at,
        evaluation_time=evaluation_time,
        replayed=decision.replayed,
    )


def error_to_proto(request_id: str, error: RiskgateError) -> pb.Decision:
    """The per-request error answer on ScreenStream."""
    return pb.Decision(
        request_id=request_id,
        outcome=pb.OUTCOME_UNSPECIFIED,
        error=pb.RequestError(code=status_of(error).name, message=str(error)),
    )
