"""The riskgate.v1.Screening service: Screen and ScreenStream over the screening pipeline, with
the request path's metrics, a lenient parser (bad bytes are INVALID_ARGUMENT, not UNKNOWN), idle
streams and the stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import grpc
from google.protobuf.message import DecodeError

from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.clock import Clock
from service.domain import Decision, ScreenRequest
from service.errors import FieldProblem, InternalError, RiskgateError, ValidationError
from service.logs import Throttled
from service.pipeline import api
from service.pipeline.screening import Screener
from service.server.metrics import Metrics

log = logging.getLogger("riskgate.server")

SCREENING_SERVICE = pb.DESCRIPTOR.services_by_name["Screening"].full_name

_UNPARSEABLE = ValidationError(
    [FieldProblem("request", "the message is not a valid riskgate.v1.ScreenRequest (protobuf parse error)")]
)
_BAD_BYTES_LOG_SECONDS = 10.0


class Unparseable:
    """What the lenient deserializer hands on for bytes that are not a ScreenRequest: the handler
    answers INVALID_ARGUMENT (on a stream, an error Decision) instead of gRPC's UNKNOWN."""

    __slots__ = ()


_UNPARSEABLE_REQUEST = Unparseable()


def parse_screen_request(data: bytes) -> pb.ScreenRequest | Unparseable:
    try:
        return pb.ScreenRequest.FromString(data)
    except DecodeError:
        return _UNPARSEABLE_REQUEST


class ScreeningService(pb_grpc.ScreeningServicer):
    def __init__(
        self,
        screener: Screener,
        validator: Callable[[pb.ScreenRequest], ScreenRequest],
        metrics: Metrics,
        clock: Clock,
        stream_idle_seconds: float = 300.0,
    ) -> None:
        self._screener = screener
        self._validate = validator
        self._metrics = metrics
        self._clock = clock
        self._stream_idle_seconds = stream_idle_seconds
        self._idle_streams: set[asyncio.Task[object]] = set()  # stream handlers waiting for a message
        self.stopping = False
        self._warn = Throttled(log, _BAD_BYTES_LOG_SECONDS, clock.monotonic)

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register with a lenient request deserializer (see `Unparseable`)."""
        handlers = {
            "Screen": grpc.unary_unary_rpc_method_handler(
                self.Screen,
                request_deserializer=parse_screen_request,
                response_serializer=pb.Decision.SerializeToString,
            ),
            "ScreenStream": grpc.stream_stream_rpc_method_handler(
                self.ScreenStream,
                request_deserializer=parse_screen_request,
                response_serializer=pb.Decision.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SCREENING_SERVICE, handlers),))

    def end_idle_streams(self) -> None:
        """At stop: streams waiting for a message end now; busy ones after their current answer."""
        self.stopping = True
        for task in list(self._idle_streams):
            task.cancel()

    def _stopped_us(self) -> bool:
        """Whether `end_idle_streams` ran: read when a stream's read is cancelled (a method, so the
        flag is read then, not taken from the loop condition that saw it False)."""
        return self.stopping

    async def _decide(self, request: pb.ScreenRequest, rpc: str, time_remaining: float | None) -> Decision:
        """Validate and screen one request; RiskgateErrors propagate to the caller's mapping."""
        started = time.perf_counter()
        deadline = None if time_remaining is None else self._clock.monotonic() + time_remaining
        try:
            decision = await self._screener.screen(self._validate(request), deadline)
        except RiskgateError as error:
            self._metrics.errors.labels(rpc, api.status_of(error).name).inc()
            raise
        self._metrics.latency.labels(rpc).observe(time.perf_counter() - started)
        kind = decision.kind.value if decision.kind is not None else "unknown"
        self._metrics.requests.labels(kind, decision.outcome.label).inc()
        if decision.degraded:
            self._metrics.degraded.inc()
        if decision.replayed:
            self._metrics.replayed.inc()
        return decision

    def _bad_bytes(self, rpc: str) -> None:
        """Count an unparseable message; log one line at most every 10 s (fuzzers send thousands)."""
        self._metrics.errors.labels(rpc, grpc.StatusCode.INVALID_ARGUMENT.name).inc()
        self._warn.warning("unparseable ScreenRequest messages answered INVALID_ARGUMENT", fields={"rpc": rpc})

    async def Screen(
        self,
        request: pb.ScreenRequest | Unparseable,
        context: grpc.aio.ServicerContext[pb.ScreenRequest, pb.Decision],
    ) -> pb.Decision:
        if isinstance(request, Unparseable):
            self._bad_bytes("Screen")
            await api.abort_invalid(context, _UNPARSEABLE)
        try:
            decision = await self._decide(request, "Screen", context.time_remaining())
        except RiskgateError as error:
            if api.status_of(error) is grpc.StatusCode.INVALID_ARGUMENT:
                await api.abort_invalid(context, error)
            await context.abort(api.status_of(error), str(error))
        except Exception:
            log.exception("screening failed", extra={"fields": {"rpc": "Screen"}})
            self._metrics.errors.labels("Screen", "INTERNAL").inc()
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the decision was not made")
        return api.decision_to_proto(decision)

    async def ScreenStream(
        self,
        request_iterator: AsyncIterator[pb.ScreenRequest | Unparseable],
        context: grpc.aio.ServicerContext[pb.ScreenRequest, pb.Decision],
    ) -> AsyncIterator[pb.Decision]:
        """Answers in order; a bad message gets an error Decision and the stream goes on. The stream
        ends when the client closes it, after `stream_idle_seconds` without a message, or at stop."""
        task = asyncio.current_task()
        assert task is not None
        while not self.stopping:
            self._idle_streams.add(task)
            request: object  # what the lenient deserializer made of the bytes, or EOF
            try:
                async with asyncio.timeout(self._stream_idle_seconds):
                    request = cast(object, await context.read())
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"stream idle for {self._stream_idle_seconds:g} s: closed by the server; open a new one",
                )
            except asyncio.CancelledError:
                if not self._stopped_us():
                    raise  # the call itself was cancelled (the client went away)
                task.uncancel()  # our own cancel (`end_idle_streams`): end the stream with a status
                break
            finally:
                self._idle_streams.discard(task)
            if request is grpc.aio.EOF:
                return
            yield await self._stream_answer(request, context.time_remaining())
        await context.abort(grpc.StatusCode.UNAVAILABLE, "riskgate is stopping: reconnect and send the rest again")

    async def _stream_answer(self, request: object, time_remaining: float | None) -> pb.Decision:
        if isinstance(request, Unparseable) or not isinstance(request, pb.ScreenRequest):
            self._bad_bytes("ScreenStream")
            return api.error_to_proto("", _UNPARSEABLE)
        try:
            decision = await self._decide(request, "ScreenStream", time_remaining)
        except RiskgateError as error:
            return api.error_to_proto(request.request_id, error)
        except Exception:
            log.exception("screening failed", extra={"fields": {"rpc": "ScreenStream"}})
            self._metrics.errors.labels("ScreenStream", "INTERNAL").inc()
            return api.error_to_proto(request.request_id, _INTERNAL)
        return api.decision_to_proto(decision)


_INTERNAL = InternalError("internal error; the decision was not made")
