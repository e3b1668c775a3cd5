"""``riskgate synth``: its options, the JSON Lines it writes, and the summary on stderr.

The requests go out as JSON Lines in the protobuf JSON mapping that ``riskgate screen`` reads, and
the planted events' labels to a side file: the requests themselves carry no hint of which events
are fraud. The command is the edge: the only place the clock is read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from google.protobuf import json_format

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.clock import SystemClock
from service.domain import CHINA_TZ
from service.synth.population import corporate_accounts
from service.synth.rhythm import KINDS
from service.synth.stream import Label, generate, stream_window, valid_until


def to_json_line(request: pb.ScreenRequest) -> str:
    """One request in the protobuf JSON mapping, on one line (what ``riskgate screen`` reads)."""
    document = json_format.MessageToDict(request, preserving_proto_field_name=True)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def label_json_line(request_id: str, label: Label) -> str:
    return json.dumps(
        {"request_id": request_id, "pattern": label.pattern, "instance": label.instance, "role": label.role},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _start_time(text: str) -> datetime:
    """``YYYY-MM-DD`` (midnight, China time) or an ISO 8601 time with an offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("must be YYYY-MM-DD or an ISO 8601 time with an offset") from None
    if len(text.strip()) == 10:
        return moment.replace(tzinfo=CHINA_TZ)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a UTC offset, e.g. 2025-06-15T00:00:00+08:00")
    return moment


def _end_time(text: str) -> datetime:
    """An ISO 8601 time with an offset (a bare date would be ambiguous as an end)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("must be an ISO 8601 time with an offset") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a time and a UTC offset, e.g. 2025-06-15T18:00:00+08:00")
    return moment


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _synth(args: argparse.Namespace) -> int:
    now = SystemClock().now()  # the command is the edge: the only place the clock is read
    began = time.perf_counter()
    try:
        window = stream_window(now, args.days, args.start, args.end)
        stream = generate(
            args.seed,
            args.events,
            args.days,
            now,
            start=args.start,
            end=args.end,
            population=args.population,
            fraud_scale=args.fraud_scale,
        )
    except ValueError as error:
        print(f"riskgate synth: {error}", file=sys.stderr)
        return 2
    kinds: Counter[str] = Counter()
    instances: set[str] = set()
    labelled = 0
    try:
        with contextlib.ExitStack() as files:
            out = sys.stdout if args.out in (None, "-") else files.enter_context(open(args.out, "w", encoding="utf-8"))
            labels = files.enter_context(open(args.labels, "w", encoding="utf-8")) if args.labels else None
            batch: list[str] = []
            for request, label in stream:
                kinds[request.WhichOneof("event") or ""] += 1
                batch.append(to_json_line(request))
                if label is not None:
                    labelled += 1
                    instances.add(label.instance)
                    if labels is not None:
                        labels.write(label_json_line(request.request_id, label) + "\n")
                if len(batch) >= 1000:
                    out.write("\n".join(batch) + "\n")
                    batch.clear()
            if batch:
                out.write("\n".join(batch) + "\n")
            out.flush()
        if args.allowlist:
            Path(args.allowlist).write_text("".join(f"{n}\n" for n in corporate_accounts(args.seed)), encoding="utf-8")
    except BrokenPipeError:  # e.g. `riskgate synth | head`: the reader has all it wants
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    except OSError as error:
        print(f"riskgate synth: {error}", file=sys.stderr)
        return 1
    total = sum(kinds.values())
    shares = ", ".join(f"{kind} {kinds[kind] / (total or 1):.1%}" for kind in KINDS)
    print(
        f"riskgate synth: {total} events ({shares}), {labelled} planted in {len(instances)} pattern instances,"
        f" {time.perf_counter() - began:.1f} s; {_validity(window[0], now)}",
        file=sys.stderr,
    )
    return 0


def _validity(window_start: datetime, now: datetime) -> str:
    """How long the file is good for, so that nobody replays it after the service stops taking it."""
    deadline = valid_until(window_start)
    if deadline <= now:
        return "already older than the service's default 24-hour limit (RISKGATE_MAX_EVENT_AGE_SECONDS)"
    return f"the service takes it until {deadline.astimezone(CHINA_TZ).isoformat(timespec='seconds')} (24-hour limit)"


def add_synth_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``riskgate synth`` (its handler is ``args.handler(args) -> exit code``)."""
    synth = subparsers.add_parser(
        "synth",
        help="write a seeded synthetic event stream (JSON Lines of ScreenRequest) with planted fraud",
        description=(
            "Write a synthetic but realistic stream of card openings, SIM sales, transfers and closures as JSON"
            " Lines (one ScreenRequest per line, the protobuf JSON mapping `riskgate screen` reads). The same seed"
            " and --start (or --end) give the same stream. Planted fraud is listed only in the --labels file."
            " The service refuses events more than 24 hours old (RISKGATE_MAX_EVENT_AGE_SECONDS), so a file whose"
            " events span S stays valid for 24 h - S after its end: the default day (23h45m ending a minute ago)"
            " for about 15 minutes, --days 0.25 for 18 hours. The summary on stderr says until when."
        ),
    )
    synth.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    synth.add_argument("--events", type=_positive_int, default=10_000, help="number of events (default 10000)")
    synth.add_argument("--days", type=float, default=1.0, help="time span of the stream in days (default 1)")
    window = synth.add_mutually_exclusive_group()
    window.add_argument(
        "--start",
        type=_start_time,
        help="start of the stream, YYYY-MM-DD (China time) or ISO 8601 with offset; default: the stream ends"
        " a minute ago (and starts at most 23h45m ago)",
    )
    window.add_argument(
        "--end",
        type=_end_time,
        help="end of the stream, ISO 8601 with offset, at most 5 minutes ahead (RISKGATE_MAX_FUTURE_SKEW_SECONDS);"
        " it starts --days earlier, at most 23h45m; the file stays valid for 24 h - that span after this end"
        " (default: a minute ago)",
    )
    synth.add_argument("--out", help="output file (default stdout)")
    synth.add_argument("--labels", help="write JSON Lines {request_id, pattern, instance, role} of planted events here")
    synth.add_argument("--allowlist", help="write the company payee accounts here, one per line (for `lists import`)")
    synth.add_argument("--population", type=int, help="number of people (default twice the events, at least 10000)")
    synth.add_argument("--fraud-scale", type=float, default=1.0, help="multiply the planted-pattern rates (default 1)")
    synth.set_defaults(handler=_synth)
    return synth


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.synth ...``: the same as ``riskgate synth ...``."""
    root = argparse.ArgumentParser(prog="riskgate")
    add_synth_command(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["synth", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))
