"""Transfers in other currencies against the real server: thresholds apply to the CNY amount at
rules/rates.yaml's rate, reasons show the currency the transfer was made in, a currency without a
rate is refused on its field, and the rates reload with the rule files."""

from __future__ import annotations

import re
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.pipeline.api import STATUS_DETAILS_KEY
from tests import samples
from tests.conftest import REPO
from tests.e2e.conftest import RunningServer, start_server

pytestmark = pytest.mark.e2e

T25 = "T25_payee_abroad"  # warns on a payee abroad from ¥10,000


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("rules") / "rules"
    shutil.copytree(REPO / "rules", target)
    return target


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, rules_dir: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("currency"), RISKGATE_RULES_DIR=str(rules_dir))
    yield running
    assert running.terminate() == 0, running.log()


def _abroad(amount_fen: int, currency: str) -> pb.ScreenRequest:
    request = samples.transfer(f"fx-{uuid.uuid4()}", amount_fen=amount_fen)
    request.transfer.currency = currency
    request.transfer.payee_country = "US"
    request.transfer.payee_bank = "US-BANK-1"
    request.transfer.payee_account = "990012345678"
    return request


def _reason(decision: pb.Decision, rule_id: str) -> pb.Reason | None:
    return next((r for r in decision.reasons if r.rule_id == rule_id), None)


def test_a_foreign_amount_meets_the_cny_threshold_and_is_shown_in_its_currency(served: RunningServer) -> None:
    with served.channel() as channel:
        screening = pb_grpc.ScreeningStub(channel)
        usd = screening.Screen(_abroad(500_000, "USD"), timeout=5)  # USD 5,000, about ¥35,593 at 7.1186
        reason = _reason(usd, T25)
        assert reason is not None, [r.rule_id for r in usd.reasons]
        assert "5,000.00美元（约合35,593.00元）" in reason.message_zh
        assert "USD 5,000.00 (about 35,593.00 yuan)" in reason.message_en
        evidence = {e.name: e.value for e in reason.evidence}
        assert evidence["transfer.amount_fen"] == "3559300"
        assert (evidence["transfer.currency"], evidence["transfer.original_amount_fen"]) == ("USD", "500000")
        # JPY 100,000 is about ¥4,672: under the threshold, although 10,000,000 hundredths of a yen
        # would pass it if read as fen.
        jpy = screening.Screen(_abroad(10_000_000, "JPY"), timeout=5)
        assert _reason(jpy, T25) is None
        cny = screening.Screen(_abroad(1_000_000, ""), timeout=5)  # unset means CNY
        reason = _reason(cny, T25)
        assert reason is not None and "10,000.00元" in reason.message_zh
        assert "transfer.currency" not in {e.name for e in reason.evidence}


def test_a_currency_without_a_rate_is_refused_naming_the_field(served: RunningServer) -> None:
    with served.channel() as channel:
        screening = pb_grpc.ScreeningStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            screening.Screen(_abroad(500_000, "XTS"), timeout=5)
        error = refused.value
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("transfer.currency: no exchange rate for XTS in ")
        trailing: dict[str, Any] = {m.key: m.value for m in error.trailing_metadata() or ()}
        status = status_pb2.Status.FromString(trailing[STATUS_DETAILS_KEY])
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert [v.field for v in bad.field_violations] == ["transfer.currency"]
        # On a stream: an error answer, and the stream goes on.
        good = _abroad(500_000, "USD")
        answers = list(screening.ScreenStream(iter([_abroad(500_000, "XTS"), good]), timeout=10))
        assert answers[0].error.code == "INVALID_ARGUMENT"
        assert [v.field for v in answers[0].error.field_violations] == ["transfer.currency"]
        assert answers[1].request_id == good.request_id and not answers[1].HasField("error")


def test_rates_reload_with_the_rules_and_a_broken_file_keeps_the_last_good(
    served: RunningServer, rules_dir: Path
) -> None:
    rates = rules_dir / "rates.yaml"
    original = rates.read_text()
    with served.channel() as channel:
        screening = pb_grpc.ScreeningStub(channel)
        admin = admin_pb_grpc.RulesStub(channel)
        before = screening.Screen(_abroad(500_000, "USD"), timeout=5).ruleset_revision
        try:
            rates.write_text(original.replace("USD: 7.1186", "USD: 1.5"))  # USD 5,000 is now ¥7,500
            # The server's own poll may load it first: then this reload finds nothing changed.
            reloaded = admin.ReloadRules(admin_pb.ReloadRulesRequest(), timeout=10)
            assert reloaded.active_revision != before and not reloaded.errors
            cheaper = screening.Screen(_abroad(500_000, "USD"), timeout=5)
            assert cheaper.ruleset_revision == reloaded.active_revision
            assert _reason(cheaper, T25) is None

            rates.write_text(original.replace("USD: 7.1186", "CNY: 1\n  USD: 7.1186"))
            broken = admin.ReloadRules(admin_pb.ReloadRulesRequest(), timeout=10)
            assert not broken.changed and broken.active_revision == reloaded.active_revision
            assert any(e.endswith("rates.yaml:16: CNY needs no rate: amounts in CNY are used as they are")
                       for e in broken.errors), broken.errors  # fmt: skip
            still = screening.Screen(_abroad(500_000, "USD"), timeout=5)
            assert still.ruleset_revision == reloaded.active_revision and _reason(still, T25) is None
        finally:
            rates.write_text(original)
            admin.ReloadRules(admin_pb.ReloadRulesRequest(), timeout=10)


def test_stale_rates_are_used_and_reported(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    rates = rules / "rates.yaml"
    as_of = (datetime.now(UTC) + timedelta(hours=8)).date() - timedelta(days=30)  # a day in Beijing
    text = re.sub(r"(?m)^as_of: .*$", f"as_of: {as_of.isoformat()}", rates.read_text())
    rates.write_text(text.replace("stale_after_days: 10", "stale_after_days: 7"))
    running = start_server(tmp_path, RISKGATE_RULES_DIR=str(rules))
    try:
        with running.channel() as channel:
            decision = pb_grpc.ScreeningStub(channel).Screen(_abroad(500_000, "USD"), timeout=5)
        assert _reason(decision, T25) is not None  # still used
        with urllib.request.urlopen(f"http://{running.metrics_address}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        assert "riskgate_exchange_rates_age_days 30.0" in metrics
    finally:
        assert running.terminate() == 0
    stale = [line for line in running.log().splitlines() if "exchange rates are stale" in line]
    assert len(stale) == 1, running.log()
    assert '"age_days": 30' in stale[0] and '"stale_after_days": 7' in stale[0]
