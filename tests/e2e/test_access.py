"""Only the right callers, over the real server process: TLS, mTLS, bearer tokens, a role for every
RPC, the audit trail, the secure default for non-loopback addresses, a certificate rotated under
a running server, and request ids bound to their request.

Certificates are real (a throw-away CA, `tests.pki`); the policy of the production example is the
repository's `deploy/policy.yaml`, as the README says to deploy it.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import dispositions_pb2 as dispositions_pb
from service._gen.riskgate.v1 import dispositions_pb2_grpc as dispositions_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.clock import SystemClock
from service.pipeline import validate
from service.redis.connection import hasher_for
from service.redis.embedded import EmbeddedRedis, RedisOptions, free_port
from service.riskdata.store import RiskDataConfig, RiskDataStore
from service.server.access.tokens import new_token
from service.settings import Settings
from tests import samples
from tests.conftest import REPO
from tests.e2e.conftest import RISKGATE, RunningServer, external_server, wait_serving
from tests.pki import CertificateAuthority, Issued

pytestmark = pytest.mark.e2e

FRAUD_PAYEE = "6217000099998888777"
Metadata = tuple[tuple[str, str], ...]
AUDIT = "rg:audit"


@dataclass
class Pki:
    ca: CertificateAuthority
    server: Issued
    counter: Issued  # an outlet's terminal
    office: Issued  # the risk office's back-office system
    plain: Issued  # a certificate the CA signed that names no principal
    stranger: Issued  # signed by another CA

    def credentials(self, client: Issued | None = None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca.cert_pem(), client.key_pem() if client else None, client.cert_pem() if client else None
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory / "ca")
    other = CertificateAuthority(directory / "other", "another CA")
    return Pki(
        ca=ca,
        server=ca.server(),
        counter=ca.issue("counter-17.counter.bank.example", dns=("counter-17.counter.bank.example",)),
        office=ca.issue("risk-office.bank.example", dns=("risk-office.bank.example",)),
        plain=ca.issue("printer.bank.example", dns=("printer.bank.example",)),
        stranger=other.issue("counter-99.counter.bank.example", dns=("counter-99.counter.bank.example",)),
    )


@pytest.fixture(scope="module")
def access_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), RedisOptions(persistent=False, port=0))
    server.start()
    yield server
    server.stop()


def _redis(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def _tokens(directory: Path, *names: str) -> tuple[Path, dict[str, str]]:
    path = directory / "tokens"
    lines, tokens = [], {}
    for name in names:
        tokens[name], line = new_token(name)
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path, tokens


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


# --- the RPCs, each made once --------------------------------------------------------------


def _transfer(payee: str = "6217000010002000300", amount_fen: int = 100) -> pb.ScreenRequest:
    request = samples.transfer(f"acc-{uuid.uuid4()}", amount_fen=amount_fen)
    request.transfer.payee_account = payee
    return request


def _screen(channel: grpc.Channel, metadata: Metadata) -> None:
    pb_grpc.ScreeningStub(channel).Screen(_transfer(), timeout=10, metadata=metadata)


def _screen_stream(channel: grpc.Channel, metadata: Metadata) -> None:
    answers = list(pb_grpc.ScreeningStub(channel).ScreenStream(iter([_transfer()]), timeout=10, metadata=metadata))
    assert len(answers) == 1 and answers[0].decision_id


def _check(channel: grpc.Channel, metadata: Metadata) -> None:
    request = admin_pb.CheckEntryRequest(list="fraud_accounts", value=FRAUD_PAYEE)
    admin_pb_grpc.WatchlistsStub(channel).CheckEntry(request, timeout=10, metadata=metadata)


def _describe(channel: grpc.Channel, metadata: Metadata) -> None:
    admin_pb_grpc.WatchlistsStub(channel).DescribeLists(admin_pb.DescribeListsRequest(), timeout=10, metadata=metadata)


def _add(channel: grpc.Channel, metadata: Metadata) -> None:
    request = admin_pb.AddEntryRequest(list="fraud_accounts", value=FRAUD_PAYEE, reason="notice 17", added_by="desk 3")
    admin_pb_grpc.WatchlistsStub(channel).AddEntry(request, timeout=10, metadata=metadata)


def _remove(channel: grpc.Channel, metadata: Metadata) -> None:
    request = admin_pb.RemoveEntryRequest(list="fraud_accounts", value=FRAUD_PAYEE, removed_by="anyone")
    admin_pb_grpc.WatchlistsStub(channel).RemoveEntry(request, timeout=10, metadata=metadata)


def _reload(channel: grpc.Channel, metadata: Metadata) -> None:
    admin_pb_grpc.RulesStub(channel).ReloadRules(admin_pb.ReloadRulesRequest(), timeout=10, metadata=metadata)


def _admitted_unknown(call: Callable[[], object]) -> None:
    """A call about a decision that does not exist: NOT_FOUND means it was let through."""
    try:
        call()
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise


def _report(channel: grpc.Channel, metadata: Metadata) -> None:
    request = dispositions_pb.ReportDispositionRequest(
        decision_id=str(uuid.uuid4()), disposition=dispositions_pb.DISPOSITION_FALSE_ALARM
    )
    stub = dispositions_pb_grpc.DispositionsStub(channel)
    _admitted_unknown(lambda: stub.Report(request, timeout=10, metadata=metadata))


def _dispositions(channel: grpc.Channel, metadata: Metadata) -> None:
    request = dispositions_pb.GetDispositionsRequest(decision_id=str(uuid.uuid4()))
    stub = dispositions_pb_grpc.DispositionsStub(channel)
    _admitted_unknown(lambda: stub.Get(request, timeout=10, metadata=metadata))


def _health(channel: grpc.Channel, metadata: Metadata) -> None:
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10, metadata=metadata)


def _reflection(channel: grpc.Channel, metadata: Metadata) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=metadata))
    assert any(s.name == "riskgate.v1.Screening" for s in replies[0].list_services_response.service)


RPCS: dict[str, tuple[Callable[[grpc.Channel, Metadata], None], str | None]] = {
    # name: (call, permission needed; None: open to all)
    "Screen": (_screen, "screen"),
    "ScreenStream": (_screen_stream, "screen"),
    "CheckEntry": (_check, "lists.read"),
    "DescribeLists": (_describe, "lists.read"),
    "AddEntry": (_add, "lists.write"),
    "RemoveEntry": (_remove, "lists.write"),
    "ReloadRules": (_reload, "rules.admin"),
    "Dispositions/Report": (_report, "dispositions.write"),
    "Dispositions/Get": (_dispositions, "decisions.read"),
    "Health": (_health, None),
    "Reflection": (_reflection, "any principal"),
}


def _code(call: Callable[[grpc.Channel, Metadata], None], channel: grpc.Channel, metadata: Metadata) -> str:
    try:
        call(channel, metadata)
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


# --- TLS with bearer tokens: every role against every RPC ---------------------------------

MATRIX_POLICY = """
roles:
  screen: [screen]
  reader: [lists.read]
  writer: [lists.write]
  rules: [rules.admin]
  decisions: [decisions.read]
  dispositions: [dispositions.write]
  nothing: []
principals:
  - {name: p-screen, token: t-screen, roles: [screen]}
  - {name: p-reader, token: t-reader, roles: [reader]}
  - {name: p-writer, token: t-writer, roles: [writer]}
  - {name: p-rules, token: t-rules, roles: [rules]}
  - {name: p-decisions, token: t-decisions, roles: [decisions]}
  - {name: p-dispositions, token: t-dispositions, roles: [dispositions]}
  - {name: p-nothing, token: t-nothing, roles: [nothing]}
"""
MATRIX_PERMISSIONS = {
    "t-screen": {"screen"},
    "t-reader": {"lists.read"},
    "t-writer": {"lists.write"},
    "t-rules": {"rules.admin"},
    "t-decisions": {"decisions.read"},
    "t-dispositions": {"dispositions.write"},
    "t-nothing": set(),
}


@dataclass
class MatrixServer:
    server: RunningServer
    tokens: dict[str, str]
    credentials: grpc.ChannelCredentials


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, pki: Pki, access_redis: EmbeddedRedis) -> Iterator[MatrixServer]:
    tmp = tmp_path_factory.mktemp("matrix")
    tokens_path, tokens = _tokens(tmp, *MATRIX_PERMISSIONS)
    policy = tmp / "policy.yaml"
    policy.write_text(MATRIX_POLICY)
    server = external_server(
        tmp,
        access_redis.url,
        budget_ms=200,
        credentials=pki.credentials(),
        RISKGATE_TLS_CERT=str(pki.server.cert),
        RISKGATE_TLS_KEY=str(pki.server.key),
        RISKGATE_POLICY_FILE=str(policy),
        RISKGATE_TOKENS_FILE=str(tokens_path),
    )
    yield MatrixServer(server, tokens, pki.credentials())
    assert server.terminate() == 0, server.log()[-3000:]


def _expected(permissions: set[str] | None, needed: str | None) -> str:
    """What a caller with `permissions` (None: no credentials) gets from an RPC needing `needed`."""
    if needed is None:
        return "OK"
    if permissions is None:
        return "UNAUTHENTICATED"
    if needed == "any principal" or needed in permissions:
        return "OK"
    return "PERMISSION_DENIED"


def test_every_role_against_every_rpc(matrix: MatrixServer) -> None:
    seen: dict[tuple[str, str], str] = {}
    wanted: dict[tuple[str, str], str] = {}
    with matrix.server.channel() as channel:
        callers: dict[str, tuple[Metadata, set[str] | None]] = {
            name: (_bearer(matrix.tokens[name]), permissions) for name, permissions in MATRIX_PERMISSIONS.items()
        }
        callers["no credentials"] = ((), None)
        for caller, (metadata, permissions) in callers.items():
            for rpc, (call, needed) in RPCS.items():
                seen[caller, rpc] = _code(call, channel, metadata)
                wanted[caller, rpc] = _expected(permissions, needed)
    assert seen == wanted


def test_unknown_or_malformed_tokens_are_unauthenticated_even_for_health_free_rpcs(matrix: MatrixServer) -> None:
    with matrix.server.channel() as channel:
        for metadata in (
            _bearer("rgt_not-a-token"),
            (("authorization", "Basic dXNlcjpwYXNz"),),
            (("authorization", "Bearer "),),
        ):
            assert _code(_screen, channel, metadata) == "UNAUTHENTICATED"
            assert _code(_health, channel, metadata) == "OK"  # health stays open


def test_plaintext_clients_cannot_talk_to_a_tls_port(matrix: MatrixServer) -> None:
    with grpc.insecure_channel(matrix.server.address) as channel:
        assert _code(_screen, channel, _bearer(matrix.tokens["t-screen"])) == "UNAVAILABLE"


def test_denials_are_counted_by_principal_without_personal_data(matrix: MatrixServer) -> None:
    with matrix.server.channel() as channel:
        assert _code(_remove, channel, _bearer(matrix.tokens["t-screen"])) == "PERMISSION_DENIED"
        assert _code(_screen, channel, ()) == "UNAUTHENTICATED"
    with urllib.request.urlopen(f"http://{matrix.server.metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert 'riskgate_access_denied_total{code="PERMISSION_DENIED",principal="p-screen"}' in text
    assert 'riskgate_access_denied_total{code="UNAUTHENTICATED",principal="anonymous"}' in text
    assert FRAUD_PAYEE not in text


def test_tokens_file_is_reloaded_when_it_changes(matrix: MatrixServer, tmp_path: Path) -> None:
    tokens_file = Path(matrix.server.log_path).parent / "tokens"
    before = tokens_file.read_text()
    fresh, line = new_token("t-reader")
    try:
        # Replace t-reader's token: the old one stops working, the new one works, within seconds.
        kept = [entry for entry in before.splitlines() if not entry.startswith("t-reader ")]
        tokens_file.write_text("\n".join([*kept, line]) + "\n")
        with matrix.server.channel() as channel:
            deadline = time.monotonic() + 10
            while _code(_describe, channel, _bearer(fresh)) != "OK":
                assert time.monotonic() < deadline, "the new token was not taken up"
                time.sleep(0.2)
            assert _code(_describe, channel, _bearer(matrix.tokens["t-reader"])) == "UNAUTHENTICATED"
        # A broken file is refused: the tokens in force stay.
        tokens_file.write_text("this is not a token line\n")
        time.sleep(2.5)
        with matrix.server.channel() as channel:
            assert _code(_describe, channel, _bearer(fresh)) == "OK"
        assert "tokens file rejected" in matrix.server.log()
    finally:
        tokens_file.write_text(before)
        with matrix.server.channel() as channel:
            deadline = time.monotonic() + 10
            while _code(_describe, channel, _bearer(matrix.tokens["t-reader"])) != "OK":
                assert time.monotonic() < deadline
                time.sleep(0.2)


def _audit_at(server: EmbeddedRedis) -> list[dict[str, str]]:
    client = _redis(server)
    try:
        entries = cast(list[Any], client.xrange(AUDIT))
    finally:
        client.close()
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def test_a_policy_change_is_taken_up_audited_and_a_broken_one_refused(
    matrix: MatrixServer, access_redis: EmbeddedRedis
) -> None:
    policy = Path(matrix.server.log_path).parent / "policy.yaml"
    before = policy.read_text()
    nothing = _bearer(matrix.tokens["t-nothing"])
    start = len(_audit_at(access_redis))
    try:
        with matrix.server.channel() as channel:
            assert _code(_screen, channel, nothing) == "PERMISSION_DENIED"
            policy.write_text(before.replace("roles: [nothing]", "roles: [screen]"))
            deadline = time.monotonic() + 10
            while _code(_screen, channel, nothing) != "OK":
                assert time.monotonic() < deadline, "the changed policy was not taken up"
                time.sleep(0.2)
            policy.write_text(before.replace("roles: [nothing]", "roles: [no-such-role]"))
            deadline = time.monotonic() + 10
            while not any(
                e["action"] == "policy.reload" and e["result"] == "rejected" for e in _audit_at(access_redis)[start:]
            ):
                assert time.monotonic() < deadline, "the broken policy was not audited"
                time.sleep(0.2)
            assert _code(_screen, channel, nothing) == "OK"  # the policy in force stays
    finally:
        policy.write_text(before)
        with matrix.server.channel() as channel:
            deadline = time.monotonic() + 10
            while _code(_screen, channel, nothing) != "PERMISSION_DENIED":
                assert time.monotonic() < deadline
                time.sleep(0.2)
    reloads = [e for e in _audit_at(access_redis)[start:] if e["action"] == "policy.reload"]
    assert [e["result"] for e in reloads] == ["ok", "rejected", "ok"]
    assert "unknown role 'no-such-role'" in reloads[1]["detail"] and "policy.yaml:" in reloads[1]["detail"]
    assert all(e["principal"] == "file" for e in reloads)


# --- the production example: mTLS, deploy/policy.yaml -------------------------------------


@dataclass
class Production:
    server: RunningServer
    pki: Pki
    tokens: dict[str, str]
    redis: EmbeddedRedis

    def channel(self, client: Issued | None) -> grpc.Channel:
        return grpc.secure_channel(
            self.server.address, self.pki.credentials(client), options=[("grpc.use_local_subchannel_pool", 1)]
        )


def _production_env(pki: Pki, tmp: Path) -> dict[str, str]:
    return {
        "RISKGATE_TLS_CERT": str(tmp / "server.crt"),
        "RISKGATE_TLS_KEY": str(tmp / "server.key"),
        "RISKGATE_TLS_CLIENT_CA": str(pki.ca.cert),
        "RISKGATE_POLICY_FILE": str(REPO / "deploy" / "policy.yaml"),
        "RISKGATE_TOKENS_FILE": str(tmp / "tokens"),
        "RISKGATE_CHECK_ENTRY_PER_MINUTE": "5",
    }


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, pki: Pki, access_redis: EmbeddedRedis) -> Iterator[Production]:
    tmp = tmp_path_factory.mktemp("production")
    shutil.copy(pki.server.cert, tmp / "server.crt")
    shutil.copy(pki.server.key, tmp / "server.key")
    _, tokens = _tokens(tmp, "rules-team", "anti-fraud-centre")
    server = external_server(
        tmp,
        access_redis.url,
        budget_ms=200,
        credentials=pki.credentials(pki.office),
        host="0.0.0.0",
        **_production_env(pki, tmp),
    )
    yield Production(server, pki, tokens, access_redis)
    assert server.terminate() == 0, server.log()[-3000:]


def _list_payee(production: Production) -> None:
    with production.channel(production.pki.office) as channel:
        _add(channel, ())


def _outcome(channel: grpc.Channel, request: pb.ScreenRequest) -> int:
    return int(pb_grpc.ScreeningStub(channel).Screen(request, timeout=10).outcome)


def test_an_outlet_cannot_unlist_a_fraud_account_and_the_transfer_stays_blocked(production: Production) -> None:
    _list_payee(production)
    with production.channel(production.pki.counter) as channel:
        assert _outcome(channel, _transfer(FRAUD_PAYEE)) == pb.OUTCOME_BLOCK
        assert _code(_remove, channel, ()) == "PERMISSION_DENIED"
        assert _outcome(channel, _transfer(FRAUD_PAYEE)) == pb.OUTCOME_BLOCK


def test_an_outlet_cannot_list_people_check_lists_or_reload_rules(production: Production) -> None:
    with production.channel(production.pki.counter) as channel:
        stub = admin_pb_grpc.WatchlistsStub(channel)
        victim = samples.resident_id(sequence=417)
        with pytest.raises(grpc.RpcError) as refused:
            stub.AddEntry(
                admin_pb.AddEntryRequest(list="punished_persons", value=victim, reason="x", added_by="x"), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "branch-counters" in (refused.value.details() or "")  # names the principal, never the value
        assert victim not in (refused.value.details() or "")
        assert _code(_check, channel, ()) == "PERMISSION_DENIED"
        assert _code(_reload, channel, ()) == "PERMISSION_DENIED"
    with production.channel(production.pki.office) as channel:
        listed = admin_pb_grpc.WatchlistsStub(channel).CheckEntry(
            admin_pb.CheckEntryRequest(list="punished_persons", value=victim), timeout=10
        )
        assert not listed.listed


def test_without_a_certificate_the_ca_signed_nothing_gets_through(production: Production) -> None:
    for client in (None, production.pki.stranger):
        with production.channel(client) as channel:
            assert _code(_screen, channel, ()) == "UNAVAILABLE"  # the TLS handshake fails
            assert _code(_health, channel, ()) == "UNAVAILABLE"


def test_a_certificate_naming_no_principal_is_refused(production: Production) -> None:
    with production.channel(production.pki.plain) as channel:
        assert _code(_screen, channel, ()) == "PERMISSION_DENIED"
        assert _code(_health, channel, ()) == "OK"


def test_tokens_name_the_principal_under_mtls(production: Production) -> None:
    with production.channel(production.pki.plain) as channel:
        assert _code(_reload, channel, _bearer(production.tokens["rules-team"])) == "OK"
        assert _code(_check, channel, _bearer(production.tokens["rules-team"])) == "OK"
        assert _code(_add, channel, _bearer(production.tokens["rules-team"])) == "PERMISSION_DENIED"
        assert _code(_screen, channel, _bearer(production.tokens["anti-fraud-centre"])) == "PERMISSION_DENIED"


def _check_codes(production: Production, calls: int) -> list[str]:
    codes: list[str] = []
    with production.channel(production.pki.plain) as channel:
        stub = admin_pb_grpc.WatchlistsStub(channel)
        for _ in range(calls):
            try:
                answer = stub.CheckEntry(
                    admin_pb.CheckEntryRequest(list="fraud_accounts", value=FRAUD_PAYEE),
                    timeout=10,
                    metadata=_bearer(production.tokens["rules-team"]),
                )
            except grpc.RpcError as error:
                codes.append(error.code().name)
                continue
            assert answer.listed and not answer.HasField("entry")  # listed or not, nothing more
            codes.append("OK")
    return codes


def test_check_entry_is_rate_limited_per_principal_and_says_only_listed(production: Production) -> None:
    _list_payee(production)
    client = _redis(production.redis)
    try:
        for _attempt in range(3):  # the allowance is per calendar minute: again if one ends mid-way
            for key in client.scan_iter(match="rg:rl:check:*"):
                client.delete(key)  # earlier tests of this module used some of the allowance
            minute = int(time.time()) // 60
            codes = _check_codes(production, 7)
            with production.channel(production.pki.office) as other:
                office_code = _code(_check, other, ())
            if int(time.time()) // 60 == minute:
                break
    finally:
        client.close()
    assert codes == ["OK"] * 5 + ["RESOURCE_EXHAUSTED"] * 2
    assert office_code == "OK"  # another principal has its own allowance


def _audit(production: Production) -> list[dict[str, str]]:
    return _audit_at(production.redis)


def test_every_admin_action_is_audited_with_the_principal_from_the_credentials(production: Production) -> None:
    start = len(_audit(production))
    with production.channel(production.pki.office) as channel:
        _add(channel, ())
        _remove(channel, ())
    with production.channel(production.pki.plain) as channel:
        _reload(channel, _bearer(production.tokens["rules-team"]))
    with production.channel(production.pki.counter) as channel:
        assert _code(_remove, channel, ()) == "PERMISSION_DENIED"
    entries = _audit(production)[start:]
    assert [(e["principal"], e["action"], e["result"]) for e in entries] == [
        ("risk-office", "lists.add", "ok"),
        ("risk-office", "lists.remove", "ok"),
        ("rules-team", "rules.reload", "ok: unchanged"),
        ("branch-counters", "denied", "PERMISSION_DENIED"),
    ]
    added, removed, reloaded, denied = entries
    assert added["identity"] == "cert:risk-office.bank.example"
    assert added["list"] == "fraud_accounts" and added["reason"] == "notice 17" and added["note"] == "desk 3"
    assert added["value_hash"] and added["value_hash"] == removed["value_hash"]
    assert removed["note"] == "anyone"  # what the caller wrote is a note, never the author
    assert reloaded["identity"] == "token:rules-team"
    assert denied["identity"] == "cert:counter-17.counter.bank.example"
    assert "RemoveEntry" in denied["detail"]
    assert all(FRAUD_PAYEE not in value for entry in entries for value in entry.values())
    assert "added_at" not in added  # a stream entry: nothing in the API edits it


def test_the_entry_records_the_principal_not_the_callers_added_by(production: Production) -> None:
    with production.channel(production.pki.office) as channel:
        entry = admin_pb_grpc.WatchlistsStub(channel).AddEntry(
            admin_pb.AddEntryRequest(list="fraud_accounts", value=FRAUD_PAYEE, reason="notice 18", added_by="police"),
            timeout=10,
        )
    assert entry.added_by == "risk-office"


def _certificate_served(production: Production, ca: CertificateAuthority) -> bool:
    credentials = grpc.ssl_channel_credentials(
        ca.cert_pem(), production.pki.office.key_pem(), production.pki.office.cert_pem()
    )
    with grpc.secure_channel(
        production.server.address, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        return _code(_health, channel, ()) == "OK"


def test_a_certificate_rotated_under_the_running_server_serves_new_connections(
    production: Production, tmp_path: Path
) -> None:
    live = production.server.log_path.parent
    original = (live / "server.crt").read_bytes(), (live / "server.key").read_bytes()
    renewed_ca = CertificateAuthority(tmp_path / "renewed", "renewed server CA")
    renewed = renewed_ca.server()
    try:
        assert _certificate_served(production, production.pki.ca)
        # A half-done rotation (the new certificate with the old key) is refused: the old pair serves.
        shutil.copy(renewed.cert, live / "server.crt")
        assert _certificate_served(production, production.pki.ca)
        assert "new TLS files refused" in production.server.log()
        # The key follows: new connections get the new certificate, no restart.
        shutil.copy(renewed.key, live / "server.key")
        assert _certificate_served(production, renewed_ca)
        assert not _certificate_served(production, production.pki.ca)
        assert production.server.process.poll() is None
    finally:
        (live / "server.crt").write_bytes(original[0])
        (live / "server.key").write_bytes(original[1])
        assert _certificate_served(production, production.pki.ca)


def test_metrics_over_https_with_client_certificates(tmp_path: Path, pki: Pki, access_redis: EmbeddedRedis) -> None:
    shutil.copy(pki.server.cert, tmp_path / "server.crt")
    shutil.copy(pki.server.key, tmp_path / "server.key")
    _tokens(tmp_path, "rules-team", "anti-fraud-centre")
    server = external_server(
        tmp_path,
        access_redis.url,
        budget_ms=200,
        credentials=pki.credentials(pki.office),
        RISKGATE_METRICS_TLS="true",
        **_production_env(pki, tmp_path),
    )
    try:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.office.cert), str(pki.office.key))
        with urllib.request.urlopen(f"https://{server.metrics_address}/metrics", timeout=5, context=context) as reply:
            assert b"riskgate_requests" in reply.read()
        bare = ssl.create_default_context(cafile=str(pki.ca.cert))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"https://{server.metrics_address}/metrics", timeout=5, context=bare).read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=5).read()
    finally:
        assert server.terminate() == 0, server.log()[-3000:]


# --- the secure default -----------------------------------------------------------------------


def _serve_briefly(tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": "/usr/bin:/bin",
        "RISKGATE_DATA_DIR": str(tmp / "data"),
        "RISKGATE_RULES_DIR": str(REPO / "rules"),
        "RISKGATE_METRICS_LISTEN": "off",
        "RISKGATE_CONSOLE_LISTEN": "off",
        **env,
    }
    return subprocess.run(
        [str(RISKGATE), "serve"], env=environment, capture_output=True, text=True, timeout=60, check=False, cwd=tmp
    )


def test_a_non_loopback_address_without_tls_is_refused(tmp_path: Path) -> None:
    result = _serve_briefly(tmp_path, RISKGATE_LISTEN=f"0.0.0.0:{free_port()}")
    assert result.returncode == 2
    assert "is not a loopback address and TLS is off" in result.stderr
    assert "RISKGATE_ALLOW_PLAINTEXT" in result.stderr


def test_a_non_loopback_address_without_a_policy_is_refused(tmp_path: Path, pki: Pki) -> None:
    result = _serve_briefly(
        tmp_path,
        RISKGATE_LISTEN=f"0.0.0.0:{free_port()}",
        RISKGATE_TLS_CERT=str(pki.server.cert),
        RISKGATE_TLS_KEY=str(pki.server.key),
    )
    assert result.returncode == 2
    assert "set RISKGATE_POLICY_FILE" in result.stderr


def test_plaintext_beyond_loopback_only_when_explicitly_allowed(
    tmp_path: Path, access_redis: EmbeddedRedis, pki: Pki
) -> None:
    tokens_path, tokens = _tokens(tmp_path, "t-screen")
    policy = tmp_path / "policy.yaml"
    policy.write_text("roles: {screen: [screen]}\nprincipals:\n  - {name: proxy, token: t-screen, roles: [screen]}\n")
    server = external_server(
        tmp_path,
        access_redis.url,
        budget_ms=200,
        host="0.0.0.0",
        RISKGATE_ALLOW_PLAINTEXT="true",
        RISKGATE_POLICY_FILE=str(policy),
        RISKGATE_TOKENS_FILE=str(tokens_path),
    )
    try:
        with server.channel() as channel:
            assert _code(_screen, channel, _bearer(tokens["t-screen"])) == "OK"
            assert _code(_screen, channel, ()) == "UNAUTHENTICATED"  # a policy without `local`: loopback too
    finally:
        assert server.terminate() == 0, server.log()[-3000:]


def test_without_a_policy_local_callers_may_do_everything(tmp_path: Path, access_redis: EmbeddedRedis) -> None:
    server = external_server(tmp_path, access_redis.url, budget_ms=200)
    try:
        with server.channel() as channel:
            assert {rpc: _code(call, channel, ()) for rpc, (call, _) in RPCS.items()} == dict.fromkeys(RPCS, "OK")
    finally:
        assert server.terminate() == 0, server.log()[-3000:]


# --- request ids bound to their request ---------------------------------------------------------


def _dump(client: redis.Redis) -> dict[bytes, Any]:
    return {key: client.dump(key) for key in sorted(client.scan_iter(count=1000))}


def test_a_reused_request_id_with_another_body_is_refused_and_counts_nothing(production: Production) -> None:
    _list_payee(production)
    small = _transfer(amount_fen=100)
    with production.channel(production.pki.counter) as channel:
        stub = pb_grpc.ScreeningStub(channel)
        first = stub.Screen(small, timeout=10)
        assert first.outcome == pb.OUTCOME_ALLOW
        again = pb.ScreenRequest()
        again.CopyFrom(small)
        again.occurred_at.GetCurrentTime()  # a terminal's retry may stamp it again: still the same request
        replay = stub.Screen(again, timeout=10)
        assert replay.replayed and replay.decision_id == first.decision_id
        client = _redis(production.redis)
        try:
            before = _dump(client)
            for change in ("payee", "amount", "iot"):
                forged = pb.ScreenRequest()
                if change == "iot":
                    forged = samples.sim_sale(small.request_id)
                    forged.outlet.CopyFrom(small.outlet)
                    forged.sim_sale.quantity, forged.sim_sale.iot = 100, True
                else:
                    forged.CopyFrom(small)
                    if change == "payee":
                        forged.transfer.payee_account = FRAUD_PAYEE
                    else:
                        forged.transfer.amount_fen = 10_000_000_000_00
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Screen(forged, timeout=10)
                assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, change
                assert "already used for a different request" in (refused.value.details() or "")
            assert _dump(client) == before  # nothing counted, nothing logged, nothing stored
        finally:
            client.close()
        fresh = pb.ScreenRequest()
        fresh.CopyFrom(small)
        fresh.request_id = f"acc-{uuid.uuid4()}"
        fresh.transfer.payee_account = FRAUD_PAYEE
        assert stub.Screen(fresh, timeout=10).outcome == pb.OUTCOME_BLOCK
    with urllib.request.urlopen(f"http://{production.server.metrics_address}/metrics", timeout=5) as reply:
        assert "riskgate_request_id_reused_total 3.0" in reply.read().decode()


def test_concurrent_attempts_under_one_request_id_one_body_wins(production: Production) -> None:
    """Pairs sent at once under one request_id: the same body twice gets one decision; two bodies
    get one decision and one ALREADY_EXISTS, whichever claimed first (the other found it in flight
    or decided)."""
    with production.channel(production.pki.counter) as channel:
        stub = pb_grpc.ScreeningStub(channel)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(10):
                request_id = f"acc-{uuid.uuid4()}"
                same = samples.transfer(request_id, amount_fen=100)
                other = samples.transfer(request_id, amount_fen=100)
                other.transfer.payee_account = FRAUD_PAYEE
                twins = [pool.submit(stub.Screen, same, timeout=10) for _ in range(2)]
                assert len({f.result().decision_id for f in twins}) == 1
                request_id = f"acc-{uuid.uuid4()}"
                same.request_id = other.request_id = request_id
                rivals = [pool.submit(stub.Screen, message, timeout=10) for message in (same, other)]
                codes = []
                for future in rivals:
                    error = future.exception()
                    codes.append("OK" if error is None else error.code().name)  # type: ignore[attr-defined]
                assert sorted(codes) == ["ALREADY_EXISTS", "OK"], codes


def test_a_different_request_under_an_id_still_in_flight_is_refused_at_once(production: Production) -> None:
    """Another replica's attempt holds the claim (its pending mark planted here, as that replica
    would write it): a different body is refused at once, the same body waits for that decision."""
    tmp = production.server.log_path.parent
    settings = Settings.from_env(
        {"RISKGATE_REDIS_URL": production.redis.url, "RISKGATE_HASH_SECRET_FILE": str(tmp / "hash-secret")}
    )
    store = RiskDataStore(
        client=None,
        hasher=hasher_for(settings),
        clock=SystemClock(),
        config=RiskDataConfig(),
        max_future_skew_seconds=settings.max_future_skew_seconds,
    )
    message = _transfer(amount_fen=100)
    message.occurred_at.GetCurrentTime()
    request = validate.screen_request(message, now=datetime.now(UTC), bounds=validate.TimeBounds(300, 86400))
    client = _redis(production.redis)
    try:
        client.set(store.request_key(request), store.attempt_mark(store.fingerprint(request)), px=10_000)
        with production.channel(production.pki.counter) as channel:
            stub = pb_grpc.ScreeningStub(channel)
            forged = pb.ScreenRequest()
            forged.CopyFrom(message)
            forged.transfer.payee_account = FRAUD_PAYEE
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                stub.Screen(forged, timeout=5)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert time.monotonic() - started < 1.0  # not after waiting for the other attempt
            with pytest.raises(grpc.RpcError) as waited:
                stub.Screen(message, timeout=2)
            assert waited.value.code() == grpc.StatusCode.ABORTED  # in flight: retry shortly
    finally:
        client.close()


def test_a_reused_request_id_is_refused_on_redis_cluster_too(redis_cluster_url: str, tmp_path: Path) -> None:
    """On Redis Cluster the claim is a round trip of its own (not folded into the counter script)."""
    server = external_server(tmp_path, redis_cluster_url, budget_ms=250, RISKGATE_REDIS_CLUSTER="true")
    try:
        with server.channel() as channel:
            stub = pb_grpc.ScreeningStub(channel)
            small = _transfer(amount_fen=100)
            assert stub.Screen(small, timeout=10).outcome == pb.OUTCOME_ALLOW
            assert stub.Screen(small, timeout=10).replayed
            forged = pb.ScreenRequest()
            forged.CopyFrom(small)
            forged.transfer.amount_fen = 10_000_000_000_00
            with pytest.raises(grpc.RpcError) as refused:
                stub.Screen(forged, timeout=10)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        assert server.terminate() == 0, server.log()[-3000:]


def test_a_unix_socket_serves_local_callers_without_a_policy(tmp_path: Path, access_redis: EmbeddedRedis) -> None:
    socket_path = tmp_path / "riskgate.sock"
    secret = tmp_path / "hash-secret"
    secret.write_text("ab" * 32)
    log_path = tmp_path / "server.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    environment.update(
        RISKGATE_LISTEN=f"unix:{socket_path}",
        RISKGATE_METRICS_LISTEN="off",
        RISKGATE_CONSOLE_LISTEN="off",
        RISKGATE_DATA_DIR=str(tmp_path / "data"),
        RISKGATE_RULES_DIR=str(REPO / "rules"),
        RISKGATE_REDIS_URL=access_redis.url,
        RISKGATE_HASH_SECRET_FILE=str(secret),
        RISKGATE_DRAIN_SECONDS="0",
    )
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(RISKGATE), "serve"], stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=tmp_path
        )
    try:
        wait_serving(f"unix:{socket_path}", process=process)
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            assert _code(_screen, channel, ()) == "OK"
            assert _code(_describe, channel, ()) == "OK"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, log_path.read_text(errors="replace")[-3000:]
