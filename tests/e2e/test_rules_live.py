"""End to end with the shipped rules: a block, a shadow rule, and hot reload under a running server."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._gen.riskgate.v1 import admin_pb2, admin_pb2_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from tests import samples
from tests.conftest import REPO
from tests.e2e.conftest import RunningServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    server = start_server(tmp_path, RISKGATE_RULES_DIR=str(rules), RISKGATE_RULES_POLL_SECONDS="0.2")
    yield server, rules
    assert server.terminate() == 0, server.log()


def test_iot_sim_for_an_individual_is_blocked_with_a_bilingual_reason(live: tuple[RunningServer, Path]) -> None:
    server, _ = live
    request = samples.sim_sale(f"iot-{uuid.uuid4()}")
    request.sim_sale.iot = True
    with server.channel() as channel:
        decision = pb_grpc.ScreeningStub(channel).Screen(request, timeout=5)
    assert decision.outcome == pb.OUTCOME_BLOCK
    reason = next(r for r in decision.reasons if r.rule_id == "S13_iot_card_for_individual")
    assert reason.outcome == pb.OUTCOME_BLOCK
    assert reason.message_zh and reason.message_en
    assert "申诉" in reason.message_zh  # Art 32: how to appeal
    assert {e.name: e.value for e in reason.evidence} == {"sim_sale.iot": "true"}


def test_a_shadow_rule_is_reported_but_does_not_change_the_outcome(live: tuple[RunningServer, Path]) -> None:
    server, _ = live
    student = samples.resident_id(birth=samples.born_aged(20), sequence=202)
    decisions = []
    with server.channel() as channel:
        stub = pb_grpc.ScreeningStub(channel)
        for bank in ("BANK_A", "BANK_B"):
            request = samples.card_opening(f"young-{uuid.uuid4()}")
            request.outlet.institution_id = bank
            request.card_opening.applicant.id_number = student
            decisions.append(stub.Screen(request, timeout=5))
    second = decisions[1]
    trial = next(r for r in second.reasons if r.rule_id == "K05_multi_bank_openings_young_trial")
    assert trial.shadow
    assert {e.name: e.value for e in trial.evidence}["banks_30d"] == "2"
    assert second.outcome == pb.OUTCOME_ALLOW


def _revision(server: RunningServer) -> str:
    with server.channel() as channel:
        return str(
            pb_grpc.ScreeningStub(channel).Screen(samples.closure(f"rev-{uuid.uuid4()}"), timeout=5).ruleset_revision
        )


def test_edit_then_break_a_rule_file_under_a_running_server(live: tuple[RunningServer, Path]) -> None:
    server, rules = live
    first = _revision(server)
    sims = rules / "sims.rules.yaml"
    sims.write_text(sims.read_text(encoding="utf-8") + "\n# retuned by the fraud team\n", encoding="utf-8")
    deadline = time.monotonic() + 20
    while (second := _revision(server)) == first:
        assert time.monotonic() < deadline, "the edit was not picked up"
        time.sleep(0.2)

    good_text = sims.read_text(encoding="utf-8")
    sims.write_text(good_text.replace("sim_sale.iot", "sim_sale.iott", 1), encoding="utf-8")
    with server.channel() as channel:
        reply = admin_pb2_grpc.RulesStub(channel).ReloadRules(admin_pb2.ReloadRulesRequest(), timeout=30)
        assert not reply.changed
        assert reply.active_revision == second
        assert any(
            f"{sims}:" in error and "unknown field 'sim_sale.iott', did you mean 'sim_sale.iot'?" in error
            for error in reply.errors
        ), reply.errors
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="rules"), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    time.sleep(0.6)  # a few polls of the watcher: still the last good ruleset
    assert _revision(server) == second
    assert "sim_sale.iott" in server.log()

    sims.write_text(good_text, encoding="utf-8")
    with server.channel() as channel:
        reply = admin_pb2_grpc.RulesStub(channel).ReloadRules(admin_pb2.ReloadRulesRequest(), timeout=30)
    assert not reply.errors
    assert reply.active_revision == second  # the same files again: the same revision, nothing rebuilt


def test_a_broken_rules_directory_stops_the_server_at_start(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "bad.rules.yaml").write_text("rules:\n  - id: X1\n    on: [transfer]\n    when: payer.agee > 3\n")
    with pytest.raises(AssertionError) as raised:
        start_server(tmp_path, RISKGATE_RULES_DIR=str(rules))
    assert "unknown field 'payer.agee', did you mean 'payer.age'?" in str(raised.value)
