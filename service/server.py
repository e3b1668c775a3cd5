"""grpc.aio wiring: the Screening service, health, reflection, metrics, graceful stop.

`Server` assembles the parts from `Settings`; `run()` is what `riskgate serve`
calls: it starts the embedded redis-server when no RISKGATE_REDIS_URL is
given, serves until SIGTERM or SIGINT, then stops in order: health flips to
NOT_SERVING, in-flight requests get the grace period to finish, the Redis
connection closes, the embedded redis-server flushes and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service import __version__, api, validate
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.clock import Clock, SystemClock
from service.domain import Decision, ScreenRequest
from service.errors import ConfigError, RiskgateError, ValidationError
from service.metrics import Metrics
from service.redis_embedded import EmbeddedRedis
from service.screening import NoRiskData, NoRules, Screener
from service.settings import Settings

log = logging.getLogger("riskgate.server")

SCREENING_SERVICE = pb.DESCRIPTOR.services_by_name["Screening"].full_name
# Per-component health, queried as grpc.health.v1 service names.
REDIS_COMPONENT = "redis"
RULES_COMPONENT = "rules"
_REDIS_PROBE_SECONDS = 1.0


class ScreeningService(pb_grpc.ScreeningServicer):
    def __init__(
        self,
        screener: Screener,
        validator: Callable[[pb.ScreenRequest], ScreenRequest],
        metrics: Metrics,
    ) -> None:
        self._screener = screener
        self._validate = validator
        self._metrics = metrics

    async def _decide(self, request: pb.ScreenRequest, rpc: str) -> Decision:
        """Validate and screen one request; RiskgateErrors propagate to the caller's mapping."""
        started = time.perf_counter()
        try:
            decision = await self._screener.screen(self._validate(request))
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

    async def Screen(
        self, request: pb.ScreenRequest, context: grpc.aio.ServicerContext[pb.ScreenRequest, pb.Decision]
    ) -> pb.Decision:
        try:
            decision = await self._decide(request, "Screen")
        except RiskgateError as error:
            await context.abort(api.status_of(error), str(error))
        except Exception:
            log.exception("screening failed", extra={"fields": {"rpc": "Screen"}})
            self._metrics.errors.labels("Screen", "INTERNAL").inc()
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the decision was not made")
        return api.decision_to_proto(decision)

    async def ScreenStream(
        self,
        request_iterator: AsyncIterator[pb.ScreenRequest],
        context: grpc.aio.ServicerContext[pb.ScreenRequest, pb.Decision],
    ) -> AsyncIterator[pb.Decision]:
        async for request in request_iterator:
            try:
                decision = await self._decide(request, "ScreenStream")
            except ValidationError as error:
                yield api.error_to_proto(request.request_id, error)
                continue
            except RiskgateError as error:
                await context.abort(api.status_of(error), str(error))
            yield api.decision_to_proto(decision)


class Server:
    """One serving process: gRPC server, health, metrics, and its Redis connection."""

    def __init__(self, settings: Settings, redis_url: str, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer()
        self.redis = aioredis.Redis.from_url(
            redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=0
        )
        self.rules = NoRules()
        self.screener = Screener(rules=lambda: self.rules, risk_data=NoRiskData(), clock=self.clock)
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 1 << 20),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        self._probe: asyncio.Task[None] | None = None
        self._redis_ok: bool | None = None
        self.port = 0

    def _validator(self) -> Callable[[pb.ScreenRequest], ScreenRequest]:
        limits = validate.TimeBounds(
            max_future_skew_seconds=self.settings.max_future_skew_seconds,
            max_age_seconds=self.settings.max_event_age_seconds,
        )
        return lambda message: validate.screen_request(message, now=self.clock.now(), bounds=limits)

    async def start(self) -> None:
        service = ScreeningService(self.screener, self._validator(), self.metrics)
        pb_grpc.add_ScreeningServicer_to_server(service, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (
                SCREENING_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._grpc,
        )
        try:
            self.port = self._grpc.add_insecure_port(self.settings.listen)
        except RuntimeError as error:
            raise ConfigError(f"RISKGATE_LISTEN={self.settings.listen}: cannot listen there ({error})") from None
        if self.settings.metrics_listen:
            try:
                self.metrics.serve(self.settings.metrics_listen)
            except OSError as error:
                raise ConfigError(
                    f"RISKGATE_METRICS_LISTEN={self.settings.metrics_listen}: cannot listen there ({error})"
                ) from None
        await self._set_health(RULES_COMPONENT, serving=True)
        await self._probe_redis()
        await self._grpc.start()
        for name in ("", SCREENING_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._probe = asyncio.create_task(self._probe_redis_forever(), name="redis-probe")
        log.info(
            "serving",
            extra={
                "fields": {
                    "listen": self.settings.listen,
                    "metrics": self.settings.metrics_listen or "off",
                    "ruleset_revision": self.rules.revision,
                    "version": __version__,
                }
            },
        )

    async def stop(self) -> None:
        """Stop taking requests; let in-flight ones finish within the grace period; release Redis."""
        await self.health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds
        log.info("stopping", extra={"fields": {"grace_seconds": grace}})
        await self._grpc.stop(grace)
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.redis.aclose()
        log.info("stopped")

    async def wait(self) -> None:
        await self._grpc.wait_for_termination()

    async def _set_health(self, component: str, *, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(component, status)
        self.metrics.component_up.labels(component).set(1 if serving else 0)

    async def _probe_redis(self) -> None:
        try:
            ok = bool(await asyncio.wait_for(self.redis.ping(), timeout=0.5))
        except (aioredis.RedisError, OSError, TimeoutError):
            ok = False
        if ok != self._redis_ok:
            level = logging.INFO if ok else logging.WARNING
            log.log(level, "redis is " + ("reachable" if ok else "unreachable"))
            self._redis_ok = ok
        await self._set_health(REDIS_COMPONENT, serving=ok)

    async def _probe_redis_forever(self) -> None:
        while True:
            await asyncio.sleep(_REDIS_PROBE_SECONDS)
            await self._probe_redis()


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, starting a private redis-server unless one is configured."""
    embedded: EmbeddedRedis | None = None
    redis_url = settings.redis_url
    if settings.embedded_redis:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        await asyncio.to_thread(embedded.start)
        redis_url = embedded.url
        log.info("embedded redis-server started", extra={"fields": {"data_dir": str(embedded.data_dir)}})
    try:
        server = Server(settings, redis_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        await stop.wait()
        await server.stop()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
            log.info("embedded redis-server stopped")
