"""TLS for the gRPC port, from files, reloaded when they change (no restart).

`RISKGATE_TLS_CERT` (the certificate chain, PEM) and `RISKGATE_TLS_KEY` (its
private key) make the port TLS; `RISKGATE_TLS_CLIENT_CA` (PEM bundle) makes
it mTLS: every client must show a certificate that CA signed (gRPC's core
offers "require and verify" or "do not ask", nothing between).

gRPC asks `CertificateFiles.fetch` at each new connection's handshake; when
the files' identity (mtime, size, inode) changed, the new pair is checked
(key matches certificate, CA bundle parses) with Python's `ssl` before it is
handed over: a half-written or mismatched pair is refused, logged, and the
pair in force goes on serving. Connections already open keep the
certificate they began with.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from service.errors import ConfigError

log = logging.getLogger("riskgate.tls")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None


def _identity(files: TlsFiles) -> tuple[tuple[int, int, int], ...]:
    paths = [files.cert, files.key, *([files.client_ca] if files.client_ca else [])]
    stats = [os.stat(p) for p in paths]
    return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)


def check_pair(files: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
    """The files' bytes, after checking them with `ssl`; ValueError saying what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as error:
        raise ValueError(f"{files.cert} with {files.key}: {error}") from None
    ca: bytes | None = None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(f"{files.client_ca}: {error}") from None
        ca = files.client_ca.read_bytes()
    return files.cert.read_bytes(), files.key.read_bytes(), ca


def _config(cert: bytes, key: bytes, ca: bytes | None) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


class CertificateFiles:
    """The certificate configuration gRPC uses, re-read from the files when they change."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        try:
            self._seen = _identity(files)
            cert, key, ca = check_pair(files)
        except (OSError, ValueError) as error:
            raise ConfigError(f"RISKGATE_TLS_CERT / RISKGATE_TLS_KEY / RISKGATE_TLS_CLIENT_CA: {error}") from None
        self._initial = _config(cert, key, ca)
        self.reloads = 0
        self.rejected = 0

    def credentials(self) -> grpc.ServerCredentials:
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)  # None: "unchanged"
        return grpc.dynamic_ssl_server_credentials(
            self._initial, fetch, require_client_authentication=self.files.client_ca is not None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each handshake: a new configuration, or None for "unchanged"."""
        try:
            seen = _identity(self.files)
        except OSError as error:  # mid-rotation (a file renamed away): keep what serves
            log.warning("TLS files not readable (%s): the certificate in force stays", error)
            return None
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            cert, key, ca = check_pair(self.files)
        except (OSError, ValueError) as error:
            self.rejected += 1
            log.error("new TLS files refused, the certificate in force stays: %s", error)
            return None
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"fields": {"cert": str(self.files.cert)}})
        return _config(cert, key, ca)
