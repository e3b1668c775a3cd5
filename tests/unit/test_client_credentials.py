"""How `riskgate screen` connects: which combinations of --ca, --cert, --key and --token-file it
accepts, and that a bearer token never leaves the machine in plaintext."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.server.access.identity import ClientCredentials


def _token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("rgt_secret\n")
    return path


@pytest.mark.parametrize("target", ["10.1.2.3:50051", "riskgate.bank.example:50051", "[2001:db8::1]:50051"])
def test_a_token_is_not_sent_in_plaintext_beyond_loopback(tmp_path: Path, target: str) -> None:
    with pytest.raises(ValueError, match="bearer token goes over TLS only"):
        ClientCredentials(token_file=_token(tmp_path)).channel(target)


@pytest.mark.parametrize("target", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "unix:/run/riskgate.sock"])
def test_a_token_may_go_in_plaintext_to_loopback(tmp_path: Path, target: str) -> None:
    credentials = ClientCredentials(token_file=_token(tmp_path))
    credentials.channel(target).close()
    assert credentials.metadata() == (("authorization", "Bearer rgt_secret"),)


@pytest.mark.parametrize("kwargs", [{"cert": Path("c.pem")}, {"key": Path("k.pem")}])
def test_a_client_certificate_needs_tls(kwargs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="need --ca"):
        ClientCredentials(**kwargs).channel("127.0.0.1:50051")


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        ClientCredentials(token_file=empty).metadata()
