"""A BLOCKed transfer was never paid: it must not make its payee "paid before" (T17 looks for the
first payment of an elderly payer to a payee; fraud coaching is exactly a retry)."""

from __future__ import annotations

import uuid

import pytest

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from tests import samples
from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e

PAYEE = "6217000055554444333"


def _transfer(payer_id: str) -> pb.ScreenRequest:
    request = samples.transfer(f"paid-{uuid.uuid4()}", amount_fen=6_000_000)  # ¥60,000
    request.transfer.payer.id_number = payer_id
    request.transfer.payer_account = "6222020200177788899"
    request.transfer.payee_account = PAYEE
    return request


def test_a_blocked_transfer_does_not_make_the_payee_known(server: RunningServer) -> None:
    elderly = samples.resident_id(birth=samples.born_aged(75), sequence=731)
    with server.channel() as channel:
        lists = admin_pb_grpc.WatchlistsStub(channel)
        screening = pb_grpc.ScreeningStub(channel)
        lists.AddEntry(admin_pb.AddEntryRequest(list="fraud_accounts", value=PAYEE, reason="notice 9"), timeout=5)
        blocked = screening.Screen(_transfer(elderly), timeout=5)
        assert blocked.outcome == pb.OUTCOME_BLOCK
        lists.RemoveEntry(admin_pb.RemoveEntryRequest(list="fraud_accounts", value=PAYEE), timeout=5)
        retried = screening.Screen(_transfer(elderly), timeout=5)
        assert "T17_elderly_large_new_payee" in [r.rule_id for r in retried.reasons], [
            r.rule_id for r in retried.reasons
        ]
        # Once paid (warned, not blocked), the payee is known.
        again = screening.Screen(_transfer(elderly), timeout=5)
        assert "T17_elderly_large_new_payee" not in [r.rule_id for r in again.reasons]
