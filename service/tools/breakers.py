"""`riskgate rules breakers` and `riskgate rules rearm RULE`: the rule breakers from the host.

The local-trust path, as `decisions tail` and `lists import`: the tools talk to the Redis the
server uses (its settings), and read the rules directory the server serves (`RISKGATE_RULES_DIR`,
or `--rules DIR`) for the rules with breakers and their definitions. A re-arm is audited like the
RPC's (`rules.breaker.rearm`), under the principal `local` and the identity
`local:<user>@<host>`; every replica learns of it at its next screening of the rule's event kinds,
or within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from service.clock import SystemClock
from service.domain import local_time
from service.errors import RiskgateError, SourceError
from service.pipeline.breakers import BreakerWatch, share_text
from service.redis.connection import hasher_for, tool_connection
from service.riskdata.breakers import BreakerStatus, RuleBreakers
from service.rules.directory import load_directory
from service.server.access.audit import AuditEntry, AuditTrail
from service.server.access.identity import local_identity
from service.settings import Settings
from service.suggest import suggest


def _watches(directory: str) -> tuple[BreakerWatch, ...]:
    return load_directory(directory).ruleset.breaker_watches


def _document(status: BreakerStatus) -> dict[str, Any]:
    watch, trip = status.watch, status.trip
    return {
        "rule_id": watch.rule_id,
        "definition": watch.identity,
        "event_kinds": sorted(kind.value for kind in watch.kinds),
        "max_block_share": watch.breaker.share_text,
        "window": watch.breaker.window_text,
        "min_events": watch.breaker.min_events,
        "demoted": trip is not None,
        "demoted_at": local_time(datetime.fromtimestamp(trip.tripped_at_ms / 1000, UTC)).isoformat(timespec="seconds")
        if trip
        else None,
        "events_at_trip": trip.events if trip else 0,
        "blocks_at_trip": trip.blocks if trip else 0,
        "window_events": status.window_events,
        "window_blocks": status.window_blocks,
    }


def _line(status: BreakerStatus) -> str:
    doc = _document(status)
    now = f"{doc['window_blocks']} of {doc['window_events']} blocked in the window now"
    if doc["window_events"]:
        now += f" ({share_text(doc['window_blocks'] * 1_000_000 // doc['window_events'])})"
    state = (
        f"DEMOTED since {doc['demoted_at']}: {doc['blocks_at_trip']} of {doc['events_at_trip']} blocked"
        if doc["demoted"]
        else "armed"
    )
    return f"{doc['rule_id']}: {state}; {status.watch.breaker}; {now}"


def run_breakers(settings: Settings, directory: str, *, as_json: bool, out: TextIO) -> int:
    """Print every rule with a breaker of `directory` as Redis holds it; 0, or 1 without Redis."""
    watches = _watches(directory)

    async def run() -> list[BreakerStatus]:
        async with tool_connection(settings) as client:
            breakers = RuleBreakers(client, hasher_for(settings))
            return await breakers.status(watches, int(SystemClock().now().timestamp() * 1000))

    states = asyncio.run(run())
    if as_json:
        print(json.dumps([_document(s) for s in states], ensure_ascii=False), file=out)
    else:
        for state in states:
            print(_line(state), file=out)
        demoted = sum(1 for s in states if s.trip is not None)
        print(f"{len(states)} rules with breakers, {demoted} demoted", file=out)
    return 0


def run_rearm(settings: Settings, directory: str, rule_id: str, *, note: str, out: TextIO, err: TextIO) -> int:
    """Re-arm `rule_id`'s breaker (audited); 0, or 1 when the directory has no breaker for it."""
    watches = _watches(directory)
    watch = next((w for w in watches if w.rule_id == rule_id), None)
    if watch is None:
        ids = [w.rule_id for w in watches]
        guess = suggest(rule_id, ids)
        hint = f", did you mean '{guess}'?" if guess else f" (rules with breakers: {', '.join(ids) or 'none'})"
        print(f"riskgate rules rearm: no rule '{rule_id}' with a breaker in {directory}{hint}", file=err)
        return 1

    async def run() -> tuple[bool, BreakerStatus]:
        async with tool_connection(settings) as client:
            clock = SystemClock()
            breakers = RuleBreakers(client, hasher_for(settings))
            now_ms = int(clock.now().timestamp() * 1000)
            was = await breakers.rearm(watch, now_ms)
            (state,) = await breakers.status((watch,), now_ms)
            await AuditTrail(client, hasher_for(settings).prefix, clock).record(
                AuditEntry(
                    principal="local",
                    identity=local_identity(),
                    action="rules.breaker.rearm",
                    result="ok" if was else "ok: not demoted",
                    note=" ".join(note.split())[:64],
                    detail=f"rule={watch.rule_id}; definition={watch.identity}; was_demoted={'yes' if was else 'no'}",
                )
            )
            return was, state

    was, state = asyncio.run(run())
    print(("re-armed: " if was else "was armed already (its window starts empty): ") + _line(state), file=out)
    return 0


def add_breaker_commands(commands: Any) -> None:
    """Register `rules breakers` and `rules rearm RULE` on the `rules` command's subparsers."""

    def rules_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rules", help="the rules directory (default: RISKGATE_RULES_DIR, or rules)")

    def directory(args: argparse.Namespace, settings: Settings) -> str:
        return str(args.rules or settings.rules_dir)

    def guarded(work: Any) -> int:
        try:
            return int(work())
        except SourceError as error:
            print(f"riskgate rules: the rules directory has problems:\n{error}", file=sys.stderr)
            return 1
        except (RiskgateError, OSError) as error:  # StoreUnavailable: Redis did not answer
            print(f"riskgate rules: {error}", file=sys.stderr)
            return 1

    listing = commands.add_parser(
        "breakers", help="the rule breakers: which rules are demoted to shadow, and each one's window now"
    )
    rules_option(listing)
    listing.add_argument("--json", action="store_true", help="print one JSON document")

    def do_list(args: argparse.Namespace) -> int:
        settings = Settings.from_env(os.environ)
        return guarded(lambda: run_breakers(settings, directory(args, settings), as_json=args.json, out=sys.stdout))

    listing.set_defaults(handler=do_list)
    rearm = commands.add_parser("rearm", help="enforce a rule demoted by its breaker again, on every replica")
    rearm.add_argument("rule", help="the rule's id")
    rearm.add_argument("--note", default="", help="kept in the audit trail (at most 64 characters)")
    rules_option(rearm)

    def do_rearm(args: argparse.Namespace) -> int:
        settings = Settings.from_env(os.environ)
        return guarded(
            lambda: run_rearm(
                settings, directory(args, settings), args.rule, note=args.note, out=sys.stdout, err=sys.stderr
            )
        )

    rearm.set_defaults(handler=do_rearm)
