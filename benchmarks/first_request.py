"""First request: is the first screening after SERVING as fast as the tenth?

    python -m benchmarks.first_request [--quick] [--json PATH]

The requirement: "the first request after SERVING is as fast as the tenth". `starts` times, a fresh
redis-server and `riskgate serve` (`benchmarks.servers.ScreeningStack`, default rules); once health
says SERVING, one client (a warmed channel: a health check first, so the client's own connection
setup is not counted) sends `per_kind` screenings of each event kind in turn (`riskgate synth`
requests, unique request ids) and times each call. Reported per kind, medians over the starts: the
first call, the tenth, and their ratio; and the server's own "warmed up" time from its log.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import Json, median, part_main, rounded
from benchmarks.servers import SCREEN_METHOD, ScreeningStack
from service.synth import generate


@dataclass(frozen=True)
class FirstConfig:
    starts: int = 5
    per_kind: int = 10


QUICK = FirstConfig(starts=2)


def _requests(per_kind: int, start: int) -> dict[str, list[bytes]]:
    """`per_kind` serialised requests of each kind, happening now, ids unique to this start."""
    out: dict[str, list[bytes]] = {}
    for request, _ in generate(100 + start, 4000, 0.02, datetime.now(UTC), population=2000):
        kind = request.WhichOneof("event") or ""
        if len(out.setdefault(kind, [])) < per_kind:
            request.request_id = f"first-{start}-{kind}-{len(out[kind])}"
            out[kind].append(request.SerializeToString())
    return out


def _one_start(cfg: FirstConfig, start: int) -> tuple[dict[str, list[float]], float]:
    requests = _requests(cfg.per_kind, start)
    stack = ScreeningStack(extra_env={"RISKGATE_LOG_LEVEL": "INFO"})  # for the "warmed up" line
    with stack, grpc.insecure_channel(stack.address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(SCREEN_METHOD)
        times: dict[str, list[float]] = {}
        for kind, payloads in requests.items():
            for payload in payloads:
                started = time.perf_counter()
                call(payload, timeout=10)
                times.setdefault(kind, []).append((time.perf_counter() - started) * 1000)
        warmed = re.search(r'"msg": "warmed up", "ms": (\d+)', stack.log())
        return times, float(warmed.group(1)) if warmed else float("nan")


def bench(cfg: FirstConfig) -> Json:
    runs = [_one_start(cfg, start) for start in range(cfg.starts)]
    out: Json = {"first.config": cfg.__dict__, "first.warm_up_ms": median([w for _, w in runs])}
    parts = []
    for kind in runs[0][0]:
        first = median([times[kind][0] for times, _ in runs])
        tenth = median([times[kind][min(9, len(times[kind]) - 1)] for times, _ in runs])
        out[f"first.{kind}.first_ms"] = rounded(first, 2)
        out[f"first.{kind}.tenth_ms"] = rounded(tenth, 2)
        out[f"first.{kind}.ratio"] = rounded(first / tenth, 2)
        parts.append(f"{kind} {first:.2f}/{tenth:.2f} ms")
    print(
        f"first request after SERVING / tenth, medians of {cfg.starts} starts: {'; '.join(parts)} "
        f"(warm-up before SERVING {out['first.warm_up_ms']:.0f} ms)",
        flush=True,
    )
    return out


def run_part(quick: bool) -> Json:
    """`benchmarks.run`'s entry point."""
    return bench(QUICK if quick else FirstConfig())


def main(argv: Sequence[str] | None = None) -> int:
    return part_main("python -m benchmarks.first_request", __doc__, run_part, f"{QUICK.starts} starts", argv)


if __name__ == "__main__":
    sys.exit(main())
