"""Everything a Redis holds, as bytes: for tests that look for clear identifiers."""

from __future__ import annotations

from typing import Any


async def dump_everything(client: Any) -> bytes:
    """Every key name and every member, field and value of every key, joined by newlines."""
    parts: list[bytes] = []
    async for key in client.scan_iter(count=1000):
        parts.append(key)
        kind = await client.type(key)
        if kind == b"string":
            parts.append(await client.get(key) or b"")
        elif kind == b"hash":
            for field, value in (await client.hgetall(key)).items():
                parts += [field, value]
        elif kind == b"zset":
            parts += [member for member, _score in await client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"set":
            parts += list(await client.smembers(key))
        elif kind == b"list":
            parts += list(await client.lrange(key, 0, -1))
        elif kind == b"stream":
            for _id, fields in await client.xrange(key):
                for field, value in fields.items():
                    parts += [field, value]
    return b"\n".join(parts)
