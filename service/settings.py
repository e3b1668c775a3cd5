"""Typed settings from RISKGATE_* environment variables, validated once at start-up.

Every setting, its default and its meaning is listed in `SETTINGS` (the
README's configuration table is this table). An unknown RISKGATE_* variable
is an error with a suggestion, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from service.errors import ConfigError
from service.suggest import closest

PREFIX = "RISKGATE_"


def parse_address(value: str, name: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{name}={value!r}: expected host:port, e.g. 127.0.0.1:50051")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"{name}={value!r}: port must be 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _text(value: str, name: str) -> str:
    return value


def _optional_address(value: str, name: str) -> str:
    if value.strip().lower() in ("", "off", "none"):
        return ""
    parse_address(value, name)
    return value


def _address(value: str, name: str) -> str:
    if value.startswith("unix:"):
        if len(value) <= len("unix:"):
            raise ConfigError(f"{name}={value!r}: expected unix:/path/to/socket")
        return value
    parse_address(value, name)
    return value


def is_loopback(address: str) -> bool:
    """Whether a listen address is reachable from this machine only (loopback or a Unix socket)."""
    if address.startswith("unix:"):
        return True
    host, _ = parse_address(address, "address")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _optional_path(value: str, name: str) -> Path | None:
    return Path(value) if value.strip() else None


def _redis_url(value: str, name: str) -> str | None:
    if value == "":
        return None  # the embedded redis-server
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name}={value!r}: expected a redis://, rediss:// or unix:// URL")
    return value


def _positive_float(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a number") from None
    if not number > 0:
        raise ConfigError(f"{name}={value!r}: must be greater than 0")
    return number


def _non_negative_float(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a number") from None
    if not number >= 0:
        raise ConfigError(f"{name}={value!r}: must be 0 or more")
    return number


def _positive_int(value: str, name: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise ConfigError(f"{name}={value!r}: expected a whole number greater than 0")
    return int(value)


MAX_WORKERS = 64


def _workers(value: str, name: str) -> int:
    """A number of serving processes, or `auto`: one per core this process may run on."""
    if value.strip().lower() == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    if not value.isdigit() or not 1 <= int(value) <= MAX_WORKERS:
        raise ConfigError(f"{name}={value!r}: expected auto or a whole number from 1 to {MAX_WORKERS}")
    return int(value)


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name}={value!r}: expected true or false")
    return lowered in ("true", "1", "yes")


class FailPolicy(enum.StrEnum):
    """What a screening answers when its risk data is unavailable."""

    WARN = "warn"
    BLOCK = "block"


class DispositionIndex(enum.StrEnum):
    """Which decisions the decision index keeps, so dispositions can be reported for them."""

    FLAGGED = "flagged"  # WARN or BLOCK, or a rule fired (shadow rules included)
    ALL = "all"  # every decision (labels of missed fraud, for recall)


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class LogFormat(enum.StrEnum):
    JSON = "json"  # one object per line
    TEXT = "text"  # for people


E = TypeVar("E", bound=enum.StrEnum)


def _choice(kind: type[E], value: str, name: str) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = [member.value for member in kind]
        raise ConfigError(f"{name}={value!r}: expected {', '.join(choices[:-1])} or {choices[-1]}") from None


def _fail_policy(value: str, name: str) -> FailPolicy:
    return _choice(FailPolicy, value, name)


def _disposition_index(value: str, name: str) -> DispositionIndex:
    return _choice(DispositionIndex, value, name)


def _log_level(value: str, name: str) -> LogLevel:
    return _choice(LogLevel, value.upper(), name)


def _log_format(value: str, name: str) -> LogFormat:
    return _choice(LogFormat, value, name)


def _path(value: str, name: str) -> Path:
    if not value:
        raise ConfigError(f"{name}: must not be empty")
    return Path(value)


@dataclass(frozen=True, slots=True)
class SettingDoc:
    env: str
    default: str
    parse: Callable[[str, str], Any]
    help: str


# attribute name -> how it is read. Order is the README's order.
SETTINGS: dict[str, SettingDoc] = {
    "listen": SettingDoc(
        "RISKGATE_LISTEN",
        "127.0.0.1:50051",
        _address,
        "gRPC listen address, host:port or unix:/path. Not loopback: needs TLS (or RISKGATE_ALLOW_PLAINTEXT) "
        "and a policy file.",
    ),
    "workers": SettingDoc(
        "RISKGATE_WORKERS",
        "1",
        _workers,
        "Serving processes sharing the gRPC port (SO_REUSEPORT; the kernel spreads connections, not calls), "
        "one per core: `auto` is one per core this process may use, at most 64. 1: a single process.",
    ),
    "tls_cert": SettingDoc(
        "RISKGATE_TLS_CERT",
        "",
        _optional_path,
        "Server certificate chain (PEM) for TLS on the gRPC port; reloaded when the file changes.",
    ),
    "tls_key": SettingDoc("RISKGATE_TLS_KEY", "", _optional_path, "Private key (PEM) of RISKGATE_TLS_CERT."),
    "tls_client_ca": SettingDoc(
        "RISKGATE_TLS_CLIENT_CA",
        "",
        _optional_path,
        "CA bundle (PEM) for client certificates: set, every client must show one it signed (mTLS).",
    ),
    "allow_plaintext": SettingDoc(
        "RISKGATE_ALLOW_PLAINTEXT",
        "false",
        _bool,
        "`true` lets the gRPC port serve plaintext on a non-loopback address: only behind a proxy that "
        "terminates TLS on the same trusted host or network segment.",
    ),
    "policy_file": SettingDoc(
        "RISKGATE_POLICY_FILE",
        "",
        _optional_path,
        "Access policy (YAML): roles and the principals holding them. Unset: only loopback and "
        "Unix-socket callers are served, with every permission (a developer default).",
    ),
    "tokens_file": SettingDoc(
        "RISKGATE_TOKENS_FILE",
        "",
        _optional_path,
        "Bearer tokens as `name sha256:<hex>` lines (`riskgate token new NAME`); reloaded when it changes.",
    ),
    "check_entry_per_minute": SettingDoc(
        "RISKGATE_CHECK_ENTRY_PER_MINUTE",
        "60",
        _positive_int,
        "Watchlists/CheckEntry calls one principal may make per minute (all replicas together); more "
        "get RESOURCE_EXHAUSTED.",
    ),
    "redis_url": SettingDoc(
        "RISKGATE_REDIS_URL",
        "",
        _redis_url,
        "Redis to use (redis://, rediss:// or unix://). Unset: start a private embedded redis-server.",
    ),
    "redis_cluster": SettingDoc(
        "RISKGATE_REDIS_CLUSTER",
        "false",
        _bool,
        "`true` when RISKGATE_REDIS_URL names a node of a Redis Cluster (the client discovers the rest).",
    ),
    "redis_budget_ms": SettingDoc(
        "RISKGATE_REDIS_BUDGET_MS",
        "10",
        _positive_float,
        "How long one Redis round trip may take before the decision is made degraded without it.",
    ),
    "fail_policy": SettingDoc(
        "RISKGATE_FAIL_POLICY",
        "warn",
        _fail_policy,
        "Outcome when risk data is unavailable: `warn` (the clerk checks by hand) or `block` (fail closed).",
    ),
    "idempotency_hours": SettingDoc(
        "RISKGATE_IDEMPOTENCY_HOURS",
        "25",
        _positive_float,
        "How long a decision is kept for retries of the same request_id.",
    ),
    "decision_log_maxlen": SettingDoc(
        "RISKGATE_DECISION_LOG_MAXLEN",
        "1000000",
        _positive_int,
        "Entries the decision log stream keeps (older ones are trimmed).",
    ),
    "decision_log_dedupe_hours": SettingDoc(
        "RISKGATE_DECISION_LOG_DEDUPE_HOURS",
        "1",
        _positive_float,
        "How long Redis remembers which decisions the log holds, so a write retried after a lost "
        "reply appends nothing twice (94 bytes of Redis memory per decision made in that time).",
    ),
    "decision_log_backlog": SettingDoc(
        "RISKGATE_DECISION_LOG_BACKLOG",
        "200000",
        _positive_int,
        "Decision-log entries kept (in memory and in the spool file) while Redis cannot take them; "
        "beyond it the oldest are dropped, counted in riskgate_decision_log_dropped_total and logged.",
    ),
    "disposition_days": SettingDoc(
        "RISKGATE_DISPOSITION_DAYS",
        "90",
        _positive_float,
        "How long after a decision a disposition may be reported for it (Dispositions/Report): how long "
        "Redis keeps the decision index and the dispositions.",
    ),
    "disposition_index": SettingDoc(
        "RISKGATE_DISPOSITION_INDEX",
        "flagged",
        _disposition_index,
        "Which decisions can take a disposition: `flagged` (WARN or BLOCK, or a rule fired, shadow rules "
        "included; about 100 bytes of Redis memory each) or `all` (every decision, for labels of missed fraud).",
    ),
    "rules_dir": SettingDoc(
        "RISKGATE_RULES_DIR", "rules", _path, "Directory of rule, counter, watchlist and exchange-rate files."
    ),
    "rules_poll_seconds": SettingDoc(
        "RISKGATE_RULES_POLL_SECONDS",
        "2",
        _positive_float,
        "How often the rules directory is checked for changes (hot reload).",
    ),
    "data_dir": SettingDoc(
        "RISKGATE_DATA_DIR",
        "var",
        _path,
        "Where the embedded redis-server keeps its append-only file, the generated key-hashing secret, "
        "and the decision-log spool (entries not yet written to Redis).",
    ),
    "hash_secret_file": SettingDoc(
        "RISKGATE_HASH_SECRET_FILE",
        "",
        _optional_path,
        "File holding the hex secret that keys identifier hashing (HMAC-SHA256). Required with "
        "RISKGATE_REDIS_URL; unset with the embedded Redis: created as $RISKGATE_DATA_DIR/hash-secret.",
    ),
    "metrics_listen": SettingDoc(
        "RISKGATE_METRICS_LISTEN",
        "127.0.0.1:9464",
        _optional_address,
        "Prometheus /metrics HTTP address, host:port; `off` disables it.",
    ),
    "metrics_tls": SettingDoc(
        "RISKGATE_METRICS_TLS",
        "false",
        _bool,
        "`true` serves /metrics over HTTPS with RISKGATE_TLS_CERT and _KEY (and, with "
        "RISKGATE_TLS_CLIENT_CA, requires client certificates); read at start.",
    ),
    "console_listen": SettingDoc(
        "RISKGATE_CONSOLE_LISTEN",
        "127.0.0.1:8090",
        _optional_address,
        "Monitoring web console HTTP address, host:port; `off` disables it. HTTPS with RISKGATE_TLS_CERT "
        "and _KEY when they are set. Not loopback: needs them and a policy file.",
    ),
    "log_level": SettingDoc("RISKGATE_LOG_LEVEL", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR."),
    "log_format": SettingDoc("RISKGATE_LOG_FORMAT", "json", _log_format, "`json` (one object per line) or `text`."),
    "grace_seconds": SettingDoc(
        "RISKGATE_GRACE_SECONDS",
        "5",
        _positive_float,
        "On SIGTERM/SIGINT, after the drain, how long calls in flight may take to finish.",
    ),
    "drain_seconds": SettingDoc(
        "RISKGATE_DRAIN_SECONDS",
        "5",
        _non_negative_float,
        "On SIGTERM, how long health reports NOT_SERVING while requests are still served, so load "
        "balancers stop sending before the port closes (SIGINT skips it).",
    ),
    "max_concurrent_rpcs": SettingDoc(
        "RISKGATE_MAX_CONCURRENT_RPCS",
        "2000",
        _positive_int,
        "Calls (open streams included) served at once, per serving process (RISKGATE_WORKERS); more are "
        "refused with RESOURCE_EXHAUSTED.",
    ),
    "max_streams_per_connection": SettingDoc(
        "RISKGATE_MAX_STREAMS_PER_CONNECTION",
        "100",
        _positive_int,
        "HTTP/2 streams (calls) one client connection may have open at once; more are refused at "
        "once with UNAVAILABLE (REFUSED_STREAM: not processed, safe to retry).",
    ),
    "stream_idle_seconds": SettingDoc(
        "RISKGATE_STREAM_IDLE_SECONDS",
        "300",
        _positive_float,
        "A ScreenStream that sends nothing for this long is ended with UNAVAILABLE (open a new one).",
    ),
    "screen_batch": SettingDoc(
        "RISKGATE_SCREEN_BATCH",
        "32",
        _positive_int,
        "Concurrent Screen calls that arrive together are screened as one batch of up to this many "
        "(one Redis exchange for their counters, one for their records), each decided as if alone; "
        "1 screens every call by itself.",
    ),
    "connection_idle_seconds": SettingDoc(
        "RISKGATE_CONNECTION_IDLE_SECONDS",
        "900",
        _positive_float,
        "A client connection with no call for this long is closed (the client reconnects when needed).",
    ),
    "keepalive_min_seconds": SettingDoc(
        "RISKGATE_KEEPALIVE_MIN_SECONDS",
        "10",
        _positive_float,
        "Clients may send keepalive pings at most this often; a client pinging faster is disconnected.",
    ),
    "max_future_skew_seconds": SettingDoc(
        "RISKGATE_MAX_FUTURE_SKEW_SECONDS",
        "300",
        _positive_float,
        "A request's occurred_at may be at most this far ahead of the server clock.",
    ),
    "max_event_age_seconds": SettingDoc(
        "RISKGATE_MAX_EVENT_AGE_SECONDS",
        "86400",
        _positive_float,
        "A request's occurred_at may be at most this far behind the server clock.",
    ),
}


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str
    workers: int
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    allow_plaintext: bool
    policy_file: Path | None
    tokens_file: Path | None
    check_entry_per_minute: int
    redis_url: str | None  # None: the embedded redis-server
    redis_cluster: bool
    redis_budget_ms: float
    fail_policy: FailPolicy
    idempotency_hours: float
    decision_log_maxlen: int
    decision_log_dedupe_hours: float
    decision_log_backlog: int
    disposition_days: float
    disposition_index: DispositionIndex
    rules_dir: Path
    rules_poll_seconds: float
    data_dir: Path
    hash_secret_file: Path | None
    metrics_listen: str
    metrics_tls: bool
    console_listen: str  # "": no console
    log_level: LogLevel
    log_format: LogFormat
    grace_seconds: float
    drain_seconds: float
    max_concurrent_rpcs: int
    max_streams_per_connection: int
    stream_idle_seconds: float
    screen_batch: int
    connection_idle_seconds: float
    keepalive_min_seconds: float
    max_future_skew_seconds: float
    max_event_age_seconds: float

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    def hash_secret_path(self) -> Path:
        """Where the identifier-hashing secret is read from (and, embedded, created)."""
        if self.hash_secret_file is not None:
            return self.hash_secret_file
        if not self.embedded_redis:
            raise ConfigError(
                "RISKGATE_HASH_SECRET_FILE is required with RISKGATE_REDIS_URL: every replica sharing "
                "a Redis must hash identifiers with the same secret"
            )
        return self.data_dir / "hash-secret"

    @property
    def log_level_number(self) -> int:
        return int(logging.getLevelName(self.log_level))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        known = {doc.env for doc in SETTINGS.values()}
        for name in env:
            if name.startswith(PREFIX) and name not in known:
                close = closest(name, sorted(known))
                hint = f", did you mean {close}?" if close else ""
                raise ConfigError(f"unknown setting {name}{hint}")
        values = {attr: doc.parse(env.get(doc.env, doc.default), doc.env) for attr, doc in SETTINGS.items()}
        settings = cls(**values)
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise ConfigError("RISKGATE_TLS_CERT and RISKGATE_TLS_KEY go together: set both, or neither")
        if settings.tls_client_ca is not None and settings.tls_cert is None:
            raise ConfigError("RISKGATE_TLS_CLIENT_CA needs RISKGATE_TLS_CERT and RISKGATE_TLS_KEY (mTLS is TLS first)")
        if settings.metrics_tls and settings.tls_cert is None:
            raise ConfigError("RISKGATE_METRICS_TLS=true needs RISKGATE_TLS_CERT and RISKGATE_TLS_KEY")
        if settings.tls_cert is None and not settings.allow_plaintext and not is_loopback(settings.listen):
            raise ConfigError(
                f"RISKGATE_LISTEN={settings.listen} is not a loopback address and TLS is off: set RISKGATE_TLS_CERT "
                "and RISKGATE_TLS_KEY, or RISKGATE_ALLOW_PLAINTEXT=true behind a TLS-terminating proxy"
            )
        if settings.policy_file is None and not is_loopback(settings.listen):
            raise ConfigError(
                f"RISKGATE_LISTEN={settings.listen} is not a loopback address: set RISKGATE_POLICY_FILE (who may "
                "call what); without one only loopback and Unix-socket callers are served"
            )
        console = settings.console_listen
        if console and not is_loopback(console) and settings.tls_cert is None:
            raise ConfigError(
                f"RISKGATE_CONSOLE_LISTEN={console} is not a loopback address and TLS is off: set RISKGATE_TLS_CERT "
                "and RISKGATE_TLS_KEY (the console is then served over HTTPS)"
            )
        if console and not is_loopback(console) and settings.policy_file is None:
            raise ConfigError(
                f"RISKGATE_CONSOLE_LISTEN={console} is not a loopback address: set RISKGATE_POLICY_FILE (who may "
                "see the console); without one only loopback callers are served"
            )
        if settings.workers > 1 and settings.listen.startswith("unix:"):
            raise ConfigError(
                f"RISKGATE_WORKERS={settings.workers} needs a host:port RISKGATE_LISTEN: the processes share a TCP "
                "port, and a Unix socket cannot be shared"
            )
        if settings.tokens_file is not None and settings.policy_file is None:
            raise ConfigError("RISKGATE_TOKENS_FILE needs RISKGATE_POLICY_FILE (which principal holds which token)")
        if settings.redis_cluster and settings.embedded_redis:
            raise ConfigError("RISKGATE_REDIS_CLUSTER=true needs RISKGATE_REDIS_URL (the embedded Redis is one node)")
        return settings

    @classmethod
    def defaults(cls) -> Settings:
        return cls.from_env({})


assert [f.name for f in fields(Settings)] == list(SETTINGS), "SETTINGS and Settings must list the same fields"
