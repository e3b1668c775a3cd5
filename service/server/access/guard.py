"""Who is calling, and may they: authentication and authorisation for every RPC.

`Guard` is a gRPC server interceptor. For each call it finds the principal
from the credentials, in this order:

1. a bearer token (`authorization: Bearer <token>` metadata): its name in
   the tokens file, then the policy principal holding that token; a token
   that is presented but unknown is refused, whatever else the call has;
2. the client certificate (mTLS): its DNS/URI SANs and subject CN, matched
   against the policy principals' `certificate` patterns;
3. a loopback or Unix-socket peer without credentials: the policy's `local`
   principal, if it declares one (without a policy file, every local caller).

No credentials → UNAUTHENTICATED; credentials that name no principal, or a
principal without the RPC's permission (`policy.METHOD_PERMISSIONS`) →
PERMISSION_DENIED. Both are counted by principal
(`riskgate_access_denied_total`); a refused admin RPC is also audited.
Health is open to all; reflection to any principal. The handler reads the
principal from `current_principal()`.

The same mapping of credentials to a principal serves the web console
(`service.server.console.auth`): `Guard.recognise(Credentials)` is that one
function, whatever carried the credentials (gRPC metadata and auth context, or
an HTTP header, a session cookie and the TLS peer certificate), and
`Guard.refused` counts (and audits) a refusal the same way for both.

The policy and tokens files are re-read when they change (`reload`); a file
with problems is refused and the one in force stays (and the refusal is audited).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from service.errors import ConfigError, PermissionDenied, SourceError, Unauthenticated
from service.pipeline.api import status_of
from service.server.access.audit import AuditEntry, AuditTrail
from service.server.access.policy import (
    AUTHENTICATED_METHODS,
    LOCAL_DEFAULT,
    METHOD_PERMISSIONS,
    OPEN_METHODS,
    Policy,
    PrincipalSpec,
    load_policy,
)
from service.server.access.tokens import NO_TOKENS, Tokens, load_tokens

log = logging.getLogger("riskgate.access")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

# Refusals audited: the admin RPCs (an outlet probing the lists is worth a line as much as one
# trying to change them) and dispositions (labels a rule's precision is measured by).
AUDITED_PERMISSIONS = frozenset({"lists.read", "lists.write", "rules.admin", "dispositions.write"})
_LOCAL_PEERS = ("unix:", "ipv4:127.", "ipv6:[::1]", "ipv6:%5B::1%5D")


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller the policy knows: its name there, the identity it showed, its permissions."""

    name: str
    identity: str
    permissions: frozenset[str]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a caller showed, whatever the protocol carrying it."""

    bearer: str | None  # a bearer token; "" when one was presented malformed; None: none presented
    certificate_names: Sequence[str] = ()  # the client certificate's SANs, then its subject CN
    local_peer: str | None = None  # "unix", "ipv4", "http"... for a loopback or Unix-socket peer; else None
    # A token name a signed session vouches for (the console's login): taken as that token, if the
    # tokens file still lists it.
    verified_token: str | None = None


# The principal of the call being handled (set by the Guard around each handler).
_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("riskgate_principal", default=None)
LOCAL_TOOL = Principal("local", "local:tool", frozenset())


def current_principal() -> Principal:
    """The principal of the RPC being handled. Outside a guarded call (in-process tests of
    handlers), a local tool."""
    return _CURRENT.get() or LOCAL_TOOL


def is_local_peer(peer: str) -> bool:
    return peer.startswith(_LOCAL_PEERS)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Watched:
    """A file's identity (mtime, size, inode), to notice a change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seen = self.now()

    def now(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class Guard(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        policy_file: Path | None,
        tokens_file: Path | None,
        on_denied: Callable[[str, str], None] | None = None,
    ) -> None:
        if tokens_file is not None and policy_file is None:
            raise ConfigError("RISKGATE_TOKENS_FILE needs RISKGATE_POLICY_FILE (which principal holds which token)")
        self._policy_file = _Watched(policy_file)
        self._tokens_file = _Watched(tokens_file)
        try:
            self.policy: Policy = load_policy(policy_file) if policy_file is not None else LOCAL_DEFAULT
            self.tokens: Tokens = load_tokens(tokens_file) if tokens_file is not None else NO_TOKENS
        except SourceError as error:
            raise ConfigError(f"access control: {error}") from None
        self._check_token_names(self.policy, self.tokens)
        self._on_denied = on_denied
        self.audit: AuditTrail | None = None

    @staticmethod
    def _check_token_names(policy: Policy, tokens: Tokens) -> None:
        for name in sorted(policy.token_names() - set(tokens.digests)):
            log.warning("policy principal holds token '%s', which the tokens file does not list", name)

    @property
    def developer_default(self) -> bool:
        return self.policy is LOCAL_DEFAULT

    # --- who is calling ------------------------------------------------------------------

    def identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The principal of a call; Unauthenticated or PermissionDenied when there is none."""
        auth = context.auth_context() or {}
        identities = [_text(v) for v in auth.get("x509_subject_alternative_name", ())]
        identities += [_text(v) for v in auth.get("x509_common_name", ())]
        peer = context.peer() or ""
        return self.recognise(
            Credentials(
                bearer=self._bearer(context.invocation_metadata() or ()),
                certificate_names=identities,
                local_peer=peer.split(":", 1)[0] if is_local_peer(peer) else None,
            )
        )

    def recognise(self, credentials: Credentials) -> Principal:
        """The principal the credentials name (gRPC's and the console's one mapping), in the order
        of the module doc; Unauthenticated or PermissionDenied when there is none."""
        token = credentials.bearer
        if token is not None or credentials.verified_token is not None:
            name = self.tokens.verify(token) if token is not None else credentials.verified_token
            if name is None or name not in self.tokens.digests:
                raise Unauthenticated("the bearer token is not valid", "anonymous")
            spec = self.policy.by_token(name)
            if spec is None:
                raise PermissionDenied(f"token '{name}' holds no role in the policy", "unmatched")
            return self._principal(spec, f"token:{name}")
        identities = list(credentials.certificate_names)
        if identities:
            found = self.policy.by_certificate(identities)
            if found is None:
                raise PermissionDenied(
                    f"the client certificate ({identities[0]}) matches no principal in the policy",
                    "unmatched",
                )
            spec, identity = found
            return self._principal(spec, f"cert:{identity}")
        if credentials.local_peer is not None:
            spec = self.policy.local()
            if spec is not None:
                return self._principal(spec, f"local:{credentials.local_peer}")
        if self.developer_default:
            raise PermissionDenied(
                "no access policy (RISKGATE_POLICY_FILE): only loopback and Unix-socket callers are served",
                "anonymous",
            )
        raise Unauthenticated(
            "credentials required: a client certificate or 'authorization: Bearer <token>'",
            "anonymous",
        )

    @staticmethod
    def _bearer(metadata: Any) -> str | None:
        for key, value in metadata:
            if key == "authorization":
                scheme, _, token = _text(value).partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return ""  # presented, and not valid
                return token.strip()
        return None

    @staticmethod
    def _principal(spec: PrincipalSpec, identity: str) -> Principal:
        return Principal(spec.name, identity, spec.permissions)

    def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The call's principal if it may call `method`; else Unauthenticated or PermissionDenied."""
        principal = self.identify(context)
        if method in AUTHENTICATED_METHODS:
            return principal
        needed = METHOD_PERMISSIONS.get(method)
        if needed is None:
            raise PermissionDenied(f"{method} is not open to any role", principal.name)
        if needed not in principal.permissions:
            raise PermissionDenied(
                f"principal '{principal.name}' lacks the permission '{needed}' this call needs",
                principal.name,
            )
        return principal

    async def _refuse(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], denied: Unauthenticated | PermissionDenied
    ) -> NoReturn:
        code = status_of(denied)
        await self.refused(
            denied,
            permission=METHOD_PERMISSIONS.get(method),
            identity=_peer_identity(context),
            detail=f"{method}: {denied}",
        )
        await context.abort(code, str(denied))
        raise AssertionError("abort returned")  # pragma: no cover - abort raises

    async def refused(
        self, denied: Unauthenticated | PermissionDenied, *, permission: str | None, identity: str, detail: str
    ) -> None:
        """Count a refusal by principal and code (`riskgate_access_denied_total`), and audit it when
        what was refused needs one of AUDITED_PERMISSIONS."""
        code = status_of(denied)
        if self._on_denied is not None:
            self._on_denied(denied.label, code.name)
        if permission in AUDITED_PERMISSIONS and self.audit is not None:
            await self.audit.record(
                AuditEntry(principal=denied.label, identity=identity, action="denied", result=code.name, detail=detail)
            )

    # --- the interceptor ---------------------------------------------------------------

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in OPEN_METHODS:
            return handler
        return self._wrap(method, handler)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[_Req, _Resp]) -> grpc.RpcMethodHandler[_Req, _Resp]:
        serializers = (handler.request_deserializer, handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._single(method, handler.unary_unary), *serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(method, handler.unary_stream), *serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._single(method, handler.stream_unary), *serializers)
        return grpc.stream_stream_rpc_method_handler(self._streaming(method, handler.stream_stream), *serializers)

    def _single(self, method: str, inner: Any) -> Callable[..., Awaitable[Any]]:
        """A handler answering one message (its request one message or a stream), admitted first."""
        guard = self

        async def single(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                principal = guard.admit(method, context)
            except (Unauthenticated, PermissionDenied) as denied:
                await guard._refuse(method, context, denied)
            token = _CURRENT.set(principal)
            try:
                return await inner(request, context)
            finally:
                _CURRENT.reset(token)

        return single

    def _streaming(self, method: str, inner: Any) -> Callable[..., AsyncIterator[Any]]:
        guard = self

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                principal = guard.admit(method, context)
            except (Unauthenticated, PermissionDenied) as denied:
                await guard._refuse(method, context, denied)
            _CURRENT.set(principal)  # this generator's own context: nothing to reset
            result = inner(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result  # a handler that writes with context.write()

        return streaming

    # --- reloads -------------------------------------------------------------------------

    async def reload(self) -> None:
        """Re-read the policy and tokens files if they changed; audit each attempt."""
        for watched, what in ((self._policy_file, "policy"), (self._tokens_file, "tokens")):
            now = watched.now()
            if watched.path is None or now == watched.seen:
                continue
            watched.seen = now
            try:
                if what == "policy":
                    policy = load_policy(watched.path)
                    self._check_token_names(policy, self.tokens)
                    self.policy = policy
                else:
                    tokens = load_tokens(watched.path)
                    self._check_token_names(self.policy, tokens)
                    self.tokens = tokens
                result, detail = "ok", f"{watched.path}"
                log.info("%s file reloaded", what, extra={"fields": {"file": str(watched.path)}})
            except SourceError as error:
                result, detail = "rejected", str(error)
                log.error("%s file rejected, the one in force stays: %s", what, error)
            if self.audit is not None:
                await self.audit.record(
                    AuditEntry(
                        principal="file",
                        identity=f"file:{watched.path}",
                        action=f"{what}.reload",
                        result=result,
                        detail=detail,
                    )
                )


def _peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    auth = context.auth_context() or {}
    names = list(auth.get("x509_subject_alternative_name") or auth.get("x509_common_name") or ())
    if names:
        return f"cert:{_text(names[0])}"
    return f"peer:{(context.peer() or '').split(':', 1)[0]}"
