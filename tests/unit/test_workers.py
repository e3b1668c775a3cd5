"""The supervisor's pure parts: spools of workers no longer configured, a worker's own settings, the port check."""

from __future__ import annotations

import fcntl
import socket
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.server.workers import _check_port_free, adopt_spools, spool_path, worker_settings
from service.settings import Settings


def test_worker_zero_keeps_the_single_process_spool(tmp_path: Path) -> None:
    assert spool_path(tmp_path, 0) == tmp_path / "decision-log.spool"
    assert spool_path(tmp_path, 3) == tmp_path / "decision-log.worker-3.spool"


def test_spools_of_workers_no_longer_configured_go_to_worker_zero(tmp_path: Path) -> None:
    spool_path(tmp_path, 0).write_bytes(b'{"a": 1}\n{"torn"')
    spool_path(tmp_path, 1).write_bytes(b'{"b": 1}\n')
    spool_path(tmp_path, 2).write_bytes(b'{"c": 1}')
    assert adopt_spools(tmp_path, 2) == 1  # worker 1 is still configured
    assert spool_path(tmp_path, 0).read_bytes() == b'{"a": 1}\n{"torn"\n{"c": 1}\n'
    assert spool_path(tmp_path, 1).exists() and not spool_path(tmp_path, 2).exists()
    assert adopt_spools(tmp_path, 1) == 1
    assert spool_path(tmp_path, 0).read_bytes().endswith(b'{"c": 1}\n{"b": 1}\n')
    assert adopt_spools(tmp_path, 1) == 0


def test_a_spool_in_use_is_left_alone(tmp_path: Path) -> None:
    spool_path(tmp_path, 1).write_bytes(b'{"b": 1}\n')
    with (tmp_path / "decision-log.worker-1.spool.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert adopt_spools(tmp_path, 1) == 0
    assert spool_path(tmp_path, 1).exists()
    assert not spool_path(tmp_path, 0).exists() or spool_path(tmp_path, 0).read_bytes() == b""


def test_only_worker_zero_serves_the_console_and_no_worker_the_metrics() -> None:
    settings = Settings.from_env({"RISKGATE_WORKERS": "2", "RISKGATE_CONSOLE_LISTEN": "127.0.0.1:8091"})
    first, second = worker_settings(settings, 0), worker_settings(settings, 1)
    assert (first.console_listen, first.metrics_listen) == ("127.0.0.1:8091", "")
    assert (second.console_listen, second.metrics_listen) == ("", "")
    assert first.workers == second.workers == 2


def test_a_port_someone_listens_on_is_refused() -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"RISKGATE_LISTEN=127.0.0.1:{port}: cannot listen there"):
            _check_port_free(f"127.0.0.1:{port}")
    _check_port_free(f"127.0.0.1:{port}")
