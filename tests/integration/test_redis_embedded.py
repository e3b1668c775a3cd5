"""The embedded redis-server: starts, persists, refuses a shared data directory, stops, dies
with its parent, and stops a redis-server an earlier riskgate left on the directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.errors import RedisLaunchError
from service.redis import embedded as redis_embedded
from service.redis.embedded import PID_FILE, EmbeddedRedis, RedisOptions, process_argv
from tests.conftest import REPO, start_unowned_redis

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


def _gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie nobody reaps (PID 1 in a container may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, even while being read
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _kill_redis(pid: int) -> None:
    """SIGKILL `pid` only if it still is a redis-server: a pid can be reused."""
    argv = process_argv(pid)
    if argv and "redis-server" in Path(argv[0].split()[0]).name:
        os.kill(pid, signal.SIGKILL)


def _wait_ping(url: str, timeout: float = 10.0) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture
def orphans() -> Iterator[list[int]]:
    """Pids of the orphaned redis-servers a test starts; any still alive are killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        _kill_redis(pid)


def _start_orphan(conf: Path, pids: list[int]) -> int:
    """A redis-server on `conf` whose parent (a shell) has already exited, as after a crash.

    Started without the parent-death signal, the way riskgate did before it set one."""
    pid = start_unowned_redis(conf)
    pids.append(pid)
    return pid


def _seed(data: Path) -> EmbeddedRedis:
    """Start and stop an EmbeddedRedis on `data`, so its redis.conf exists; return it (stopped)."""
    server = EmbeddedRedis(data)
    server.start()
    server.stop()
    return server


@pytest.mark.parametrize("found_by", ["pid file", "proc scan"])
def test_an_orphaned_server_is_stopped_by_the_next_start_and_its_writes_kept(
    tmp_path: Path, orphans: list[int], found_by: str
) -> None:
    seeded = _seed(tmp_path / "d")
    orphan = _start_orphan(seeded.conf_path, orphans)
    _wait_ping(seeded.url)
    if found_by == "pid file":
        seeded.pid_file.write_text(f"{orphan}\n")
    client = redis.Redis.from_url(seeded.url)
    client.set("written-to-the-orphan", "kept")
    client.close()

    with EmbeddedRedis(tmp_path / "d") as server:
        assert _gone(orphan), "the orphan must be stopped before the new server starts"
        assert server.leftover_pids() == [server.pid], "exactly one redis-server on the directory"
        assert server.pid_file.read_text().strip() == str(server.pid)
        client = redis.Redis.from_url(server.url)
        assert client.get("written-to-the-orphan") == b"kept", "SIGTERM makes the orphan flush its AOF"
        client.close()
    assert not server.pid_file.exists()


def test_an_orphan_from_a_version_without_pid_file_or_plain_argv_is_found(
    tmp_path: Path, orphans: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    seeded = _seed(tmp_path / "d")
    # Before `set-proc-title no`, /proc/<pid>/cmdline read "redis-server unixsocket:<path>".
    conf = seeded.conf_path
    conf.write_text(conf.read_text().replace("set-proc-title no\n", ""))
    orphan = _start_orphan(conf, orphans)
    _wait_ping(seeded.url)
    assert "unixsocket:" in process_argv(orphan)[0]

    with caplog.at_level("WARNING", logger="riskgate.redis"), EmbeddedRedis(tmp_path / "d") as server:
        assert _gone(orphan)
        assert server.leftover_pids() == [server.pid]
    assert any(getattr(r, "fields", {}).get("pid") == orphan for r in caplog.records), caplog.text


def test_a_leftover_that_ignores_sigterm_is_killed(tmp_path: Path, orphans: list[int]) -> None:
    seeded = _seed(tmp_path / "d")
    orphan = _start_orphan(seeded.conf_path, orphans)
    _wait_ping(seeded.url)
    os.kill(orphan, signal.SIGSTOP)  # a stopped process leaves SIGTERM pending; only SIGKILL ends it
    server = EmbeddedRedis(tmp_path / "d")
    server.leftover_grace = 0.5
    started = time.monotonic()
    with server:
        assert _gone(orphan)
        assert server.running
    assert time.monotonic() - started < 10


def test_a_leftover_that_cannot_be_signalled_is_refused_by_pid_and_directory(
    tmp_path: Path, orphans: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = _seed(tmp_path / "d")
    orphan = _start_orphan(seeded.conf_path, orphans)
    _wait_ping(seeded.url)

    def refuse(pid: int, handle: int | None, signum: signal.Signals) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(EmbeddedRedis, "_signal", staticmethod(refuse))
    blocked = EmbeddedRedis(tmp_path / "d")
    with pytest.raises(RedisLaunchError, match=rf"pid {orphan}\).*{seeded.data_dir}.*cannot be signalled"):
        blocked.start()
    assert not blocked.running
    assert not _gone(orphan), "refused, and nothing started beside it"
    monkeypatch.undo()
    with EmbeddedRedis(tmp_path / "d") as server:  # the refusal released the lock
        assert _gone(orphan)
        assert server.running


def test_a_pid_file_of_a_dead_process_is_ignored(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait(10)
    (data / PID_FILE).write_text(f"{dead.pid}\n")
    with EmbeddedRedis(data, RedisOptions(persistent=False)) as server:
        assert server.pid_file.read_text().strip() == str(server.pid)


@pytest.mark.parametrize("argv_tail", [[], ["redis.conf"]], ids=["sleep", "sleep naming redis.conf"])
def test_an_unrelated_live_process_in_the_pid_file_is_never_signalled(tmp_path: Path, argv_tail: list[str]) -> None:
    data = (tmp_path / "d").resolve()
    data.mkdir()
    tail = [str(data / name) for name in argv_tail]  # even one whose argv names this directory's redis.conf
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *tail])
    try:
        (data / PID_FILE).write_text(f"{unrelated.pid}\n")
        with EmbeddedRedis(data, RedisOptions(persistent=False)) as server:
            assert server.running
            assert unrelated.poll() is None, "an unrelated process must never be signalled"
    finally:
        unrelated.kill()
        unrelated.wait(10)
    assert unrelated.returncode == -signal.SIGKILL


CHILD = """
import sys, time
from pathlib import Path
import redis
from service.redis.embedded import EmbeddedRedis
server = EmbeddedRedis(Path(sys.argv[1]))
server.start()
redis.Redis.from_url(server.url).set("before-the-crash", "kept")
print(server.pid, flush=True)
time.sleep(60)
"""


def test_the_server_dies_with_a_sigkilled_parent_and_keeps_its_aof(tmp_path: Path) -> None:
    data = tmp_path / "d"
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data)], stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        assert _wait_gone(child, 5.0), "redis-server outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        if child:
            _kill_redis(child)
    assert "SIGTERM" in (data / "redis.log").read_text(), "SIGTERM, not SIGKILL: redis flushes its AOF"
    with EmbeddedRedis(data) as server:
        client = redis.Redis.from_url(server.url)
        assert client.get("before-the-crash") == b"kept"
        client.close()


def test_the_server_dies_with_the_thread_that_started_it(tmp_path: Path) -> None:
    # Why start() belongs on the main thread: PR_SET_PDEATHSIG follows the forking thread.
    server = EmbeddedRedis(tmp_path, RedisOptions(persistent=False))
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join(20)
    pid = server.pid
    assert pid is not None
    try:
        assert _wait_gone(pid, 5.0)
    finally:
        server.stop()


def test_a_child_whose_parent_died_before_prctl_exits_at_once() -> None:
    # Simulated: told to expect a parent that is not the one it has, as after a re-parenting.
    child = subprocess.Popen(
        ["sleep", "30"],
        preexec_fn=redis_embedded._die_with_parent(os.getppid()),  # noqa: PLW1509 - the code under test
    )
    try:
        assert child.wait(5) == 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
