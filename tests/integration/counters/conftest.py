"""A CounterStore over the session's real redis-server, flushed for every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.redis.keys import KeyHasher
from service.riskdata.counters.loader import load_counters, parse_counters
from service.riskdata.counters.model import CounterSpec
from service.riskdata.counters.store import CounterStore

REPO = Path(__file__).resolve().parents[3]
SECRET = bytes.fromhex("5f" * 32)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    # No client-side retries: a retried pipeline could count an event twice.
    connection = Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0))
    yield connection
    await connection.aclose()


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def shipped_spec() -> CounterSpec:
    return load_counters(REPO / "rules" / "counters.yaml")


@pytest.fixture
def make_store(client: Redis) -> Callable[[CounterSpec | str], CounterStore]:
    def make(spec: CounterSpec | str) -> CounterStore:
        if isinstance(spec, str):
            spec = parse_counters(spec, "test.yaml")
        return CounterStore(client, spec, KeyHasher(SECRET))

    return make
