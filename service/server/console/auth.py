"""Who is calling the console, and may they: the gRPC API's principals and roles over HTTP.

Credentials, in the order the gRPC guard takes them (`Guard.recognise` is the one mapping):

1. a bearer token: `Authorization: Bearer <token>`, or the session cookie a person gets by
   pasting their token into the login page: the cookie names the token (not the token itself),
   expires after `SESSION_SECONDS`, and is signed with HMAC-SHA256 under a key derived from the
   service's hash secret (every replica shares it, so a session works behind a load balancer);
   a token replaced or removed from the tokens file ends its sessions;
2. the client certificate, when the console is served with a client CA (HTTPS, optional there);
3. a loopback peer: the policy's `local` principal (without a policy file, every permission).

Viewing needs `console` or `decisions.read` (`VIEW_PERMISSIONS`); recording a disposition needs
`dispositions.write`. A POST must carry the `X-Riskgate-Console` header (a cross-site form or
script cannot send it without a CORS preflight, which is never answered) and, when the browser
says where it comes from, the console's own origin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from service.errors import PermissionDenied, Unauthenticated
from service.redis.keys import KeyHasher
from service.server.access.guard import Credentials, Guard, Principal

VIEW_PERMISSIONS: Final = frozenset({"console", "decisions.read"})
WRITE_PERMISSION: Final = "dispositions.write"
SESSION_COOKIE: Final = "rg_console"
SESSION_SECONDS: Final = 8 * 3600  # a working shift
CSRF_HEADER: Final = "X-Riskgate-Console"


def session_key(hasher: KeyHasher) -> bytes:
    """The key that signs sessions: from the hash secret (shared by every replica), never the secret
    itself, and no key of Redis' (nothing is hashed under this name)."""
    return hasher.identifier("riskgate.console.session", "v1").encode("ascii")


@dataclass(frozen=True, slots=True)
class Session:
    token_name: str
    fingerprint: str  # of the token's digest in the tokens file: a replaced token ends the session
    expires: int  # unix seconds


class Sessions:
    """Signs and checks session cookies."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest()).decode().rstrip("=")

    def fingerprint(self, digest: bytes) -> str:
        return hmac.new(self._key, b"token:" + digest, hashlib.sha256).hexdigest()[:16]

    def issue(self, token_name: str, digest: bytes, now: float) -> str:
        payload = f"{token_name}\n{self.fingerprint(digest)}\n{int(now) + SESSION_SECONDS}".encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._mac(payload)

    def check(self, cookie: str, now: float) -> Session | None:
        """The session a cookie holds if its signature is ours and it has not expired; else None."""
        body, _, mac = cookie.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            name, fingerprint, expires_text = payload.decode().split("\n")
            expires = int(expires_text)
        except ValueError:
            return None
        if expires <= now:
            return None
        return Session(name, fingerprint, expires)


def bearer_of(headers: Mapping[str, str]) -> str | None:
    """The bearer token of an Authorization header: None without one, "" when it is malformed."""
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


def certificate_names(peercert: Mapping[str, Any] | None) -> list[str]:
    """A verified client certificate's DNS and URI SANs, then its subject CN (as gRPC lists them)."""
    if not peercert:
        return []
    names = [str(value) for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    for rdn in peercert.get("subject", ()):
        names += [str(value) for key, value in rdn if key == "commonName"]
    return names


def is_loopback_host(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class ConsoleAccess:
    """The console's side of the guard: the principal of an HTTP request."""

    def __init__(self, guard: Guard, sessions: Sessions) -> None:
        self.guard = guard
        self.sessions = sessions

    def identify(
        self,
        *,
        bearer: str | None,
        cookie: str | None,
        peercert: Mapping[str, Any] | None,
        remote: str | None,
        now: float,
    ) -> Principal:
        """The request's principal; Unauthenticated or PermissionDenied, as for a gRPC call."""
        verified: str | None = None
        if bearer is None and cookie:
            session = self.sessions.check(cookie, now)
            if session is not None:
                digest = self.guard.tokens.digests.get(session.token_name)
                if digest is None or not hmac.compare_digest(self.sessions.fingerprint(digest), session.fingerprint):
                    raise Unauthenticated("the session's token was replaced or revoked: log in again", "anonymous")
                verified = session.token_name
        return self.guard.recognise(
            Credentials(
                bearer=bearer,
                certificate_names=certificate_names(peercert),
                local_peer="http" if is_loopback_host(remote) else None,
                verified_token=verified,
            )
        )

    def login(self, token: str, now: float) -> tuple[Principal, str]:
        """The principal a pasted token names, and its session cookie; refused like a bearer token,
        and when the principal may not view the console."""
        principal = self.guard.recognise(Credentials(bearer=token.strip() or ""))
        require_view(principal)
        name = self.guard.tokens.verify(token.strip())
        assert name is not None  # recognise admitted it
        return principal, self.sessions.issue(name, self.guard.tokens.digests[name], now)


def may_view(principal: Principal) -> bool:
    return bool(VIEW_PERMISSIONS & principal.permissions)


def may_write(principal: Principal) -> bool:
    return WRITE_PERMISSION in principal.permissions


def require_view(principal: Principal) -> None:
    if not may_view(principal):
        raise PermissionDenied(
            f"principal '{principal.name}' lacks the permission 'console' (or 'decisions.read') the console needs",
            principal.name,
        )


def require_write(principal: Principal) -> None:
    if not may_write(principal):
        raise PermissionDenied(
            f"principal '{principal.name}' lacks the permission '{WRITE_PERMISSION}' recording a disposition needs",
            principal.name,
        )


def cross_site_problem(
    *, method: str, headers: Mapping[str, str], origin: str, allowed: Sequence[str] = ()
) -> str | None:
    """Why a state-changing request looks cross-site (None: it does not)."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    if headers.get(CSRF_HEADER) != "1":
        return f"the {CSRF_HEADER} header is required"
    sent = headers.get("Origin")
    if sent is not None and sent != origin and sent not in allowed:
        return "the request's Origin is not the console's"
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return "the request comes from another site"
    return None
