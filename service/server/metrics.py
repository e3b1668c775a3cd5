"""Prometheus metrics, on their own registry and HTTP port. Labels never carry personal data."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from service.server.access.tls import TlsFiles
from service.settings import parse_address

# Screening takes well under a millisecond of CPU; a counter-desk caller waits up to a second.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "riskgate_requests",
            "Screened requests, by event kind and outcome.",
            ["event_kind", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "riskgate_request_duration_seconds",
            "Time to answer one screening, from receipt to decision, by RPC.",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "riskgate_errors",
            "Screenings answered with an error, by RPC and gRPC status code.",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.degraded = Counter(
            "riskgate_degraded_decisions",
            "Decisions made without some risk data (Redis unavailable or over budget).",
            registry=self.registry,
        )
        self.replayed = Counter(
            "riskgate_replayed_decisions",
            "Retries answered with the decision already made for their request_id.",
            registry=self.registry,
        )
        self.request_id_reused = Counter(
            "riskgate_request_id_reused",
            "Requests refused (ALREADY_EXISTS) because their request_id was used for a different request.",
            registry=self.registry,
        )
        self.access_denied = Counter(
            "riskgate_access_denied",
            "Calls refused by access control, by principal (the policy's name; anonymous, unmatched) and "
            "status code (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED).",
            ["principal", "code"],
            registry=self.registry,
        )
        self.component_up = Gauge(
            "riskgate_component_up",
            "1 when a component (redis, rules, breakers: no rule demoted) is healthy, else 0.",
            ["component"],
            registry=self.registry,
        )

        self.rule_reloads = Counter(
            "riskgate_rule_reloads",
            "Attempts to reload the rules directory, by result: loaded, unchanged, rejected.",
            ["result"],
            registry=self.registry,
        )
        self.ruleset = Info("riskgate_ruleset", "The ruleset revision serving now.", registry=self.registry)
        self.rates_age = Gauge(
            "riskgate_exchange_rates_age_days",
            "Days since the as_of date of the exchange rates serving now (rules/rates.yaml); -1 without rates.",
            registry=self.registry,
        )
        self.unwritten_log_entries = Gauge(
            "riskgate_unwritten_decision_log_entries",
            "Decision-log entries in the backlog (memory and spool file) until Redis takes them.",
            registry=self.registry,
        )
        self.log_dropped = Counter(
            "riskgate_decision_log_dropped",
            "Decision-log entries dropped because the backlog was full (RISKGATE_DECISION_LOG_BACKLOG).",
            registry=self.registry,
        )
        self.log_unverified = Counter(
            "riskgate_decision_log_unverified",
            "Backlog entries written after the dedupe horizon although an earlier write may have landed.",
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "riskgate_redis_breaker_open",
            "1 while the Redis circuit breaker is open (requests are answered without risk data).",
            registry=self.registry,
        )
        self.rule_breaker_tripped = Gauge(
            "riskgate_rule_breaker_tripped",
            "1 while a rule of the serving ruleset is demoted to shadow by its breaker, 0 while it is armed; "
            "by rule id (ids are no personal data).",
            ["rule"],
            registry=self.registry,
        )
        self.rule_breaker_trips = Counter(
            "riskgate_rule_breaker_trips",
            "Rule breakers this replica tripped (each trip is counted by one replica), by rule id.",
            ["rule"],
            registry=self.registry,
        )
        self.rule_breaker_rearms = Counter(
            "riskgate_rule_breaker_rearms",
            "Rule breakers re-armed through Rules/RearmBreaker on this replica, by rule id.",
            ["rule"],
            registry=self.registry,
        )
        self._breaker_rules: set[str] = set()

    def set_revision(self, revision: str) -> None:
        self.ruleset.info({"revision": revision})

    def set_breakers(self, rules: Iterable[str], demoted: Collection[str]) -> None:
        """`riskgate_rule_breaker_tripped` for the rules with breakers now (`rules`); the labels of
        rules no longer served are removed."""
        current = set(rules)
        for rule in self._breaker_rules - current:
            self.rule_breaker_tripped.remove(rule)
        for rule in current:
            self.rule_breaker_tripped.labels(rule).set(1 if rule in demoted else 0)
        self._breaker_rules = current

    def serve(self, address: str, tls: TlsFiles | None = None) -> None:
        """Serve /metrics over HTTP (HTTPS with `tls`; with its client CA, clients need certificates)
        on a daemon thread."""
        host, port = parse_address(address, "RISKGATE_METRICS_LISTEN")
        if tls is None:
            start_http_server(port, addr=host, registry=self.registry)
            return
        start_http_server(
            port,
            addr=host,
            registry=self.registry,
            certfile=str(tls.cert),
            keyfile=str(tls.key),
            client_cafile=str(tls.client_ca) if tls.client_ca else None,
            client_auth_required=tls.client_ca is not None,
        )
