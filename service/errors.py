"""One exception hierarchy for riskgate. The API layer maps it to gRPC codes in one place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class RiskgateError(Exception):
    """Base of every error riskgate raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem with one field of a request, e.g. ('transfer.amount_fen', 'must be positive')."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class InvalidValue(RiskgateError, ValueError):
    """One field value is invalid; `problem` says why, without repeating the value.

    Raised by the single-field parsers in `service.pipeline.validate`; `screen_request`
    collects these into one ValidationError with field paths.
    """

    def __init__(self, problem: str, field: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.field = field  # the request field, when the raiser knows it (admin RPCs)

    def at(self, field: str) -> InvalidValue:
        """The same problem, located at `field`."""
        return InvalidValue(self.problem, field)


class ValidationError(RiskgateError):
    """A request is malformed. Maps to INVALID_ARGUMENT; nothing is counted."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        if not problems:
            raise ValueError("ValidationError needs at least one problem")
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class ConfigError(RiskgateError):
    """A setting is missing or malformed. Raised at start-up, never on the request path."""


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """A problem in a rule, counter or case file, located by file and line."""

    file: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"


class SourceError(RiskgateError):
    """One or more rule, counter or case files are invalid; nothing from them is used."""

    def __init__(self, problems: Sequence[SourceProblem]) -> None:
        if not problems:
            raise ValueError("SourceError needs at least one problem")
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class EvaluationError(RiskgateError):
    """The inputs of a rule evaluation are malformed (a bug upstream), or the ruleset is closed."""


class StoreUnavailable(RiskgateError):
    """Redis could not answer within its budget; the request is decided degraded."""


class StoreLate(StoreUnavailable):
    """Redis did not answer within the budget: what was sent may still run (counters may count)."""


class InFlight(StoreUnavailable):
    """Another attempt of the same request_id is still being decided; the caller should retry shortly."""


class RequestIdReused(RiskgateError):
    """A request_id already used (decided or in flight) for a different request. Maps to
    ALREADY_EXISTS; nothing is counted, nothing is screened."""


class RedisLaunchError(RiskgateError):
    """The embedded redis-server could not be found or started."""


class WorkerError(RiskgateError):
    """A serving process of several (RISKGATE_WORKERS) could not be started, or exited before serving."""


# --- rule files: conditions, patterns, templates, the durable compilation -----------------


class ConditionSyntaxError(RiskgateError):
    def __init__(self, column: int, message: str) -> None:
        super().__init__(f"syntax error at column {column}: {message}")
        self.column = column
        self.message = message


class PatternError(RiskgateError):
    """A pattern outside the supported subset; the message names the problem."""


class NegatedPatternError(RiskgateError):
    """`not` reached a startswith/matches test: durable_rules cannot negate a pattern."""


class TemplateError(RiskgateError):
    pass


class CompileError(RiskgateError):
    """Two message names share durable's 32-bit name hash (which it would conflate)."""

    def __init__(self, *keys: str) -> None:
        super().__init__(f"message names {' and '.join(repr(k) for k in keys)} share a durable hash")
        self.keys = keys


class ContentChanged(SourceError):
    """A file changed between being read (and hashed) and being loaded: read the directory again."""


# --- risk data, and who may ask for it ---------------------------------------------------------


class UnknownList(RiskgateError):
    """A watchlist name that lists.yaml does not declare."""


class UnknownRule(RiskgateError):
    """A rule id the serving ruleset has no breaker for (no such rule, or one without a breaker)."""


class UnknownDecision(RiskgateError):
    """A decision id no decision open to dispositions has (unknown, older than
    RISKGATE_DISPOSITION_DAYS, or not indexed). Maps to NOT_FOUND."""


class Unsupported(RiskgateError):
    """The client's connection needs what the multiplexer does not do (see the module doc).

    The caller keeps using the client's own connections."""


class Unauthenticated(RiskgateError):
    """The call carries no credential the service accepts (an invalid token, no certificate or
    token beyond loopback). `label` names the caller for metrics and the audit trail."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


class PermissionDenied(RiskgateError):
    """The caller is known, but its roles do not hold the permission the call needs."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


class RateLimited(RiskgateError):
    """The caller used up its allowance (CheckEntry per minute); retry later."""


class InternalError(RiskgateError):
    """A bug: the request was not decided. Never carries the exception's text to the caller."""


# --- tools ---------------------------------------------------------------------------------


class ScreenToolError(RiskgateError):
    """The stream answered something the protocol does not allow."""
