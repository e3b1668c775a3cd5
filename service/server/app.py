"""grpc.aio wiring: the Screening service, health, reflection, metrics, access, limits, drain and stop.

Every call passes `service.server.access.guard.Guard` (the principal from a token, a client
certificate or a local peer, and the permission its RPC needs) before its handler; the port is
TLS when certificate files are set (`service.server.access.tls`, reloaded at each handshake).

`Server` assembles the parts from `Settings`; `run()` is what `riskgate serve`
calls: it starts the embedded redis-server when no RISKGATE_REDIS_URL is
given, serves until SIGTERM or SIGINT, then stops in order:

1. **drain** (SIGTERM only, `RISKGATE_DRAIN_SECONDS`): health reports
   NOT_SERVING while every call is still served, so load balancers move away
   before the port closes;
2. open ScreenStreams waiting for their next message end with UNAVAILABLE
   ("stopping: reconnect"), ones mid-screening after their answer; new calls
   are refused; calls in flight get `RISKGATE_GRACE_SECONDS` to finish;
3. the decision log's backlog is written if Redis answers (else it stays in
   the spool for the next start), the Redis connection closes, and the
   embedded redis-server flushes and exits.

A second SIGTERM or SIGINT during the drain skips the rest of it.

With RISKGATE_WORKERS > 1, `riskgate serve` is the supervisor of `service.server.workers`, and
each of its worker processes runs `run()` on the shared port, with the supervisor's Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

from service import __version__
from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import dispositions_pb2_grpc as dispositions_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service.clock import Clock, SystemClock
from service.domain import Outcome, ScreenRequest, local_time
from service.errors import ConfigError, StoreUnavailable
from service.pipeline import api, validate
from service.pipeline.breakers import BreakerWatch
from service.pipeline.facts import facts, identifiers
from service.pipeline.outcome import decide
from service.pipeline.screening import Screener
from service.redis.connection import embedded_dir, hasher_for, make_client
from service.redis.embedded import EmbeddedRedis
from service.riskdata.breakers import Trip
from service.riskdata.dispositions import DispositionStore
from service.riskdata.monitoring import Monitor
from service.riskdata.store import BoundRiskData, RiskDataConfig, RiskDataStore
from service.riskdata.watchlists import Watchlists
from service.rules.reload import ActiveRules, ReloadResult, RulesManager
from service.server.access.audit import AuditEntry, AuditTrail
from service.server.access.guard import Guard
from service.server.access.limits import CheckEntryLimit
from service.server.access.tls import CertificateFiles, TlsFiles
from service.server.admin import RulesService, WatchlistsService
from service.server.console.app import Console
from service.server.console.auth import ConsoleAccess, Sessions, session_key
from service.server.console.views import ConsoleStatus, RuleInfo
from service.server.dispositions import SERVICE as DISPOSITIONS_SERVICE
from service.server.dispositions import DispositionsService
from service.server.metrics import Metrics
from service.server.reflection import enable_reflection
from service.server.screening import SCREENING_SERVICE, ScreeningService
from service.settings import DispositionIndex, FailPolicy, Settings
from service.synth import generate

log = logging.getLogger("riskgate.server")

# Per-component health, queried as grpc.health.v1 service names.
REDIS_COMPONENT = "redis"
RULES_COMPONENT = "rules"
# NOT_SERVING while a rule of the serving ruleset is demoted to shadow by its breaker
# (Rules/ListBreakers says which): the service still serves, the rules need a look.
BREAKERS_COMPONENT = "breakers"
_PROBE_SECONDS = 1.0
ADMIN_SERVICES = tuple(s.full_name for s in admin_pb.DESCRIPTOR.services_by_name.values())


# Health answers for the server ("") and every service it serves; they follow the server's state
# (SERVING once warmed up, NOT_SERVING while it drains). `redis` and `rules` are its components.
HEALTH_NAMES = ("", SCREENING_SERVICE, *ADMIN_SERVICES, DISPOSITIONS_SERVICE)


def warm_up_requests(now: datetime) -> list[pb.ScreenRequest]:
    """One synthetic request of each event kind, happening now (never sent to Redis)."""
    first: dict[str, pb.ScreenRequest] = {}
    for request, _ in generate(0, 2000, 0.02, now, population=1000):
        first.setdefault(request.WhichOneof("event") or "", request)
    return list(first.values())


def risk_data_config(settings: Settings) -> RiskDataConfig:
    """The risk-data store's configuration from the settings."""
    return RiskDataConfig(
        budget_seconds=settings.redis_budget_ms / 1000,
        idempotency_ms=int(settings.idempotency_hours * 3600 * 1000),
        log_maxlen=settings.decision_log_maxlen,
        log_dedupe_seconds=settings.decision_log_dedupe_hours * 3600,
        log_backlog_limit=settings.decision_log_backlog,
        log_spool=settings.data_dir / "decision-log.spool",
        disposition_seconds=settings.disposition_days * 86_400,
        index_every_decision=settings.disposition_index is DispositionIndex.ALL,
    )


@dataclass(frozen=True, slots=True)
class _Session:
    rules: ActiveRules
    risk_data: BoundRiskData


class Server:
    """One serving process: gRPC server, health, metrics, rules, and its Redis connection."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        clock: Clock | None = None,
        *,
        risk_config: RiskDataConfig | None = None,
    ) -> None:
        """`risk_config`: the risk-data store's configuration, when not `risk_data_config(settings)`
        (benchmarks switch the store's variants with it)."""
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer()
        self.rules = RulesManager(settings.rules_dir, on_reload=self._count_reload)
        self.redis = make_client(redis_url, cluster=settings.redis_cluster)
        self.risk = RiskDataStore(
            client=self.redis,
            hasher=hasher_for(settings),
            clock=self.clock,
            config=risk_config if risk_config is not None else risk_data_config(settings),
            max_future_skew_seconds=settings.max_future_skew_seconds,
            on_log_dropped=self.metrics.log_dropped.inc,
            on_log_unverified=self.metrics.log_unverified.inc,
            on_request_id_reused=self.metrics.request_id_reused.inc,
        )
        self.audit = AuditTrail(self.redis, self.risk.hasher.prefix, self.clock)
        self.risk.breakers.on_trip = self._on_breaker_trip
        self._background: set[asyncio.Task[None]] = set()  # audit writes of trips, until done
        self.guard = Guard(
            policy_file=settings.policy_file,
            tokens_file=settings.tokens_file,
            on_denied=lambda principal, code: self.metrics.access_denied.labels(principal, code).inc(),
        )
        self.guard.audit = self.audit
        self.tls: CertificateFiles | None = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            self.tls = CertificateFiles(TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca))
        fail_outcome = Outcome.BLOCK if settings.fail_policy is FailPolicy.BLOCK else Outcome.WARN
        self.screener = Screener(session=self._session, clock=self.clock, fail_outcome=fail_outcome)
        keepalive_ms = int(settings.keepalive_min_seconds * 1000)
        self._grpc = grpc.aio.server(
            options=[
                # Off: a second server on the port is refused. On for RISKGATE_WORKERS > 1, whose
                # processes share it (`service.server.workers` checks at start that nothing else holds it).
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                ("grpc.max_receive_message_length", 1 << 20),
                ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
                ("grpc.max_connection_idle_ms", int(settings.connection_idle_seconds * 1000)),
                # Keepalive enforcement: a client pinging more often than this gets GOAWAY after 2 strikes.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms),
                ("grpc.http2.max_ping_strikes", 2),
            ],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            interceptors=[self.guard],
        )
        self._service: ScreeningService | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._redis_ok: bool | None = None
        self._components: dict[str, bool] = {}  # health component → SERVING, for the console
        self._serving = False
        self.console: Console | None = None
        self._stale_rates_warned = ""  # the revision whose stale rates were logged
        self.port = 0

    @contextmanager
    def _session(self) -> Iterator[_Session]:
        with self.rules.lease() as active:
            bound = self.risk.for_rules(
                key=active.content_hash,
                counter_spec=active.counter_spec,
                where=active.where,
                lists=active.lists,
                breakers=active.breakers,
            )
            yield _Session(active, bound)

    def _current_lists(self) -> Watchlists:
        active = self.rules.current
        return Watchlists(self.redis, self.risk.hasher, active.lists)

    def _count_reload(self, result: str, outcome: ReloadResult) -> None:
        """Called from the reloading thread: metrics only (they are thread-safe)."""
        self.metrics.rule_reloads.labels(result).inc()
        if result == "loaded":
            self.metrics.set_revision(outcome.revision)

    def _validator(self) -> Callable[[pb.ScreenRequest], ScreenRequest]:
        limits = validate.TimeBounds(
            max_future_skew_seconds=self.settings.max_future_skew_seconds,
            max_age_seconds=self.settings.max_event_age_seconds,
        )
        return lambda message: validate.screen_request(message, now=self.clock.now(), bounds=limits)

    async def start(self) -> None:
        """Load the rules (refusing to start on a broken directory), bind, and serve."""
        active = await asyncio.to_thread(self.rules.load)
        self.metrics.set_revision(active.revision)
        self._check_rates()
        service = ScreeningService(
            self.screener,
            self._validator(),
            self.metrics,
            self.clock,
            self.settings.stream_idle_seconds,
            self.settings.screen_batch,
        )
        service.add_to(self._grpc)
        self._service = service
        watchlists = WatchlistsService(
            self._current_lists,
            self.clock,
            self.audit,
            check_limit=CheckEntryLimit(self.redis, self.risk.hasher, self.settings.check_entry_per_minute),
            on_limited=lambda principal: self.metrics.access_denied.labels(principal, "RESOURCE_EXHAUSTED").inc(),
        )
        admin_pb_grpc.add_WatchlistsServicer_to_server(watchlists, self._grpc)
        rules_service = RulesService(
            self._reload,
            self.audit,
            breakers=self.risk.breakers,
            watches=lambda: self.rules.current.breakers,
            clock=self.clock,
            on_rearm=self._on_breaker_rearmed,
        )
        admin_pb_grpc.add_RulesServicer_to_server(rules_service, self._grpc)
        dispositions = DispositionStore(
            self.redis,
            self.risk.log_key,
            self.clock,
            retention_seconds=self.settings.disposition_days * 86_400,
        )
        dispositions_pb_grpc.add_DispositionsServicer_to_server(
            DispositionsService(dispositions, self.audit, self.clock), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        enable_reflection(
            self._grpc,
            (
                SCREENING_SERVICE,
                *ADMIN_SERVICES,
                DISPOSITIONS_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            ),
        )
        if self.settings.metrics_listen:
            try:
                self.metrics.serve(
                    self.settings.metrics_listen,
                    tls=TlsFiles(self.settings.tls_cert, self.settings.tls_key, self.settings.tls_client_ca)
                    if self.settings.metrics_tls and self.settings.tls_cert and self.settings.tls_key
                    else None,
                )
            except OSError as error:
                raise ConfigError(
                    f"RISKGATE_METRICS_LISTEN={self.settings.metrics_listen}: cannot listen there ({error})"
                ) from None
        if self.settings.console_listen:
            self.console = Console(
                monitor=Monitor(self.redis, self.risk.log_key, self.clock),
                dispositions=dispositions,
                audit=self.audit,
                access=ConsoleAccess(self.guard, Sessions(session_key(self.risk.hasher))),
                status=self.console_status,
                clock=self.clock,
                disposition_days=self.settings.disposition_days,
            )
            cert, key = self.settings.tls_cert, self.settings.tls_key
            tls = TlsFiles(cert, key, self.settings.tls_client_ca) if cert and key else None
            await self.console.start(self.settings.console_listen, tls)
        await self._set_health(RULES_COMPONENT, serving=True)
        await self._warm_up(active)
        await self._probe_redis()
        await self._check_breakers()  # a replica starting late knows of earlier trips at once
        # Bound only now: a port bound before the warm-up accepts connections nobody answers,
        # and clients that tried then wait out gRPC's reconnect backoff (up to 20 s) afterwards.
        try:
            if self.tls is not None:
                self.port = self._grpc.add_secure_port(self.settings.listen, self.tls.credentials())
            else:
                self.port = self._grpc.add_insecure_port(self.settings.listen)
        except RuntimeError as error:
            raise ConfigError(f"RISKGATE_LISTEN={self.settings.listen}: cannot listen there ({error})") from None
        await self._grpc.start()
        for name in HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        self._tasks = [
            asyncio.create_task(self._probe_forever(), name="probe"),
            asyncio.create_task(self.rules.watch(self.settings.rules_poll_seconds), name="rules-watch"),
            asyncio.create_task(self.risk.log.run(), name="decision-log"),
        ]
        log.info(
            "serving",
            extra={
                "fields": {
                    "listen": self.settings.listen,
                    "tls": "mtls" if self.settings.tls_client_ca else "on" if self.tls else "off",
                    "policy": str(self.settings.policy_file or "local callers only"),
                    "metrics": self.settings.metrics_listen or "off",
                    "console": self.settings.console_listen or "off",
                    "ruleset_revision": active.revision,
                    "rules": len(active.ruleset.rules),
                    "version": __version__,
                }
            },
        )

    async def _warm_up(self, active: ActiveRules) -> None:
        """Pay before SERVING what the first requests would otherwise pay (108-447 ms measured):
        the counter programs of the active rules (and Numba's first load), each event kind's path
        through validation, facts, rules, decision, log entry and answer, the multiplexed Redis
        connection and the scripts in Redis' cache. Nothing is counted or logged; then the heap
        built so far is frozen out of the garbage collector's way."""
        started = time.perf_counter()
        with self._session() as session:
            validator = self._validator()
            now = self.clock.now()
            for message in warm_up_requests(now):
                request = validator(message)
                request_facts, ids = facts(request, active.rates), identifiers(request)
                reasons = active.evaluate(request_facts, {}, {})
                decision = decide(
                    request_id=request.request_id,
                    decision_id="warm-up",
                    kind=request.kind,
                    reasons=reasons,
                    ruleset_revision=active.revision,
                    degraded=False,
                    decided_at=now,
                    evaluation_time=timedelta(0),
                )
                session.risk_data.rehearse(request, request_facts, ids, active.list_checks_for(request.kind), decision)
                api.decision_to_proto(decision).SerializeToString()
            try:
                await session.risk_data.warm_up()
            except StoreUnavailable as error:
                log.warning("warm-up: redis not ready (%s); serving degraded until it answers", error)
        gc.collect()
        gc.freeze()
        log.info("warmed up", extra={"fields": {"ms": round((time.perf_counter() - started) * 1000)}})

    async def _reload(self) -> ReloadResult:
        result = await self.rules.reload_async()
        await self._set_health(RULES_COMPONENT, serving=not result.errors)
        return result

    async def drain(self, seconds: float, cut_short: asyncio.Event | None = None) -> None:
        """Report NOT_SERVING but keep serving for `seconds` (or until `cut_short` is set), so load
        balancers and clients watching health move away before the port closes."""
        self._serving = False
        for name in HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("draining", extra={"fields": {"drain_seconds": seconds}})
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await (cut_short or asyncio.Event()).wait()

    async def stop(self) -> None:
        """Stop taking calls; end open streams; let calls in flight finish within the grace period;
        write the decision log's backlog (or keep it in the spool); release Redis."""
        await self.health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds
        log.info("stopping", extra={"fields": {"grace_seconds": grace}})
        if self._service is not None:
            self._service.end_idle_streams()
        self._serving = False
        await self._grpc.stop(grace)
        if self.console is not None:
            await self.console.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = await self.risk.close(budget_seconds=2.0)
        await self.redis.aclose()
        self.rules.close()
        log.info("stopped", extra={"fields": {"unwritten_log_entries": left}})

    async def wait(self) -> None:
        await self._grpc.wait_for_termination()

    async def _set_health(self, component: str, *, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(component, status)
        self._components[component] = serving
        self.metrics.component_up.labels(component).set(1 if serving else 0)

    def console_status(self) -> ConsoleStatus:
        """What the console's Now and Rules views show of this process: health, the serving
        ruleset and its rules, the breakers' demotions, rule reloads."""
        active = self.rules.current
        with_breakers = {w.rule_id for w in active.breakers}
        return ConsoleStatus(
            revision=active.revision,
            serving=self._serving,
            components=dict(self._components),
            demoted=tuple(sorted(self.risk.breakers.demoted_ids(active.breakers))),
            rules=tuple(
                RuleInfo(
                    rule_id=rule.id,
                    outcome=rule.outcome.label,
                    shadow=rule.shadow,
                    kinds=tuple(kind.value for kind in rule.on),
                    description=rule.description,
                    breaker=rule.id in with_breakers,
                )
                for rule in active.ruleset.rules.values()
            ),
            reloads=self.rules.reload_counts,
            rule_errors=self.rules.last_errors,
            redis_breaker_open=self.risk.breaker.tripped,
            unwritten_log_entries=self.risk.log.backlog,
            replica=f"{socket.gethostname()}:{os.getpid()}",
        )

    async def _probe_redis(self) -> None:
        """Health `redis`: SERVING when a PING answers and the request path's breaker is not tripped."""
        try:
            ok = bool(await asyncio.wait_for(self.redis.ping(), timeout=0.5))
        except (RedisError, OSError, TimeoutError):
            ok = False
        tripped = self.risk.breaker.tripped
        self.metrics.breaker_open.set(1 if tripped else 0)
        ok = ok and not tripped
        if ok != self._redis_ok:
            level = logging.INFO if ok else logging.WARNING
            log.log(level, "redis is " + ("reachable" if ok else "unreachable"))
            self._redis_ok = ok
        await self._set_health(REDIS_COMPONENT, serving=ok)

    async def _probe_forever(self) -> None:
        """Every second: is Redis reachable, do the rule files on disk hold errors, which rules are
        demoted by their breakers."""
        while True:
            await asyncio.sleep(_PROBE_SECONDS)
            await self._probe_redis()
            await self._set_health(RULES_COMPONENT, serving=not self.rules.last_errors)
            await self._check_breakers()
            await self.guard.reload()
            self.metrics.unwritten_log_entries.set(self.risk.log.backlog)
            self._check_rates()

    async def _check_breakers(self) -> None:
        """Every second: the rule breakers' state from Redis (kept as last known when Redis does not
        answer), as `riskgate_rule_breaker_tripped` and health `breakers`."""
        watches = self.rules.current.breakers
        await self.risk.breakers.refresh(watches)
        self._show_breakers(watches)
        demoted = self.risk.breakers.demoted_ids(watches)
        await self._set_health(BREAKERS_COMPONENT, serving=not demoted)

    def _show_breakers(self, watches: tuple[BreakerWatch, ...]) -> None:
        self.metrics.set_breakers((w.rule_id for w in watches), self.risk.breakers.demoted_ids(watches))

    def _on_breaker_trip(self, watch: BreakerWatch, trip: Trip) -> None:
        """This replica's screening tripped a rule's breaker (called once per trip, on the event
        loop): count it, show it, and write the audit entry in the background."""
        self.metrics.rule_breaker_trips.labels(watch.rule_id).inc()
        self.metrics.rule_breaker_tripped.labels(watch.rule_id).set(1)
        entry = AuditEntry(
            principal="riskgate",
            identity=f"breaker:{socket.gethostname()}:{os.getpid()}",
            action="rules.breaker.trip",
            result="demoted to shadow",
            detail=(
                f"rule={watch.rule_id}; definition={watch.identity}; blocks={trip.blocks}; events={trip.events}; "
                f"max_block_share={watch.breaker.share_text}; window={watch.breaker.window_text}; "
                f"min_events={watch.breaker.min_events}; revision={self.rules.current.revision}"
            ),
        )
        for work in (self.audit.record(entry), self._set_health(BREAKERS_COMPONENT, serving=False)):
            task: asyncio.Task[None] = asyncio.ensure_future(_discard(work))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _on_breaker_rearmed(self, rule_id: str) -> None:
        self.metrics.rule_breaker_rearms.labels(rule_id).inc()
        self._show_breakers(self.rules.current.breakers)

    def _check_rates(self) -> None:
        """The exchange rates' age, as a metric, and one warning per ruleset while they are stale."""
        active = self.rules.current
        rates, today = active.rates, local_time(self.clock.now()).date()
        age = rates.age_days(today)
        self.metrics.rates_age.set(-1 if age is None else age)
        ahead = rates.as_of is not None and rates.as_of > today
        if (rates.stale(today) or ahead) and self._stale_rates_warned != active.revision:
            self._stale_rates_warned = active.revision
            log.warning(
                "the exchange rates are dated in the future: check as_of" if ahead
                else "the exchange rates are stale: still used, update them",
                extra={"fields": {"file": rates.file, "as_of": str(rates.as_of), "age_days": age,
                                  "stale_after_days": rates.stale_after_days, "source": rates.source}},
            )  # fmt: skip


async def _discard(work: Awaitable[object]) -> None:
    await work


async def run(
    settings: Settings,
    *,
    risk_config: RiskDataConfig | None = None,
    redis_url: str | None = None,
    on_serving: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM (drain, then stop) or SIGINT (stop), starting a private redis-server
    unless one is configured. `risk_config`: as for `Server`. A worker of `service.server.workers`
    passes the `redis_url` its supervisor started (nothing is started then), and `on_serving`, called
    once the port is served."""
    embedded: EmbeddedRedis | None = None
    redis_url = redis_url or settings.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(embedded_dir(settings))
        embedded.start()  # on this (the main) thread: the child's parent-death signal follows it
        redis_url = embedded.url
        log.info("embedded redis-server started", extra={"fields": {"data_dir": str(embedded.data_dir)}})
    try:
        server = Server(settings, redis_url, risk_config=risk_config)
        signalled: list[signal.Signals] = []
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: signal.Signals) -> None:
            signalled.append(signum)
            stop.set()
            if len(signalled) > 1:
                cut_short.set()

        cut_short = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await server.start()
        if on_serving is not None:
            on_serving()
        await stop.wait()
        if signalled[0] is signal.SIGTERM:
            await server.drain(settings.drain_seconds, cut_short)
        await server.stop()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
            log.info("embedded redis-server stopped")
