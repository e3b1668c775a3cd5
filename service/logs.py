"""Structured logging: one JSON object per line (or plain text), never personal data.

Callers pass context in `extra={"fields": {...}}`; only values that are safe
to show (decision ids, outcomes, rule ids, hashes) belong there.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text


def configure(level: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Throttled:
    """A warning that may repeat hundreds of times a second (every request during a Redis outage,
    every message of a fuzzer): the first is logged, then at most one line per `every` seconds,
    saying how many were held back. Time comes from `monotonic`, injected."""

    def __init__(self, logger: logging.Logger, every: float, monotonic: Callable[[], float]) -> None:
        self._logger = logger
        self._every = every
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, message: str, *args: object, fields: dict[str, Any] | None = None) -> None:
        key = f"{message}|{fields}"
        now = self._monotonic()
        if now - self._last.get(key, float("-inf")) < self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        extra = dict(fields or {})
        if held:
            extra["repeats_not_logged"] = held
        self._logger.warning(message, *args, extra={"fields": extra})
