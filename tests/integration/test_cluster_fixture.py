"""The local Redis Cluster the counter tests run against really is a cluster."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster

pytestmark = pytest.mark.integration


def test_cluster_spreads_slots_and_routes_keys(redis_cluster_url: str) -> None:
    client = RedisCluster.from_url(redis_cluster_url)
    try:
        assert len(client.get_primaries()) == 3
        for i in range(30):
            client.set(f"k{i}", i)
        assert [int(client.get(f"k{i}") or -1) for i in range(30)] == list(range(30))
        nodes_used = {client.get_node_from_key(f"k{i}").name for i in range(30)}
        assert len(nodes_used) == 3
    finally:
        client.close()
