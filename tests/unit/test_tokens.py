"""Tests for service.server.access.tokens: the tokens file and verifying a presented token."""

from __future__ import annotations

import hashlib
import hmac
import re
import types
from pathlib import Path

import pytest

from service.errors import SourceError
from service.server.access import tokens as tokens_module
from service.server.access.tokens import NO_TOKENS, TOKEN_PREFIX, load_tokens, new_token, parse_tokens

FILE = "tokens.txt"
MALFORMED = "expected 'name sha256:<64 hex digits>' (riskgate token new NAME)"


def line_for(name: str, token: str) -> str:
    return f"{name} sha256:{hashlib.sha256(token.encode()).hexdigest()}"


def problems_of(text: str) -> list[str]:
    _, problems = parse_tokens(text, FILE)
    return [str(problem) for problem in problems]


def test_a_new_token_line_is_accepted_and_verifies_to_its_name() -> None:
    token, line = new_token("risk-office")
    assert token.startswith(TOKEN_PREFIX)
    assert re.fullmatch(r"risk-office sha256:[0-9a-f]{64}", line)
    assert token not in line
    tokens, problems = parse_tokens(line + "\n", FILE)
    assert problems == []
    assert set(tokens.digests) == {"risk-office"}
    assert tokens.verify(token) == "risk-office"


def test_new_tokens_are_different_each_time() -> None:
    first, first_line = new_token("a")
    second, second_line = new_token("a")
    assert first != second
    assert first_line != second_line
    assert len(first) >= len(TOKEN_PREFIX) + 43  # 32 random bytes in base64url


def test_each_token_verifies_to_its_own_name() -> None:
    made = {name: new_token(name) for name in ("alpha", "beta", "gamma")}
    tokens, problems = parse_tokens("\n".join(line for _, line in made.values()), FILE)
    assert problems == []
    for name, (token, _) in made.items():
        assert tokens.verify(token) == name


@pytest.mark.parametrize(
    "guess",
    ["", "wrong", TOKEN_PREFIX, "risk-office"],
)
def test_a_wrong_token_verifies_to_none(guess: str) -> None:
    token, line = new_token("risk-office")
    tokens, _ = parse_tokens(line, FILE)
    assert tokens.verify(guess) is None
    assert tokens.verify(token + "x") is None
    assert tokens.verify(token[:-1]) is None
    assert tokens.verify(token.upper()) is None


def test_the_hash_itself_is_not_a_token() -> None:
    token, line = new_token("risk-office")
    tokens, _ = parse_tokens(line, FILE)
    assert tokens.verify(line.split("sha256:")[1]) is None
    assert tokens.verify(line.split(" ")[1]) is None
    assert tokens.verify(token) == "risk-office"


def test_no_tokens_verifies_nothing() -> None:
    assert NO_TOKENS.verify("anything") is None
    assert NO_TOKENS.verify("") is None


def test_comments_and_blank_lines_are_skipped() -> None:
    text = (
        "# tokens for riskgate\n"  # 1
        "\n"  # 2
        "   \n"  # 3
        f"{line_for('alpha', 'secret-a')}   # the risk office\n"  # 4
        "\t# indented comment\n"  # 5
        f"  {line_for('beta', 'secret-b')}\n"  # 6
    )
    tokens, problems = parse_tokens(text, FILE)
    assert problems == []
    assert set(tokens.digests) == {"alpha", "beta"}
    assert tokens.verify("secret-a") == "alpha"
    assert tokens.verify("secret-b") == "beta"


def test_an_empty_file_has_no_tokens() -> None:
    tokens, problems = parse_tokens("", FILE)
    assert problems == []
    assert dict(tokens.digests) == {}


@pytest.mark.parametrize(
    "bad",
    [
        "alpha",  # no hash
        "alpha sha256:" + "0" * 63,  # too short
        "alpha sha256:" + "0" * 65,  # too long
        "alpha sha256:" + "A" * 64,  # upper-case hex
        "alpha sha1:" + "0" * 64,  # other algorithm
        "alpha " + "0" * 64,  # no algorithm
        "Alpha sha256:" + "0" * 64,  # upper-case name
        "-alpha sha256:" + "0" * 64,  # name starts with punctuation
        "a" * 65 + " sha256:" + "0" * 64,  # name too long
        "alpha sha256:" + "0" * 64 + " extra",
        "alpha beta sha256:" + "0" * 64,
    ],
)
def test_a_malformed_line(bad: str) -> None:
    text = f"# header\n{line_for('good', 'secret')}\n{bad}\n"
    assert problems_of(text) == [f"{FILE}:3: {MALFORMED}"]


def test_a_malformed_line_is_left_out_and_the_rest_kept() -> None:
    text = f"oops\n{line_for('good', 'secret')}\n"
    tokens, problems = parse_tokens(text, FILE)
    assert [str(p) for p in problems] == [f"{FILE}:1: {MALFORMED}"]
    assert tokens.verify("secret") == "good"


def test_a_duplicate_name() -> None:
    text = f"{line_for('alpha', 'one')}\n# comment\n{line_for('alpha', 'two')}\n"
    tokens, problems = parse_tokens(text, FILE)
    assert [str(p) for p in problems] == [f"{FILE}:3: token 'alpha' is listed twice (first at line 1)"]
    assert tokens.verify("one") == "alpha"
    assert tokens.verify("two") is None


def test_a_duplicate_hash() -> None:
    text = f"\n{line_for('alpha', 'same')}\n{line_for('beta', 'same')}\n"
    tokens, problems = parse_tokens(text, FILE)
    assert [str(p) for p in problems] == [f"{FILE}:3: token 'beta' has the same hash as another token"]
    assert set(tokens.digests) == {"alpha"}


def test_every_problem_is_reported() -> None:
    text = "\n".join(
        [
            line_for("alpha", "one"),  # 1
            "junk",  # 2
            line_for("alpha", "two"),  # 3
            line_for("beta", "one"),  # 4
            line_for("gamma", "three"),  # 5
        ]
    )
    assert [p.line for p in parse_tokens(text, FILE)[1]] == [2, 3, 4]


def test_load_tokens_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    token, line = new_token("ops-cli")
    path.write_text(f"# made by riskgate token new\n{line}\n", encoding="utf-8")
    assert load_tokens(path).verify(token) == "ops-cli"


def test_load_tokens_raises_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{line_for('a', 'x')}\nbroken\n", encoding="utf-8")
    with pytest.raises(SourceError) as raised:
        load_tokens(path)
    assert str(raised.value) == f"{path}:2: {MALFORMED}"


def test_load_tokens_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(SourceError) as raised:
        load_tokens(path)
    (problem,) = raised.value.problems
    assert (problem.file, problem.line) == (str(path), 1)
    assert problem.problem.startswith("cannot read the tokens file:")


# --- constant time: every stored digest is compared ---------------------------


def counting_compare_digest(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Replace `hmac` in service.server.access.tokens' namespace by one whose compare_digest records its calls."""
    calls: list[tuple[bytes, bytes]] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(tokens_module, "hmac", types.SimpleNamespace(compare_digest=compare_digest))
    return calls


def test_verify_compares_every_digest_even_when_the_first_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    made = [new_token(name) for name in ("first", "second", "third", "fourth")]
    tokens, problems = parse_tokens("\n".join(line for _, line in made), FILE)
    assert problems == []
    calls = counting_compare_digest(monkeypatch)

    assert tokens.verify(made[0][0]) == "first"
    assert len(calls) == 4
    assert {b for _, b in calls} == set(tokens.digests.values())

    calls.clear()
    assert tokens.verify(made[3][0]) == "fourth"
    assert len(calls) == 4

    calls.clear()
    assert tokens.verify("wrong") is None
    assert len(calls) == 4


def test_verify_hashes_the_presented_token_before_comparing(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, _ = parse_tokens(line_for("alpha", "secret"), FILE)
    calls = counting_compare_digest(monkeypatch)
    assert tokens.verify("secret") == "alpha"
    ((presented, stored),) = calls
    assert presented == hashlib.sha256(b"secret").digest()
    assert stored == presented
