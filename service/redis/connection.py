"""Connecting to the configured Redis: one place for client options, cluster or not.

The server keeps one client for its lifetime. The command-line tools
(`riskgate lists`, `riskgate decisions`, `riskgate audit`) use `tool_connection`, which
reaches the same Redis the server uses: the external one when
RISKGATE_REDIS_URL is set; else the running server's embedded redis-server
through its socket; else, when no server is running, a short-lived embedded
redis-server on the same data directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.errors import RedisLaunchError
from service.redis.embedded import EmbeddedRedis
from service.redis.keys import KeyHasher
from service.redis.secret import load_or_create, read_secret
from service.settings import Settings

# A screening waits at most its budget for Redis; these bound what a stuck
# connection can cost in the background (connect attempts, a slow reply).
SOCKET_TIMEOUT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 0.5
# The tools wait on Redis on purpose: the tails block in XREAD for a second at a
# time, an import sends pipelines of a thousand entries. Their socket timeout
# only has to catch a Redis that stopped answering, well above any such wait.
TOOL_SOCKET_TIMEOUT_SECONDS = 10.0


def make_client(url: str, *, cluster: bool, socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> Any:
    """A redis.asyncio client (a RedisCluster when `cluster`), replies as bytes.

    redis-py retries failed commands by default. A counter script whose reply
    was lost may already have run, so a retry would count the event twice:
    retries are off, and a failure degrades the decision instead.
    `socket_timeout` bounds one reply; it must exceed any blocking command's
    own wait (XREAD BLOCK), or the wait ends in a TimeoutError.
    """
    no_retry = Retry(NoBackoff(), 0)
    if cluster:
        return RedisCluster.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            retry=no_retry,
        )
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=0,
        retry=no_retry,
    )


def hasher_for(settings: Settings) -> KeyHasher:
    """The identifier hasher, with the secret created on first use of an embedded Redis."""
    path = settings.hash_secret_path()
    created = settings.embedded_redis and settings.hash_secret_file is None
    secret = load_or_create(path) if created else read_secret(path)
    return KeyHasher(secret)


def embedded_dir(settings: Settings) -> Path:
    return settings.data_dir / "redis"


@contextlib.asynccontextmanager
async def tool_connection(settings: Settings) -> AsyncIterator[Any]:
    """A client for command-line tools, to the Redis the server uses (see the module doc).

    With the tools' socket timeout, not the server's: a tail waiting in XREAD
    for the next entry is not a stuck connection.
    """
    if settings.redis_url is not None:
        client = make_client(
            settings.redis_url, cluster=settings.redis_cluster, socket_timeout=TOOL_SOCKET_TIMEOUT_SECONDS
        )
        try:
            yield client
        finally:
            await client.aclose()
        return
    embedded = EmbeddedRedis(embedded_dir(settings))
    started = False
    try:
        embedded.start()
        started = True
    except RedisLaunchError:
        # The data directory is locked: a running server owns it; use its socket.
        if not embedded.socket_path.exists():
            raise
    client = make_client(embedded.url, cluster=False, socket_timeout=TOOL_SOCKET_TIMEOUT_SECONDS)
    try:
        yield client
    finally:
        await client.aclose()
        if started:
            embedded.stop()
