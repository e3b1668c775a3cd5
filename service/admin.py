"""The administration gRPC services: watchlist entries and ruleset reloads.

Identifiers arrive in clear and are hashed at once; they never appear in
answers, logs or errors. Each change is logged with who made it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import RedisError

from service._gen.riskgate.v1 import admin_pb2 as pb
from service._gen.riskgate.v1 import admin_pb2_grpc as pb_grpc
from service.clock import Clock
from service.errors import InvalidValue, StoreUnavailable
from service.lists import Entry, UnknownList, Watchlists
from service.validate import parse_text, parse_timestamp

log = logging.getLogger("riskgate.admin")

Context = grpc.aio.ServicerContext[object, object]
ReloadResult = tuple[str, bool, list[str]]
_STORE_ERRORS = (StoreUnavailable, RedisError, OSError)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def entry_to_proto(entry: Entry) -> pb.WatchlistEntry:
    return pb.WatchlistEntry(
        list=entry.list,
        value_hash=entry.value_hash,
        reason=entry.reason,
        added_by=entry.added_by,
        added_at=_timestamp(entry.added_at),
        expires_at=_timestamp(entry.expires_at),
    )


async def _fail(context: Context, error: Exception) -> None:
    """Map a watchlist error to its status; never echo the value."""
    if isinstance(error, UnknownList):
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    if isinstance(error, InvalidValue):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"value: {error.problem}")
    await context.abort(grpc.StatusCode.UNAVAILABLE, f"watchlists unavailable: {error}")


class WatchlistsService(pb_grpc.WatchlistsServicer):
    def __init__(self, lists: Callable[[], Watchlists], clock: Clock) -> None:
        self._lists = lists  # the current declaration: lists.yaml may be reloaded
        self._clock = clock

    async def AddEntry(self, request: pb.AddEntryRequest, context: Context) -> pb.WatchlistEntry:
        expires_at = None
        try:
            if request.HasField("expires_at"):
                expires_at = parse_timestamp(request.expires_at)
            entry = await self._lists().add(
                request.list,
                request.value,
                reason=request.reason,
                added_by=request.added_by,
                expires_at=expires_at,
                now=self._clock.now(),
            )
        except (UnknownList, InvalidValue, *_STORE_ERRORS) as error:
            await _fail(context, error)
            raise  # unreachable: abort raises
        log.info(
            "watchlist entry added",
            extra={"fields": {"list": entry.list, "value_hash": entry.value_hash, "by": entry.added_by}},
        )
        return entry_to_proto(entry)

    async def RemoveEntry(self, request: pb.RemoveEntryRequest, context: Context) -> pb.RemoveEntryResponse:
        try:
            removed_by = parse_text(request.removed_by, max_length=64, required=True)
            lists = self._lists()
            removed = await lists.remove(request.list, request.value, now=self._clock.now())
        except (UnknownList, InvalidValue, *_STORE_ERRORS) as error:
            await _fail(context, error)
            raise
        log.info("watchlist entry removed", extra={"fields": {"list": request.list, "by": removed_by}})
        return pb.RemoveEntryResponse(removed=removed)

    async def CheckEntry(self, request: pb.CheckEntryRequest, context: Context) -> pb.CheckEntryResponse:
        try:
            entry = await self._lists().check(request.list, request.value, at=self._clock.now())
        except (UnknownList, InvalidValue, *_STORE_ERRORS) as error:
            await _fail(context, error)
            raise
        if entry is None:
            return pb.CheckEntryResponse(listed=False)
        return pb.CheckEntryResponse(listed=True, entry=entry_to_proto(entry))

    async def DescribeLists(self, request: pb.DescribeListsRequest, context: Context) -> pb.DescribeListsResponse:
        lists = self._lists()
        try:
            sizes = await lists.sizes(at=self._clock.now())
        except _STORE_ERRORS as error:
            await _fail(context, error)
            raise
        return pb.DescribeListsResponse(
            lists=[
                pb.ListDescription(name=s.name, kind=s.kind.value, description=s.description, entries=sizes[s.name])
                for s in sorted(lists.specs.values(), key=lambda s: s.name)
            ]
        )


class RulesService(pb_grpc.RulesServicer):
    def __init__(self, reload: Callable[[], Awaitable[ReloadResult]]) -> None:
        self._reload = reload

    async def ReloadRules(self, request: pb.ReloadRulesRequest, context: Context) -> pb.ReloadRulesResponse:
        revision, changed, errors = await self._reload()
        return pb.ReloadRulesResponse(active_revision=revision, changed=changed, errors=errors)
