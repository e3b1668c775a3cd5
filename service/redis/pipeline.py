"""Pipeline transports for a single Redis: a pipeline's round trip without redis-py's per-call costs.

Two pieces, used by the counter store (`service.riskdata.counters.store`) for every screening's
shared round trip:

* `DirectPipeline`: what a caller queues its commands on. It packs each command into RESP when it
  is queued and hands the whole batch, in one write, to an exchange function: the round trip of a
  redis-py pipeline for about a third of its CPU. The exchange is the client's multiplexed
  connection (`service.redis.mux`), or, where that does not apply (TLS, RESP3), `HeldConnections`.
* `HeldConnections`: connections taken from a client's pool and kept for such exchanges, one per
  concurrent exchange, without redis-py's pool checkout and per-read timeouts. `held_connections`
  gives the one set of a client's pool, shared by everything that sends on that client.

Neither knows what the commands are; replies come back in order, error replies as exception
objects (redis-py's classes).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service.redis.mux import pack_command

Exchange = Callable[[bytes, int], Awaitable[list[Any]]]
"""Send packed RESP holding `count` commands, return their `count` replies in order."""


class HeldConnections:
    """Connections of one client's pool that direct exchanges keep for themselves.

    redis-py's per-call costs are its pool (a lock, observability hooks) and, with a
    socket_timeout, a task per send (`asyncio.wait_for`) and a timeout per read. A held connection
    runs without socket_timeout; `exchange` bounds the whole exchange by it instead. A connection
    interrupted mid-exchange (timeout, error, cancellation) is disconnected, since its stream may
    hold unread replies, and reconnects when next used. The pool still owns the connections:
    closing the client closes them.
    """

    def __init__(self, pool: Any) -> None:
        # no reference to the pool itself: it is the key of its entry in _HELD (a weak one)
        self.timeout: float | None = pool.connection_kwargs.get("socket_timeout")
        self.taken: list[Any] = []
        self.idle: list[Any] = []

    async def exchange(self, pool: Any, packed: bytes, count: int) -> list[Any]:
        connection = self.idle.pop() if self.idle else await self._take(pool)
        try:
            async with asyncio.timeout(self.timeout):
                await connection.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in range(count):
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as error:
                        replies.append(error)
        except BaseException:
            await connection.disconnect(nowait=True)
            self.idle.append(connection)
            raise
        self.idle.append(connection)
        return replies

    async def _take(self, pool: Any) -> Any:
        connection = await pool.get_connection()
        connection.socket_timeout = None  # see the class's doc; restored by release()
        self.taken.append(connection)
        return connection

    async def release(self, pool: Any) -> None:
        taken, self.taken, self.idle = self.taken, [], []
        for connection in taken:
            connection.socket_timeout = self.timeout
            await pool.release(connection)


_HELD: weakref.WeakKeyDictionary[Any, HeldConnections] = weakref.WeakKeyDictionary()


def held_connections(client: Redis) -> HeldConnections:
    """The held connections of `client`'s pool (one set per pool, whatever the stores)."""
    pool = client.connection_pool
    held = _HELD.get(pool)
    if held is None:
        held = _HELD[pool] = HeldConnections(pool)
    return held


class DirectPipeline:
    """The round trip of a redis-py pipeline on a single Redis, for a fraction of its CPU.

    Commands are packed when queued and sent, in one write, through `exchange` (the client's
    `Multiplexer.exchange`, or `HeldConnections.exchange` on its pool); `encode_other` packs
    arguments other than bytes, str and int (the client's `Encoder.encode`). Replies come as the server
    sends them, through hiredis (redis-py's error classes): redis-py's response callbacks are not
    applied (HMGET, GET, EVAL/EVALSHA and XADD read the same; SET gives b'OK' rather than True).
    Error replies are returned as exception objects with `execute(raise_on_error=False)`, else the
    first is raised.
    """

    __slots__ = ("_chunks", "_count", "_encode_other", "_exchange")

    def __init__(self, exchange: Exchange, encode_other: Callable[[Any], bytes] | None) -> None:
        self._exchange = exchange
        self._encode_other = encode_other
        self._chunks: list[bytes] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append_packed(self, packed: bytes, count: int) -> None:
        """Queue `count` commands already in RESP."""
        self._chunks.append(packed)
        self._count += count

    def execute_command(self, *args: Any) -> DirectPipeline:
        self.append_packed(pack_command(args, self._encode_other), 1)
        return self

    def hmget(self, name: Any, keys: Any, *args: Any) -> DirectPipeline:
        fields = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        return self.execute_command("HMGET", name, *fields, *args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send everything queued in one write, read every reply; the pipeline is then empty."""
        chunks, count = self._chunks, self._count
        self._chunks, self._count = [], 0
        if not count:
            return []
        replies = await self._exchange(b"".join(chunks), count)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        return replies
