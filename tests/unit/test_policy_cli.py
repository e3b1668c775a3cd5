"""Tests for `riskgate policy check` and `riskgate token new`."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest

from service.server.access.tokens import TOKEN_PREFIX, parse_tokens
from service.tools import cli
from service.tools.access import check_policy

POLICY = """\
roles:
  outlet: [screen]
  back_office: [screen, lists.read, lists.write, decisions.read]
  nothing_at_all: []
principals:
  - name: branch-counters
    certificate: "*.counter.bank.example"
    roles: [outlet]
  - name: risk-office
    token: risk-office
    roles: [back_office]
  - name: ops-console
    local: true
    roles: [back_office, outlet]
  - name: idle
    token: idle-token
    roles: [nothing_at_all]
"""


def token_line(name: str, token: str) -> str:
    return f"{name} sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


def run_check(policy: Path, tokens: Path | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = check_policy(policy, tokens, out, err)
    return code, out.getvalue(), err.getvalue()


def test_a_good_policy_prints_who_may_do_what(policy_file: Path) -> None:
    code, out, err = run_check(policy_file)
    assert code == 0
    assert err == ""
    assert out.splitlines() == [
        f"{policy_file}: 3 roles, 4 principals",
        "  branch-counters (certificate *.counter.bank.example): screen",
        "  risk-office (token risk-office): screen, lists.read, lists.write, decisions.read",
        "  ops-console (local callers): screen, lists.read, lists.write, decisions.read",
        "  idle (token idle-token): nothing",
    ]


def test_a_good_policy_with_its_tokens_file(policy_file: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("risk-office", "a") + token_line("idle-token", "b"), encoding="utf-8")
    code, out, err = run_check(policy_file, tokens)
    assert (code, err) == (0, "")
    assert out.startswith(f"{policy_file}: 3 roles, 4 principals\n")


def test_a_bad_policy_prints_every_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    text = (
        POLICY.replace("[screen, lists.read,", "[screen, list.read,")  # line 3
        .replace("roles: [outlet]\n  - name: risk", "roles: [outlets]\n  - name: risk")  # line 8
        .replace("    local: true\n", "    local: yes\n")  # lines 12, 13
    )
    path.write_text(text, encoding="utf-8")
    code, out, err = run_check(path)
    assert code == 1
    assert out == ""
    problems = err.splitlines()
    assert [line.split(": ", 1)[0] for line in problems] == [f"{path}:3", f"{path}:8", f"{path}:13", f"{path}:12"]
    assert "unknown permission 'list.read'" in problems[0]
    assert "unknown role 'outlets'" in problems[1]
    assert "'local' must be true or false" in problems[2]
    assert "give exactly one of" in problems[3]


def test_bad_yaml_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("roles:\n  a: [screen]\nprincipals:\n  - name: x\n   token: y\n", encoding="utf-8")
    code, out, err = run_check(path)
    assert (code, out) == (1, "")
    assert err.startswith(f"{path}:5: YAML syntax error: ")
    assert len(err.splitlines()) == 1


def test_a_token_missing_from_the_tokens_file_names_the_principal_line(policy_file: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# only one of the two\n" + token_line("idle-token", "b"), encoding="utf-8")
    code, out, err = run_check(policy_file, tokens)
    assert code == 1
    assert out == ""
    assert err == f"{policy_file}:9: principal 'risk-office': token 'risk-office' is not in {tokens}\n"


def test_an_empty_tokens_file_misses_every_token(policy_file: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("", encoding="utf-8")
    code, _, err = run_check(policy_file, tokens)
    assert code == 1
    assert err.splitlines() == [
        f"{policy_file}:9: principal 'risk-office': token 'risk-office' is not in {tokens}",
        f"{policy_file}:15: principal 'idle': token 'idle-token' is not in {tokens}",
    ]


def test_problems_in_the_tokens_file_are_reported_too(policy_file: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("risk-office", "a") + token_line("idle-token", "b") + "garbage\n", encoding="utf-8")
    code, out, err = run_check(policy_file, tokens)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"{tokens}:3: expected 'name sha256:<64 hex digits>' (riskgate token new NAME)"]


def test_a_missing_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    code, out, err = run_check(path)
    assert (code, out) == (1, "")
    assert err.startswith(f"{path}:1: cannot read the policy file:")


def test_a_missing_tokens_file(policy_file: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "absent"
    code, out, err = run_check(policy_file, tokens)
    assert (code, out) == (1, "")
    assert err.startswith(f"{tokens}:1: cannot read the tokens file:")


def test_policy_check_through_the_command_line(
    policy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["policy", "check", str(policy_file)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{policy_file}: 3 roles, 4 principals\n")
    assert captured.err == ""

    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("idle-token", "b"), encoding="utf-8")
    assert cli.main(["policy", "check", str(policy_file), "--tokens", str(tokens)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{policy_file}:9: principal 'risk-office': token 'risk-office' is not in {tokens}\n"


# --- riskgate token new ------------------------------------------------------


def test_token_new_prints_the_token_on_stderr_and_its_line_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "new", "ops-cli"]) == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert captured.out == line + "\n"
    match = re.fullmatch(r"ops-cli sha256:([0-9a-f]{64})", line)
    assert match is not None
    found = re.search(rf"{TOKEN_PREFIX}[A-Za-z0-9_-]+", captured.err)
    assert found is not None
    token = found.group(0)
    assert token not in captured.out
    assert hashlib.sha256(token.encode()).hexdigest() == match[1]
    tokens, problems = parse_tokens(captured.out, "stdout")
    assert problems == []
    assert tokens.verify(token) == "ops-cli"


def test_token_new_gives_a_different_token_each_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "new", "a"]) == 0
    first = capsys.readouterr()
    assert cli.main(["token", "new", "a"]) == 0
    second = capsys.readouterr()
    assert first.out != second.out
    assert first.err != second.err


@pytest.mark.parametrize(
    "name",
    [
        "Ops-CLI",
        "ops cli",
        "_ops",
        ".ops",
        "ops#cli",
        "",
        "a" * 65,
        "ops/cli",
        "运维",
        " ops ",
        f"ops sha256:{'a' * 64} #",
    ],
)
def test_token_new_refuses_a_bad_name(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "new", name]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "names are lower-case letters, digits" in captured.err
    assert TOKEN_PREFIX not in captured.err


def test_token_new_needs_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["token", "new"])
    assert raised.value.code == 2
    assert capsys.readouterr().out == ""
