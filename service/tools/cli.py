"""The `riskgate` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from service import __version__, logs
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.backtest.command import add_backtest_command
from service.errors import ConfigError, RiskgateError
from service.server import workers
from service.server.access.identity import ClientCredentials
from service.server.app import run
from service.settings import SETTINGS, Settings
from service.synth import add_synth_command
from service.tools import screen as screen_tool
from service.tools.access import add_access_commands
from service.tools.admin import add_admin_commands
from service.tools.archive import add_archive_command
from service.tools.arguments import positive_float, positive_int
from service.tools.dispositions import add_disposition_commands
from service.tools.rules import add_rules_commands

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _settings() -> Settings:
    return Settings.from_env(os.environ)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings()
    logs.configure(settings.log_level_number, settings.log_format)
    try:
        if settings.workers > 1:
            return workers.serve(settings)
        workers.adopt_spools(settings.data_dir, 1)
        asyncio.run(run(settings))
    except RiskgateError as error:
        logging.getLogger("riskgate").error("cannot serve: %s", error)
        return EXIT_FAILED
    return EXIT_OK


def _screen(args: argparse.Namespace) -> int:
    target = args.target or _settings().listen
    client = ClientCredentials(
        ca=_path(args.ca), cert=_path(args.cert), key=_path(args.key), token_file=_path(args.token_file)
    )
    try:
        channel = client.channel(target)
        metadata = client.metadata()
    except (OSError, ValueError) as error:
        print(f"riskgate screen: {error}", file=sys.stderr)
        return EXIT_USAGE
    live = sys.stderr.isatty()
    options = screen_tool.Options(
        window=args.window,
        timeout=args.timeout,
        stop_on_error=args.stop_on_error,
        progress=live if args.progress is None else args.progress,
        live=live,
    )
    with channel:
        opener = screen_tool.stream_opener(pb_grpc.ScreeningStub(channel), metadata)
        items = screen_tool.read_requests(screen_tool.fd_lines(sys.stdin.fileno()))
        return screen_tool.run(items, opener, sys.stdout, sys.stderr, time.monotonic, options)


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
        help="screen requests read as JSON (JSON Lines, or one object) from stdin; print the decisions",
        description=(
            "Screen the ScreenRequests read from stdin (JSON Lines in the protobuf JSON mapping; or one"
            " pretty-printed object, when the first line is not a whole JSON value) over one ScreenStream, and"
            " print each Decision as a JSON line on stdout. A line that is not a request is reported on stderr"
            " as stdin:LINE: PROBLEM and skipped. A summary goes to stderr. Exit 0 when every line was screened,"
            " 1 when a line was bad, an answer was an error or the stream failed, 2 for bad options."
        ),
    )
    screen.add_argument("--target", help="server address (default: RISKGATE_LISTEN)")
    screen.add_argument(
        "--timeout",
        type=positive_float,
        default=5.0,
        help="seconds to wait for the next answer while requests are in flight; then give up (default 5)",
    )
    screen.add_argument("--window", type=positive_int, default=64, help="requests in flight at most (default 64)")
    screen.add_argument(
        "--stop-on-error",
        action="store_true",
        help="stop sending at the first bad line or error answer (default: report it and go on)",
    )
    screen.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: only when stderr is a terminal)",
    )
    screen.add_argument("--ca", help="TLS: the CA (PEM) that signed the server's certificate")
    screen.add_argument("--cert", help="mTLS: this client's certificate (PEM)")
    screen.add_argument("--key", help="mTLS: this client's private key (PEM)")
    screen.add_argument("--token-file", help="a file holding a bearer token (sent as authorization: Bearer)")
    screen.set_defaults(handler=_screen)

    add_rules_commands(commands)
    add_archive_command(add_admin_commands(commands))
    add_access_commands(commands)
    add_disposition_commands(commands)
    add_synth_command(commands)
    add_backtest_command(commands)
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
