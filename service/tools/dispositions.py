"""`riskgate dispositions export|report`: the labels of decisions, out as JSON Lines, in over gRPC.

    riskgate dispositions export [--since 7d] [--until TIME] [--latest] [--out FILE]
    riskgate dispositions report DECISION_ID DISPOSITION [--note TEXT] [--target ADDRESS] [TLS options]

`export` reads the dispositions stream (`service.riskdata.dispositions`) in Redis with the
server's settings, the local-trust path of `riskgate decisions export`: one JSON line per
disposition reported in the period, oldest first, `{decision_id, request_id, disposition,
note (when given), reported_by, reported_at}`; a decision's last line is its disposition
(`--latest` writes only that one). The file is what `riskgate backtest --labels` reads, and
`service.dispositions.disposition_label` says which lines are positives.

`report` calls `riskgate.v1.Dispositions/Report` like any client (`--ca`, `--cert`/`--key`,
`--token-file`, as `riskgate screen`), and prints the record as JSON. Exit 0 when recorded (or
recorded before), 1 when the server refused it (its code and message on stderr), 2 for bad
options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from service._gen.riskgate.v1 import dispositions_pb2 as pb
from service._gen.riskgate.v1 import dispositions_pb2_grpc as pb_grpc
from service.clock import SystemClock
from service.dispositions import Disposition, parse_disposition
from service.errors import InvalidValue
from service.redis.connection import hasher_for, tool_connection
from service.riskdata.dispositions import disposition_document, stream_key_of
from service.riskdata.records import LOG_STREAM
from service.server.access.identity import ClientCredentials
from service.settings import Settings
from service.tools.admin import read_stream, stream_id
from service.tools.rules_report import since_id

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def dispositions_key(settings: Settings) -> str:
    return stream_key_of(f"{hasher_for(settings).prefix}:log:{LOG_STREAM}")


async def read_dispositions(client: Any, key: str, since: str, until: str) -> list[dict[str, Any]]:
    """The dispositions reported from `since` to `until` (stream ids), oldest first."""
    return [disposition_document(entry_id, fields) async for entry_id, fields in read_stream(client, key, since, until)]


def latest_only(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each decision's last disposition, in the order of those last ones."""
    last: dict[str, dict[str, Any]] = {}
    for document in documents:
        last.pop(document["decision_id"], None)
        last[document["decision_id"]] = document
    return list(last.values())


def write_lines(documents: list[dict[str, Any]], out: TextIO) -> None:
    for document in documents:
        out.write(json.dumps(document, ensure_ascii=False) + "\n")


def _export(args: argparse.Namespace) -> int:
    settings = Settings.from_env(os.environ)
    try:
        since = since_id(args.since, SystemClock().now())
        until = stream_id(args.until, "+")
    except InvalidValue as error:
        print(
            f"riskgate dispositions export: {error} (--since takes 30m, 24h, 7d or an ISO 8601 time)", file=sys.stderr
        )
        return EXIT_USAGE

    async def read() -> list[dict[str, Any]]:
        async with tool_connection(settings) as client:
            return await read_dispositions(client, dispositions_key(settings), since, until)

    documents = asyncio.run(read())
    if args.latest:
        documents = latest_only(documents)
    if args.out:
        with Path(args.out).open("w", encoding="utf-8") as out:
            write_lines(documents, out)
    else:
        write_lines(documents, sys.stdout)
    print(f"{len(documents)} dispositions exported", file=sys.stderr)
    return EXIT_OK


def _disposition(text: str) -> Disposition:
    try:
        return parse_disposition(text)
    except InvalidValue as error:
        raise argparse.ArgumentTypeError(error.problem) from None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _report(args: argparse.Namespace) -> int:
    target = args.target or Settings.from_env(os.environ).listen
    client = ClientCredentials(
        ca=_path(args.ca), cert=_path(args.cert), key=_path(args.key), token_file=_path(args.token_file)
    )
    try:
        channel = client.channel(target)
        metadata = client.metadata()
    except (OSError, ValueError) as error:
        print(f"riskgate dispositions report: {error}", file=sys.stderr)
        return EXIT_USAGE
    disposition: Disposition = args.disposition
    request = pb.ReportDispositionRequest(
        decision_id=args.decision_id,
        disposition=pb.Disposition.Value(f"DISPOSITION_{disposition.name}"),
        note=args.note,
    )
    with channel:
        try:
            record = pb_grpc.DispositionsStub(channel).Report(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as error:
            print(f"riskgate dispositions report: {error.code().name}: {error.details()}", file=sys.stderr)
            return EXIT_FAILED
    document = json_format.MessageToDict(record, preserving_proto_field_name=True)
    print(json.dumps(document, ensure_ascii=False))
    return EXIT_OK


def add_disposition_commands(commands: Any) -> None:
    """Register `dispositions export|report` on the main parser's subcommands."""
    dispositions = commands.add_parser("dispositions", help="what happened after decisions: export, report")
    subcommands = dispositions.add_subparsers(dest="dispositions_command", required=True, metavar="COMMAND")
    export = subcommands.add_parser(
        "export", help="write the dispositions reported in a period as JSON Lines (labels for backtests)"
    )
    export.add_argument("--since", default="7d", help="30m, 24h, 7d (default) or an ISO 8601 time (China time)")
    export.add_argument("--until", help="an ISO 8601 time (China time if no offset; default: now)")
    export.add_argument("--latest", action="store_true", help="only each decision's latest disposition")
    export.add_argument("--out", help="file to write (default: stdout)")
    export.set_defaults(handler=_export)

    report = subcommands.add_parser("report", help="report a decision's disposition (Dispositions/Report)")
    report.add_argument("decision_id", help="the decision_id of the Decision")
    report.add_argument("disposition", type=_disposition, help="one of " + ", ".join(d.value for d in Disposition))
    report.add_argument(
        "--note", default="", help="free text, at most 512 characters, never an ID, phone or account number"
    )
    report.add_argument("--target", help="server address (default: RISKGATE_LISTEN)")
    report.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    report.add_argument("--ca", help="TLS: the CA (PEM) that signed the server's certificate")
    report.add_argument("--cert", help="mTLS: this client's certificate (PEM)")
    report.add_argument("--key", help="mTLS: this client's private key (PEM)")
    report.add_argument("--token-file", help="a file holding a bearer token (sent as authorization: Bearer)")
    report.set_defaults(handler=_report)
