"""The command-line tools of access control, as an operator runs them, against the real server
process and a real redis-server: `riskgate screen` with TLS, mTLS and a bearer token;
`riskgate lists import` on the local-trust path and its audit entry; `riskgate audit
export|tail`; `riskgate policy check` on the repository's example policy.

Certificates come from a throw-away CA (`tests.pki`); every tool runs as a subprocess with an
environment stripped of the caller's RISKGATE_* settings (the CLI rejects unknown ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import redis
from google.protobuf import json_format

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.server.access.tokens import new_token
from tests import samples
from tests.conftest import REPO
from tests.e2e.conftest import RISKGATE, RunningServer, external_server
from tests.pki import CertificateAuthority, Issued

pytestmark = pytest.mark.e2e

AUDIT = "rg:audit"
FRAUD_PAYEE = "6217000099998888777"  # added through the gRPC API, not by the import
CLI_TIMEOUT = 60.0

TOKEN_POLICY = """
roles:
  screen: [screen]
  writer: [lists.write]
principals:
  - {name: cli-screen, token: cli-screen, roles: [screen]}
  - {name: cli-writer, token: cli-writer, roles: [writer]}
"""

MTLS_POLICY = """
roles:
  outlet: [screen]
principals:
  - {name: cli-terminals, certificate: "*.terminal.bank.example", roles: [outlet]}
"""


# --- running the CLI ------------------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    environment.update(extra)
    return environment


def _riskgate(
    *args: str,
    cwd: Path,
    stdin: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RISKGATE), *args],
        input=stdin,
        env=dict(env) if env is not None else _clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _transfer_json(payee: str | None = None) -> str:
    request = samples.transfer(f"cli-{uuid.uuid4()}")
    if payee is not None:
        request.transfer.payee_account = payee
    return json_format.MessageToJson(request)


def _screen(
    server: RunningServer, *flags: str, cwd: Path, payee: str | None = None
) -> subprocess.CompletedProcess[str]:
    return _riskgate(
        "screen", "--target", server.address, "--timeout", "5", *flags, cwd=cwd, stdin=_transfer_json(payee)
    )


def _decision(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    assert document["decision_id"]
    return document


def _account() -> str:
    """A fresh, valid bank account number (19 digits)."""
    return f"6217{uuid.uuid4().int % 10**15:015d}"


# --- the servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), RedisOptions(persistent=False, port=0))
    server.start()
    yield server
    server.stop()


@dataclass
class Pki:
    ca: CertificateAuthority
    server: Issued
    terminal: Issued  # names the mTLS server's certificate principal
    printer: Issued  # signed by the CA, names no principal

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca.cert_pem())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = CertificateAuthority(tmp_path_factory.mktemp("pki") / "ca")
    return Pki(
        ca=ca,
        server=ca.server(),
        terminal=ca.issue("t1.terminal.bank.example", dns=("t1.terminal.bank.example",)),
        printer=ca.issue("printer.bank.example", dns=("printer.bank.example",)),
    )


@dataclass
class TokenServer:
    server: RunningServer
    tmp: Path
    token_files: dict[str, Path]  # token name -> a file holding the clear token, as a client keeps it
    tokens: dict[str, str]  # token name -> the clear token
    redis_url: str

    def local_env(self) -> dict[str, str]:
        """The settings the local-trust tools share with this server."""
        return _clean_env(
            RISKGATE_REDIS_URL=self.redis_url,
            RISKGATE_HASH_SECRET_FILE=str(self.tmp / "hash-secret"),
            RISKGATE_RULES_DIR=str(REPO / "rules"),
        )


def _start_token_server(tmp: Path, pki: Pki, redis_url: str) -> TokenServer:
    """TLS (no client certificates), a policy of token principals, a tokens file of hashes."""
    lines, tokens, files = [], {}, {}
    for name in ("cli-screen", "cli-writer"):
        tokens[name], line = new_token(name)
        lines.append(line)
        files[name] = tmp / f"{name}.token"
        files[name].write_text(tokens[name] + "\n")
        files[name].chmod(0o600)
    (tmp / "tokens").write_text("\n".join(lines) + "\n")
    (tmp / "policy.yaml").write_text(TOKEN_POLICY)
    server = external_server(
        tmp,
        redis_url,
        budget_ms=200,
        credentials=pki.credentials(),
        RISKGATE_TLS_CERT=str(pki.server.cert),
        RISKGATE_TLS_KEY=str(pki.server.key),
        RISKGATE_POLICY_FILE=str(tmp / "policy.yaml"),
        RISKGATE_TOKENS_FILE=str(tmp / "tokens"),
    )
    return TokenServer(server, tmp, files, tokens, redis_url)


def _start_mtls_server(tmp: Path, pki: Pki, redis_url: str) -> RunningServer:
    """mTLS: every client shows a certificate the CA signed; the policy names certificates."""
    (tmp / "policy.yaml").write_text(MTLS_POLICY)
    return external_server(
        tmp,
        redis_url,
        budget_ms=200,
        credentials=grpc.ssl_channel_credentials(pki.ca.cert_pem(), pki.terminal.key_pem(), pki.terminal.cert_pem()),
        RISKGATE_TLS_CERT=str(pki.server.cert),
        RISKGATE_TLS_KEY=str(pki.server.key),
        RISKGATE_TLS_CLIENT_CA=str(pki.ca.cert),
        RISKGATE_POLICY_FILE=str(tmp / "policy.yaml"),
    )


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki, cli_redis: EmbeddedRedis) -> Iterator[TokenServer]:
    running = _start_token_server(tmp_path_factory.mktemp("tls"), pki, cli_redis.url)
    yield running
    assert running.server.terminate() == 0, running.server.log()[-3000:]


@pytest.fixture(scope="module")
def mtls_server(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, cli_redis: EmbeddedRedis
) -> Iterator[RunningServer]:
    running = _start_mtls_server(tmp_path_factory.mktemp("mtls"), pki, cli_redis.url)
    yield running
    assert running.terminate() == 0, running.log()[-3000:]


def _audit(server: EmbeddedRedis) -> list[dict[str, str]]:
    client = redis.Redis.from_url(server.url)
    try:
        entries = client.xrange(AUDIT)
    finally:
        client.close()
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in cast(list[Any], entries)]


# --- riskgate screen ------------------------------------------------------------------------


def test_screen_over_tls_with_a_bearer_token(token_server: TokenServer, pki: Pki, tmp_path: Path) -> None:
    server, token = token_server.server, token_server.token_files["cli-screen"]

    decision = _decision(_screen(server, "--ca", str(pki.ca.cert), "--token-file", str(token), cwd=tmp_path))
    assert decision["outcome"] == "OUTCOME_ALLOW"

    unauthenticated = _screen(server, "--ca", str(pki.ca.cert), cwd=tmp_path)
    assert unauthenticated.returncode == 1
    assert "UNAUTHENTICATED" in unauthenticated.stderr
    assert unauthenticated.stdout == ""

    plaintext = _screen(server, "--token-file", str(token), cwd=tmp_path)
    assert plaintext.returncode == 1
    assert "UNAVAILABLE" in plaintext.stderr

    # A token whose principal lacks `screen` is refused, not taken for another.
    writer = _screen(
        server, "--ca", str(pki.ca.cert), "--token-file", str(token_server.token_files["cli-writer"]), cwd=tmp_path
    )
    assert writer.returncode == 1
    assert "PERMISSION_DENIED" in writer.stderr
    # The token never reaches the output, whatever happened.
    for result in (unauthenticated, plaintext, writer):
        assert all(t not in result.stdout + result.stderr for t in token_server.tokens.values())


def test_screen_over_mtls_with_a_certificate_principal(mtls_server: RunningServer, pki: Pki, tmp_path: Path) -> None:
    server = mtls_server
    ca = ("--ca", str(pki.ca.cert))
    terminal = ("--cert", str(pki.terminal.cert), "--key", str(pki.terminal.key))
    decision = _decision(_screen(server, *ca, *terminal, cwd=tmp_path))
    assert decision["outcome"] == "OUTCOME_ALLOW"

    printer = _screen(server, *ca, "--cert", str(pki.printer.cert), "--key", str(pki.printer.key), cwd=tmp_path)
    assert printer.returncode == 1 and "PERMISSION_DENIED" in printer.stderr

    no_certificate = _screen(server, *ca, cwd=tmp_path)  # mTLS: the handshake itself fails
    assert no_certificate.returncode == 1 and "UNAVAILABLE" in no_certificate.stderr

    half = _screen(server, *ca, "--cert", str(pki.terminal.cert), cwd=tmp_path)
    assert half.returncode == 2
    assert "--cert and --key go together" in half.stderr
    assert "Traceback" not in half.stderr

    without_ca = _screen(server, *terminal, cwd=tmp_path)
    assert without_ca.returncode == 2
    assert "--cert and --key need --ca" in without_ca.stderr


# --- riskgate lists import, audited -------------------------------------------------------------


@dataclass
class Imported:
    accounts: list[str]
    reason: str
    note: str
    file_name: str
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def imported(token_server: TokenServer, pki: Pki, cli_redis: EmbeddedRedis) -> Imported:
    """An AddEntry through gRPC (by the writer's token), then a CSV import on the local-trust path."""
    with token_server.server.channel() as channel:
        admin_pb_grpc.WatchlistsStub(channel).AddEntry(
            admin_pb.AddEntryRequest(list="fraud_accounts", value=FRAUD_PAYEE, reason="notice 17", added_by="desk 3"),
            timeout=10,
            metadata=(("authorization", f"Bearer {token_server.tokens['cli-writer']}"),),
        )
    accounts = [_account() for _ in range(3)]
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat(timespec="seconds")
    csv_file = token_server.tmp / "police-notice.csv"
    csv_file.write_text(
        f"value,expires_at,reason\n{accounts[0]}\n{accounts[1]},{later},notice 42 item 2\n{accounts[2]},,\n"
    )
    reason, note = "police notice 42", "desk  7 (on behalf of   the AFC)"
    result = _riskgate(
        "lists",
        "import",
        "fraud_accounts",
        str(csv_file),
        "--reason",
        reason,
        "--added-by",
        note,
        cwd=token_server.tmp,
        env=token_server.local_env(),
    )
    return Imported(accounts, reason, note, csv_file.name, result)


def test_lists_import_is_audited_as_local_and_blocks_the_accounts(
    imported: Imported, token_server: TokenServer, cli_redis: EmbeddedRedis, pki: Pki, tmp_path: Path
) -> None:
    assert imported.result.returncode == 0, imported.result.stderr
    assert imported.result.stdout.strip() == "fraud_accounts: 3 imported, 0 rejected"

    entries = _audit(cli_redis)
    imports = [e for e in entries if e["action"] == "lists.import"]
    assert len(imports) == 1, entries
    (entry,) = imports
    assert entry["principal"] == "local"
    assert entry["identity"].startswith("local:") and "@" in entry["identity"]
    assert entry["note"] == " ".join(imported.note.split())  # whitespace folded, nothing else changed
    assert entry["reason"] == imported.reason
    assert entry["list"] == "fraud_accounts"
    assert entry["result"] == "ok"
    assert "3 imported" in entry["detail"] and "0 rejected" in entry["detail"]
    assert imported.file_name in entry["detail"]
    for account in [*imported.accounts, FRAUD_PAYEE]:
        assert all(account not in value for e in entries for value in e.values()), account

    ca, token = ("--ca", str(pki.ca.cert)), ("--token-file", str(token_server.token_files["cli-screen"]))
    for account in imported.accounts:
        decision = _decision(_screen(token_server.server, *ca, *token, cwd=tmp_path, payee=account))
        assert decision["outcome"] == "OUTCOME_BLOCK", decision
    other = _decision(_screen(token_server.server, *ca, *token, cwd=tmp_path, payee=_account()))
    assert other["outcome"] == "OUTCOME_ALLOW"


# --- riskgate audit export / tail ---------------------------------------------------------------


def _lines(text: str) -> list[dict[str, str]]:
    documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(d, dict) for d in documents)
    return documents


def test_audit_export_and_tail(imported: Imported, token_server: TokenServer, cli_redis: EmbeddedRedis) -> None:
    assert imported.result.returncode == 0, imported.result.stderr
    env, cwd = token_server.local_env(), token_server.tmp

    exported = _riskgate("audit", "export", cwd=cwd, env=env)
    assert exported.returncode == 0, exported.stderr
    documents = _lines(exported.stdout)
    assert len(documents) == len(_audit(cli_redis)) >= 2
    assert f"{len(documents)} audit entries exported" in exported.stderr
    for document in documents:
        assert {"stream_id", "at", "principal", "action", "result"} <= document.keys(), document
        assert datetime.fromisoformat(document["at"]).tzinfo is not None
    assert [d["stream_id"] for d in documents] == sorted(
        (d["stream_id"] for d in documents), key=lambda s: tuple(int(p) for p in s.split("-"))
    )
    actions = [(d["principal"], d["action"], d["result"]) for d in documents]
    assert ("cli-writer", "lists.add", "ok") in actions
    assert ("local", "lists.import", "ok") in actions
    added = next(d for d in documents if d["action"] == "lists.add")
    assert added["identity"] == "token:cli-writer" and added["value_hash"]
    for account in [*imported.accounts, FRAUD_PAYEE]:
        assert account not in exported.stdout

    out = cwd / "audit.jsonl"
    to_file = _riskgate("audit", "export", "--out", str(out), cwd=cwd, env=env)
    assert to_file.returncode == 0, to_file.stderr
    assert to_file.stdout == ""
    assert _lines(out.read_text()) == documents

    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    none = _riskgate("audit", "export", "--since", future, cwd=cwd, env=env)
    assert none.returncode == 0, none.stderr
    assert none.stdout == ""
    assert "0 audit entries exported" in none.stderr

    bad = _riskgate("audit", "export", "--since", "yesterday", cwd=cwd, env=env)
    assert bad.returncode == 2
    assert "is not an ISO 8601 time" in bad.stderr

    count = len(documents) - 1  # fewer than there are: the tail stops at the count
    tail = _riskgate("audit", "tail", "--from-start", "--count", str(count), cwd=cwd, env=env, timeout=30)
    assert tail.returncode == 0, tail.stderr
    assert _lines(tail.stdout) == documents[:count]


# --- riskgate policy check ----------------------------------------------------------------------


def test_the_example_policy_stays_valid(tmp_path: Path) -> None:
    result = _riskgate("policy", "check", "deploy/policy.yaml", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "deploy/policy.yaml: 4 roles, 4 principals" in result.stdout
    assert "branch-counters (certificate *.counter.bank.example): screen" in result.stdout

    tokens = tmp_path / "tokens"
    tokens.write_text("\n".join(new_token(name)[1] for name in ("rules-team", "anti-fraud-centre")) + "\n")
    with_tokens = _riskgate("policy", "check", "deploy/policy.yaml", "--tokens", str(tokens), cwd=REPO)
    assert with_tokens.returncode == 0, with_tokens.stderr

    tokens.write_text(new_token("rules-team")[1] + "\n")
    missing = _riskgate("policy", "check", "deploy/policy.yaml", "--tokens", str(tokens), cwd=REPO)
    assert missing.returncode == 1
    assert "token 'anti-fraud-centre' is not in" in missing.stderr
