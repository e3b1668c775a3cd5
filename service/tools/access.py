"""`riskgate policy check`, `riskgate token new`, `riskgate audit tail|export`.

The audit commands read the stream in Redis directly, with the server's
settings (RISKGATE_REDIS_URL, the hashing secret): the local-trust path,
for operators of the host, like `riskgate decisions` and `lists import`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from service.errors import InvalidValue, SourceProblem
from service.redis.connection import hasher_for, tool_connection
from service.server.access.audit import audit_key
from service.server.access.policy import PERMISSIONS, parse_policy
from service.server.access.tokens import TOKEN_NAME, new_token, parse_tokens
from service.settings import Settings
from service.tools.admin import export_stream, run_tail, stream_id, tail_stream


def check_policy(policy_path: Path, tokens_path: Path | None, out: TextIO, err: TextIO) -> int:
    """Print every problem as `file:line: problem` (exit 1), or a summary of who may do what."""
    problems: list[SourceProblem] = []
    try:
        policy, found = parse_policy(policy_path.read_text(encoding="utf-8"), str(policy_path))
    except (OSError, UnicodeDecodeError) as error:
        err.write(f"{policy_path}:1: cannot read the policy file: {error}\n")
        return 1
    problems += found
    token_names: set[str] | None = None
    if tokens_path is not None:
        try:
            tokens, found = parse_tokens(tokens_path.read_text(encoding="utf-8"), str(tokens_path))
        except (OSError, UnicodeDecodeError) as error:
            err.write(f"{tokens_path}:1: cannot read the tokens file: {error}\n")
            return 1
        problems += found
        token_names = set(tokens.digests)
    if token_names is not None:
        for principal in policy.principals:
            if principal.token is not None and principal.token not in token_names:
                problems.append(
                    SourceProblem(
                        str(policy_path),
                        principal.line,
                        f"principal '{principal.name}': token '{principal.token}' is not in {tokens_path}",
                    )
                )
    if problems:
        for problem in problems:
            err.write(f"{problem}\n")
        return 1
    out.write(f"{policy_path}: {len(policy.roles)} roles, {len(policy.principals)} principals\n")
    for principal in policy.principals:
        how = (
            f"certificate {principal.certificate}"
            if principal.certificate
            else f"token {principal.token}"
            if principal.token
            else "local callers"
        )
        allowed = ", ".join(p for p in PERMISSIONS if p in principal.permissions) or "nothing"
        out.write(f"  {principal.name} ({how}): {allowed}\n")
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    return check_policy(Path(args.file), Path(args.tokens) if args.tokens else None, sys.stdout, sys.stderr)


def _token_new(args: argparse.Namespace) -> int:
    if not TOKEN_NAME.fullmatch(args.name):
        print(
            f"riskgate token new: '{args.name}': names are lower-case letters, digits, '_', '-', '.'", file=sys.stderr
        )
        return 2
    token, line = new_token(args.name)
    print(f"token (give it to the client once; it is not stored): {token}", file=sys.stderr)
    print(line)
    return 0


def _document(entry_id: str, fields: Mapping[Any, Any]) -> dict[str, Any]:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {"stream_id": entry_id, **{text(k): text(v) for k, v in fields.items()}}


def _audit_export(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)
    try:
        since, until = stream_id(args.since, "-"), stream_id(args.until, "+")
    except InvalidValue as error:
        print(f"riskgate audit export: {error}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with tool_connection(settings) as client:
            key = audit_key(hasher_for(settings).prefix)
            if args.out:
                with Path(args.out).open("w", encoding="utf-8") as out:
                    return await export_stream(client, key, out, since, until, _document)
            return await export_stream(client, key, sys.stdout, since, until, _document)

    written = asyncio.run(run())
    print(f"{written} audit entries exported", file=sys.stderr)
    return 0


def _audit_tail(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)

    async def run(stop: asyncio.Event) -> None:
        async with tool_connection(settings) as client:
            key = audit_key(hasher_for(settings).prefix)
            await tail_stream(client, key, from_start=args.from_start, count=args.count, document=_document, stop=stop)

    return run_tail(run)  # Ctrl-C is how a tail ends


def add_access_commands(commands: Any) -> None:
    policy = commands.add_parser("policy", help="check an access policy file")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    check = policy_commands.add_parser("check", help="report problems as file:line: problem, or who may do what")
    check.add_argument("file", help="the policy file (YAML)")
    check.add_argument("--tokens", help="the tokens file, to check that every token a principal holds is in it")
    check.set_defaults(handler=_policy_check)

    token = commands.add_parser("token", help="make bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    new = token_commands.add_parser(
        "new", help="print a new token on stderr (once) and its line for the tokens file on stdout"
    )
    new.add_argument("name", help="the token's name, as the policy's principals refer to it")
    new.set_defaults(handler=_token_new)

    audit = commands.add_parser("audit", help="read the audit trail of administrative actions")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    tail = audit_commands.add_parser("tail", help="print audit entries as JSON Lines as they are appended")
    tail.add_argument("--from-start", action="store_true", help="begin with the oldest entry")
    tail.add_argument("--count", type=int, help="stop after this many")
    tail.set_defaults(handler=_audit_tail)
    export = audit_commands.add_parser("export", help="write audit entries as JSON Lines")
    export.add_argument("--since", help="ISO 8601 time (China time if no offset)")
    export.add_argument("--until", help="ISO 8601 time (China time if no offset)")
    export.add_argument("--out", help="file to write (default: stdout)")
    export.set_defaults(handler=_audit_export)
