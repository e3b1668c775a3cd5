"""Several serving processes on one port: what `riskgate serve` runs when RISKGATE_WORKERS > 1.

One grpc.aio process is bound by its event loop's thread (~1 core, ~1,700 screenings/s on these
machines); a replica with more cores runs one process per core. The `riskgate serve` process
becomes a supervisor that serves nothing itself:

1. it holds `$RISKGATE_DATA_DIR/workers.lock` (one supervisor per data directory), checks that
   nothing listens on RISKGATE_LISTEN yet (the workers share it with SO_REUSEPORT, which would also
   let a stray second server join), and hands decision-log spools of workers no longer configured to
   worker 0 (`adopt_spools`);
2. it starts the embedded redis-server (without RISKGATE_REDIS_URL) and creates the hash secret,
   once, and serves `/metrics` for all workers from prometheus_client's multiprocess files in a
   fresh `$RISKGATE_DATA_DIR/metrics/` (`service.server.metrics.shared_registry`);
3. it starts the N workers (`python -m service.server.workers`): each is the ordinary `Server` of
   `service.server.app.run` on the same port, with its own Redis connection, rules and decision-log
   spool (`decision-log.spool` for worker 0, `decision-log.worker-<i>.spool` for the others); worker
   0 alone serves the console. A worker asks the kernel for SIGINT when the supervisor dies
   (PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves no worker behind (they stop without a drain).

The kernel spreads *connections* over the workers (a hash of each connection's addresses), never
calls: a client holding one HTTP/2 connection is served by one worker. Spread needs many
connections (README, Performance: "Several processes on one port").

On SIGTERM or SIGINT the supervisor forwards the signal to every worker, which drains and stops as
a single process does (`service.server.app`); a second signal is forwarded too (it cuts the drain
short). Workers still running at drain + grace + 10 s are killed. The embedded redis-server is
stopped last. A worker that exits on its own is restarted, after 0.5 s doubling to 30 s while it
keeps failing (back to 0.5 s once one ran for 30 s); one that exits before the first start has
served is a start-up refusal: the others are stopped and `serve` fails (exit code 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from prometheus_client.multiprocess import mark_process_dead

from service import logs
from service.errors import ConfigError, RiskgateError, WorkerError
from service.redis.connection import embedded_dir, hasher_for
from service.redis.embedded import EmbeddedRedis
from service.server.access.tls import TlsFiles
from service.server.app import risk_data_config, run
from service.server.metrics import screenings_by_process, serve_registry, shared_registry
from service.settings import Settings, parse_address

log = logging.getLogger("riskgate.workers")

WORKER_MODULE = "service.server.workers"
SPOOL = "decision-log.spool"
METRICS_DIR = "metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_READY = b"serving\n"
_FIRST_BACKOFF, _MAX_BACKOFF, _STEADY_SECONDS = 0.5, 30.0, 30.0
_KILL_AFTER_SECONDS = 10.0  # past drain + grace
_PR_SET_PDEATHSIG = 1


def spool_path(data_dir: Path, index: int) -> Path:
    """Worker `index`'s decision-log spool; worker 0's is the single process's."""
    return data_dir / (SPOOL if index == 0 else f"decision-log.worker-{index}.spool")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """flock `path` (a spool's lock file) without waiting; yields whether it was taken."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def adopt_spools(data_dir: Path, workers: int) -> int:
    """Append the spools of workers at index `workers` and above (left by a run with more workers) to
    worker 0's, which the next start reads back; LOG_ONCE keeps a decision written once. Returns the
    number of files adopted. A spool whose lock another process holds is left alone."""
    adopted = 0
    orphans = []
    for path in sorted(data_dir.glob("decision-log.worker-*.spool")):
        index = path.name.removeprefix("decision-log.worker-").removesuffix(".spool")
        if index.isdigit() and int(index) >= workers:
            orphans.append(path)
    if not orphans:
        return 0
    target = spool_path(data_dir, 0)
    with _locked(target.with_name(target.name + ".lock")) as mine:
        if not mine:
            return 0
        for orphan in orphans:
            lock = orphan.with_name(orphan.name + ".lock")
            with _locked(lock) as theirs:
                if not theirs:
                    continue
                content = orphan.read_bytes()
                if content.strip():
                    with target.open("ab") as out:
                        if out.tell() and not target.read_bytes().endswith(b"\n"):
                            out.write(b"\n")  # a torn last line stays one unreadable line
                        out.write(content if content.endswith(b"\n") else content + b"\n")
                        out.flush()
                        os.fsync(out.fileno())
                    log.warning(
                        "decision-log spool of a worker no longer configured handed to worker 0",
                        extra={"fields": {"spool": str(orphan), "bytes": len(content)}},
                    )
                orphan.unlink()
            lock.unlink(missing_ok=True)
            adopted += 1
    return adopted


def _check_port_free(listen: str) -> None:
    """Refuse to start when something listens on the port already (a plain bind fails then, also
    against a group of SO_REUSEPORT listeners that the workers would otherwise join)."""
    host, port = parse_address(listen, "RISKGATE_LISTEN")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no owner
            probe.bind(address)
    except OSError as error:
        raise ConfigError(f"RISKGATE_LISTEN={listen}: cannot listen there ({error.strerror or error})") from None


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    status: int | None = None  # the read end of its status pipe
    serving: bool = False
    started_at: float = 0.0
    backoff: float = _FIRST_BACKOFF
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """The `riskgate serve` process of RISKGATE_WORKERS > 1 (see the module doc)."""

    def __init__(self, settings: Settings, *, python: str = sys.executable) -> None:
        self.settings = settings
        self.python = python
        self.metrics_dir = settings.data_dir.resolve() / METRICS_DIR
        self.workers = [_Worker(i) for i in range(settings.workers)]
        self.redis_url: str | None = settings.redis_url
        self._embedded: EmbeddedRedis | None = None
        self._lock: IO[str] | None = None
        self._signals: list[signal.Signals] = []
        self._wakeup_read = -1
        self._stop_deadline: float | None = None

    # --- start ------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = (data_dir / "workers.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(
                f"{data_dir} is in use by another riskgate process: give each instance its own RISKGATE_DATA_DIR"
            ) from None
        self._lock = lock

    def _prepare(self) -> None:
        self._take_lock()
        _check_port_free(self.settings.listen)
        adopt_spools(self.settings.data_dir, self.settings.workers)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # counts of an earlier run are not this one's
        self.metrics_dir.mkdir(parents=True)
        if self.redis_url is None:
            self._embedded = EmbeddedRedis(embedded_dir(self.settings))
            self._embedded.start()  # on the main thread: its parent-death signal follows this process
            self.redis_url = self._embedded.url
            log.info("embedded redis-server started", extra={"fields": {"data_dir": str(self._embedded.data_dir)}})
        hasher_for(self.settings)  # created once here, not raced by N workers
        if self.settings.metrics_listen:
            settings = self.settings
            tls = None
            if settings.metrics_tls and settings.tls_cert and settings.tls_key:
                tls = TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            try:
                serve_registry(shared_registry(self.metrics_dir), settings.metrics_listen, tls)
            except OSError as error:
                raise ConfigError(
                    f"RISKGATE_METRICS_LISTEN={settings.metrics_listen}: cannot listen there ({error})"
                ) from None

    def _spawn(self, worker: _Worker) -> None:
        read, write = os.pipe()
        argv = [self.python, "-m", WORKER_MODULE, "--index", str(worker.index)]
        argv += ["--supervisor", str(os.getpid()), "--status-fd", str(write)]
        if self._embedded is not None and self.redis_url is not None:
            argv += ["--redis-url", self.redis_url]  # a socket in the data directory: no password in it
        environment = dict(os.environ)
        environment[MULTIPROC_ENV] = str(self.metrics_dir)
        try:
            worker.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                env=environment,
                pass_fds=(write,),
                start_new_session=True,  # a Ctrl-C in the terminal reaches the supervisor, which forwards it
            )
        except OSError as error:
            os.close(read)
            raise WorkerError(f"cannot start worker {worker.index}: {error}") from error
        finally:
            os.close(write)
        worker.status = read
        worker.serving = False
        worker.started_at = time.monotonic()
        worker.restart_at = None
        log.info("worker started", extra={"fields": {"worker": worker.index, "pid": worker.process.pid}})

    # --- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        read, write = os.pipe()
        os.set_blocking(write, False)
        os.set_blocking(read, False)
        self._wakeup_read = read
        signal.set_wakeup_fd(write)

        def on_stop(signum: int, _frame: object) -> None:
            self._signals.append(signal.Signals(signum))

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # only to wake the loop

    def _restore_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)

    def _forward(self, signum: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    @property
    def stopping(self) -> bool:
        return bool(self._signals)

    # --- the loop ---------------------------------------------------------------------------

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a worker's status line or `timeout`."""
        handles = [self._wakeup_read] + [w.status for w in self.workers if w.status is not None]
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select(handles, [], [], max(0.0, timeout))
            for handle in ready:
                if handle == self._wakeup_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(handle, 512)
                    continue
                worker = next(w for w in self.workers if w.status == handle)
                data = os.read(handle, 64)
                if data.startswith(_READY):
                    worker.serving = True
                    log.info("worker serving", extra={"fields": {"worker": worker.index, "pid": self._pid(worker)}})
                if not data:  # the worker closed its end: it has exited or is exiting
                    os.close(handle)
                    worker.status = None

    @staticmethod
    def _pid(worker: _Worker) -> int | None:
        return worker.process.pid if worker.process is not None else None

    def _reap(self, *, starting: bool) -> None:
        """Note workers that exited: schedule restarts, or (`starting`) refuse the start."""
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            worker.process = None
            worker.exits.append(code)
            if worker.status is not None:
                os.close(worker.status)
                worker.status = None
            screenings = screenings_by_process(self.metrics_dir).get(process.pid, 0.0)
            self._mark_dead(process.pid)
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
            fields = {"worker": worker.index, "pid": process.pid, "exit": how, "screenings": int(screenings)}
            if self.stopping:
                log.info("worker stopped", extra={"fields": fields})
                continue
            if starting and not worker.serving:
                raise WorkerError(f"worker {worker.index} exited with {how} before serving (its log says why)")
            ran = now - worker.started_at
            worker.backoff = _FIRST_BACKOFF if ran >= _STEADY_SECONDS else worker.backoff
            worker.restart_at = now + worker.backoff
            log.warning("worker exited; restarting it", extra={"fields": {**fields, "restart_in_s": worker.backoff}})
            worker.backoff = min(_MAX_BACKOFF, worker.backoff * 2)

    def _mark_dead(self, pid: int) -> None:
        mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]  # its gauges leave the shared view, its counts stay

    def _begin_stop(self) -> None:
        signum = self._signals[-1]
        if self._stop_deadline is None:
            drain = self.settings.drain_seconds if signum is signal.SIGTERM else 0.0
            self._stop_deadline = time.monotonic() + drain + self.settings.grace_seconds + _KILL_AFTER_SECONDS
            log.info("stopping the workers", extra={"fields": {"signal": signum.name}})
        for worker in self.workers:
            worker.restart_at = None
        self._forward(signum)

    def _loop(self) -> None:
        starting = True
        handled = 0
        while True:
            if len(self._signals) > handled:
                handled = len(self._signals)
                self._begin_stop()
            self._reap(starting=starting and not self.stopping)
            alive = [w for w in self.workers if w.process is not None]
            if self.stopping:
                if not alive:
                    return
                assert self._stop_deadline is not None
                if time.monotonic() >= self._stop_deadline:
                    for worker in alive:
                        log.error("worker did not stop in time; killing it", extra={"fields": {"worker": worker.index}})
                        assert worker.process is not None
                        worker.process.kill()
                    self._stop_deadline = float("inf")
                self._wait(0.5)
                continue
            if starting and all(w.serving for w in self.workers):
                starting = False
                pids = [self._pid(w) for w in self.workers]
                log.info(
                    "serving",
                    extra={
                        "fields": {
                            "listen": self.settings.listen,
                            "workers": len(self.workers),
                            "pids": pids,
                            "metrics": self.settings.metrics_listen or "off",
                        }
                    },
                )
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
                    self._spawn(worker)
            pending = [w.restart_at for w in self.workers if w.restart_at is not None]
            self._wait(min([1.0, *(at - now for at in pending)]))

    def serve(self) -> int:
        """Run until SIGTERM or SIGINT; 0 when every worker stopped cleanly."""
        self._install_signals()
        try:
            self._prepare()
            for worker in self.workers:
                self._spawn(worker)
            try:
                self._loop()
            except WorkerError:
                self._signals.append(signal.SIGINT)
                self._begin_stop()
                self._loop()
                raise
            return 0 if all(w.exits and w.exits[-1] == 0 for w in self.workers) else 1
        finally:
            self._close()

    def _close(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
            if worker.status is not None:
                os.close(worker.status)
                worker.status = None
        if self._embedded is not None:
            self._embedded.stop()
            log.info("embedded redis-server stopped")
        self._restore_signals()
        if self._wakeup_read >= 0:
            os.close(self._wakeup_read)
            self._wakeup_read = -1
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def serve(settings: Settings) -> int:
    """`riskgate serve` with RISKGATE_WORKERS > 1: supervise the workers until SIGTERM or SIGINT."""
    return Supervisor(settings).serve()


# --- a worker ---------------------------------------------------------------------------------


def _die_with(supervisor: int) -> None:
    """Ask the kernel for SIGINT (stop without a drain) when the supervisor dies; exit at once if it
    has died already (between its fork and this call)."""
    if sys.platform.startswith("linux"):
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        if prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor:
        raise WorkerError("the supervisor is gone")


class _WorkerField(logging.Filter):
    """Every log line of a worker says which one it is."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.fields = {"worker": self.index, **fields} if isinstance(fields, dict) else {"worker": self.index}
        return True


def worker_settings(settings: Settings, index: int) -> Settings:
    """A worker's own settings: the supervisor serves the metrics, worker 0 alone the console."""
    console = settings.console_listen if index == 0 else ""
    return dataclasses.replace(settings, metrics_listen="", console_listen=console)


def worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}", description="one of RISKGATE_WORKERS")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--supervisor", type=int, required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_level_number, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(args.index))
    status = os.fdopen(args.status_fd, "wb", buffering=0)

    def serving() -> None:
        with contextlib.suppress(OSError):
            status.write(_READY)

    try:
        _die_with(args.supervisor)
        own = worker_settings(settings, args.index)
        config = dataclasses.replace(risk_data_config(own), log_spool=spool_path(own.data_dir, args.index))
        asyncio.run(run(own, risk_config=config, redis_url=args.redis_url, on_serving=serving))
    except RiskgateError as error:
        logging.getLogger("riskgate").error("cannot serve: %s", error)
        return 1
    finally:
        status.close()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
