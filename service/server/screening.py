"""The riskgate.v1.Screening service: Screen and ScreenStream over the screening pipeline, with
the request path's metrics, a lenient parser (bad bytes are INVALID_ARGUMENT, not UNKNOWN), idle
streams and the stop. Concurrent Screen calls are screened in batches (`service.pipeline.gather`,
`RISKGATE_SCREEN_BATCH`), a stream's messages in batches of what it has sent; clients take turns
(`service.pipeline.turns`)."""

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
from service.pipeline.gather import Gather
from service.pipeline.screening import Screener
from service.pipeline.turns import LANE, Lanes, share_loop
from service.server.metrics import Metrics

log = logging.getLogger("riskgate.server")

SCREENING_SERVICE = pb.DESCRIPTOR.services_by_name["Screening"].full_name

_UNPARSEABLE = ValidationError(
    [FieldProblem("request", "the message is not a valid riskgate.v1.ScreenRequest (protobuf parse error)")]
)
_BAD_BYTES_LOG_SECONDS = 10.0
# A stream's messages that have arrived are screened together, up to this many: one Redis exchange
# for their counters and one for their records, each within one budget, and their answers wait
# for the last of them. 8, not 32: beside a greedy streamer (4 streams x 32 in flight) a victim's
# unary p99 was x5.1 its solo figure with 32 and x3.1 with 8 (`benchmarks.fairness --quick`),
# while the stream's own events/s was no lower.
STREAM_BATCH = 8


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
        stream_idle_seconds: float,
        screen_batch: int,
    ) -> None:
        self._screener = screener
        self._gather = Gather(screener.screen_many, screen_batch)  # concurrent Screen calls, batched
        self._lanes = Lanes()  # a connection's streams: at most 2 batches deciding at once
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

    def _deadline(self, time_remaining: float | None) -> float | None:
        return None if time_remaining is None else self._clock.monotonic() + time_remaining

    async def _decide(self, request: pb.ScreenRequest, rpc: str, time_remaining: float | None) -> Decision:
        """Validate and screen one request; RiskgateErrors propagate to the caller's mapping."""
        started = time.perf_counter()
        try:
            decision = await self._gather.screen(self._validate(request), self._deadline(time_remaining))
        except RiskgateError as error:
            self._metrics.errors.labels(rpc, api.status_of(error).name).inc()
            raise
        self._count(decision, rpc, started)
        return decision

    def _count(self, decision: Decision, rpc: str, started: float) -> None:
        self._metrics.latency.labels(rpc).observe(time.perf_counter() - started)
        kind = decision.kind.value if decision.kind is not None else "unknown"
        self._metrics.requests.labels(kind, decision.outcome.label).inc()
        if decision.degraded:
            self._metrics.degraded.inc()
        if decision.replayed:
            self._metrics.replayed.inc()

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
        ends when the client closes it, after `stream_idle_seconds` without a message, or at stop.

        A reader task takes the messages as they arrive; what has arrived while the previous
        answers were made is screened as a batch (`Screener.screen_many`, up to `STREAM_BATCH`).
        The streams of one connection are one client in `service.pipeline.turns`: they take turns
        with the other clients for the loop and have at most 2 batches deciding at once."""
        task = asyncio.current_task()
        assert task is not None
        LANE.set(context.peer())  # the streams of one connection take their turns as one client
        arrived: asyncio.Queue[object] = asyncio.Queue(STREAM_BATCH)
        reader = asyncio.get_running_loop().create_task(_read_into(context, arrived))
        try:
            while not self.stopping:
                self._idle_streams.add(task)
                message: object  # what the lenient deserializer made of the bytes, EOF, or a read's error
                try:
                    async with asyncio.timeout(self._stream_idle_seconds):
                        message = await arrived.get()
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
                batch = [message]
                while len(batch) < STREAM_BATCH and not arrived.empty() and not _ends(batch[-1]):
                    batch.append(arrived.get_nowait())
                last = batch[-1]
                for answer in await self._stream_answers(
                    batch[:-1] if _ends(last) else batch, context.time_remaining()
                ):
                    yield answer
                if isinstance(last, BaseException):
                    raise last
                if last is grpc.aio.EOF:
                    return
            await context.abort(grpc.StatusCode.UNAVAILABLE, "riskgate is stopping: reconnect and send the rest again")
        finally:
            reader.cancel()

    async def _stream_answers(self, messages: list[object], time_remaining: float | None) -> list[pb.Decision]:
        """The answers to a batch of a stream's messages, in order."""
        started = time.perf_counter()
        answers: list[pb.Decision | None] = [None] * len(messages)
        requests: list[ScreenRequest] = []
        positions: list[int] = []
        for index, message in enumerate(messages):
            await share_loop(index)
            if isinstance(message, Unparseable) or not isinstance(message, pb.ScreenRequest):
                self._bad_bytes("ScreenStream")
                answers[index] = api.error_to_proto("", _UNPARSEABLE)
                continue
            try:
                requests.append(self._validate(message))
            except RiskgateError as error:
                answers[index] = self._stream_error(message.request_id, error)
                continue
            positions.append(index)
        try:
            async with self._lanes.slot(LANE.get()):
                decided = await self._screener.screen_many(requests, self._deadline(time_remaining))
        except Exception:
            log.exception("screening failed", extra={"fields": {"rpc": "ScreenStream"}})
            decided = [_INTERNAL] * len(requests)
        for index, request, result in zip(positions, requests, decided, strict=True):
            if isinstance(result, RiskgateError):
                answers[index] = self._stream_error(request.request_id, result)
            else:
                self._count(result, "ScreenStream", started)
                answers[index] = api.decision_to_proto(result)
        return [answer for answer in answers if answer is not None]

    def _stream_error(self, request_id: str, error: RiskgateError) -> pb.Decision:
        self._metrics.errors.labels("ScreenStream", api.status_of(error).name).inc()
        return api.error_to_proto(request_id, error)


def _ends(message: object) -> bool:
    """Whether nothing follows `message` on its stream: EOF, or the error a read raised."""
    return message is grpc.aio.EOF or isinstance(message, BaseException)


async def _read_into(
    context: grpc.aio.ServicerContext[pb.ScreenRequest, pb.Decision], arrived: asyncio.Queue[object]
) -> None:
    """Put a stream's messages into `arrived` as they come (it holds `STREAM_BATCH` at most: then
    the client's sends wait), then EOF, or the error the read raised."""
    while True:
        try:
            message = cast(object, await context.read())
        except Exception as error:  # noqa: BLE001 - not handled here: the stream's handler raises it
            await arrived.put(error)
            return
        await arrived.put(message)
        if message is grpc.aio.EOF:
            return


_INTERNAL = InternalError("internal error; the decision was not made")
