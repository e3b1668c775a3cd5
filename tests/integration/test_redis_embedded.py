"""The embedded redis-server: starts, persists, refuses a shared data directory, stops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from service.errors import RedisLaunchError
from service.redis_embedded import EmbeddedRedis, RedisOptions

pytestmark = pytest.mark.integration


def test_unix_socket_server_persists_across_restart(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with EmbeddedRedis(data) as server:
        assert server.url.startswith("unix://")
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
    assert any(data.rglob("*.aof")), "AOF persistence must be on by default"
    with EmbeddedRedis(data) as server:
        client = redis.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        client.close()


def test_tcp_port_on_loopback(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, RedisOptions(persistent=False, port=0)) as server:
        assert server.url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.close()


def test_long_data_dir_falls_back_to_tcp(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    with EmbeddedRedis(deep, RedisOptions(persistent=False)) as server:
        assert server.url.startswith("redis://127.0.0.1:")


def test_second_instance_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, RedisOptions(persistent=False)):
        second = EmbeddedRedis(tmp_path, RedisOptions(persistent=False))
        with pytest.raises(RedisLaunchError, match="in use by another riskgate process"):
            second.start()


def test_stop_terminates_the_child(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, RedisOptions(persistent=False))
    server.start()
    pid = server.pid
    assert pid is not None
    assert server.running
    server.stop()
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
