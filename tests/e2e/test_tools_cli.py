"""The command-line tools as an operator runs them, each a subprocess against a real redis-server:
the tails waiting through quiet spells, a bad export time, `lists import` with no lists.yaml
where it looked, and `serve --help` listing the settings.

Every tool runs with an environment stripped of the caller's RISKGATE_* settings (the CLI rejects
unknown ones) and a timeout, so a tool that hangs fails the test instead of the run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from service.settings import SETTINGS
from tests.conftest import REPO
from tests.e2e.conftest import RISKGATE

pytestmark = pytest.mark.e2e

CLI_TIMEOUT = 30.0
QUIET_SECONDS = 3.0  # three of the tails' 1-s XREAD blocks, well past the old 1-s socket timeout


def _tool_env(tmp: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """The settings a tool needs to reach an external Redis: its URL and the hashing secret."""
    secret = tmp / "hash-secret"
    if not secret.exists():
        secret.write_text(secrets.token_hex(32) + "\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    environment.update(RISKGATE_REDIS_URL=redis_url, RISKGATE_HASH_SECRET_FILE=str(secret), **extra)
    return environment


def _riskgate(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RISKGATE), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
    )


def _wait_blocked(client: redis.Redis, timeout: float = CLI_TIMEOUT) -> None:
    """Until some client sits in a blocking XREAD: the tail has connected and is waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(client.info("clients")["blocked_clients"]) > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"no tail blocked in XREAD within {timeout} s")


# --- the tails wait through a quiet spell -------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "key", "fields"),
    [
        ("decisions", "rg:log:decisions", {"decision_id": "d-quiet", "rules": "", "counters": "{}"}),
        ("audit", "rg:audit", {"principal": "local", "action": "lists.import", "result": "ok"}),
    ],
)
def test_a_tail_keeps_waiting_while_nothing_is_logged(
    command: str, key: str, fields: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    env = _tool_env(tmp_path, redis_url)
    tail = subprocess.Popen(
        [str(RISKGATE), command, "tail", "--count", "1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = redis.Redis.from_url(redis_url)
    try:
        _wait_blocked(client)
        time.sleep(QUIET_SECONDS)
        assert tail.poll() is None, tail.communicate(timeout=CLI_TIMEOUT)[1]
        client.xadd(key, fields)  # type: ignore[arg-type]
        out, err = tail.communicate(timeout=CLI_TIMEOUT)
    finally:
        client.close()
        if tail.poll() is None:
            tail.kill()
            tail.communicate(timeout=CLI_TIMEOUT)
    assert tail.returncode == 0, err
    (line,) = out.splitlines()
    assert {k: json.loads(line)[k] for k in fields if k not in ("rules", "counters")} == {
        k: v for k, v in fields.items() if k not in ("rules", "counters")
    }
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["decisions", "audit"])
def test_ctrl_c_right_after_a_line_ends_the_tail(command: str, redis_url: str, tmp_path: Path) -> None:
    """Ctrl-C the moment a line is out (an operator stopping a tail that just showed what they
    waited for): the first interrupt ends it, with exit 0, every time (it was lost about 1 in 5)."""
    env = _tool_env(tmp_path, redis_url)
    key = {"decisions": "rg:log:decisions", "audit": "rg:audit"}[command]
    client = redis.Redis.from_url(redis_url)
    try:
        for round_ in range(3):
            tail = subprocess.Popen(
                [str(RISKGATE), command, "tail"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _wait_blocked(client)
                client.xadd(key, {"decision_id": f"d-int-{round_}", "principal": "local", "result": "ok"})
                assert tail.stdout is not None
                assert tail.stdout.readline()  # the line is out: interrupt now
                tail.send_signal(signal.SIGINT)
                _, err = tail.communicate(timeout=5)
            finally:
                if tail.poll() is None:
                    tail.kill()
                    tail.communicate(timeout=CLI_TIMEOUT)
            assert tail.returncode == 0, err
            assert "Traceback" not in err
    finally:
        client.close()


# --- decisions export: a bad time is a usage error ----------------------------------------------


@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_a_bad_export_time_is_a_one_line_usage_error(flag: str, redis_url: str, tmp_path: Path) -> None:
    result = _riskgate("decisions", "export", flag, "yesterday", cwd=tmp_path, env=_tool_env(tmp_path, redis_url))
    assert result.returncode == 2
    assert result.stderr == "riskgate decisions export: 'yesterday' is not an ISO 8601 time\n"
    assert result.stdout == ""


def test_an_export_since_before_the_epoch_exports_everything(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for n in range(2):
            client.xadd("rg:log:decisions", {"decision_id": f"d{n}", "rules": "", "counters": "{}"})
    finally:
        client.close()
    long_ago = (datetime.now(UTC) - timedelta(days=80 * 365)).isoformat()  # before 1970: a negative stream id
    until = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    result = _riskgate(
        "decisions", "export", "--since", long_ago, "--until", until, cwd=tmp_path, env=_tool_env(tmp_path, redis_url)
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["decision_id"] for line in result.stdout.splitlines()] == ["d0", "d1"]
    assert result.stderr == "2 decisions exported\n"


# --- lists import: where lists.yaml was looked for ----------------------------------------------


def _import(tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    csv_file = tmp / "ids.csv"
    csv_file.write_text("value\n110101199003077777\n")
    return _riskgate(
        "lists", "import", "punished_persons", str(csv_file), "--reason", "notice 9", "--added-by", "desk 2",
        cwd=tmp, env=env,
    )  # fmt: skip


def test_lists_import_outside_the_checkout_names_where_it_looked(redis_url: str, tmp_path: Path) -> None:
    result = _import(tmp_path, _tool_env(tmp_path, redis_url))  # RISKGATE_RULES_DIR: its default, `rules`
    assert result.returncode == 2
    looked = tmp_path.resolve() / "rules" / "lists.yaml"
    assert result.stderr.startswith(f"riskgate lists import: no lists.yaml at {looked} (no such directory): ")
    assert "RISKGATE_RULES_DIR" in result.stderr
    assert "declared: none" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_lists_import_with_a_rules_dir_lacking_lists_yaml_names_it(redis_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "my-rules"
    rules.mkdir()
    result = _import(tmp_path, _tool_env(tmp_path, redis_url, RISKGATE_RULES_DIR=str(rules)))
    assert result.returncode == 2
    assert f"no lists.yaml at {rules.resolve() / 'lists.yaml'}: " in result.stderr
    assert "RISKGATE_RULES_DIR" in result.stderr


def test_an_unknown_list_names_the_lists_yaml_read(redis_url: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "ids.csv"
    csv_file.write_text("value\n110101199003077777\n")
    env = _tool_env(tmp_path, redis_url, RISKGATE_RULES_DIR=str(REPO / "rules"))
    args = ("lists", "import", "no_such_list", str(csv_file), "--reason", "r", "--added-by", "a")
    result = _riskgate(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "unknown list 'no_such_list'" in result.stderr
    assert str(REPO / "rules" / "lists.yaml") in result.stderr


# --- serve --help lists the settings ------------------------------------------------------------


def test_serve_help_lists_every_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    result = _riskgate("serve", "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "settings (environment variables):" in result.stdout
    missing = [doc.env for doc in SETTINGS.values() if f"  {doc.env} (default" not in result.stdout]
    assert missing == []
