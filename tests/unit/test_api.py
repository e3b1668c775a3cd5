"""Domain -> protobuf answers: the same messages protobuf's own datetime helpers would build."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.domain import Decision, EventKind, Outcome, Reason
from service.pipeline.api import decision_to_proto, reason_to_proto

REASONS = (
    Reason("K05_many_banks", Outcome.WARN, "本证件30天内已在4家银行开户", "4 banks", (("banks_30d", "4"), ("x", "y"))),
    Reason("S12_shadow", Outcome.BLOCK, "影子", "shadow", (), True, 7),
)


def decision(decided_at: datetime, evaluation_time: timedelta) -> Decision:
    return Decision(
        request_id="r-1",
        decision_id="d-1",
        outcome=Outcome.WARN,
        reasons=REASONS,
        ruleset_revision="2026-11@abc",
        degraded=True,
        decided_at=decided_at,
        evaluation_time=evaluation_time,
        replayed=True,
        kind=EventKind.TRANSFER,
    )


@pytest.mark.parametrize(
    "decided_at",
    [
        datetime(2026, 11, 23, 2, 0, 0, 412, tzinfo=UTC),
        datetime(2026, 11, 23, 10, 0, 59, 999_999, tzinfo=timezone(timedelta(hours=8))),
        datetime(2026, 11, 22, 20, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2026, 11, 23, 2, 0, 0, 5),  # naive: UTC, as Timestamp.FromDatetime takes it
        datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
@pytest.mark.parametrize(
    "evaluation_time",
    [
        timedelta(microseconds=412),
        timedelta(0),
        timedelta(days=2, seconds=3, microseconds=7),
        timedelta(microseconds=-412),
        timedelta(seconds=-3, microseconds=250),
    ],
)
def test_a_decision_is_the_message_protobufs_helpers_build(decided_at: datetime, evaluation_time: timedelta) -> None:
    expected_decided_at, expected_evaluation_time = Timestamp(), Duration()
    expected_decided_at.FromDatetime(decided_at)
    expected_evaluation_time.FromTimedelta(evaluation_time)
    expected = pb.Decision(
        request_id="r-1",
        decision_id="d-1",
        outcome=pb.OUTCOME_WARN,
        reasons=[
            pb.Reason(
                rule_id="K05_many_banks",
                outcome=pb.OUTCOME_WARN,
                message_zh="本证件30天内已在4家银行开户",
                message_en="4 banks",
                evidence=[pb.Evidence(name="banks_30d", value="4"), pb.Evidence(name="x", value="y")],
            ),
            pb.Reason(
                rule_id="S12_shadow", outcome=pb.OUTCOME_BLOCK, message_zh="影子", message_en="shadow", shadow=True
            ),
        ],
        ruleset_revision="2026-11@abc",
        degraded=True,
        decided_at=expected_decided_at,
        evaluation_time=expected_evaluation_time,
        replayed=True,
    )
    message = decision_to_proto(decision(decided_at, evaluation_time))
    assert message == expected
    assert message.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_a_reason_without_evidence_has_none() -> None:
    message = reason_to_proto(REASONS[1])
    assert list(message.evidence) == []
    assert message.shadow
