"""The `riskgate` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format

from service import __version__, logs
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.access.commands import add_access_commands
from service.access.identity import ClientCredentials
from service.admin_cli import add_admin_commands
from service.errors import ConfigError, RiskgateError
from service.rules.commands import add_rules_commands
from service.server import run
from service.settings import SETTINGS, Settings
from service.synth import add_synth_command

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _settings() -> Settings:
    return Settings.from_env(os.environ)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings()
    logs.configure(settings.log_level_number, settings.log_format)
    try:
        asyncio.run(run(settings))
    except RiskgateError as error:
        logging.getLogger("riskgate").error("cannot serve: %s", error)
        return EXIT_FAILED
    return EXIT_OK


def _requests(stream: TextIO) -> Iterator[pb.ScreenRequest]:
    """One JSON request, or JSON Lines (one request per line), in the proto JSON mapping."""
    text = stream.read()
    stripped = text.strip()
    if not stripped:
        return
    try:
        documents = [json.loads(stripped)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    for document in documents:
        yield json_format.ParseDict(document, pb.ScreenRequest())


def _screen(args: argparse.Namespace) -> int:
    target = args.target or _settings().listen
    try:
        requests = list(_requests(sys.stdin))
    except (json.JSONDecodeError, json_format.ParseError) as error:
        print(f"riskgate screen: bad request JSON: {error}", file=sys.stderr)
        return EXIT_USAGE
    failed = False
    client = ClientCredentials(
        ca=_path(args.ca), cert=_path(args.cert), key=_path(args.key), token_file=_path(args.token_file)
    )
    try:
        channel = client.channel(target)
        metadata = client.metadata()
    except (OSError, ValueError) as error:
        print(f"riskgate screen: {error}", file=sys.stderr)
        return EXIT_USAGE
    with channel:
        stub = pb_grpc.ScreeningStub(channel)
        for request in requests:
            try:
                decision = stub.Screen(request, timeout=args.timeout, metadata=metadata)
            except grpc.RpcError as error:
                print(f"{request.request_id}: {error.code().name}: {error.details()}", file=sys.stderr)
                failed = True
                continue
            document = json_format.MessageToDict(decision, preserving_proto_field_name=True)
            print(json.dumps(document, ensure_ascii=False, indent=None if len(requests) > 1 else 2))
    return EXIT_FAILED if failed else EXIT_OK


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _settings_help() -> str:
    lines = ["settings (environment variables):"]
    lines += [f"  {doc.env} (default {doc.default or 'unset'}): {doc.help}" for doc in SETTINGS.values()]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="riskgate",
        description="Account-risk screening for card openings, SIM sales and transfers.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"riskgate {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # `serve` takes no options, only settings: its help is where an operator looks for them.
    serve = commands.add_parser(
        "serve",
        help="run the gRPC screening service (settings from RISKGATE_*)",
        description="Run the gRPC screening service. Every setting is an environment variable (below).",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.set_defaults(handler=_serve)

    screen = commands.add_parser(
        "screen",
        help="screen requests read as JSON (one object, or JSON Lines) from stdin; print the decisions",
    )
    screen.add_argument("--target", help="server address (default: RISKGATE_LISTEN)")
    screen.add_argument("--timeout", type=float, default=5.0, help="deadline per request, seconds")
    screen.add_argument("--ca", help="TLS: the CA (PEM) that signed the server's certificate")
    screen.add_argument("--cert", help="mTLS: this client's certificate (PEM)")
    screen.add_argument("--key", help="mTLS: this client's private key (PEM)")
    screen.add_argument("--token-file", help="a file holding a bearer token (sent as authorization: Bearer)")
    screen.set_defaults(handler=_screen)

    add_rules_commands(commands)
    add_admin_commands(commands)
    add_access_commands(commands)
    add_synth_command(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        print(f"riskgate: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
