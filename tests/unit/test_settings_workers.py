"""RISKGATE_WORKERS: serving processes on one port."""

from __future__ import annotations

import os

import pytest

from service.errors import ConfigError
from service.settings import MAX_WORKERS, Settings


def test_one_process_by_default() -> None:
    assert Settings.defaults().workers == 1


def test_a_number_of_workers() -> None:
    assert Settings.from_env({"RISKGATE_WORKERS": "4"}).workers == 4
    assert Settings.from_env({"RISKGATE_WORKERS": str(MAX_WORKERS)}).workers == MAX_WORKERS


def test_auto_is_one_per_usable_core() -> None:
    expected = min(MAX_WORKERS, len(os.sched_getaffinity(0)))
    assert Settings.from_env({"RISKGATE_WORKERS": "auto"}).workers == expected
    assert Settings.from_env({"RISKGATE_WORKERS": "AUTO"}).workers == expected


@pytest.mark.parametrize("value", ["0", "-1", "65", "two", "1.5", ""])
def test_out_of_range_or_not_a_number(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RISKGATE_WORKERS": value})
    assert str(caught.value) == f"RISKGATE_WORKERS={value!r}: expected auto or a whole number from 1 to 64"


def test_several_workers_cannot_share_a_unix_socket() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RISKGATE_WORKERS": "2", "RISKGATE_LISTEN": "unix:/tmp/riskgate.sock"})
    assert str(caught.value) == (
        "RISKGATE_WORKERS=2 needs a host:port RISKGATE_LISTEN: the processes share a TCP port, "
        "and a Unix socket cannot be shared"
    )
    assert Settings.from_env({"RISKGATE_WORKERS": "1", "RISKGATE_LISTEN": "unix:/tmp/riskgate.sock"}).workers == 1
