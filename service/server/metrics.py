"""Prometheus metrics, on their own registry and HTTP port. Labels never carry personal data.

With several serving processes (RISKGATE_WORKERS, `service.server.workers`) prometheus_client runs in
its multiprocess mode: the supervisor sets PROMETHEUS_MULTIPROC_DIR before a worker starts, every
worker writes its values to files there, and the supervisor alone serves `/metrics`
(`shared_registry`): counters and histograms summed over the workers (those of exited workers
included, so totals never go back), each gauge combined as its `multiprocess_mode` says (a component
is up when it is up in every live worker; the backlog is the workers' sum; the rest the largest).
In one process (the default) none of this applies and the modes are ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.server.access.tls import TlsFiles
from service.settings import parse_address

# Screening takes well under a millisecond of CPU; a counter-desk caller waits up to a second.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_RULESET = "riskgate_ruleset"
_RULESET_HELP = "The ruleset revision serving now."


def multiprocess() -> bool:
    """Whether this process writes its metrics to PROMETHEUS_MULTIPROC_DIR (a worker of several)."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


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
            multiprocess_mode="livemin",
        )

        self.rule_reloads = Counter(
            "riskgate_rule_reloads",
            "Attempts to reload the rules directory, by result: loaded, unchanged, rejected.",
            ["result"],
            registry=self.registry,
        )
        self.ruleset = Info("riskgate_ruleset", _RULESET_HELP, registry=self.registry)
        self._revisions: list[Any] = []  # multiprocess: this worker's revision, at 1
        self.rates_age = Gauge(
            "riskgate_exchange_rates_age_days",
            "Days since the as_of date of the exchange rates serving now (rules/rates.yaml); -1 without rates.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.unwritten_log_entries = Gauge(
            "riskgate_unwritten_decision_log_entries",
            "Decision-log entries in the backlog (memory and spool file) until Redis takes them.",
            registry=self.registry,
            multiprocess_mode="livesum",  # each worker has its own backlog and spool
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
            multiprocess_mode="livemax",
        )
        self.rule_breaker_tripped = Gauge(
            "riskgate_rule_breaker_tripped",
            "1 while a rule of the serving ruleset is demoted to shadow by its breaker, 0 while it is armed; "
            "by rule id (ids are no personal data).",
            ["rule"],
            registry=self.registry,
            multiprocess_mode="livemax",
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
        if multiprocess():
            # An Info is not written to the shared files: the revision goes there as a gauge sample of
            # the same name, 1 while this worker serves it, and `shared_registry` shows those at 1 as the Info.
            for earlier in self._revisions:
                earlier.set(0)
            value = prometheus_values.ValueClass(
                "gauge", _RULESET, _RULESET + "_info", ("revision",), (revision,), _RULESET_HELP, "livemax"
            )
            value.set(1)
            self._revisions = [value]

    def set_breakers(self, rules: Iterable[str], demoted: Collection[str]) -> None:
        """`riskgate_rule_breaker_tripped` for the rules with breakers now (`rules`); the labels of
        rules no longer served are removed."""
        current = set(rules)
        for rule in self._breaker_rules - current:
            if multiprocess():  # the shared file keeps a removed series: at 0, not at its last value
                self.rule_breaker_tripped.labels(rule).set(0)
            self.rule_breaker_tripped.remove(rule)
        for rule in current:
            self.rule_breaker_tripped.labels(rule).set(1 if rule in demoted else 0)
        self._breaker_rules = current

    def serve(self, address: str, tls: TlsFiles | None = None) -> None:
        """Serve /metrics over HTTP (HTTPS with `tls`; with its client CA, clients need certificates)
        on a daemon thread."""
        serve_registry(self.registry, address, tls)


def serve_registry(registry: CollectorRegistry, address: str, tls: TlsFiles | None = None) -> None:
    """Serve `registry` as /metrics on `address` (RISKGATE_METRICS_LISTEN), on a daemon thread."""
    host, port = parse_address(address, "RISKGATE_METRICS_LISTEN")
    if tls is None:
        start_http_server(port, addr=host, registry=registry)
        return
    start_http_server(
        port,
        addr=host,
        registry=registry,
        certfile=str(tls.cert),
        keyfile=str(tls.key),
        client_cafile=str(tls.client_ca) if tls.client_ca else None,
        client_auth_required=tls.client_ca is not None,
    )


class _SharedCollector:
    """The workers' files in `directory`, combined; the ruleset revisions at 1 shown as the Info."""

    def __init__(self, directory: Path) -> None:
        self._files = MultiProcessCollector(None, str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            if family.name != _RULESET:
                yield family
                continue
            info = Metric(_RULESET, _RULESET_HELP, "info")
            for sample in family.samples:
                if sample.value == 1:
                    info.add_sample(sample.name, sample.labels, 1.0)
            yield info


def shared_registry(directory: Path) -> CollectorRegistry:
    """What the supervisor of several workers serves as /metrics: their multiprocess files in `directory`."""
    registry = CollectorRegistry()
    registry.register(_SharedCollector(directory))
    return registry


def screenings_by_process(directory: Path) -> dict[int, float]:
    """Screenings counted by each process (pid) that wrote to `directory`, exited ones included: how
    the kernel spread the connections over the workers."""
    out: dict[int, float] = {}
    for path in sorted(directory.glob("counter_*.db")):
        pid_text = path.stem.removeprefix("counter_")
        if not pid_text.isdigit():
            continue
        total = 0.0
        for family in MultiProcessCollector.merge([str(path)], accumulate=False):  # type: ignore[no-untyped-call]
            if family.name == "riskgate_requests":
                total += sum(s.value for s in family.samples if s.name == "riskgate_requests_total")
        out[int(pid_text)] = total
    return out
