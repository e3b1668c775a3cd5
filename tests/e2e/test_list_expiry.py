"""A watchlist entry stops matching when it expires, for screening as for CheckEntry, whatever
other lists hold the same value (the value's key lives until its last-expiring entry)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from tests import samples
from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e


def _transfer(payer_id: str, occurred_at: datetime) -> pb.ScreenRequest:
    request = samples.transfer(f"exp-{uuid.uuid4()}", amount_fen=2_000_00)
    request.transfer.payer.id_number = payer_id
    request.occurred_at.CopyFrom(samples.timestamp(occurred_at))
    return request


@pytest.mark.parametrize("also_punished", [False, True])
def test_an_expired_entry_does_not_match_whatever_other_lists_hold(server: RunningServer, also_punished: bool) -> None:
    person = samples.resident_id(sequence=600 + int(also_punished))
    with server.channel() as channel:
        lists = admin_pb_grpc.WatchlistsStub(channel)
        screening = pb_grpc.ScreeningStub(channel)
        expires = datetime.now(UTC) + timedelta(seconds=2)
        lists.AddEntry(
            admin_pb.AddEntryRequest(
                list="police_warned", value=person, reason="warned", expires_at=samples.timestamp(expires)
            ),
            timeout=5,
        )
        if also_punished:
            lists.AddEntry(admin_pb.AddEntryRequest(list="punished_persons", value=person, reason="p"), timeout=5)
        warned = screening.Screen(_transfer(person, datetime.now(UTC) - timedelta(seconds=1)), timeout=5)
        assert "T16_protected_payer" in [r.rule_id for r in warned.reasons]
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1.0)
        check = lists.CheckEntry(admin_pb.CheckEntryRequest(list="police_warned", value=person), timeout=5)
        assert not check.listed
        # An event from before the expiry, decided after it: decided with what the lists say now.
        late = screening.Screen(_transfer(person, datetime.now(UTC) - timedelta(seconds=60)), timeout=5)
        assert "T16_protected_payer" not in [r.rule_id for r in late.reasons]
