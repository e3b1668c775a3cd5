"""The Dispositions gRPC service: what happened after a decision, reported and read.

`Report` checks every field first (the decision id's form, the disposition, the note: at most
512 characters and nothing like an ID, phone or account number) and answers INVALID_ARGUMENT
naming each field that is wrong, with a google.rpc.BadRequest, before Redis is asked. Then the
store (`service.riskdata.dispositions`) looks the decision up and records the disposition once:
NOT_FOUND for a decision it does not know, the first record again (`already_recorded`) for a
retry. The reporter is the principal the caller's credentials name
(`service.server.access.guard`), and every Report, whatever its result, is in the audit trail
(`dispositions.report`), its note only when it was accepted.

When Redis does not answer, the call ends with UNAVAILABLE within the store's budget (1 s, or
the caller's deadline when that is sooner); the audit entry of that attempt is written
alongside, not before the answer (it would wait another second on the same Redis), and is in
the log either way.
"""

from __future__ import annotations

import asyncio
from typing import NoReturn

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from service._gen.riskgate.v1 import dispositions_pb2 as pb
from service._gen.riskgate.v1 import dispositions_pb2_grpc as pb_grpc
from service.clock import Clock
from service.dispositions import (
    Disposition,
    DispositionRecord,
    clean_note,
    current_disposition,
    parse_decision_id,
)
from service.errors import FieldProblem, InvalidValue, RiskgateError, StoreUnavailable, UnknownDecision, ValidationError
from service.pipeline.api import abort_invalid, status_of
from service.riskdata.dispositions import DispositionStore
from service.server.access.audit import AuditEntry, AuditTrail
from service.server.access.guard import Principal, current_principal

Context = grpc.aio.ServicerContext[object, object]
SERVICE: str = pb.DESCRIPTOR.services_by_name["Dispositions"].full_name

# The proto's values and ours: DISPOSITION_<NAME> is Disposition.<NAME>.
FROM_PROTO: dict[pb.Disposition.ValueType, Disposition] = {
    pb.Disposition.Value(f"DISPOSITION_{d.name}"): d for d in Disposition
}
TO_PROTO: dict[Disposition, pb.Disposition.ValueType] = {d: n for n, d in FROM_PROTO.items()}


def parse_report(request: pb.ReportDispositionRequest) -> tuple[str, Disposition, str]:
    """The request's decision id, disposition and note, checked; ValidationError naming every
    field that is wrong (never repeating what was sent)."""
    problems: list[FieldProblem] = []
    decision_id, note = "", ""
    try:
        decision_id = parse_decision_id(request.decision_id)
    except InvalidValue as error:
        problems.append(FieldProblem(error.field, error.problem))
    disposition = FROM_PROTO.get(request.disposition)
    if request.disposition == pb.DISPOSITION_UNSPECIFIED:
        names = ", ".join(pb.Disposition.Name(n) for n in sorted(FROM_PROTO))
        problems.append(FieldProblem("disposition", f"required: one of {names}"))
    elif disposition is None:
        problems.append(FieldProblem("disposition", f"unknown value {request.disposition}"))
    try:
        note = clean_note(request.note)
    except InvalidValue as error:
        problems.append(FieldProblem(error.field, error.problem))
    if problems:
        raise ValidationError(problems)
    assert disposition is not None
    return decision_id, disposition, note


def _timestamp(record: DispositionRecord) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(record.reported_at)
    return stamp


def record_to_proto(record: DispositionRecord) -> pb.DispositionRecord:
    return pb.DispositionRecord(
        decision_id=record.decision_id,
        disposition=TO_PROTO[record.disposition],
        note=record.note,
        reported_by=record.reported_by,
        reported_at=_timestamp(record),
        already_recorded=record.already_recorded,
        request_id=record.request_id,
    )


async def _fail(context: Context, error: RiskgateError) -> NoReturn:
    code = status_of(error)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        await abort_invalid(context, error)
    await context.abort(code, str(error))
    raise AssertionError("abort returned")  # pragma: no cover - abort raises


def _result(error: RiskgateError) -> str:
    if isinstance(error, ValidationError):
        return "INVALID_ARGUMENT: " + "; ".join(str(p) for p in error.problems)
    return status_of(error).name


class DispositionsService(pb_grpc.DispositionsServicer):
    def __init__(self, store: DispositionStore, audit: AuditTrail, clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._audits_in_flight: set[asyncio.Task[bool]] = set()

    def _deadline(self, context: Context) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self._clock.monotonic() + remaining

    async def _record(self, principal: Principal, *, wait: bool, **fields: str) -> None:
        entry = AuditEntry(
            principal=principal.name, identity=principal.identity, action="dispositions.report", **fields
        )
        if wait:
            await self._audit.record(entry)
            return
        task = asyncio.get_running_loop().create_task(self._audit.record(entry))
        self._audits_in_flight.add(task)
        task.add_done_callback(self._audits_in_flight.discard)

    async def Report(self, request: pb.ReportDispositionRequest, context: Context) -> pb.DispositionRecord:
        principal = current_principal()
        try:
            decision_id, disposition, note = parse_report(request)
        except ValidationError as error:
            # Nothing of what was sent goes to the trail: a malformed id or a refused note could hold anything.
            await self._record(principal, wait=True, result=_result(error))
            await _fail(context, error)
        detail = f"decision_id={decision_id}; disposition={disposition.value}"
        try:
            record = await self._store.report(
                decision_id,
                disposition,
                note,
                reported_by=principal.name,
                identity=principal.identity,
                deadline=self._deadline(context),
            )
        except (UnknownDecision, StoreUnavailable) as error:
            unavailable = isinstance(error, StoreUnavailable)
            await self._record(principal, wait=not unavailable, note=note, detail=detail, result=_result(error))
            await _fail(context, error)
        await self._record(
            principal,
            wait=True,
            note=note,
            detail=detail + f"; request_id={record.request_id}",
            result="ok: already recorded" if record.already_recorded else "ok",
        )
        return record_to_proto(record)

    async def Get(self, request: pb.GetDispositionsRequest, context: Context) -> pb.DispositionHistory:
        try:
            decision_id = parse_decision_id(request.decision_id)
            request_id, records = await self._store.history(decision_id, deadline=self._deadline(context))
        except (InvalidValue, UnknownDecision, StoreUnavailable) as error:
            await _fail(context, error)
        current = current_disposition(r.disposition for r in records)
        return pb.DispositionHistory(
            decision_id=decision_id,
            request_id=request_id,
            records=[record_to_proto(r) for r in records],
            current=TO_PROTO[current] if current is not None else pb.DISPOSITION_UNSPECIFIED,
        )
