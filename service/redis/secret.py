"""The secret that keys the hashing of identifiers (HMAC) before they reach Redis.

Every replica sharing a Redis must use the same secret, or their counters
and watchlist look-ups would not meet. With the embedded redis-server the
secret is created on first start beside its data (`$RISKGATE_DATA_DIR/hash-secret`,
mode 0600) and kept with it; with an external Redis it must be given as a
file (`RISKGATE_HASH_SECRET_FILE`), e.g. a mounted Kubernetes secret.
Losing or changing the secret makes every stored counter and list entry
unreachable: back it up with the Redis data.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from service.errors import ConfigError

MIN_SECRET_BYTES = 16
_NEW_SECRET_BYTES = 32


def parse_secret(text: str, source: str) -> bytes:
    """A secret file holds hex (64 characters for 32 bytes); at least 16 bytes."""
    cleaned = text.strip()
    try:
        secret = bytes.fromhex(cleaned)
    except ValueError:
        raise ConfigError(f"{source}: the hash secret must be hexadecimal") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{source}: the hash secret must be at least {MIN_SECRET_BYTES} bytes (32 hex digits)")
    return secret


def read_secret(path: Path) -> bytes:
    try:
        return parse_secret(path.read_text(), str(path))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the hash secret ({error.strerror})") from None


def load_or_create(path: Path) -> bytes:
    """The secret in `path`, created with 32 random bytes if the file does not exist yet."""
    if path.exists():
        return read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(_NEW_SECRET_BYTES) + "\n")
    return read_secret(path)
