"""Access control alone: what `Guard.admit` (who is calling, may they) costs per call.

    python -m benchmarks.access_bench [--quick] [--json PATH]

In process, on the call contexts gRPC hands the interceptor (metadata, auth context, peer), for
each way of being identified: a local caller under the developer default, a bearer token (with 1
and with 100 tokens in the file: every stored hash is compared, in constant time), and a client
certificate. The baseline, measured in the same run, is validating one transfer
(`service.pipeline.validate.screen_request`), the request path's first step: the ratio says what access
control adds beside it. Medians of `repeats` runs of `number` calls each.
"""

from __future__ import annotations

import sys
import tempfile
import timeit
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import Json, median, part_main
from service.pipeline import validate
from service.server.access.guard import Guard
from service.server.access.tokens import new_token
from service.synth import generate

_METHOD = "/riskgate.v1.Screening/Screen"


class _Context:
    """What the guard reads of a grpc.aio.ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], auth: dict[str, list[bytes]], peer: str) -> None:
        self._metadata, self._auth, self._peer = metadata, auth, peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return self._peer


def _per_call(call: Callable[[], object], number: int, repeats: int) -> float:
    return median([t / number for t in timeit.repeat(call, number=number, repeat=repeats)])


def _guard(directory: Path, tokens: int) -> tuple[Guard, str]:
    token, line = new_token("caller")
    lines = [line] + [new_token(f"other-{i}")[1] for i in range(tokens - 1)]
    (directory / "tokens").write_text("\n".join(lines) + "\n")
    (directory / "policy.yaml").write_text(
        "roles: {outlet: [screen]}\nprincipals:\n"
        "  - {name: caller, token: caller, roles: [outlet]}\n"
        "  - {name: counters, certificate: '*.counter.bank.example', roles: [outlet]}\n"
    )
    return Guard(policy_file=directory / "policy.yaml", tokens_file=directory / "tokens"), token


def bench(number: int, repeats: int) -> Json:
    message = next(r for r, _ in generate(0, 200, 0.02, datetime.now(UTC), population=1000) if r.HasField("transfer"))
    bounds = validate.TimeBounds(max_future_skew_seconds=300, max_age_seconds=86400)
    baseline = _per_call(
        lambda: validate.screen_request(message, now=datetime.now(UTC), bounds=bounds), number, repeats
    )
    cases: dict[str, tuple[Guard, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rg-bench-access-") as tmp:
        local = _Context((("user-agent", "bench"),), {}, "ipv4:127.0.0.1:50000")
        cases["local, developer default"] = (Guard(policy_file=None, tokens_file=None), local)
        for count in (1, 100):
            directory = Path(tmp) / f"tokens-{count}"
            directory.mkdir()
            guard, token = _guard(directory, count)
            metadata = (("user-agent", "bench"), ("authorization", f"Bearer {token}"))
            cases[f"token, {count} in the file"] = (guard, _Context(metadata, {}, "ipv4:10.0.0.7:50000"))
        name = [b"c17.counter.bank.example"]
        certificate = {"x509_subject_alternative_name": name, "x509_common_name": name}
        cases["client certificate"] = (guard, _Context((("user-agent", "bench"),), certificate, "ipv4:10.0.0.7:50000"))
        figures: Json = {"access.validate_transfer_us": round(baseline * 1e6, 2)}
        for label, (guard, context) in cases.items():
            cost = _per_call(lambda g=guard, c=context: g.admit(_METHOD, c), number, repeats)  # type: ignore[misc]
            key = label.split(",")[0].replace(" ", "_") + (
                "_" + label.split(", ")[1].split(" ")[0] if "token" in label else ""
            )
            figures[f"access.{key}_us"] = round(cost * 1e6, 2)
            figures[f"access.{key}_vs_validate"] = round(cost / baseline, 3)
            print(
                f"access: {label}: {cost * 1e6:.2f} us per call ({cost / baseline:.2f}x validating a transfer)",
                flush=True,
            )
    print(f"access: baseline, validating one transfer: {baseline * 1e6:.1f} us", flush=True)
    return figures


def run_part(quick: bool) -> Json:
    """`benchmarks.run`'s entry point."""
    return bench(number=2000 if quick else 20000, repeats=3 if quick else 7)


def main(argv: Sequence[str] | None = None) -> int:
    return part_main("python -m benchmarks.access_bench", __doc__, run_part, "fewer calls", argv)


if __name__ == "__main__":
    sys.exit(main())
