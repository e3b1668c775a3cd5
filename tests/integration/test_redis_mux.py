"""The multiplexed Redis connection against real redis-servers (TCP and a Unix socket) and silent peers.

Behaviour only, checked by what happened and in which order, never by how long it took: where a
timeout decides, the multiplexer's clock is a `FakeClock` the test moves. How soon the failures
come is measured by `benchmarks.mux_bench` (`python -m benchmarks.run --only mux`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import Unsupported
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.redis.mux import Multiplexer

pytestmark = pytest.mark.integration

DEBUG = (("enable-debug-command", "local"),)


def cmd(*args: str | bytes | int) -> bytes:
    parts = [arg if isinstance(arg, bytes) else str(arg).encode() for arg in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(part), part) for part in parts)


def batch(*commands: tuple[str | bytes | int, ...]) -> tuple[bytes, int]:
    return b"".join(cmd(*command) for command in commands), len(commands)


async def client_id(mux: Multiplexer) -> int:
    (reply,) = await mux.exchange(*batch(("CLIENT", "ID")))
    assert isinstance(reply, int)
    return reply


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition()` holds (pytest-timeout bounds a condition that never does)."""
    while not condition():
        await asyncio.sleep(0.001)


def waiting(mux: Multiplexer, count: int) -> bool:
    """`count` exchanges wait for replies on the connection, all of them written to the socket."""
    link = mux._link
    return link is not None and len(link.waiters) == count and not link.flush_scheduled


class FakeClock:
    """The multiplexer's clock (its `monotonic`), moved by the test; counts its reads (the stale
    timer reads it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    async def next_read(self) -> None:
        """Until someone (here: the stale timer, when nothing else runs) reads the clock again."""
        before = self.reads
        await until(lambda: self.reads > before)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[Any], Any]]:
    """Registers multiplexers and clients to close at the end of the test, in reverse order."""
    things: list[Any] = []

    def register(thing: Any) -> Any:
        things.append(thing)
        return thing

    yield register
    for thing in reversed(things):
        await thing.aclose()


@pytest.fixture
async def tcp_mux(redis_url: str, closing: Callable[[Any], Any]) -> Multiplexer:
    """The multiplexer of a client of the session's redis-server (TCP loopback)."""
    assert redis_url.startswith("redis://")
    client = closing(Redis.from_url(redis_url))
    mux: Multiplexer = closing(Multiplexer.for_client(client))
    return mux


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, on a Unix socket, with DEBUG allowed."""
    server = EmbeddedRedis(tmp_path / "r", RedisOptions(persistent=False, extra=DEBUG))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def unix_mux(private_redis: EmbeddedRedis, closing: Callable[[Any], Any]) -> Multiplexer:
    assert private_redis.url.startswith("unix://")
    client = closing(Redis(unix_socket_path=str(private_redis.socket_path)))
    mux: Multiplexer = closing(Multiplexer.for_client(client))
    return mux


async def silent_server(*, read: bool = True) -> tuple[asyncio.Server, int, list[asyncio.StreamWriter]]:
    """A peer that accepts connections and never answers (nor reads, with read=False)."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if not read:
            transport = writer.transport
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
        while read and await reader.read(65536):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, writers


async def stop_silent_server(server: asyncio.Server, writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()
    for writer in writers:
        await writer.wait_closed()


# --- replies, in order, on one connection ------------------------------------------------------


@pytest.fixture(params=["tcp", "unix"])
async def mux(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path, closing: Callable[[Any], Any]) -> Any:
    """A multiplexer on TCP loopback (the session's redis-server), then on a Unix socket (a private one)."""
    if request.param == "tcp":
        yield closing(Multiplexer.for_client(closing(Redis.from_url(redis_url))))
        return
    with EmbeddedRedis(tmp_path / "r", RedisOptions(persistent=False)) as server:
        assert server.url.startswith("unix://")
        client = Redis.from_url(server.url)
        mux = Multiplexer.for_client(client)
        yield mux
        await mux.aclose()
        await client.aclose()


async def test_concurrent_exchanges_each_get_their_own_replies(mux: Multiplexer) -> None:

    async def one(i: int) -> tuple[list[Any], int]:
        await asyncio.sleep(0.001 * (i % 7))  # spread over several loop iterations
        varied: list[tuple[str | int, ...]] = [
            ("SET", f"k{i}", f"v{i}"),
            ("INCRBY", f"n{i}", i),
            ("EVAL", "return {ARGV[1], tonumber(ARGV[2]) * 2}", 0, f"e{i}", i),
            ("HSET", f"h{i}", "a", i, "b", -i),
            ("HMGET", f"h{i}", "b", "missing", "a"),
        ]
        commands = [*varied[: 1 + i % 5], ("GET", f"k{i}"), ("CLIENT", "ID")]
        replies = await mux.exchange(*batch(*commands))
        assert len(replies) == len(commands)
        expected: list[Any] = [
            b"OK",
            i,
            [f"e{i}".encode(), 2 * i],
            2,
            [str(-i).encode(), None, str(i).encode()],
        ][: 1 + i % 5]
        assert replies[: len(expected)] == expected
        assert replies[len(expected)] == f"v{i}".encode()
        return replies, replies[-1]

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert len({connection for _, connection in results}) == 1, "one connection for everyone"


async def test_exchanges_queued_together_go_out_in_one_write(unix_mux: Multiplexer) -> None:
    """The first exchange is written at once (alone); those queued behind it in the same loop
    iteration share one write at its end."""
    await client_id(unix_mux)
    link = unix_mux._link
    assert link is not None and link.transport is not None
    transport = link.transport
    writes: list[bytes] = []
    write = transport.write

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = counting_write  # type: ignore[method-assign]
    replies = await asyncio.gather(*(unix_mux.exchange(*batch(("ECHO", f"m{i}"))) for i in range(10)))
    assert replies == [[f"m{i}".encode()] for i in range(10)], "everyone answered, in order"
    assert writes == [cmd("ECHO", "m0"), b"".join(cmd("ECHO", f"m{i}") for i in range(1, 10))]


async def test_count_zero_sends_nothing(tcp_mux: Multiplexer) -> None:
    assert await tcp_mux.exchange(b"", 0) == []


async def test_error_replies_are_returned_in_place_as_redis_py_maps_them(tcp_mux: Multiplexer) -> None:
    replies = await tcp_mux.exchange(
        *batch(
            ("SET", "s", "text"),
            ("EVALSHA", "0" * 40, 0),
            ("INCR", "s"),
            ("LPUSH", "s", "x"),
            ("EVAL", "return {1, redis.error_reply('MYERR nested'), {redis.error_reply('NOSCRIPT deep')}}", 0),
            ("GET", "s"),
        )
    )
    assert replies[0] == b"OK"
    assert type(replies[1]) is NoScriptError
    assert type(replies[2]) is ResponseError
    assert "not an integer" in str(replies[2])
    assert type(replies[3]) is ResponseError
    assert str(replies[3]).startswith("WRONGTYPE")
    one, nested, (deep,) = replies[4]
    assert one == 1
    assert type(nested) is ResponseError
    assert str(nested) == "MYERR nested"
    assert type(deep) is NoScriptError
    assert replies[5] == b"text"


async def test_errors_nested_in_arrays_match_redis_py(tcp_mux: Multiplexer, redis_url: str) -> None:
    script = "return {1, redis.error_reply('MYERR nested'), {redis.error_reply('NOSCRIPT deep')}, 'x'}"
    (mine,) = await tcp_mux.exchange(*batch(("EVAL", script, 0)))
    client = Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.eval(script, 0)
        (theirs,) = await pipe.execute(raise_on_error=False)
    finally:
        await client.aclose()

    def shape(value: Any) -> Any:
        if isinstance(value, list):
            return [shape(item) for item in value]
        if isinstance(value, BaseException):
            return (type(value), str(value))
        return value

    assert shape(mine) == shape(theirs)


async def test_decode_responses(redis_url: str, closing: Callable[[Any], Any]) -> None:
    client = closing(Redis.from_url(redis_url, decode_responses=True))
    mux = closing(Multiplexer.for_client(client))
    assert await mux.exchange(*batch(("SET", "k", "值"), ("GET", "k"))) == ["OK", "值"]


# --- callers that give up ---------------------------------------------------------------------


async def test_a_cancelled_waiter_keeps_its_place_without_reconnecting(unix_mux: Multiplexer) -> None:
    before = await client_id(unix_mux)
    with pytest.raises(TimeoutError):  # the builtin, from asyncio.timeout
        async with asyncio.timeout(0.05):
            await unix_mux.exchange(*batch(("DEBUG", "SLEEP", "0.2"), ("SET", "after", "1"), ("GET", "after")))
    # queued behind the abandoned exchange, whose replies must be skipped, not handed to us
    replies = await asyncio.gather(*(unix_mux.exchange(*batch(("ECHO", f"m{i}"), ("INCR", "c"))) for i in range(20)))
    assert [reply[0] for reply in replies] == [f"m{i}".encode() for i in range(20)]
    assert sorted(reply[1] for reply in replies) == list(range(1, 21))
    assert await unix_mux.exchange(*batch(("GET", "after"))) == [b"1"], "the abandoned exchange still ran"
    assert await client_id(unix_mux) == before, "no reconnect"


async def test_a_cancelled_task_in_a_crowd(unix_mux: Multiplexer) -> None:
    before = await client_id(unix_mux)
    slow = asyncio.create_task(unix_mux.exchange(*batch(("DEBUG", "SLEEP", "0.1"), ("PING",))))
    others = [asyncio.create_task(unix_mux.exchange(*batch(("ECHO", str(i))))) for i in range(10)]
    await until(lambda: waiting(unix_mux, 11))
    slow.cancel()
    others[3].cancel()
    done = await asyncio.gather(*others, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert [reply for i, reply in enumerate(done) if i != 3] == [[str(i).encode()] for i in range(10) if i != 3]
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert await client_id(unix_mux) == before


# --- losing the connection --------------------------------------------------------------------


async def test_redis_killed_mid_flight_then_back(private_redis: EmbeddedRedis, closing: Callable[[Any], Any]) -> None:
    # stale_after far beyond the DEBUG SLEEP: only the lost connection can fail them (a stale one
    # would fail them with TimeoutError)
    mux = closing(Multiplexer({"path": str(private_redis.socket_path)}, stale_after=60.0))
    assert await mux.exchange(*batch(("PING",))) == [b"PONG"]
    in_flight = [asyncio.create_task(mux.exchange(*batch(("DEBUG", "SLEEP", "5"))))]
    in_flight += [asyncio.create_task(mux.exchange(*batch(("ECHO", str(i))))) for i in range(5)]
    await until(lambda: waiting(mux, 6))
    private_redis.kill()
    results = await asyncio.gather(*in_flight, return_exceptions=True)
    assert all(type(result) is RedisConnectionError for result in results), results
    assert all(str(result).startswith("Connection to Redis lost") for result in results), results
    with pytest.raises(RedisConnectionError):  # nobody listens on the socket now
        await mux.exchange(*batch(("PING",)))
    private_redis.start()
    replies = await asyncio.gather(*(mux.exchange(*batch(("ECHO", str(i)))) for i in range(10)))
    assert replies == [[str(i).encode()] for i in range(10)]


async def test_server_closes_the_connection(unix_mux: Multiplexer, private_redis: EmbeddedRedis) -> None:
    first = await client_id(unix_mux)
    blocked = asyncio.create_task(unix_mux.exchange(*batch(("BLPOP", "nothing", 5))))  # waits, Redis does not
    await until(lambda: waiting(unix_mux, 1))
    killer = redis.Redis(unix_socket_path=str(private_redis.socket_path))
    try:
        killer.client_kill_filter(_id=str(first))
    finally:
        killer.close()
    with pytest.raises(RedisConnectionError):
        await blocked
    assert await client_id(unix_mux) != first


async def test_connection_refused(closing: Callable[[Any], Any], tmp_path: Path) -> None:
    server, port, writers = await silent_server()
    await stop_silent_server(server, writers)
    for kwargs in ({"host": "127.0.0.1", "port": port}, {"path": str(tmp_path / "nobody.sock")}):
        mux = closing(Multiplexer(kwargs))
        with pytest.raises(RedisConnectionError):
            await mux.exchange(*batch(("PING",)))


async def test_a_silent_peer_fails_every_exchange_once_the_oldest_has_waited_stale_after(
    closing: Callable[[Any], Any], clock: FakeClock
) -> None:
    server, port, writers = await silent_server()
    try:
        # the stale timer runs every 50 ms of the loop's time; what it decides by is the fake clock
        stale_after = 0.05
        mux = closing(Multiplexer({"host": "127.0.0.1", "port": port}, stale_after=stale_after, monotonic=clock))
        first = asyncio.create_task(mux.exchange(*batch(("PING",))))
        await until(lambda: waiting(mux, 1))
        clock.now += 0.6 * stale_after
        second = asyncio.create_task(mux.exchange(*batch(("PING",))))
        await until(lambda: waiting(mux, 2))
        await clock.next_read()  # the timer: the oldest has waited 0.6 * stale_after
        await asyncio.sleep(0)
        assert not first.done() and not second.done(), "not before stale_after"
        clock.now += 0.5 * stale_after  # the oldest has waited 1.1 * stale_after, the second 0.5 *
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert all(type(result) is RedisTimeoutError for result in results), results
        assert [str(result) for result in results] == ["No reply from Redis in 0.05 s"] * 2, "the second with the first"
        # the next exchange connects again, and fails the same way
        third = asyncio.create_task(mux.exchange(*batch(("PING",))))
        await until(lambda: waiting(mux, 1))
        assert len(writers) == 2
        clock.now += 1.1 * stale_after
        with pytest.raises(RedisTimeoutError):
            await third
    finally:
        await stop_silent_server(server, writers)


async def test_a_stale_connection_is_dropped_by_the_next_exchange(
    closing: Callable[[Any], Any], clock: FakeClock
) -> None:
    server, port, writers = await silent_server()
    try:
        # a stale timer that never fires here: only the next exchange can notice
        mux = closing(Multiplexer({"host": "127.0.0.1", "port": port}, stale_after=600.0, monotonic=clock))
        given_up = asyncio.create_task(mux.exchange(*batch(("PING",))))
        await until(lambda: waiting(mux, 1))
        given_up.cancel()  # the caller's own budget ran out; its waiter stays in the FIFO
        stale = mux._link
        clock.now += 601.0
        next_one = asyncio.create_task(mux.exchange(*batch(("PING",))))
        await until(lambda: len(writers) == 2 and waiting(mux, 1))
        assert stale is not None and stale.dead and mux._link is not stale, "dropped, and connected again"
        next_one.cancel()
    finally:
        await stop_silent_server(server, writers)


async def test_connecting_to_a_silent_peer_is_bounded_by_connect_timeout(closing: Callable[[Any], Any]) -> None:
    server, port, writers = await silent_server()
    try:
        # stale_after far beyond connect_timeout: what stops the unanswered AUTH is connect_timeout
        kwargs = {"host": "127.0.0.1", "port": port, "password": "pw"}
        mux = closing(Multiplexer(kwargs, connect_timeout=0.2, stale_after=600.0))
        results = await asyncio.gather(*(mux.exchange(*batch(("PING",))) for _ in range(5)), return_exceptions=True)
        assert all(type(result) is RedisTimeoutError for result in results), results
        assert {str(result) for result in results} == {f"Timeout connecting to Redis at 127.0.0.1:{port}"}
        assert len(writers) == 1, "one connect attempt for all the callers"
    finally:
        await stop_silent_server(server, writers)


async def test_aclose_while_connecting(closing: Callable[[Any], Any]) -> None:
    server, port, writers = await silent_server()
    try:
        mux = closing(Multiplexer({"host": "127.0.0.1", "port": port, "password": "pw"}, connect_timeout=5.0))
        callers = [asyncio.create_task(mux.exchange(*batch(("PING",)))) for _ in range(3)]
        await until(lambda: len(writers) == 1)  # connected; AUTH unanswered
        await mux.aclose()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(type(result) is RedisConnectionError for result in results), results
    finally:
        await stop_silent_server(server, writers)


async def test_a_peer_that_does_not_read_pauses_the_senders(closing: Callable[[Any], Any]) -> None:
    server, port, writers = await silent_server(read=False)
    try:
        mux = closing(Multiplexer({"host": "127.0.0.1", "port": port}, stale_after=0.5))
        big = cmd("SET", "k", b"x" * (8 << 20))
        first = asyncio.create_task(mux.exchange(big, 1))
        await until(lambda: waiting(mux, 1))
        link = mux._link
        assert link is not None and link.paused is not None, "the transport's buffer is full"
        later = [asyncio.create_task(mux.exchange(big, 1)) for _ in range(10)]
        for _ in range(3):  # each of them runs up to its wait
            await asyncio.sleep(0)
        assert len(link.waiters) == 1, "the others wait to send instead of buffering 80 MiB"
        results = await asyncio.gather(first, *later, return_exceptions=True)
        assert isinstance(results[0], RedisTimeoutError)
        assert all(isinstance(result, RedisConnectionError | RedisTimeoutError) for result in results), results
    finally:
        await stop_silent_server(server, writers)


async def scripted_server(answer: bytes) -> tuple[asyncio.Server, int, list[asyncio.StreamWriter]]:
    """A peer that answers `answer` to whatever it reads."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(65536):
            writer.write(answer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], writers


@pytest.mark.parametrize(
    ("answer", "message"),
    [(b"?what\r\n", "Protocol error"), (b"-ERR max number of clients reached\r\n", "max number of clients")],
)
async def test_a_broken_answer_fails_the_exchange(answer: bytes, message: str, closing: Callable[[Any], Any]) -> None:
    server, port, writers = await scripted_server(answer)
    try:
        mux = closing(Multiplexer({"host": "127.0.0.1", "port": port}))
        with pytest.raises(RedisConnectionError, match=message):
            await mux.exchange(*batch(("PING",)))
    finally:
        await stop_silent_server(server, writers)


async def test_a_reply_nobody_asked_for_drops_the_connection(closing: Callable[[Any], Any]) -> None:
    server, port, writers = await scripted_server(b"+PONG\r\n+PONG\r\n")
    try:
        mux = closing(Multiplexer({"host": "127.0.0.1", "port": port}))
        assert await mux.exchange(*batch(("PING",))) == [b"PONG"]
        link = mux._link
        assert link is not None
        await until(lambda: link.dead)  # the second PONG came
        assert await mux.exchange(*batch(("PING",))) == [b"PONG"]
        assert len(writers) == 2, "out of step: connected again"
    finally:
        await stop_silent_server(server, writers)


async def test_aclose_fails_the_waiters_and_a_later_exchange_reconnects(unix_mux: Multiplexer) -> None:
    first = await client_id(unix_mux)
    sleeping = asyncio.create_task(unix_mux.exchange(*batch(("DEBUG", "SLEEP", "0.2"))))
    await until(lambda: waiting(unix_mux, 1))
    await unix_mux.aclose()
    with pytest.raises(RedisConnectionError):
        await sleeping
    assert await client_id(unix_mux) != first


# --- AUTH and SELECT --------------------------------------------------------------------------


async def test_auth_with_a_password(private_redis: EmbeddedRedis, closing: Callable[[Any], Any]) -> None:
    admin = redis.Redis(unix_socket_path=str(private_redis.socket_path))
    admin.config_set("requirepass", "s3cret")
    admin.close()
    path = str(private_redis.socket_path)

    good = closing(Multiplexer.for_client(closing(Redis(unix_socket_path=path, password="s3cret"))))
    assert await good.exchange(*batch(("PING",))) == [b"PONG"]

    wrong = closing(Multiplexer.for_client(closing(Redis(unix_socket_path=path, password="wrong"))))
    with pytest.raises(AuthenticationError):
        await wrong.exchange(*batch(("PING",)))

    anonymous = closing(Multiplexer({"path": path}))
    with pytest.raises(AuthenticationError):  # NOAUTH: raised, as redis-py raises it
        await anonymous.exchange(*batch(("PING",)))


async def test_auth_with_a_username(private_redis: EmbeddedRedis, closing: Callable[[Any], Any]) -> None:
    admin = redis.Redis(unix_socket_path=str(private_redis.socket_path))
    admin.acl_setuser("alice", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"])
    admin.close()
    path = str(private_redis.socket_path)
    alice = closing(Multiplexer({"path": path, "username": "alice", "password": "pw"}))
    assert await alice.exchange(*batch(("ACL", "WHOAMI"))) == [b"alice"]
    mallory = closing(Multiplexer({"path": path, "username": "alice", "password": "nope"}))
    with pytest.raises(AuthenticationError):
        await mallory.exchange(*batch(("PING",)))


async def test_select_db(redis_url: str, closing: Callable[[Any], Any]) -> None:
    client = closing(Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3", client_name="riskgate-test"))
    mux = closing(Multiplexer.for_client(client))
    assert await mux.exchange(*batch(("SET", "in3", "yes"), ("CLIENT", "GETNAME"))) == [b"OK", b"riskgate-test"]
    check = redis.Redis.from_url(redis_url)
    try:
        assert check.get("in3") is None
        check.execute_command("SELECT", 3)
        assert check.get("in3") == b"yes"
    finally:
        check.close()
    port = client.connection_pool.connection_kwargs["port"]
    bad = closing(Multiplexer({"host": "127.0.0.1", "port": port, "db": 99}))
    with pytest.raises(RedisConnectionError, match="Invalid Database"):
        await bad.exchange(*batch(("PING",)))


# --- one per pool, and what it does not do ----------------------------------------------------


async def test_one_multiplexer_per_connection_pool(redis_url: str, closing: Callable[[Any], Any]) -> None:
    client = closing(Redis.from_url(redis_url))
    other = closing(Redis.from_url(redis_url))
    mux = closing(Multiplexer.for_client(client))
    assert Multiplexer.for_client(client) is mux
    assert closing(Multiplexer.for_client(other)) is not mux


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Redis.from_url("rediss://127.0.0.1:6380/0"), "TLS"),
        (lambda: Redis(host="127.0.0.1", protocol=3), "RESP3"),
    ],
)
async def test_unsupported_connections(make: Callable[[], Redis], message: str) -> None:
    client = make()
    try:
        with pytest.raises(Unsupported, match=message):
            Multiplexer.for_client(client)
    finally:
        await client.aclose()


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Multiplexer({}, stale_after=0)
