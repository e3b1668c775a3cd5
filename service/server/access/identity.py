"""How riskgate's own tools identify themselves: on the local-trust path (Redis and the hashing
secret of this host) as `local:<user>@<host>`; over gRPC like any client (`ClientCredentials`)."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.errors import ConfigError
from service.settings import is_loopback


def local_identity() -> str:
    """Who runs a tool on the local-trust path: `local:<user>@<host>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"local:{user}@{socket.gethostname()}"


def _loopback(target: str) -> bool:
    try:
        return is_loopback(target)
    except ConfigError:
        return False


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """A gRPC client's side of TLS, mTLS and bearer tokens, from files (a token is never an
    argument: it would show in `ps` and the shell's history)."""

    ca: Path | None = None  # the CA that signed the server's certificate: TLS when set
    cert: Path | None = None  # the client's certificate and key: mTLS
    key: Path | None = None
    token_file: Path | None = None  # a file holding the bearer token

    def channel(self, target: str) -> grpc.Channel:
        if self.ca is None:
            if self.cert is not None or self.key is not None:
                raise ValueError("--cert and --key need --ca (the server's CA: mTLS is TLS first)")
            if self.token_file is not None and not _loopback(target):
                raise ValueError("a bearer token goes over TLS only (--ca), unless the target is loopback")
            return grpc.insecure_channel(target)
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")
        credentials = grpc.ssl_channel_credentials(
            self.ca.read_bytes(),
            self.key.read_bytes() if self.key else None,
            self.cert.read_bytes() if self.cert else None,
        )
        return grpc.secure_channel(target, credentials)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token_file is None:
            return ()
        token = self.token_file.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"{self.token_file} is empty")
        return (("authorization", f"Bearer {token}"),)
