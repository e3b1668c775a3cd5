"""A per-principal rate limit for Watchlists/CheckEntry, shared by every replica through Redis.

CheckEntry answers whether one identifier is on one list: unlimited, it
would let a caller test a whole population against the police lists. Each
principal may ask `RISKGATE_CHECK_ENTRY_PER_MINUTE` times per calendar minute
(a fixed window, counted in Redis under the principal's keyed hash, so all
replicas count together). Over it: RESOURCE_EXHAUSTED, counted by principal.
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.clock import Clock
from service.redis.keys import KeyHasher

# KEYS[1] the principal's counter for this minute; ARGV[1] its expiry in ms. Returns the count.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""
_WINDOW_SECONDS = 60


class CheckEntryLimit:
    def __init__(self, client: Any, hasher: KeyHasher, per_minute: int) -> None:
        self._client = client
        self._hasher = hasher
        self.per_minute = per_minute

    async def allow(self, principal: str, clock: Clock) -> bool:
        """Count one call of `principal`; False when it is over the limit this minute. Raises
        RedisError/OSError/TimeoutError when Redis does not answer (the caller refuses the call)."""
        minute = int(clock.now().timestamp()) // _WINDOW_SECONDS
        entity = self._hasher.entity((("principal", principal),))
        key = f"{self._hasher.prefix}:rl:check:{{{entity}}}:{minute}"
        async with asyncio.timeout(1.0):
            count = await self._client.eval(_COUNT, 1, key, _WINDOW_SECONDS * 2000)
        return int(count) <= self.per_minute
