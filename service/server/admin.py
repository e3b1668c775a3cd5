"""The administration gRPC services: watchlist entries, ruleset reloads and rule breakers.

Identifiers arrive in clear and are hashed at once; they never appear in
answers, logs or errors. Who made a change is the principal the credentials
name (`service.server.access.guard`), never what the caller writes: its `added_by`
/ `removed_by` is kept as a free-text note. Every change, and every attempt
that failed, is appended to the audit trail (`service.server.access.audit`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NoReturn

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import RedisError

from service._gen.riskgate.v1 import admin_pb2 as pb
from service._gen.riskgate.v1 import admin_pb2_grpc as pb_grpc
from service.clock import Clock
from service.errors import InvalidValue, RateLimited, RiskgateError, StoreUnavailable, UnknownList, UnknownRule
from service.pipeline.api import abort_invalid, status_of
from service.pipeline.breakers import BreakerWatch
from service.pipeline.validate import parse_timestamp
from service.riskdata.breakers import BreakerStatus, RuleBreakers
from service.riskdata.watchlists import Entry, Watchlists
from service.server.access.audit import AuditEntry, AuditTrail
from service.server.access.guard import Principal, current_principal
from service.server.access.limits import CheckEntryLimit
from service.suggest import suggest

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


async def _fail(context: Context, error: Exception) -> NoReturn:
    """End the call with the error's status (`service.pipeline.api.status_of`); never echo the value."""
    if not isinstance(error, RiskgateError) or isinstance(error, StoreUnavailable):
        error = StoreUnavailable(f"watchlists unavailable: {error}")
    code = status_of(error)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        await abort_invalid(context, error)
    await context.abort(code, str(error))
    raise AssertionError("abort returned")  # pragma: no cover - abort raises


def _note(text: str) -> str:
    """The caller's free-text `added_by` / `removed_by`, as a note (at most 64 characters)."""
    return " ".join(text.split())[:64]


def _result(error: Exception) -> str:
    if isinstance(error, UnknownList):
        return "NOT_FOUND"
    if isinstance(error, InvalidValue):
        return f"INVALID_ARGUMENT: {error.field or 'value'}: {error.problem}"
    return "UNAVAILABLE"


class WatchlistsService(pb_grpc.WatchlistsServicer):
    def __init__(
        self,
        lists: Callable[[], Watchlists],
        clock: Clock,
        audit: AuditTrail,
        *,
        check_limit: CheckEntryLimit,
        on_limited: Callable[[str], None] | None = None,
    ) -> None:
        self._lists = lists  # the current declaration: lists.yaml may be reloaded
        self._clock = clock
        self._audit = audit
        self._check_limit = check_limit
        self._on_limited = on_limited

    async def _record(self, principal: Principal, action: str, **fields: str) -> None:
        await self._audit.record(
            AuditEntry(principal=principal.name, identity=principal.identity, action=action, **fields)
        )

    async def AddEntry(self, request: pb.AddEntryRequest, context: Context) -> pb.WatchlistEntry:
        principal = current_principal()
        note = _note(request.added_by)
        expires_at = None
        try:
            if request.HasField("expires_at"):
                try:
                    expires_at = parse_timestamp(request.expires_at)
                except InvalidValue as error:
                    raise error.at("expires_at") from None
            entry = await self._lists().add(
                request.list,
                request.value,
                reason=request.reason,
                added_by=principal.name,
                expires_at=expires_at,
                now=self._clock.now(),
            )
        except (UnknownList, InvalidValue, *_STORE_ERRORS) as error:
            await self._record(
                principal, "lists.add", list=request.list, reason=request.reason[:256], note=note, result=_result(error)
            )
            await _fail(context, error)
        await self._record(
            principal,
            "lists.add",
            list=entry.list,
            value_hash=entry.value_hash,
            reason=entry.reason,
            note=note,
            detail=f"expires_at={entry.expires_at.isoformat() if entry.expires_at else 'never'}",
        )
        return entry_to_proto(entry)

    async def RemoveEntry(self, request: pb.RemoveEntryRequest, context: Context) -> pb.RemoveEntryResponse:
        principal = current_principal()
        note = _note(request.removed_by)
        value_hash = ""
        try:
            lists = self._lists()
            now = self._clock.now()
            value_hash = lists.value_hash(request.list, request.value, now=now)
            removed = await lists.remove(request.list, request.value, now=now)
        except (UnknownList, InvalidValue, *_STORE_ERRORS) as error:
            await self._record(
                principal, "lists.remove", list=request.list, value_hash=value_hash, note=note, result=_result(error)
            )
            await _fail(context, error)
        await self._record(
            principal,
            "lists.remove",
            list=request.list,
            value_hash=value_hash,
            note=note,
            result="ok" if removed else "ok: not listed",
        )
        return pb.RemoveEntryResponse(removed=removed)

    async def CheckEntry(self, request: pb.CheckEntryRequest, context: Context) -> pb.CheckEntryResponse:
        """Listed or not, nothing more (the entry's reason, author and dates are for the audit
        trail and the back office's own records), at most RISKGATE_CHECK_ENTRY_PER_MINUTE calls a
        minute per principal."""
        principal = current_principal()
        try:
            allowed = await self._check_limit.allow(principal.name, self._clock)
        except _STORE_ERRORS as error:
            await _fail(context, error)
        if not allowed:
            if self._on_limited is not None:
                self._on_limited(principal.name)
            await _fail(
                context,
                RateLimited(
                    f"CheckEntry limit reached: {self._check_limit.per_minute} a minute for principal "
                    f"'{principal.name}' (RISKGATE_CHECK_ENTRY_PER_MINUTE); retry next minute"
                ),
            )
        try:
            entry = await self._lists().check(request.list, request.value, at=self._clock.now())
        except (UnknownList, InvalidValue, *_STORE_ERRORS) as error:
            await _fail(context, error)
        return pb.CheckEntryResponse(listed=entry is not None)

    async def DescribeLists(self, request: pb.DescribeListsRequest, context: Context) -> pb.DescribeListsResponse:
        lists = self._lists()
        try:
            sizes = await lists.sizes(at=self._clock.now())
        except _STORE_ERRORS as error:
            await _fail(context, error)
        return pb.DescribeListsResponse(
            lists=[
                pb.ListDescription(name=s.name, kind=s.kind.value, description=s.description, entries=sizes[s.name])
                for s in sorted(lists.specs.values(), key=lambda s: s.name)
            ]
        )


def breaker_to_proto(status: BreakerStatus) -> pb.RuleBreaker:
    watch, trip = status.watch, status.trip
    return pb.RuleBreaker(
        rule_id=watch.rule_id,
        definition=watch.identity,
        max_block_share=watch.breaker.share_text,
        window=watch.breaker.window_text,
        min_events=watch.breaker.min_events,
        demoted=trip is not None,
        demoted_at=_timestamp(datetime.fromtimestamp(trip.tripped_at_ms / 1000, UTC)) if trip else None,
        events_at_trip=trip.events if trip else 0,
        blocks_at_trip=trip.blocks if trip else 0,
        window_events=status.window_events,
        window_blocks=status.window_blocks,
        event_kinds=sorted(kind.value for kind in watch.kinds),
    )


class RulesService(pb_grpc.RulesServicer):
    """ReloadRules, and the rule breakers of the serving ruleset (`watches()`: its rules with
    breakers; `breakers`: the process's `RuleBreakers`)."""

    def __init__(
        self,
        reload: Callable[[], Awaitable[ReloadResult]],
        audit: AuditTrail,
        *,
        breakers: RuleBreakers | None = None,
        watches: Callable[[], tuple[BreakerWatch, ...]] = tuple,
        clock: Clock | None = None,
        on_rearm: Callable[[str], None] | None = None,
    ) -> None:
        self._reload = reload
        self._audit = audit
        self._breakers = breakers
        self._watches = watches
        self._clock = clock
        self._on_rearm = on_rearm

    def _now_ms(self) -> int:
        now = self._clock.now() if self._clock is not None else datetime.now(UTC)
        return int(now.timestamp() * 1000)

    async def ListBreakers(self, request: pb.ListBreakersRequest, context: Context) -> pb.ListBreakersResponse:
        if self._breakers is None:
            return pb.ListBreakersResponse()
        try:
            states = await self._breakers.status(self._watches(), self._now_ms())
        except StoreUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            raise AssertionError("abort returned") from None  # pragma: no cover - abort raises
        return pb.ListBreakersResponse(breakers=[breaker_to_proto(state) for state in states])

    async def RearmBreaker(self, request: pb.RearmBreakerRequest, context: Context) -> pb.RearmBreakerResponse:
        principal = current_principal()
        note = _note(request.note)
        watches = self._watches()
        watch = next((w for w in watches if w.rule_id == request.rule_id), None)

        async def audit(result: str, detail: str) -> None:
            await self._audit.record(
                AuditEntry(
                    principal=principal.name,
                    identity=principal.identity,
                    action="rules.breaker.rearm",
                    result=result,
                    note=note,
                    detail=detail,
                )
            )

        if watch is None or self._breakers is None:
            ids = [w.rule_id for w in watches]
            guess = suggest(request.rule_id, ids) if request.rule_id else None
            hint = f", did you mean '{guess}'?" if guess else f" (rules with breakers: {', '.join(ids) or 'none'})"
            await audit("NOT_FOUND", f"rule={request.rule_id[:64]}")
            await _fail(context, UnknownRule(f"no rule '{request.rule_id[:64]}' with a breaker serves now{hint}"))
        try:
            was = await self._breakers.rearm(watch, self._now_ms())
            (state,) = await self._breakers.status((watch,), self._now_ms())
        except StoreUnavailable as error:
            await audit("UNAVAILABLE", f"rule={watch.rule_id}; definition={watch.identity}")
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            raise AssertionError("abort returned") from None  # pragma: no cover - abort raises
        if self._on_rearm is not None:
            self._on_rearm(watch.rule_id)
        await audit(
            "ok" if was else "ok: not demoted",
            f"rule={watch.rule_id}; definition={watch.identity}; was_demoted={'yes' if was else 'no'}",
        )
        log.info(
            "rule %s re-armed by %s", watch.rule_id, principal.name,
            extra={"fields": {"rule": watch.rule_id, "definition": watch.identity, "was_demoted": was}},
        )  # fmt: skip
        return pb.RearmBreakerResponse(was_demoted=was, breaker=breaker_to_proto(state))

    async def ReloadRules(self, request: pb.ReloadRulesRequest, context: Context) -> pb.ReloadRulesResponse:
        principal = current_principal()
        revision, changed, errors = await self._reload()
        result = "rejected" if errors else "ok: new revision" if changed else "ok: unchanged"
        await self._audit.record(
            AuditEntry(
                principal=principal.name,
                identity=principal.identity,
                action="rules.reload",
                result=result,
                detail=f"revision={revision}" + (f"; {len(errors)} problems: {errors[0]}" if errors else ""),
            )
        )
        return pb.ReloadRulesResponse(active_revision=revision, changed=changed, errors=errors)
