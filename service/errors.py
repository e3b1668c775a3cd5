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

    Raised by the single-field parsers in `service.validate`; `screen_request`
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


class InFlight(StoreUnavailable):
    """Another attempt of the same request_id is still being decided; the caller should retry shortly."""


class RequestIdReused(RiskgateError):
    """A request_id already used (decided or in flight) for a different request. Maps to
    ALREADY_EXISTS; nothing is counted, nothing is screened."""


class RedisLaunchError(RiskgateError):
    """The embedded redis-server could not be found or started."""
