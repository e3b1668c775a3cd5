"""`riskgate screen` against the real server: JSON Lines over one ScreenStream, bad lines reported
by number and skipped, a summary, exit codes, progress only on a terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from google.protobuf import json_format

from service._gen.riskgate.v1 import screening_pb2 as pb
from tests import samples
from tests.e2e.conftest import RISKGATE, RunningServer, start_server

CLI_TIMEOUT = 60
BAD_ID_NUMBER = "110101199003074513"  # in a bad line: never echoed on stderr

_OUTCOMES = {"OUTCOME_ALLOW": "allow", "OUTCOME_WARN": "warn", "OUTCOME_BLOCK": "block"}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}


def _screen(
    server: RunningServer | str, *flags: str, stdin: str, stderr: int | None = None
) -> subprocess.CompletedProcess[str]:
    address = server if isinstance(server, str) else server.address
    return subprocess.run(
        [str(RISKGATE), "screen", "--target", address, *flags],
        input=stdin,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr is None else stderr,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def _requests(count: int) -> list[pb.ScreenRequest]:
    """`count` valid requests of every kind, each with a fresh request_id and no time (now)."""
    run = uuid.uuid4().hex[:8]
    kinds = list(samples.ALL_KINDS.values())
    return [kinds[i % len(kinds)](f"screen-{run}-{i}") for i in range(count)]


def _line(request: pb.ScreenRequest) -> str:
    return json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True), ensure_ascii=False)


def _file(count: int, bad: dict[int, str]) -> tuple[str, list[str]]:
    """JSON Lines of `count` lines, line n (from 1) replaced by bad[n]; and the good lines' ids."""
    requests = iter(_requests(count - len(bad)))
    lines, ids = [], []
    for number in range(1, count + 1):
        if number in bad:
            lines.append(bad[number])
        else:
            request = next(requests)
            ids.append(request.request_id)
            lines.append(_line(request))
    return "\n".join(lines) + "\n", ids


BAD_LINES = {
    100: '{"request_id": "broken", "outlet": {',  # the line ends inside the object
    200: '{"request_id": "typed", "card_opening": {"applicant": {"id_number": ' + BAD_ID_NUMBER + "}}}",
}


def _decisions(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def _summary(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("riskgate screen: ") and " sent, " in line]
    assert len(lines) == 1, stderr
    return lines[0]


def _by_outcome(decisions: list[dict[str, Any]]) -> str:
    counts = Counter(_OUTCOMES[d["outcome"]] for d in decisions)
    return f"allow {counts['allow']}, warn {counts['warn']}, block {counts['block']}"


def test_bad_lines_are_reported_by_number_and_skipped(server: RunningServer) -> None:
    text, ids = _file(300, BAD_LINES)
    result = _screen(server, stdin=text)
    assert result.returncode == 1, result.stderr
    decisions = _decisions(result.stdout)
    assert [d["request_id"] for d in decisions] == ids  # 298, in input order
    assert all(d["decision_id"] and "error" not in d for d in decisions)
    assert "stdin:100: invalid JSON: the line ends inside a JSON value" in result.stderr
    assert "stdin:200: card_opening.applicant.id_number: expected a string, got a number" in result.stderr
    assert BAD_ID_NUMBER not in result.stderr
    summary = _summary(result.stderr)
    assert f"298 sent, 298 decided ({_by_outcome(decisions)})" in summary
    assert summary.endswith("errors: 2 bad lines, 0 error answers, 0 unanswered")
    assert re.search(r" in \d+\.\d s, \d+/s;", summary)
    assert "\r" not in result.stderr and "screened," not in result.stderr  # no progress into a pipe


def test_stop_on_error_stops_at_the_first_bad_line(server: RunningServer) -> None:
    text, ids = _file(300, BAD_LINES)
    result = _screen(server, "--stop-on-error", stdin=text)
    assert result.returncode == 1
    assert [d["request_id"] for d in _decisions(result.stdout)] == ids[:99]
    assert "stdin:100: " in result.stderr
    assert "stdin:200" not in result.stderr
    assert "stopped at the bad line 100 (--stop-on-error)" in result.stderr
    assert "99 sent, 99 decided" in _summary(result.stderr)


def test_a_clean_file_exits_0(server: RunningServer) -> None:
    text, ids = _file(40, {})
    result = _screen(server, "--window", "4", stdin="\n" + text.replace("\n", "\n\n"))  # blank lines are skipped
    assert result.returncode == 0, result.stderr
    decisions = _decisions(result.stdout)
    assert [d["request_id"] for d in decisions] == ids
    assert f"40 sent, 40 decided ({_by_outcome(decisions)})" in _summary(result.stderr)
    assert "stdin:" not in result.stderr


def test_an_error_answer_is_printed_counted_and_fails_the_run(server: RunningServer) -> None:
    good, bad = _requests(2)
    bad.ClearField("outlet")
    result = _screen(server, stdin=_line(good) + "\n" + _line(bad) + "\n")
    assert result.returncode == 1
    first, second = _decisions(result.stdout)
    assert first["request_id"] == good.request_id and "error" not in first
    assert second["request_id"] == bad.request_id
    assert second["error"]["code"] == "INVALID_ARGUMENT"
    assert re.search(rf"stdin:2: {bad.request_id}: INVALID_ARGUMENT: outlet", result.stderr), result.stderr
    assert "2 sent, 1 decided" in _summary(result.stderr)
    assert "0 bad lines, 1 error answers, 0 unanswered" in result.stderr


def test_one_pretty_printed_object_is_one_request(server: RunningServer) -> None:
    (request,) = _requests(1)
    text = json_format.MessageToJson(request, preserving_proto_field_name=True)
    assert text.count("\n") > 3
    result = _screen(server, stdin=text)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("{\n  ")  # a lone decision is pretty-printed
    assert json.loads(result.stdout)["request_id"] == request.request_id
    assert "1 sent, 1 decided" in _summary(result.stderr)


def test_progress_only_when_asked_or_on_a_terminal(server: RunningServer) -> None:
    text, _ = _file(30, {})
    forced = _screen(server, "--progress", stdin=text)
    assert forced.returncode == 0, forced.stderr
    assert re.search(r"^\d+ screened, \d+/s, 0 errors$", forced.stderr, re.MULTILINE), forced.stderr

    text, _ = _file(30, {})
    leader, follower = os.openpty()
    try:
        on_terminal = _screen(server, stdin=text, stderr=follower)
        os.close(follower)
        follower = -1
        written = _read_all(leader)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert on_terminal.returncode == 0, written
    assert re.search(r"\r\d+ screened, \d+/s, 0 errors", written), written
    assert "30 sent, 30 decided" in written

    text, _ = _file(30, {})
    leader, follower = os.openpty()
    try:
        silenced = _screen(server, "--no-progress", stdin=text, stderr=follower)
        os.close(follower)
        follower = -1
        written = _read_all(leader)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert silenced.returncode == 0, written
    assert "screened," not in written


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_usage_errors_exit_2(server: RunningServer) -> None:
    for flags in (["--window", "0"], ["--timeout", "-1"], ["--token-file", "/nonexistent/token"]):
        result = _screen(server, *flags, stdin="")
        assert result.returncode == 2, (flags, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_server_that_never_answers_is_given_up_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        (request,) = _requests(1)
        started = time.monotonic()
        result = _screen(f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "1", stdin=_line(request))
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "no answer for 1 s (--timeout): gave up (DEADLINE_EXCEEDED)" in result.stderr
    assert "1 requests sent but not answered (line 1)" in result.stderr
    assert "1 sent, 0 decided" in _summary(result.stderr)


@pytest.fixture
def stoppable(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path)
    yield running
    running.terminate()


def test_a_stream_broken_by_a_stopping_server_is_reported(stoppable: RunningServer) -> None:
    requests = _requests(3)
    with subprocess.Popen(
        [str(RISKGATE), "screen", "--target", stoppable.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        text=True,
    ) as cli:
        try:
            assert cli.stdin is not None and cli.stdout is not None and cli.stderr is not None
            for request in requests:
                cli.stdin.write(_line(request) + "\n")
            cli.stdin.flush()
            answered = [_read_line(cli.stdout) for _ in requests]  # the stream is open and idle now
            assert [json.loads(line)["request_id"] for line in answered] == [r.request_id for r in requests]
            stoppable.process.send_signal(signal.SIGTERM)
            code = cli.wait(CLI_TIMEOUT)
            stderr = cli.stderr.read()
        finally:
            if cli.poll() is None:
                cli.kill()
    assert code == 1, stderr
    assert "the stream ended with UNAVAILABLE: riskgate is stopping" in stderr
    assert "the rest of the input was not read" in stderr
    assert "3 sent, 3 decided" in _summary(stderr)


def _read_line(stream: IO[str]) -> str:
    line = stream.readline()
    assert line, "the CLI closed stdout early"
    return line
