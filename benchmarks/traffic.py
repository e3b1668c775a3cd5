"""Realistic requests for the load generators: a `riskgate synth` stream, serialised once, sliced per client.

`write_pool` generates a seeded stream (`service.synth.stream.generate`: a day ending a minute ago, so
every `occurred_at` passes validation for the next 23 hours) and writes the serialised
`ScreenRequest`s to a file. `PoolSlice` is the request factory the load generators call in each
client process (`benchmarks.loadgen.LoadSpec.request_factory`): client *i* of *n* takes every
*n*-th event from *i*, so the clients together replay the stream in order, each event screened
once; the runs of a session continue where the last one stopped (`start`), and when the stream is
used up it starts again from its beginning. Every request id is
rewritten to ``<run>-c<client>-r<repeat>-<n>`` so that no two requests of a whole `make bench` share
one (a repeated id would be answered from the idempotency record, which costs far less than a
screening). A repeated slice counts its events again: the counters see the same people more often.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.synth import generate

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class PoolInfo:
    path: Path
    events: int
    kinds: dict[str, int]
    mean_bytes: float
    planted: int


def write_pool(path: Path, *, seed: int, events: int, now: datetime) -> PoolInfo:
    """Generate `events` synthetic requests and write them, length-prefixed, to `path`."""
    kinds: Counter[str] = Counter()
    total = planted = 0
    with path.open("wb") as out:
        for request, label in generate(seed, events, 1.0, now):
            data = request.SerializeToString()
            out.write(_LENGTH.pack(len(data)))
            out.write(data)
            kinds[request.WhichOneof("event") or "?"] += 1
            total += len(data)
            planted += label is not None
    return PoolInfo(path, events, dict(kinds), total / max(1, events), planted)


def read_pool(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        out.append(data[offset : offset + size])
        offset += size
    return out


def read_requests(path: Path) -> list[pb.ScreenRequest]:
    requests = []
    for data in read_pool(path):
        message = pb.ScreenRequest()
        message.ParseFromString(data)
        requests.append(message)
    return requests


@dataclass(frozen=True)
class PoolSlice:
    """Request factory: client `index`'s share of the pool, `repeats` times, with unique request ids."""

    path: str
    run: str  # unique per load run, e.g. "sat2"
    clients: int
    repeats: int = 1
    start: int = 0  # where in its slice each client begins (runs of a session continue the stream)

    def __call__(self, index: int, payload: int) -> Sequence[bytes]:
        pool = read_pool(Path(self.path))
        mine = pool[index % self.clients :: self.clients]
        begin = self.start % len(mine) if mine else 0
        mine = mine[begin:] + mine[:begin]
        out: list[bytes] = []
        message = pb.ScreenRequest()
        for repeat in range(self.repeats):
            for n, data in enumerate(mine):
                message.ParseFromString(data)
                message.request_id = f"{self.run}-c{index}-r{repeat}-{n}"
                out.append(message.SerializeToString())
        return out

    def per_client(self, pool_events: int) -> int:
        """How many requests the smallest client's list holds (cap a run's requests per client with it)."""
        return (pool_events // self.clients) * self.repeats


def repeats_needed(pool_events: int, clients: int, requests_per_client: float) -> int:
    """Repeats of a client's slice that cover `requests_per_client` requests."""
    per_slice = max(1, pool_events // clients)
    return max(1, int(-(-requests_per_client // per_slice)))
