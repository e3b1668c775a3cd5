"""Bearer tokens, kept only as hashes in a file (`RISKGATE_TOKENS_FILE`).

One token per line, `name sha256:<64 hex digits>`; `#` starts a comment.
`riskgate token new NAME` makes a token (32 random bytes, printed once) and
the line to add. A caller sends `authorization: Bearer <token>` as gRPC
metadata. A presented token is hashed and compared with every stored hash in
constant time (`hmac.compare_digest`, no early exit), so neither the answer
nor its timing tells how much of a guess was right. Tokens are random, not
passwords: SHA-256 is enough; a stolen file gives no token back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.errors import SourceError, SourceProblem

TOKEN_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_LINE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_.-]{0,63})\s+sha256:(?P<digest>[0-9a-f]{64})$")
TOKEN_PREFIX = "rgt_"  # noqa: S105 - a prefix, recognisable in a leaked paste, as secret scanners expect


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token(name: str) -> tuple[str, str]:
    """A fresh token and its line for the tokens file."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, f"{name} sha256:{token_digest(token).hex()}"


@dataclass(frozen=True, slots=True)
class Tokens:
    digests: Mapping[str, bytes]  # name -> SHA-256 of the token

    def verify(self, token: str) -> str | None:
        """The name of the token presented, or None; every stored hash is compared."""
        presented = token_digest(token)
        found: str | None = None
        for name, digest in self.digests.items():
            if hmac.compare_digest(presented, digest):
                found = name
        return found


NO_TOKENS = Tokens({})


def parse_tokens(text: str, file: str) -> tuple[Tokens, list[SourceProblem]]:
    digests: dict[str, bytes] = {}
    lines: dict[str, int] = {}
    problems: list[SourceProblem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            problems.append(
                SourceProblem(file, number, "expected 'name sha256:<64 hex digits>' (riskgate token new NAME)")
            )
            continue
        name = match["name"]
        if name in digests:
            problems.append(
                SourceProblem(file, number, f"token '{name}' is listed twice (first at line {lines[name]})")
            )
            continue
        digest = bytes.fromhex(match["digest"])
        if digest in digests.values():
            problems.append(SourceProblem(file, number, f"token '{name}' has the same hash as another token"))
            continue
        digests[name], lines[name] = digest, number
    return Tokens(digests), problems


def load_tokens(path: Path) -> Tokens:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError([SourceProblem(str(path), 1, f"cannot read the tokens file: {error}")]) from None
    tokens, problems = parse_tokens(text, str(path))
    if problems:
        raise SourceError(problems)
    return tokens
