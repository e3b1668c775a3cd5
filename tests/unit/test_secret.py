from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.redis.secret import load_or_create, parse_secret, read_secret


def test_created_once_private_and_then_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "hash-secret"
    first = load_or_create(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create(path) == first


def test_short_or_malformed_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        parse_secret("abcd", "s")
    with pytest.raises(ConfigError, match="must be hexadecimal"):
        parse_secret("not hex at all, not even close", "s")
    with pytest.raises(ConfigError, match="cannot read the hash secret"):
        read_secret(tmp_path / "missing")
