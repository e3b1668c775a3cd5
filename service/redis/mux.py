"""One multiplexed, auto-pipelined connection to a single Redis, shared by every request of the process.

The design of ioredis' and Lettuce's auto-pipelining. A `Multiplexer` owns ONE
connection (TCP or a Unix socket) to a single Redis, on an `asyncio.Protocol`
(no StreamReader, no task per connection). An exchange is one caller's packed
commands (RESP, `count` commands) and the `count` replies that answer them:

    mux = Multiplexer.for_client(client)       # one per connection pool
    replies = await mux.exchange(packed, count)

* Sending: the exchange appends a waiter (a future, the number of replies
  it expects) to a FIFO. Its bytes are written at once when it is alone:
  nothing else waits, nothing is buffered, and the last read woke at most
  one exchange. Otherwise they join a buffer that goes out in ONE
  `transport.write` at the end of the loop iteration (`loop.call_soon`),
  so the exchanges a read has woken share a syscall and a segment.
  Measured (client CPU per round trip, an EVAL and 3 HMGETs): always
  coalescing costs 3-6 us (~10 %) more at 1 in flight (an extra loop
  iteration), always writing at once 1.5-2x more at 24; this rule matches
  the better of the two at 1, 8 and 24 in flight, on a Unix socket and TCP.
* Receiving: `data_received` feeds a `hiredis.Reader` and hands replies to
  the FIFO's head, in order: Redis answers one connection's commands in the
  order it reads them. Error replies are exception objects, made by
  redis-py's own `parse_error` (NOSCRIPT -> NoScriptError, ...), in arrays
  too, and returned, not raised, as with `execute(raise_on_error=False)`.
  An error reply that redis-py would raise as a ConnectionError (e.g.
  "max number of clients reached") fails that exchange with it.
* A caller that gives up (a cancelled task, `asyncio.timeout`) leaves its
  waiter in the FIFO: its replies are read and dropped when they come, so
  the stream stays in step and nothing reconnects.
* Connecting: lazily, at the first exchange and at the first one after a
  loss; concurrent exchanges share one attempt, bounded by `connect_timeout`
  (redis.exceptions.TimeoutError) together with AUTH (password, or username
  and password, or the client's credential provider), CLIENT SETNAME when
  the client names itself, and SELECT when db != 0. A refused AUTH raises
  redis-py's AuthenticationError (a ConnectionError); other failures to
  connect raise redis.exceptions.ConnectionError.

Failures. Whatever breaks the connection fails every exchange waiting on it,
and the next exchange connects again; nothing is retried here (a counter
script whose reply was lost may have run):

* the connection is lost (reset, closed, Redis killed or restarted):
  ConnectionError;
* a silent peer (a dead host, a partition, no RST): when the oldest waiting
  exchange has waited `stale_after` seconds, the connection is dropped with
  redis.exceptions.TimeoutError. This is checked at each exchange and by one
  timer, armed only while exchanges are waiting (not one per exchange). A
  single Redis serves one connection's commands in order, so `stale_after`
  must exceed the slowest command sent through the multiplexer;
* a reply nobody waits for, or bytes hiredis cannot parse: ConnectionError.

Back-pressure: while the transport's buffer is above its high-water mark
(`pause_writing`), new exchanges wait for it to drain instead of growing it.

What goes through it: commands whose replies come one per command, in order.
Not blocking commands (BLPOP, WAIT: they would stall everyone), not
SUBSCRIBE or MONITOR, not SELECT, CLIENT REPLY or AUTH (they would change the
connection for everyone), not WATCH; MULTI ... EXEC only within one exchange.
`count` must be the number of commands in `packed`, or the stream goes out of
step. One multiplexer serves one event loop; used from another (a new
`asyncio.run`), it forgets the old connection and connects again.

Not supported, `for_client` raises `Unsupported` (the caller keeps redis-py's
own connections): TLS (`rediss://`, SSLConnection), RESP3 (`protocol=3`:
push messages would break the FIFO), a custom `redis_connect_func`, other
connection classes.

Nothing is logged here; commands and their arguments never leave this module
except on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import hiredis
from redis._parsers import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.credentials import CredentialProvider, UsernamePasswordCredentialProvider
from redis.exceptions import AuthenticationError, InvalidResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import Unsupported

DEFAULT_CONNECT_TIMEOUT: Final = 0.5
DEFAULT_STALE_AFTER: Final = 1.0
# How long aclose() waits for the transport to report itself closed.
_CLOSE_WAIT_SECONDS: Final = 1.0
_NOT_ENOUGH_DATA: Final = object()


def pack_command(args: Sequence[Any], encode_other: Callable[[Any], bytes] | None = None) -> bytes:
    """One command in RESP: bytes as they are, str as UTF-8, int in decimal (redis-py's encoder
    costs ~1 us per argument, and a decision-log entry has 30); anything else through
    `encode_other` (e.g. redis-py's `Encoder.encode`, which refuses bools), or TypeError."""
    chunks = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            part = arg.encode()
        elif isinstance(arg, bytes):
            part = arg
        elif type(arg) is int:
            part = b"%d" % arg
        elif encode_other is not None:
            part = encode_other(arg)
        else:
            raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
        chunks.append(b"$%d\r\n%b\r\n" % (len(part), part))
    return b"".join(chunks)


def _is_ok(reply: object) -> bool:
    return reply in (b"OK", "OK")


class _Waiter:
    """One exchange in the FIFO: its future, how many replies it still expects, those read so far."""

    __slots__ = ("future", "remaining", "replies", "since")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, since: float) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[Any] = []
        self.since = since


class _Link(asyncio.Protocol):
    """One connection: its transport, the reader, the FIFO of waiters and the write buffer.

    Once `dead` it never serves again; the multiplexer makes a new one."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reader: hiredis.Reader,
        stale_after: float,
        keepalive: bool,
        monotonic: Callable[[], float],
    ):
        self.loop = loop
        self.reader = reader
        self.stale_after = stale_after
        self.monotonic = monotonic
        self.keepalive = keepalive
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[_Waiter] = deque()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.burst = False  # the last read woke several exchanges: more sends are coming
        self.dead = False
        self.paused: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        waiters = self.waiters
        reader.feed(data)
        woken = 0
        while True:
            try:
                reply = reader.gets()
            except InvalidResponse:
                self.drop(RedisConnectionError, "Protocol error in a reply from Redis")
                return
            if reply is _NOT_ENOUGH_DATA:
                break
            if not waiters:
                self.drop(RedisConnectionError, "Redis sent a reply nobody asked for")
                return
            head = waiters[0]
            future = head.future
            if isinstance(reply, RedisConnectionError):
                # redis-py raises these (e.g. "max number of clients reached"); the stream is in step
                if not future.done():
                    future.set_exception(reply)
            else:
                head.replies.append(reply)
            head.remaining -= 1
            if not head.remaining:
                waiters.popleft()
                woken += 1
                if not future.done():  # else its caller gave up: the replies are dropped
                    future.set_result(head.replies)
        self.burst = woken > 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(RedisConnectionError, "Connection to Redis lost" + ("" if exc is None else f": {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self.paused is None:
            self.paused = self.loop.create_future()

    def resume_writing(self) -> None:
        paused, self.paused = self.paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    # --- sending ---------------------------------------------------------------------------

    def submit(self, packed: bytes, count: int, now: float) -> asyncio.Future[list[Any]]:
        """Queue one exchange; its future has its replies once they are all read.

        Written at once when it is alone (nothing waiting, nothing buffered, and the last read
        woke at most one exchange, so no others are about to send), else at the end of the loop
        iteration with everything else queued in it (see the module doc)."""
        if self.dead:  # lost between the caller's check and now (it awaited a connect or a drain)
            raise RedisConnectionError("Connection to Redis lost")
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        waiters = self.waiters
        alone = not waiters and not self.flush_scheduled and not self.burst
        waiters.append(_Waiter(future, count, now))
        if alone:
            assert self.transport is not None
            self.transport.write(packed)
        else:
            self.outgoing.append(packed)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.call_soon(self.flush)
        if self.timer is None:
            self.timer = self.loop.call_later(self.stale_after, self.check_stale)
        return future

    def flush(self) -> None:
        self.flush_scheduled = False
        outgoing = self.outgoing
        if not outgoing or self.dead:
            return
        self.outgoing = []
        assert self.transport is not None
        self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    # --- failing ---------------------------------------------------------------------------

    def check_stale(self) -> None:
        """The stale timer: drop the connection once the oldest waiter has waited `stale_after`."""
        self.timer = None
        if self.dead or not self.waiters:
            return  # re-armed by the next submit
        left = self.waiters[0].since + self.stale_after - self.monotonic()
        if left <= 0:
            self.drop(RedisTimeoutError, f"No reply from Redis in {self.stale_after:g} s")
        else:
            self.timer = self.loop.call_later(left, self.check_stale)

    def is_stale(self, now: float) -> bool:
        return bool(self.waiters) and now - self.waiters[0].since >= self.stale_after

    def drop(self, error: type[Exception], message: str) -> None:
        """Close the connection now and fail every waiter with `error(message)`."""
        if self.dead:
            return
        self.dead = True
        waiters, self.waiters = self.waiters, deque()
        self.outgoing = []
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error(message))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.resume_writing()  # whoever waits to send sees `dead`
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing left to abort
                self.transport.abort()


class Multiplexer:
    """One shared, auto-pipelined connection to a single Redis (see the module doc)."""

    def __init__(
        self,
        connection_kwargs: Mapping[str, Any],
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        stale_after: float = DEFAULT_STALE_AFTER,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`connection_kwargs` as in a redis.asyncio connection pool's: `path` (a Unix socket) or
        `host` and `port`; `username`, `password` or `credential_provider`; `db`; `client_name`;
        `decode_responses`, `encoding`, `encoding_errors`; `socket_keepalive`. Others are ignored.
        `monotonic` is the clock waits are measured by (a test's clock in tests)."""
        if not 0 < connect_timeout < float("inf") or not 0 < stale_after < float("inf"):
            raise ValueError("connect_timeout and stale_after must be positive and finite")
        if connection_kwargs.get("protocol") not in (None, 2, "2"):
            raise Unsupported("RESP3 (protocol=3) is not supported by the multiplexer")
        if connection_kwargs.get("redis_connect_func") is not None:
            raise Unsupported("a custom redis_connect_func is not supported by the multiplexer")
        self._path: str | None = connection_kwargs.get("path")
        self._host: str = connection_kwargs.get("host") or "localhost"
        self._port = int(connection_kwargs.get("port") or 6379)
        self._keepalive = bool(connection_kwargs.get("socket_keepalive"))
        provider: CredentialProvider | None = connection_kwargs.get("credential_provider")
        username, password = connection_kwargs.get("username"), connection_kwargs.get("password")
        if provider is None and (username or password):
            provider = UsernamePasswordCredentialProvider(username, password)
        self._credentials = provider
        self._db = int(connection_kwargs.get("db") or 0)
        self._client_name: str | None = connection_kwargs.get("client_name")
        self._reader_kwargs: dict[str, Any] = {
            "protocolError": InvalidResponse,
            "replyError": BaseParser.parse_error,
            "notEnoughData": _NOT_ENOUGH_DATA,
        }
        if connection_kwargs.get("decode_responses"):
            self._reader_kwargs["encoding"] = connection_kwargs.get("encoding") or "utf-8"
            self._reader_kwargs["errors"] = connection_kwargs.get("encoding_errors") or "strict"
        self._connect_timeout = connect_timeout
        self._stale_after = stale_after
        self._monotonic = monotonic
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None

    @classmethod
    def for_client(cls, client: Redis) -> Multiplexer:
        """The multiplexer of `client`'s connection pool (one per pool, whatever the callers).

        Its timeouts are the pool's: `socket_connect_timeout` bounds connecting, `socket_timeout`
        is `stale_after` (the defaults when they are not set). Raises `Unsupported` for TLS and
        the other cases of the module doc."""
        pool = client.connection_pool
        mux = _MULTIPLEXERS.get(pool)
        if mux is None:
            connection_class = pool.connection_class
            if issubclass(connection_class, SSLConnection):
                raise Unsupported("TLS (rediss://) is not supported by the multiplexer")
            if not issubclass(connection_class, (Connection, UnixDomainSocketConnection)):
                raise Unsupported(f"connection class {connection_class.__name__} is not supported by the multiplexer")
            kwargs = dict(pool.connection_kwargs)
            if not issubclass(connection_class, UnixDomainSocketConnection):
                kwargs.pop("path", None)
            mux = cls(
                kwargs,
                connect_timeout=kwargs.get("socket_connect_timeout") or DEFAULT_CONNECT_TIMEOUT,
                stale_after=kwargs.get("socket_timeout") or DEFAULT_STALE_AFTER,
            )
            _MULTIPLEXERS[pool] = mux
            _close_with(pool, mux)
        return mux

    async def exchange(self, packed: bytes, count: int) -> list[Any]:
        """Send `packed` (`count` commands in RESP) and return their `count` replies, in order.

        Error replies are returned as exception objects. Raises redis.exceptions.ConnectionError
        when the connection is lost or cannot be made, TimeoutError when connecting takes longer
        than `connect_timeout` or Redis has not answered the oldest exchange in `stale_after`."""
        if count <= 0:
            return []
        now = self._monotonic()
        link = self._link
        if link is None or link.dead or link.loop is not asyncio.get_running_loop():
            link = await self._connect()
        elif link.is_stale(now):
            link.drop(RedisTimeoutError, f"No reply from Redis in {self._stale_after:g} s")
            link = await self._connect()
        while link.paused is not None:
            await asyncio.shield(link.paused)
            now = self._monotonic()
        return await link.submit(packed, count, now)

    async def aclose(self) -> None:
        """Close the connection (waiting exchanges fail with ConnectionError). The next exchange
        would connect again: a multiplexer shared by several users may be closed by any of them."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            await asyncio.wait([connecting])
        link, self._link = self._link, None
        if link is None:
            return
        link.drop(RedisConnectionError, "The Redis multiplexer was closed")
        if link.transport is not None and link.loop is asyncio.get_running_loop():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_WAIT_SECONDS):
                    await link.closed

    # --- connecting ------------------------------------------------------------------------

    async def _connect(self) -> _Link:
        """The connection, made once for all the exchanges that want it now."""
        connecting = self._connecting
        if connecting is None or connecting.get_loop() is not asyncio.get_running_loop():
            old = self._link
            if old is not None:
                with contextlib.suppress(RuntimeError):  # the old one's loop may be closed
                    old.drop(RedisConnectionError, "Connection to Redis replaced")
            connecting = self._connecting = asyncio.get_running_loop().create_task(self._open())
            connecting.add_done_callback(self._connected)
        try:
            # shielded: a caller that gives up does not cancel the attempt the others wait for
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if caller is not None and caller.cancelling():
                raise
            # the attempt itself was cancelled, by aclose(): not this caller's cancellation
            raise RedisConnectionError("The Redis multiplexer was closed while connecting") from None

    def _connected(self, task: asyncio.Task[_Link]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller has given up

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        link: _Link | None = None

        def protocol() -> _Link:
            nonlocal link
            link = _Link(
                loop, hiredis.Reader(**self._reader_kwargs), self._stale_after, self._keepalive, self._monotonic
            )
            return link

        where = self._path if self._path is not None else f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    await loop.create_unix_connection(protocol, self._path)
                else:
                    await loop.create_connection(protocol, self._host, self._port)
                assert link is not None
                await self._handshake(link)
        except TimeoutError:  # the builtin, from asyncio.timeout (before OSError: it is one)
            if link is not None:
                link.drop(RedisConnectionError, "Timeout connecting to Redis")
            raise RedisTimeoutError(f"Timeout connecting to Redis at {where}") from None
        except OSError as error:
            raise RedisConnectionError(f"Error connecting to Redis at {where}: {error.strerror or error}") from None
        except BaseException:
            if link is not None:
                link.drop(RedisConnectionError, "Failed to set up the connection to Redis")
            raise
        self._link = link
        return link

    async def _handshake(self, link: _Link) -> None:
        """AUTH, CLIENT SETNAME, SELECT in one round trip, before anyone else's commands."""
        commands: list[bytes] = []
        if self._credentials is not None:
            credentials = await self._credentials.get_credentials_async()
            commands.append(pack_command(("AUTH", *credentials)))
        if self._client_name:
            commands.append(pack_command(("CLIENT", "SETNAME", self._client_name)))
        if self._db:
            commands.append(pack_command(("SELECT", self._db)))
        if not commands:
            return
        replies = await link.submit(b"".join(commands), len(commands), self._monotonic())
        if self._credentials is not None:
            reply = replies.pop(0)
            if isinstance(reply, AuthenticationError):
                raise reply
            if not _is_ok(reply):
                raise AuthenticationError(f"AUTH refused: {reply}")
        if self._client_name and not _is_ok(replies.pop(0)):
            raise RedisConnectionError("Error setting client name")
        if self._db and not _is_ok(replies.pop(0)):
            raise RedisConnectionError("Invalid Database")


_MULTIPLEXERS: weakref.WeakKeyDictionary[Any, Multiplexer] = weakref.WeakKeyDictionary()


def _close_with(pool: Any, mux: Multiplexer) -> None:
    """Close `mux` whenever its pool disconnects its connections (`client.aclose()` closes the
    pool, which disconnects them), so the multiplexer's connection ends with its client's, as a
    pooled connection would: nobody has to remember to close it. Only this pool object's own
    `disconnect` is wrapped."""
    disconnect = pool.disconnect

    async def disconnect_and_close(*args: Any, **kwargs: Any) -> None:
        await mux.aclose()
        await disconnect(*args, **kwargs)

    pool.disconnect = disconnect_and_close
