"""The audit trail: every administrative action, who did it, and how it ended.

Each entry is appended to the Redis Stream `rg:audit` and written to the
service log (logger `riskgate.audit`): when it happened, the principal (the
policy's name for the credentials) and the identity they showed
(`cert:<SAN or CN>`, `token:<name>`, `local:<user or peer>`), the action
(`lists.add`, `lists.remove`, `lists.import`, `rules.reload`,
`rules.breaker.rearm`, `policy.reload`, `tokens.reload`, and any admin RPC
refused: `denied`; a rule demoted by its breaker is `rules.breaker.trip`,
under the principal `riskgate`, identity `breaker:<replica>`), the
list, the value only as its keyed hash, the reason, the caller's free-text
note (the `added_by` / `removed_by` it sent), and the result.

Nothing in the API changes or trims the stream (no MAXLEN): 220 bytes of
Redis memory for a typical list addition (MEMORY USAGE over 10,000, Redis
7.0). `riskgate audit tail` follows it, `riskgate audit
export` writes a range as JSON Lines for the archive. An entry Redis cannot
take is still in the service log, marked `audit_unwritten`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from service.clock import Clock

log = logging.getLogger("riskgate.audit")

AUDIT_STREAM = "audit"
_WRITE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    principal: str
    identity: str
    action: str
    result: str = "ok"
    list: str = ""
    value_hash: str = ""
    reason: str = ""
    note: str = ""
    detail: str = ""

    def fields(self, at: datetime) -> dict[str, str]:
        return {
            "at": at.isoformat(timespec="milliseconds"),
            "principal": self.principal,
            "identity": self.identity,
            "action": self.action,
            "result": self.result,
            "list": self.list,
            "value_hash": self.value_hash,
            "reason": self.reason,
            "note": self.note,
            "detail": self.detail,
        }


def audit_key(prefix: str) -> str:
    return f"{prefix}:{AUDIT_STREAM}"


class AuditTrail:
    """Appends audit entries to Redis and the log; `client` is a redis.asyncio client."""

    def __init__(self, client: Any, prefix: str, clock: Clock) -> None:
        self._client = client
        self.key = audit_key(prefix)
        self._clock = clock

    async def record(self, entry: AuditEntry) -> bool:
        """Append one entry; False when Redis did not take it (the log line says so)."""
        fields = entry.fields(self._clock.now())
        try:
            async with asyncio.timeout(_WRITE_SECONDS):
                await self._client.xadd(self.key, fields)
        except (RedisError, OSError, TimeoutError) as error:
            log.error(
                "audit entry not written to redis (%s): kept in this log only",
                error,
                extra={"fields": {**fields, "audit_unwritten": True}},
            )
            return False
        log.info("audit: %s by %s: %s", entry.action, entry.principal, entry.result, extra={"fields": fields})
        return True
