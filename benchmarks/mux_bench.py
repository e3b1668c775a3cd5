"""How soon the multiplexed Redis connection fails its waiting exchanges, when it must.

    python -m benchmarks.mux_bench [--quick] [--json PATH]

`service.redis.mux.Multiplexer`, on its own event loop, against a private redis-server
(`service.redis.embedded`, a Unix socket, DEBUG allowed) and against silent peers (loopback TCP
servers in the same loop that accept and read but never answer). `repeats` times each, medians:

1. Redis killed (SIGKILL) with six exchanges in flight (a DEBUG SLEEP and five behind it; stale_after
   60 s, so only the lost connection can fail them): from the kill's return to the last waiter
   failed with ConnectionError (the target: at once, not after the sleep nor stale_after);
2. a silent peer, stale_after 200 ms: two exchanges 100 ms apart; from the first sent to both
   failed with TimeoutError, less stale_after (the target: both together, just after stale_after);
3. connecting to a silent peer that never answers AUTH, connect_timeout 200 ms, five callers:
   from the first call to all failed, less connect_timeout, and the connect attempts (target: one).

The tests (tests/integration/test_redis_mux.py) hold the behaviour, by order and with a fake clock;
this measures the time. Prints one summary line.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from benchmarks.common import Json, median, part_main
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.redis.mux import Multiplexer, pack_command

STALE_AFTER = 0.2
CONNECT_TIMEOUT = 0.2
_PATIENT = 60.0  # a timeout that must not be the one that fires


def _packed(*commands: tuple[str, ...]) -> tuple[bytes, int]:
    return b"".join(pack_command(command) for command in commands), len(commands)


async def _written(mux: Multiplexer, count: int) -> None:
    """Until `count` exchanges wait on the connection, all written to the socket."""
    while (link := mux._link) is None or len(link.waiters) != count or link.flush_scheduled:
        await asyncio.sleep(0.001)


def _failed_with(results: Sequence[Any], error: type[Exception]) -> None:
    wrong = [result for result in results if type(result) is not error]
    if wrong:
        raise AssertionError(f"expected every exchange to fail with {error.__name__}, got {wrong}")


class _SilentPeer:
    """A loopback TCP server that takes connections and reads, never answering."""

    def __init__(self) -> None:
        self.connections: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> _SilentPeer:
        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections.append(writer)
            while await reader.read(65536):
                pass

        self.server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        for writer in self.connections:
            writer.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def lost_connection_ms(redis_server: EmbeddedRedis) -> float:
    mux = Multiplexer({"path": str(redis_server.socket_path)}, stale_after=_PATIENT)
    try:
        await mux.exchange(*_packed(("PING",)))
        in_flight = [asyncio.create_task(mux.exchange(*_packed(("DEBUG", "SLEEP", "5"))))]
        in_flight += [asyncio.create_task(mux.exchange(*_packed(("ECHO", str(i))))) for i in range(5)]
        await _written(mux, 6)
        redis_server.kill()  # blocks this loop until the process is gone: the socket is closed by then
        killed = time.perf_counter()
        results = await asyncio.gather(*in_flight, return_exceptions=True)
        failed = time.perf_counter()
    finally:
        await mux.aclose()
    _failed_with(results, RedisConnectionError)
    return (failed - killed) * 1e3


async def stale_overshoot_ms() -> float:
    async with _SilentPeer() as peer:
        mux = Multiplexer({"host": "127.0.0.1", "port": peer.port}, stale_after=STALE_AFTER)
        try:
            started = time.perf_counter()
            first = asyncio.create_task(mux.exchange(*_packed(("PING",))))
            await asyncio.sleep(STALE_AFTER / 2)
            second = asyncio.create_task(mux.exchange(*_packed(("PING",))))
            results = await asyncio.gather(first, second, return_exceptions=True)
            failed = time.perf_counter()
        finally:
            await mux.aclose()
    _failed_with(results, RedisTimeoutError)
    return (failed - started - STALE_AFTER) * 1e3


async def connect_overshoot_ms() -> tuple[float, int]:
    async with _SilentPeer() as peer:
        kwargs = {"host": "127.0.0.1", "port": peer.port, "password": "pw"}
        mux = Multiplexer(kwargs, connect_timeout=CONNECT_TIMEOUT, stale_after=_PATIENT)
        try:
            started = time.perf_counter()
            calls = [mux.exchange(*_packed(("PING",))) for _ in range(5)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            failed = time.perf_counter()
        finally:
            await mux.aclose()
        attempts = len(peer.connections)
    _failed_with(results, RedisTimeoutError)
    return (failed - started - CONNECT_TIMEOUT) * 1e3, attempts


async def _measure(repeats: int, redis_server: EmbeddedRedis) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {"lost": [], "stale": [], "connect": [], "attempts": []}
    for _ in range(repeats):
        redis_server.start()
        runs["lost"].append(await lost_connection_ms(redis_server))
        runs["stale"].append(await stale_overshoot_ms())
        overshoot, attempts = await connect_overshoot_ms()
        runs["connect"].append(overshoot)
        runs["attempts"].append(attempts)
    return runs


def bench(repeats: int = 7) -> Json:
    with tempfile.TemporaryDirectory(prefix="rg-mux-") as tmp:
        redis_server = EmbeddedRedis(
            Path(tmp) / "r", RedisOptions(persistent=False, extra=(("enable-debug-command", "local"),))
        )
        try:
            runs = asyncio.run(_measure(repeats, redis_server))
        finally:
            redis_server.stop()
    figures: Json = {
        "mux.lost_connection_fail_ms": round(median(runs["lost"]), 2),
        "mux.lost_connection_fail_ms_max": round(max(runs["lost"]), 2),
        "mux.stale_after_ms": STALE_AFTER * 1e3,
        "mux.stale_fail_after_stale_after_ms": round(median(runs["stale"]), 2),
        "mux.stale_fail_after_stale_after_ms_max": round(max(runs["stale"]), 2),
        "mux.connect_timeout_ms": CONNECT_TIMEOUT * 1e3,
        "mux.connect_fail_after_connect_timeout_ms": round(median(runs["connect"]), 2),
        "mux.connect_fail_after_connect_timeout_ms_max": round(max(runs["connect"]), 2),
        "mux.connect_attempts_max": max(runs["attempts"]),
        "mux.repeats": repeats,
    }
    print(
        f"mux: waiters fail {figures['mux.lost_connection_fail_ms']:.2f} ms after Redis is killed "
        f"(max {figures['mux.lost_connection_fail_ms_max']:.2f}); a silent peer fails both waiters "
        f"{figures['mux.stale_fail_after_stale_after_ms']:.2f} ms after stale_after {STALE_AFTER * 1e3:.0f} ms "
        f"(max {figures['mux.stale_fail_after_stale_after_ms_max']:.2f}); connecting to one fails all 5 callers "
        f"{figures['mux.connect_fail_after_connect_timeout_ms']:.2f} ms after connect_timeout "
        f"{CONNECT_TIMEOUT * 1e3:.0f} ms (max {figures['mux.connect_fail_after_connect_timeout_ms_max']:.2f}) "
        f"in {figures['mux.connect_attempts_max']} attempt(s); median of {repeats}",
        flush=True,
    )
    return figures


def run_part(quick: bool) -> Json:
    """`benchmarks.run`'s entry point."""
    return bench(repeats=3 if quick else 7)


def main(argv: Sequence[str] | None = None) -> int:
    return part_main("python -m benchmarks.mux_bench", __doc__, run_part, "3 repeats instead of 7", argv)


if __name__ == "__main__":
    sys.exit(main())
