"""The access guard's interception, called directly (pure code: no server, no network).

`Guard` is handed a fake of what grpc.aio gives an interceptor and a handler: the handler-call
details (the method), and a servicer context (metadata, auth context, peer, abort). Each way of
being identified (a bearer token, a client certificate, a local peer) and each way of being
refused is one test; a refusal must abort with its status code, be counted through the denial
callback by principal and code, and, for the admin RPCs (Watchlists, Rules), be audited.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from service.errors import ConfigError
from service.server.access.audit import AuditTrail
from service.server.access.guard import Guard, Principal, current_principal
from service.server.access.policy import METHOD_PERMISSIONS
from service.server.access.tokens import new_token

SCREEN = "/riskgate.v1.Screening/Screen"
SCREEN_STREAM = "/riskgate.v1.Screening/ScreenStream"
ADD_ENTRY = "/riskgate.v1.Watchlists/AddEntry"
CHECK_ENTRY = "/riskgate.v1.Watchlists/CheckEntry"
RELOAD_RULES = "/riskgate.v1.Rules/ReloadRules"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
UNLISTED = "/riskgate.v1.Screening/Backdoor"

REMOTE = "ipv4:10.0.0.7:50000"
LOOPBACK = "ipv4:127.0.0.1:50000"

POLICY = """\
roles:
  outlet: [screen]
  back_office: [screen, lists.read, lists.write]
  rules_admin: [rules.admin]
principals:
  - name: branch-counters
    certificate: "*.counter.bank.example"
    roles: [outlet]
  - name: risk-office
    certificate: "risk-office.bank.example"
    roles: [back_office]
  - name: rules-team
    token: rules-team
    roles: [rules_admin]
  - name: risk-desk
    token: risk-desk
    roles: [back_office]
{local}"""
LOCAL_PRINCIPAL = """\
  - name: ops-console
    local: true
    roles: [outlet]
"""


class Aborted(Exception):
    """What the fake context's `abort` raises (grpc.aio raises its own AbortError)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class Context:
    """What the guard reads of a grpc.aio.ServicerContext, and its abort."""

    metadata: Sequence[tuple[str, str | bytes]] = ()
    auth: dict[str, list[bytes]] = field(default_factory=dict)
    peer_address: str = REMOTE

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth

    def peer(self) -> str:
        return self.peer_address

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


@dataclass
class CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


class FakeRedis:
    """The audit trail's Redis: keeps what it is given."""

    def __init__(self) -> None:
        self.added: list[tuple[str, dict[str, str]]] = []

    async def xadd(self, key: str, fields: dict[str, str]) -> bytes:
        self.added.append((key, fields))
        return b"1-0"


class FixedClock:
    def now(self) -> datetime:
        return datetime(2026, 12, 1, 9, 30, tzinfo=UTC)

    def monotonic(self) -> float:
        return 0.0


@dataclass
class Guarded:
    guard: Guard
    denials: list[tuple[str, str]]
    audit: FakeRedis
    tokens: dict[str, str]

    def admit(self, method: str, context: Context) -> Principal:
        return self.guard.admit(method, cast(Any, context))

    async def call(self, method: str, context: Context) -> Principal:
        """Make a unary call through the interceptor; the principal its handler saw."""

        async def handler(request: object, handler_context: object) -> Principal:
            assert request == "request" and handler_context is context
            return current_principal()

        wrapped = await self._intercept(method, grpc.unary_unary_rpc_method_handler(handler))
        assert wrapped is not None and wrapped.unary_unary is not None
        answer = cast(Callable[[object, object], Awaitable[Principal]], wrapped.unary_unary)
        return await answer("request", context)

    async def stream(self, method: str, context: Context) -> list[str]:
        """Make a bidirectional streaming call through the interceptor; what it answered."""

        async def handler(requests: AsyncIterator[str], handler_context: object) -> AsyncIterator[str]:
            async for request in requests:
                yield f"{request} for {current_principal().name}"

        async def requests() -> AsyncIterator[str]:
            yield "first"
            yield "second"

        wrapped = await self._intercept(method, grpc.stream_stream_rpc_method_handler(handler))
        assert wrapped is not None and wrapped.stream_stream is not None
        answers = cast(Callable[[object, object], AsyncIterator[str]], wrapped.stream_stream)
        return [answer async for answer in answers(requests(), context)]

    async def _intercept(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
            assert details.method == method
            return handler

        return await self.guard.intercept_service(continuation, CallDetails(method))

    @property
    def audited(self) -> list[dict[str, str]]:
        return [fields for _, fields in self.audit.added]


def make_guard(directory: Path | None, *, local: bool = False) -> Guarded:
    """A guard under the test policy (with a local principal when `local`), or, with no
    directory, under the developer default."""
    tokens: dict[str, str] = {}
    policy_file = tokens_file = None
    if directory is not None:
        lines = []
        for name in ("rules-team", "risk-desk", "no-role"):  # "no-role": in the file, held by no principal
            tokens[name], line = new_token(name)
            lines.append(line)
        tokens_file = directory / "tokens"
        tokens_file.write_text("\n".join(lines) + "\n")
        policy_file = directory / "policy.yaml"
        policy_file.write_text(POLICY.format(local=LOCAL_PRINCIPAL if local else ""))
    denials: list[tuple[str, str]] = []
    guard = Guard(
        policy_file=policy_file, tokens_file=tokens_file, on_denied=lambda who, code: denials.append((who, code))
    )
    redis = FakeRedis()
    guard.audit = AuditTrail(redis, "rg", FixedClock())
    return Guarded(guard, denials, redis, tokens)


@pytest.fixture
def guarded(tmp_path: Path) -> Guarded:
    return make_guard(tmp_path)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("user-agent", "grpc-python"), ("authorization", f"Bearer {token}"))


def certificate(*sans: str, cn: str | None = None) -> dict[str, list[bytes]]:
    auth = {"x509_subject_alternative_name": [name.encode() for name in sans]}
    if cn is not None:
        auth["x509_common_name"] = [cn.encode()]
    return auth


# --- who is calling -------------------------------------------------------------------------


async def test_a_valid_token_names_the_principal_holding_it(guarded: Guarded) -> None:
    principal = await guarded.call(CHECK_ENTRY, Context(bearer(guarded.tokens["risk-desk"])))
    assert principal.name == "risk-desk" and principal.identity == "token:risk-desk"
    assert "lists.write" in principal.permissions
    assert guarded.denials == [] and guarded.audited == []


async def test_the_handler_sees_no_principal_after_the_call(guarded: Guarded) -> None:
    await guarded.call(SCREEN, Context(bearer(guarded.tokens["risk-desk"])))
    assert current_principal().name == "local" and current_principal().identity == "local:tool"


@pytest.mark.parametrize(
    "header",
    ["Bearer rgt_not-a-token-anyone-was-given", "Basic dXNlcjpwYXNz", "Bearer ", "bearer"],
    ids=["unknown token", "another scheme", "empty token", "no token"],
)
async def test_an_invalid_token_is_unauthenticated(guarded: Guarded, header: str) -> None:
    with pytest.raises(Aborted) as refused:
        await guarded.call(SCREEN, Context((("authorization", header),)))
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details == "the bearer token is not valid"
    assert guarded.denials == [("anonymous", "UNAUTHENTICATED")]


async def test_an_invalid_token_is_refused_whatever_else_the_call_shows(tmp_path: Path) -> None:
    guarded = make_guard(tmp_path, local=True)
    context = Context(
        bearer("rgt_forged"), certificate("risk-office.bank.example"), peer_address=LOOPBACK
    )  # a certificate and a local peer that would each be admitted
    with pytest.raises(Aborted) as refused:
        await guarded.call(CHECK_ENTRY, context)
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_a_token_bytes_header_is_read_as_text(guarded: Guarded) -> None:
    token = guarded.tokens["rules-team"].encode()
    principal = guarded.admit(RELOAD_RULES, Context((("authorization", b"Bearer " + token),)))
    assert principal.name == "rules-team"


async def test_a_token_no_principal_holds_is_denied(guarded: Guarded) -> None:
    with pytest.raises(Aborted) as refused:
        await guarded.call(SCREEN, Context(bearer(guarded.tokens["no-role"])))
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details == "token 'no-role' holds no role in the policy"
    assert guarded.denials == [("unmatched", "PERMISSION_DENIED")]


@pytest.mark.parametrize(
    ("auth", "name", "identity"),
    [
        (certificate("c17.counter.bank.example"), "branch-counters", "cert:c17.counter.bank.example"),
        (certificate("C17.Counter.Bank.Example"), "branch-counters", "cert:C17.Counter.Bank.Example"),
        (
            certificate("printer.bank.example", "risk-office.bank.example"),
            "risk-office",
            "cert:risk-office.bank.example",
        ),
        (certificate(cn="risk-office.bank.example"), "risk-office", "cert:risk-office.bank.example"),
    ],
    ids=["wildcard SAN", "case-insensitive", "second SAN", "subject CN"],
)
async def test_a_certificate_matching_a_principal_names_it(
    guarded: Guarded, auth: dict[str, list[bytes]], name: str, identity: str
) -> None:
    principal = await guarded.call(SCREEN, Context(auth=auth))
    assert (principal.name, principal.identity) == (name, identity)
    assert guarded.denials == []


@pytest.mark.parametrize(
    "auth",
    [
        certificate("printer.bank.example"),
        certificate("a.b.counter.bank.example"),  # "*" stands for exactly one label
        certificate("counter.bank.example"),
        certificate(cn="risk-office.bank.example.evil.example"),
    ],
    ids=["other name", "two labels", "no label", "suffixed CN"],
)
async def test_a_certificate_matching_no_principal_is_denied(guarded: Guarded, auth: dict[str, list[bytes]]) -> None:
    with pytest.raises(Aborted) as refused:
        await guarded.call(SCREEN, Context(auth=auth, peer_address=LOOPBACK))
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "matches no principal in the policy" in refused.value.details
    assert guarded.denials == [("unmatched", "PERMISSION_DENIED")]


@pytest.mark.parametrize("peer", [LOOPBACK, "ipv6:[::1]:50000", "unix:/run/riskgate.sock"])
async def test_a_local_peer_has_every_permission_under_the_developer_default(peer: str) -> None:
    guarded = make_guard(None)
    principal = await guarded.call(RELOAD_RULES, Context(peer_address=peer))
    assert principal.name == "local" and principal.identity == f"local:{peer.split(':', 1)[0]}"
    assert set(METHOD_PERMISSIONS.values()) <= principal.permissions


async def test_a_remote_peer_is_denied_under_the_developer_default() -> None:
    guarded = make_guard(None)
    with pytest.raises(Aborted) as refused:
        await guarded.call(SCREEN, Context(peer_address=REMOTE))
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details.startswith("no access policy (RISKGATE_POLICY_FILE)")
    assert guarded.denials == [("anonymous", "PERMISSION_DENIED")]


async def test_a_local_peer_is_the_policys_local_principal(tmp_path: Path) -> None:
    guarded = make_guard(tmp_path, local=True)
    principal = await guarded.call(SCREEN, Context(peer_address="unix:/run/riskgate.sock"))
    assert principal.name == "ops-console" and principal.identity == "local:unix"
    with pytest.raises(Aborted) as refused:  # and only with that principal's roles
        await guarded.call(ADD_ENTRY, Context(peer_address=LOOPBACK))
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert guarded.denials == [("ops-console", "PERMISSION_DENIED")]


@pytest.mark.parametrize("peer", [LOOPBACK, REMOTE])
async def test_without_credentials_under_a_policy_without_a_local_principal_is_unauthenticated(
    guarded: Guarded, peer: str
) -> None:
    with pytest.raises(Aborted) as refused:
        await guarded.call(SCREEN, Context(peer_address=peer))
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details.startswith("credentials required")
    assert guarded.denials == [("anonymous", "UNAUTHENTICATED")]


def test_a_tokens_file_without_a_policy_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(new_token("someone")[1] + "\n")
    with pytest.raises(ConfigError, match="RISKGATE_TOKENS_FILE needs RISKGATE_POLICY_FILE"):
        Guard(policy_file=None, tokens_file=tmp_path / "tokens")


# --- may they ------------------------------------------------------------------------------


async def test_a_permitted_rpc_reaches_its_handler(guarded: Guarded) -> None:
    principal = await guarded.call(RELOAD_RULES, Context(bearer(guarded.tokens["rules-team"])))
    assert principal.name == "rules-team"
    assert guarded.denials == [] and guarded.audited == []


async def test_a_forbidden_rpc_is_denied(guarded: Guarded) -> None:
    with pytest.raises(Aborted) as refused:
        await guarded.call(SCREEN, Context(bearer(guarded.tokens["rules-team"])))
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details == "principal 'rules-team' lacks the permission 'screen' this call needs"
    assert guarded.denials == [("rules-team", "PERMISSION_DENIED")]
    assert guarded.audited == []  # Screening refusals are counted, not audited


async def test_an_rpc_missing_from_the_permission_table_is_refused_to_everyone() -> None:
    guarded = make_guard(None)  # the developer default holds every permission there is
    with pytest.raises(Aborted) as refused:
        await guarded.call(UNLISTED, Context(peer_address=LOOPBACK))
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details == f"{UNLISTED} is not open to any role"
    assert guarded.denials == [("local", "PERMISSION_DENIED")]


async def test_a_streaming_rpc_is_guarded_too(guarded: Guarded) -> None:
    office = Context(auth=certificate("risk-office.bank.example"))
    assert await guarded.stream(SCREEN_STREAM, office) == ["first for risk-office", "second for risk-office"]
    with pytest.raises(Aborted) as refused:
        await guarded.stream(SCREEN_STREAM, Context(bearer(guarded.tokens["rules-team"])))
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert guarded.denials == [("rules-team", "PERMISSION_DENIED")]


async def test_health_is_open_to_anyone_and_not_wrapped(guarded: Guarded) -> None:
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    assert await guarded._intercept(HEALTH, handler) is handler
    assert await guarded._intercept(SCREEN, None) is None  # an unknown method stays unknown to gRPC


async def test_reflection_is_open_to_any_principal_but_not_to_anonymous_callers(guarded: Guarded) -> None:
    principal = await guarded.call(REFLECTION, Context(bearer(guarded.tokens["rules-team"])))
    assert principal.name == "rules-team"
    with pytest.raises(Aborted) as refused:
        await guarded.call(REFLECTION, Context())
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


# --- audited refusals ------------------------------------------------------------------------


async def test_a_refused_watchlists_call_is_audited(guarded: Guarded) -> None:
    context = Context(auth=certificate("c17.counter.bank.example"))
    with pytest.raises(Aborted):
        await guarded.call(ADD_ENTRY, context)
    [(key, entry)] = guarded.audit.added
    assert key == "rg:audit"
    assert entry == {
        "at": "2026-12-01T09:30:00.000+00:00",
        "principal": "branch-counters",
        "identity": "cert:c17.counter.bank.example",
        "action": "denied",
        "result": "PERMISSION_DENIED",
        "list": "",
        "value_hash": "",
        "reason": "",
        "note": "",
        "detail": f"{ADD_ENTRY}: principal 'branch-counters' lacks the permission 'lists.write' this call needs",
    }
    assert guarded.denials == [("branch-counters", "PERMISSION_DENIED")]


async def test_an_unauthenticated_rules_call_is_audited_with_its_peer(guarded: Guarded) -> None:
    with pytest.raises(Aborted):
        await guarded.call(RELOAD_RULES, Context(bearer("rgt_forged"), peer_address=REMOTE))
    [entry] = guarded.audited
    assert (entry["principal"], entry["identity"], entry["action"], entry["result"]) == (
        "anonymous",
        "peer:ipv4",
        "denied",
        "UNAUTHENTICATED",
    )
    assert entry["detail"] == f"{RELOAD_RULES}: the bearer token is not valid"


@pytest.mark.parametrize(
    "method",
    [CHECK_ENTRY, ADD_ENTRY, RELOAD_RULES, "/riskgate.v1.Rules/RearmBreaker", "/riskgate.v1.Rules/ListBreakers"],
)
async def test_every_refused_admin_call_is_audited_once(guarded: Guarded, method: str) -> None:
    with pytest.raises(Aborted):
        await guarded.call(method, Context(auth=certificate("c17.counter.bank.example")))
    [entry] = guarded.audited
    assert entry["action"] == "denied" and entry["detail"].startswith(f"{method}: ")
    assert len(guarded.denials) == 1


async def test_a_refusal_is_counted_without_an_audit_trail(tmp_path: Path) -> None:
    guarded = make_guard(tmp_path)
    guarded.guard.audit = None  # a guard not wired to Redis (in-process tools)
    with pytest.raises(Aborted):
        await guarded.call(ADD_ENTRY, Context())
    assert guarded.denials == [("anonymous", "UNAUTHENTICATED")]
