"""Identity: the same decisions from two checkouts on one synthetic stream (the check of a refactor).

    python -m benchmarks.identity record --out FILE [--checkout DIR] [--seed N] [--events N] [--end ISO]
    python -m benchmarks.identity compare --base REV [--tree DIR] [--seed N] [--events N] [--keep DIR] [--json FILE]

Part "identity" of `make bench` (`benchmarks.run --only identity`) is `compare --base HEAD`: the
working tree against the last commit, the acceptance check of an uncommitted refactor.

`record` starts `riskgate serve` from a checkout (default: this working tree) with that checkout's
own code and `rules/`, a fresh embedded redis-server and a fixed hash secret, loads the watchlists
with entries picked from the stream (so the list rules fire too), screens a `riskgate synth` stream
through it one request at a time (ScreenStream, a window of 1: the counters see the same order every
time), and writes one canonical JSON line per decision: every field of the Decision but
decision_id, decided_at and evaluation_time, which legitimately differ; keys sorted.

`compare` makes a temporary `git worktree` of REV, generates one stream with this tree's synth
(fixed seed and size, an end time taken from now and given to both runs), records the base and the
working tree (or --tree DIR) with it, and compares line by line. It exits 1 when any decision
differs, when a decision is degraded (a missed Redis budget would make the comparison meaningless:
the servers run with RISKGATE_REDIS_BUDGET_MS=1000), or when the run is vacuous (no rule fired).

Drives the system only through its command line and gRPC: nothing of `service` is imported but the
generated stubs, so the check survives modules moving. A checkout's server is started as the
`riskgate` entry point its own pyproject.toml names, with the checkout first on sys.path (the
venv's `riskgate` script would import this working tree, an editable install). A worktree has no
generated stubs: this tree's are copied when proto/ is the same, else the worktree's own
`make protos` generates them with this venv's tools. Loopback only (a Unix socket); every
subprocess has a timeout; servers and the worktree are removed afterwards, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import REPO, Json, git_revision
from service._gen.riskgate.v1 import admin_pb2, admin_pb2_grpc, screening_pb2, screening_pb2_grpc

SEED = 20
EVENTS = 6000
QUICK_EVENTS = 2000
# 12 hours, 4,000 people and 30 times synth's planted fraud: dense enough for the velocity rules to
# fire (34-35 of the 45 shipped rules at 6,000 events, against 16 with synth's defaults); the file
# stays valid for 12 hours.
DAYS = "0.5"
POPULATION = "4000"
FRAUD_SCALE = "30"
VOLATILE = ("decision_id", "decided_at", "evaluation_time")
BUDGET_MS = "1000"
# Both servers key their hashes with the same secret, so two recordings can be compared at all.
HASH_SECRET_HEX = hashlib.sha256(b"benchmarks.identity").hexdigest()
SHOWN_DIFFERENCES = 5

_GIT_TIMEOUT = 60
_SYNTH_TIMEOUT = 180
_PROTOS_TIMEOUT = 180
_START_TIMEOUT = 120.0
_STOP_TIMEOUT = 30
_CALL_TIMEOUT = 10.0
_STREAM_TIMEOUT = 900.0

# Runs a checkout's `riskgate` entry point ("module:function") with the checkout first on sys.path,
# and refuses to run when the module comes from anywhere else (a silent fallback to the editable
# install would compare this tree with itself).
_LAUNCH = """\
import importlib, os, sys
root, target, *args = sys.argv[1:]
sys.path.insert(0, root)
module_name, _, attribute = target.partition(":")
module = importlib.import_module(module_name)
origin = os.path.realpath(getattr(module, "__file__", None) or "?")
if not origin.startswith(os.path.realpath(root) + os.sep):
    sys.exit(f"benchmarks.identity: {module_name} was imported from {origin}, not from {root}")
function = module
for name in attribute.split("."):
    function = getattr(function, name)
sys.argv = ["riskgate", *args]
sys.exit(function())
"""


class IdentityError(Exception):
    """The check could not run (a checkout, git, synth or a server failed)."""


# --------------------------------------------------------------------------------------- checkouts


@dataclass(frozen=True)
class Checkout:
    """A source tree of riskgate: the working tree, a worktree of a revision, or a copy."""

    root: Path

    def entry_point(self) -> str:
        """`[project.scripts] riskgate` of this checkout's pyproject.toml ("module:function")."""
        pyproject = self.root / "pyproject.toml"
        try:
            with pyproject.open("rb") as handle:
                target = tomllib.load(handle)["project"]["scripts"]["riskgate"]
        except (OSError, tomllib.TOMLDecodeError, KeyError) as error:
            raise IdentityError(f"{pyproject}: no [project.scripts] riskgate entry point ({error})") from None
        return str(target)

    def riskgate(self, *args: str) -> list[str]:
        """The argv running `riskgate ARGS` from this checkout's code."""
        return [sys.executable, "-c", _LAUNCH, str(self.root), self.entry_point(), *args]

    def label(self) -> str:
        return f"{self.root} ({git_revision()})" if self.root == REPO else str(self.root)


def _git(*args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=_GIT_TIMEOUT)
    if check and result.returncode != 0:
        raise IdentityError(f"git {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout.strip()


@contextlib.contextmanager
def worktree(revision: str, parent: Path) -> Iterator[tuple[Checkout, str]]:
    """A detached `git worktree` of `revision` under `parent`, with generated stubs; removed after."""
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except IdentityError:
        raise IdentityError(f"{revision!r} is not a commit of {REPO}") from None
    short = _git("rev-parse", "--short", commit)
    path = parent / f"base-{short}"
    _git("worktree", "add", "--detach", "--quiet", str(path), commit)
    try:
        checkout = Checkout(path)
        ensure_stubs(checkout)
        yield checkout, short
    finally:
        # --force: the copied or generated stubs are untracked files.
        removed = subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=_GIT_TIMEOUT,
        )
        if removed.returncode != 0:
            print(f"identity: could not remove the worktree {path}: {removed.stderr.strip()}", file=sys.stderr)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def ensure_stubs(checkout: Checkout) -> str:
    """Give a checkout without them the generated protobuf stubs: "present", "copied" or "generated"."""
    generated = checkout.root / "service" / "_gen"
    if (generated / "riskgate" / "v1" / "screening_pb2.py").exists():
        return "present"
    if _tree_bytes(checkout.root / "proto") == _tree_bytes(REPO / "proto"):
        shutil.copytree(REPO / "service" / "_gen", generated, ignore=shutil.ignore_patterns("__pycache__"))
        return "copied"
    # Another contract: the checkout's own recipe, with this venv's protoc and plugins. Its
    # "install the venv" step must not run (it would repoint this venv's editable install at
    # the checkout), so the stamp is given as up to date and the plan is read before running it.
    venv = Path(sys.executable).parent.parent
    stamp = venv / ".installed"
    argv = ["make", "-C", str(checkout.root), "protos", f"VENV={venv}", f"STAMP={stamp}", "-o", str(stamp)]
    plan = subprocess.run([*argv, "-n"], capture_output=True, text=True, check=False, timeout=_PROTOS_TIMEOUT)
    if plan.returncode != 0 or "pip" in plan.stdout:
        raise IdentityError(
            f"{checkout.root}: cannot generate the stubs with `make protos`:\n{plan.stdout}{plan.stderr}"
        )
    made = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=_PROTOS_TIMEOUT)
    if made.returncode != 0:
        raise IdentityError(f"{checkout.root}: `make protos` failed:\n{made.stdout}{made.stderr}")
    return "generated"


# ------------------------------------------------------------------------------------------ stream


@dataclass(frozen=True)
class Stream:
    """A `riskgate synth` stream, parsed, and the company payee accounts synth wrote beside it."""

    seed: int
    events: int
    end: str
    requests: list[screening_pb2.ScreenRequest]
    allowlist: list[str]

    def kinds(self) -> dict[str, int]:
        return dict(sorted(Counter(r.WhichOneof("event") or "none" for r in self.requests).items()))


def default_end() -> str:
    """A minute ago, to the second: both runs are within the server's 24-hour window of it."""
    return (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0).isoformat()


def synthesize(directory: Path, *, seed: int, events: int, end: str) -> Stream:
    """One stream from this tree's `riskgate synth` (the same seed and end give the same stream)."""
    events_file, allowlist_file = directory / "events.jsonl", directory / "allowlist.txt"
    argv = Checkout(REPO).riskgate(
        "synth", "--seed", str(seed), "--events", str(events), "--days", DAYS, "--end", end,
        "--population", POPULATION, "--fraud-scale", FRAUD_SCALE,
        "--out", str(events_file), "--allowlist", str(allowlist_file),
    )  # fmt: skip
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False, timeout=_SYNTH_TIMEOUT)
    if result.returncode != 0:
        raise IdentityError(f"riskgate synth failed ({result.returncode}): {result.stderr.strip()}")
    requests = [
        json_format.Parse(line, screening_pb2.ScreenRequest())
        for line in events_file.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    allowlist = [line.strip() for line in allowlist_file.read_text().splitlines() if line.strip()]
    return Stream(seed, events, end, requests, allowlist)


def watchlist_entries(stream: Stream) -> list[admin_pb2.AddEntryRequest]:
    """Entries for every watchlist, picked from the stream's own values in stream order (so the
    same stream gives the same entries): every 40th payee on the fraud list, every 50th payer
    vulnerable and police-warned (other offsets), every 10th applicant or buyer punished, every
    30th IP region high-risk, and synth's company payees on the allowlist."""
    payees: dict[str, None] = {}
    payers: dict[str, None] = {}
    people: dict[str, None] = {}
    regions: dict[str, None] = {}
    for request in stream.requests:
        kind = request.WhichOneof("event")
        if kind == "transfer":
            payees.setdefault(request.transfer.payee_account)
            payers.setdefault(request.transfer.payer.id_number)
            if request.transfer.ip_region_code:
                regions.setdefault(request.transfer.ip_region_code)
        elif kind == "card_opening":
            people.setdefault(request.card_opening.applicant.id_number)
        elif kind == "sim_sale":
            people.setdefault(request.sim_sale.buyer.id_number)
    picks = {
        "fraud_accounts": list(payees)[7::40],
        "vulnerable_persons": list(payers)[11::50],
        "police_warned": list(payers)[36::50],
        "punished_persons": list(people)[3::10],
        "high_risk_regions": list(regions)[5::30],
        "allowlist": stream.allowlist,
    }
    return [
        admin_pb2.AddEntryRequest(list=name, value=value, reason="benchmarks.identity", added_by="identity")
        for name, values in picks.items()
        for value in values
    ]


# ------------------------------------------------------------------------------------------ server


class Server:
    """`riskgate serve` of one checkout on a Unix socket: its code, its rules/, a fresh embedded
    Redis in `workdir`, the fixed hash secret and a generous Redis budget. A context manager."""

    def __init__(self, checkout: Checkout, workdir: Path) -> None:
        self.checkout = checkout
        self.workdir = workdir
        self.socket = workdir / "grpc.sock"
        self.address = f"unix:{self.socket}"
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket)) > 100:
            raise IdentityError(f"{self.socket}: too long for a Unix socket; set TMPDIR to a shorter directory")
        secret = self.workdir / "hash-secret"
        secret.write_text(HASH_SECRET_HEX + "\n")
        secret.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
        env.update(
            RISKGATE_LISTEN=self.address,
            RISKGATE_METRICS_LISTEN="off",
            RISKGATE_CONSOLE_LISTEN="off",
            RISKGATE_DATA_DIR=str(self.workdir / "data"),
            RISKGATE_HASH_SECRET_FILE=str(secret),
            RISKGATE_RULES_DIR=str(self.checkout.root / "rules"),
            RISKGATE_REDIS_BUDGET_MS=BUDGET_MS,
            RISKGATE_LOG_LEVEL="WARNING",
            RISKGATE_GRACE_SECONDS="2",
            RISKGATE_DRAIN_SECONDS="0",
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.checkout.riskgate("serve"), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.checkout.root
            )
        try:
            self._wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_serving(self) -> None:
        """Health SERVING, asked on a fresh channel each time (a channel refused before the server
        listened would wait out gRPC's reconnect backoff)."""
        assert self.process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise IdentityError(f"riskgate serve exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            with grpc.insecure_channel(self.address) as channel, contextlib.suppress(grpc.RpcError):
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
        raise IdentityError(f"riskgate serve was not SERVING after {_START_TIMEOUT:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()  # its embedded redis-server gets SIGTERM from the kernel
                self.process.wait(_STOP_TIMEOUT)
        self.process = None


def screen_in_order(
    channel: grpc.Channel, requests: Sequence[screening_pb2.ScreenRequest]
) -> list[screening_pb2.Decision]:
    """One ScreenStream with a window of 1: each request is sent after the previous answer."""
    outbox: queue.Queue[screening_pb2.ScreenRequest | None] = queue.Queue()

    def outgoing() -> Iterator[screening_pb2.ScreenRequest]:
        while (request := outbox.get()) is not None:
            yield request

    answers = screening_pb2_grpc.ScreeningStub(channel).ScreenStream(outgoing(), timeout=_STREAM_TIMEOUT)
    decisions: list[screening_pb2.Decision] = []
    try:
        for request in requests:
            outbox.put(request)
            decisions.append(next(answers))
    except BaseException:
        answers.cancel()
        raise
    finally:
        outbox.put(None)
    if next(answers, None) is not None:
        raise IdentityError("ScreenStream answered more decisions than it was sent requests")
    return decisions


def canonical(decision: screening_pb2.Decision) -> str:
    """The decision as one JSON line: every field but the volatile ones, defaults included
    (`error` only when set), enum names, keys sorted."""
    fields = json_format.MessageToDict(decision, preserving_proto_field_name=True, including_default_value_fields=True)
    for name in VOLATILE:
        fields.pop(name, None)
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Recording:
    lines: list[str]
    seconds: float
    list_entries: int


def record(checkout: Checkout, stream: Stream, workdir: Path) -> Recording:
    """Serve `checkout`, load the watchlists, screen `stream` in order: the canonical lines."""
    started = time.monotonic()
    entries = watchlist_entries(stream)
    with Server(checkout, workdir) as server, grpc.insecure_channel(server.address) as channel:
        try:
            watchlists = admin_pb2_grpc.WatchlistsStub(channel)
            for entry in entries:
                watchlists.AddEntry(entry, timeout=_CALL_TIMEOUT)
            decisions = screen_in_order(channel, stream.requests)
        except grpc.RpcError as error:
            raise IdentityError(f"{checkout.root}: {error}\n{server.log()[-3000:]}") from None
    return Recording([canonical(d) for d in decisions], time.monotonic() - started, len(entries))


# ---------------------------------------------------------------------------------------- analysis


@dataclass
class Tally:
    """What a recording covered, so a reader sees the check is not vacuous."""

    decisions: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    degraded: int = 0
    replayed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, lines: Sequence[str]) -> Tally:
        tally = cls()
        for line in lines:
            decision = json.loads(line)
            tally.decisions += 1
            tally.outcomes[decision["outcome"]] += 1
            tally.degraded += bool(decision["degraded"])
            tally.replayed += bool(decision["replayed"])
            if "error" in decision:
                tally.errors[decision["error"].get("code", "?")] += 1
            tally.rules.update(reason["rule_id"] for reason in decision["reasons"])
        return tally


def declared_rules(checkout: Checkout) -> list[str] | None:
    """The rule ids the checkout's rules/*.rules.yaml declare (None when they cannot be read)."""
    try:
        return sorted(
            str(rule["id"])
            for path in sorted((checkout.root / "rules").glob("*.rules.yaml"))
            for rule in yaml.safe_load(path.read_text(encoding="utf-8"))["rules"]
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


_MISSING = object()


def differing_fields(base: Any, tree: Any, path: str = "") -> list[str]:
    """Paths of the values that differ between two decoded decisions, e.g. "reasons[0].message_en"."""
    if isinstance(base, dict) and isinstance(tree, dict):
        out: list[str] = []
        for key in sorted(base.keys() | tree.keys()):
            out += differing_fields(base.get(key, _MISSING), tree.get(key, _MISSING), f"{path}.{key}" if path else key)
        return out
    if isinstance(base, list) and isinstance(tree, list) and len(base) == len(tree):
        return [
            p for i, (b, t) in enumerate(zip(base, tree, strict=True)) for p in differing_fields(b, t, f"{path}[{i}]")
        ]
    return [] if base == tree else [path or "(decision)"]


def _value_at(document: Any, path: str) -> Any:
    value = document
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            index = int(part[1:-1])
            value = value[index] if isinstance(value, list) and index < len(value) else None
        else:
            value = value.get(part, "(absent)") if isinstance(value, dict) else None
    return value


def _excerpts(base: Any, tree: Any, width: int = 70) -> tuple[str, str]:
    """Two values as JSON, cut to `width` characters from a little before where they first differ."""
    a, b = (json.dumps(v, ensure_ascii=False, sort_keys=True) for v in (base, tree))
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, first - width // 3)

    def cut(text: str) -> str:
        return ("..." if start else "") + text[start : start + width] + ("..." if start + width < len(text) else "")

    return cut(a), cut(b)


@dataclass(frozen=True)
class Difference:
    """One decision that differs: where in the stream, which fields, and the first telling one
    (a field other than ruleset_revision, which differs on every decision when the rules do)."""

    index: int
    request_id: str
    fields: list[str]
    shown: str
    base_value: str
    tree_value: str

    @property
    def kind(self) -> tuple[str, ...]:
        """The differing fields without list positions: "reasons[].message_en", ..."""
        return tuple(sorted({re.sub(r"\[\d+\]", "[]", f) for f in self.fields}))


def differences(base: Sequence[str], tree: Sequence[str]) -> list[Difference]:
    """Every decision (paired by position in the stream) whose canonical line differs."""
    out = []
    for index, (base_line, tree_line) in enumerate(zip(base, tree, strict=False)):
        if base_line == tree_line:
            continue
        b, t = json.loads(base_line), json.loads(tree_line)
        fields = differing_fields(b, t) or ["(encoding)"]
        shown = next((f for f in fields if f != "ruleset_revision"), fields[0])
        base_value, tree_value = _excerpts(_value_at(b, shown), _value_at(t, shown))
        out.append(Difference(index, str(t.get("request_id", "?")), fields, shown, base_value, tree_value))
    return out


def difference_kinds(found: Sequence[Difference]) -> list[tuple[tuple[str, ...], int, Difference]]:
    """The differences grouped by the fields that differ: (fields, how many, the first), in stream order."""
    groups: dict[tuple[str, ...], list[Difference]] = {}
    for difference in found:
        groups.setdefault(difference.kind, []).append(difference)
    return [(kind, len(members), members[0]) for kind, members in groups.items()]


@dataclass(frozen=True)
class Comparison:
    figures: Json
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def compare(
    base_revision: str,
    tree: Checkout | None = None,
    *,
    seed: int = SEED,
    events: int = EVENTS,
    keep: Path | None = None,
) -> Comparison:
    """Record `base_revision` (a temporary worktree) and `tree` (default: this working tree) on one
    stream and compare them; prints a summary and the first differences."""
    tree = tree or Checkout(REPO)
    tree_label = tree.label()  # before the runs: a commit made meanwhile must not relabel them
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rg-identity-") as tmp:
        work = Path(tmp)
        stream = synthesize(work, seed=seed, events=events, end=default_end())
        with worktree(base_revision, work) as (base, short):
            base_run = record(base, stream, work / "base")
        tree_stubs = ensure_stubs(tree)
        tree_run = record(tree, stream, work / "tree")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / "base.jsonl").write_text("".join(line + "\n" for line in base_run.lines), encoding="utf-8")
        (keep / "tree.jsonl").write_text("".join(line + "\n" for line in tree_run.lines), encoding="utf-8")
    found = differences(base_run.lines, tree_run.lines)
    base_tally, tree_tally = Tally.of(base_run.lines), Tally.of(tree_run.lines)
    declared = declared_rules(tree)

    problems = []
    if len(base_run.lines) != len(tree_run.lines):
        problems.append(f"{len(base_run.lines)} base decisions against {len(tree_run.lines)} in the tree")
    if found:
        problems.append(f"{len(found)} of {len(tree_run.lines)} decisions differ")
    if base_tally.degraded or tree_tally.degraded:
        problems.append(f"degraded decisions (base {base_tally.degraded}, tree {tree_tally.degraded}): not comparable")
    if not tree_tally.rules:
        problems.append("no rule fired: the check is vacuous")
    if sum(tree_tally.errors.values()) == tree_tally.decisions:
        problems.append("every request was refused: the check is vacuous")

    figures: Json = {
        "identity.base": short,
        "identity.tree": tree_label,
        "identity.tree_stubs": tree_stubs,
        "identity.seed": seed,
        "identity.events": len(stream.requests),
        "identity.end": stream.end,
        "identity.kinds": stream.kinds(),
        "identity.list_entries": base_run.list_entries,
        "identity.decisions": len(tree_run.lines),
        "identity.differing": len(found),
        "identity.first_differences": [
            {"request_id": d.request_id, "fields": d.fields[:8], "base": d.base_value, "tree": d.tree_value}
            for d in found[:SHOWN_DIFFERENCES]
        ],
        "identity.difference_kinds": [
            {"fields": list(kind), "decisions": count, "first": first.request_id}
            for kind, count, first in difference_kinds(found)
        ],
        "identity.outcomes": dict(sorted(tree_tally.outcomes.items())),
        "identity.rules_fired": len(tree_tally.rules),
        "identity.rules_declared": None if declared is None else len(declared),
        "identity.rules_not_fired": None if declared is None else sorted(set(declared) - set(tree_tally.rules)),
        "identity.rule_hits": dict(sorted(tree_tally.rules.items())),
        "identity.degraded": {"base": base_tally.degraded, "tree": tree_tally.degraded},
        "identity.replayed": tree_tally.replayed,
        "identity.errors": dict(sorted(tree_tally.errors.items())),
        "identity.base_seconds": round(base_run.seconds, 1),
        "identity.tree_seconds": round(tree_run.seconds, 1),
        "identity.seconds": round(time.monotonic() - started, 1),
        "identity.identical": not problems,
    }
    _print_summary(figures, found, problems)
    return Comparison(figures, problems)


def _print_summary(figures: Json, found: Sequence[Difference], problems: Sequence[str]) -> None:
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in figures["identity.kinds"].items())
    outcomes = ", ".join(
        f"{name.removeprefix('OUTCOME_').lower()} {n:,}" for name, n in figures["identity.outcomes"].items()
    )
    declared = figures["identity.rules_declared"]
    of_declared = f" of {declared} declared" if declared is not None else ""
    print(
        f"identity: base {figures['identity.base']} against {figures['identity.tree']}: "
        f"{figures['identity.decisions']:,} decisions, {figures['identity.differing']:,} differ; "
        f"stream seed {figures['identity.seed']}, {figures['identity.events']:,} events ({kinds}) ending "
        f"{figures['identity.end']}, {figures['identity.list_entries']} watchlist entries",
        flush=True,
    )
    errors = sum(figures["identity.errors"].values())
    print(
        f"identity: {figures['identity.rules_fired']} distinct rules fired{of_declared} "
        f"({sum(figures['identity.rule_hits'].values()):,} reasons); outcomes {outcomes}; "
        f"degraded {figures['identity.degraded']['base']} / {figures['identity.degraded']['tree']}, "
        f"replayed {figures['identity.replayed']}, refused {errors}; "
        f"base {figures['identity.base_seconds']} s, tree {figures['identity.tree_seconds']} s, "
        f"total {figures['identity.seconds']} s",
        flush=True,
    )
    if figures["identity.rules_not_fired"]:
        print(f"identity: not fired: {', '.join(figures['identity.rules_not_fired'])}", flush=True)
    groups = difference_kinds(found)
    for kind, count, first in groups[:SHOWN_DIFFERENCES]:
        print(
            f"identity: {count:,} differ in {', '.join(kind)}; first #{first.index} {first.request_id}, "
            f"{first.shown}: base {first.base_value} / tree {first.tree_value}",
            flush=True,
        )
    if len(groups) > SHOWN_DIFFERENCES:
        print(f"identity: ... and {len(groups) - SHOWN_DIFFERENCES} other kinds of difference", flush=True)
    print(f"identity: {'FAILED: ' + '; '.join(problems) if problems else 'identical'}", flush=True)


def run_part(quick: bool) -> Json:
    """`benchmarks.run`'s entry point: this working tree against HEAD; raises when they differ."""
    comparison = compare("HEAD", events=QUICK_EVENTS if quick else EVENTS)
    if not comparison.ok:
        raise IdentityError("; ".join(comparison.problems))
    return comparison.figures


# --------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.identity", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="screen the stream through one checkout and write the canonical decisions")
    rec.add_argument("--out", required=True, type=Path, help="JSON Lines file to write")
    rec.add_argument("--checkout", type=Path, default=REPO, help="source tree to serve (default: this working tree)")
    rec.add_argument("--end", default=None, help="end of the stream, ISO 8601 with offset (default: a minute ago)")
    cmp = commands.add_parser("compare", help="record a revision and the working tree on one stream and compare")
    cmp.add_argument("--base", required=True, help="git revision to compare against, e.g. HEAD")
    cmp.add_argument("--tree", type=Path, default=REPO, help="source tree to compare (default: this working tree)")
    cmp.add_argument("--keep", type=Path, default=None, help="write base.jsonl and tree.jsonl into this directory")
    cmp.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    for sub in (rec, cmp):
        sub.add_argument("--seed", type=int, default=SEED, help=f"synth seed (default {SEED})")
        sub.add_argument("--events", type=int, default=EVENTS, help=f"events in the stream (default {EVENTS})")
    args = parser.parse_args(argv)
    try:
        if args.command == "record":
            return _record_command(args)
        comparison = compare(
            args.base, Checkout(args.tree.resolve()), seed=args.seed, events=args.events, keep=args.keep
        )
    except (IdentityError, subprocess.TimeoutExpired) as error:
        print(f"identity: cannot check: {error}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(comparison.figures, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return 0 if comparison.ok else 1


def _record_command(args: argparse.Namespace) -> int:
    checkout = Checkout(args.checkout.resolve())
    stubs = ensure_stubs(checkout)
    with tempfile.TemporaryDirectory(prefix="rg-identity-") as tmp:
        stream = synthesize(Path(tmp), seed=args.seed, events=args.events, end=args.end or default_end())
        recording = record(checkout, stream, Path(tmp) / "server")
    args.out.write_text("".join(line + "\n" for line in recording.lines), encoding="utf-8")
    tally = Tally.of(recording.lines)
    print(
        f"identity: {checkout.label()} (stubs {stubs}): {tally.decisions:,} decisions to {args.out} "
        f"(seed {stream.seed}, end {stream.end}); {len(tally.rules)} distinct rules fired; "
        f"degraded {tally.degraded}, refused {sum(tally.errors.values())}; {recording.seconds:.1f} s",
        flush=True,
    )
    return 1 if tally.degraded else 0


if __name__ == "__main__":
    sys.exit(main())
