"""Shared fixtures: a real redis-server on loopback, started and stopped here."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.redis.embedded import EmbeddedRedis, RedisOptions, find_redis_server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session, on a free loopback TCP port, no persistence."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), RedisOptions(persistent=False, port=0))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The URL of a flushed database on the session's redis-server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


CLUSTER_SLOTS = 16384


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, below the ephemeral range."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def start_cluster(base: Path, masters: int = 3, timeout: float = 20.0) -> list[EmbeddedRedis]:
    """A local Redis Cluster of `masters` nodes on free loopback ports, slots split evenly."""
    nodes = [
        EmbeddedRedis(base / f"node{i}", RedisOptions(persistent=False, port=free_cluster_port(), cluster=True))
        for i in range(masters)
    ]
    try:
        for node in nodes:
            node.start()
        clients = [redis.Redis(host="127.0.0.1", port=node.port) for node in nodes]
        per_node = CLUSTER_SLOTS // masters
        for index, client in enumerate(clients):
            first = index * per_node
            last = CLUSTER_SLOTS if index == masters - 1 else first + per_node
            client.execute_command("CLUSTER ADDSLOTS", *range(first, last))
        for client in clients[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", nodes[0].port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [client.execute_command("CLUSTER INFO") for client in clients]
            if all(b"cluster_state:ok" in _as_bytes(state) for state in states):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the test Redis Cluster did not reach cluster_state:ok")
        for client in clients:
            client.close()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        return "\n".join(f"{k}:{v}" for k, v in value.items()).encode()
    return repr(value).encode()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EmbeddedRedis]]:
    """A real 3-master Redis Cluster on loopback ports, for the session."""
    nodes = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: list[EmbeddedRedis]) -> Iterator[str]:
    """A startup URL of the flushed test cluster (any node; clients discover the rest)."""
    for node in redis_cluster:
        client = redis.Redis(host="127.0.0.1", port=node.port)
        client.flushall()
        client.close()
    yield f"redis://127.0.0.1:{redis_cluster[0].port}/0"


def start_unowned_redis(conf: Path) -> int:
    """A redis-server on `conf` whose parent (a shell) has already exited, as after a crash of a
    riskgate that started it without the parent-death signal; its pid."""
    shell = subprocess.run(
        ["sh", "-c", '"$0" "$1" >/dev/null 2>&1 </dev/null & echo $!', find_redis_server(), str(conf)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
        start_new_session=True,
    )
    return int(shell.stdout)
