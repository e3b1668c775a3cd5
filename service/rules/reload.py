"""Hot reload: the rules directory the server serves, rebuilt aside and swapped in between requests.

    manager = RulesManager(settings.rules_dir, on_reload=count_reload)
    manager.load()                                  # at start: SourceError means refuse to start
    task = asyncio.create_task(manager.watch(2.0))  # poll the directory
    ...
    with manager.lease() as rules:                  # per request, around counters AND rules
        updates = counters_to_update(rules.counter_spec, kind, facts, rules.where)
        ... read counters and rules.list_checks in Redis ...
        reasons = rules.evaluate(facts, counters, list_hits)   # decision stamped rules.revision
    ...
    result = manager.reload()                       # the admin RPC: (revision, changed, errors)

What is served is an `ActiveRules` bundle: the compiled ruleset, the counter
spec with its compiled `where` filters, the watchlist declarations and the
exchange rates, all from the same files. A request leases one bundle and uses only it, so the
counters it updates, the lists it looks up and the rules it evaluates always
belong together, even when a reload lands in the middle of it.

Reloading, and why it is careful:

* The directory's content hash covers the rule files, counters.yaml,
  lists.yaml and rates.yaml (service.rules.directory). Rates that were served
  are never dropped by a reload (a missing rates.yaml is an error then). Nothing is rebuilt while it is
  unchanged: durable_rules leaks memory on every ruleset deletion
  (/work/shared/DURABLE_RULES.md), so a rebuild must mean a real change.
  A content that already failed is not retried either (its errors are kept).
* `watch` polls cheaply: `os.stat` of the files first, and the files are
  read only when that changes (or every `full_check_every` polls, in case an
  edit kept size and timestamps).
* A new bundle is loaded, checked and compiled aside, and swapped in only if
  all of it is valid; requests still holding the old one finish on it, and
  its durable rulesets are deleted when its last lease ends.
* A broken directory leaves the last good bundle serving: the errors
  (`file:line: problem`) are logged, kept in `last_errors` for the health
  detail and the admin RPC, and counted (`reload_counts`, `on_reload`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from service.domain import EventKind, Reason
from service.errors import ContentChanged, EvaluationError, RiskgateError, SourceError, SourceProblem
from service.pipeline.breakers import BreakerWatch
from service.pipeline.facts import Scalar
from service.pipeline.money import CNY_ONLY, ExchangeRates
from service.riskdata.counters.model import CounterSpec
from service.riskdata.lists import ListSpec
from service.rules.compiler import compile_ruleset
from service.rules.directory import DirectoryTexts, RulesDirectory, load_texts, read_directory, stat_signature
from service.rules.engine import CompiledRuleset, ListHits, Live, build_ruleset
from service.rules.filters import CounterFilters
from service.rules.rates import RATES_FILE

log = logging.getLogger("riskgate.rules")

LOADED = "loaded"
UNCHANGED = "unchanged"
REJECTED = "rejected"
RESULTS = (LOADED, UNCHANGED, REJECTED)
_READ_ATTEMPTS = 3
T = TypeVar("T")


@dataclass(frozen=True, slots=True, eq=False)
class ActiveRules:
    """Everything a request needs from the rules directory, from one consistent set of files.

    `where` is the counters' filter predicate (`service.riskdata.counters.model.Predicate`)
    for `counter_spec`; `lists` the watchlists the rules may look up; `rates`
    what a transfer in another currency is in CNY. `revision`, `rates`,
    `list_checks` and `evaluate` make it a `service.pipeline.screening.RuleEvaluator`.
    """

    ruleset: CompiledRuleset
    counter_spec: CounterSpec
    where: CounterFilters
    lists: Mapping[str, ListSpec]
    content_hash: str
    directory: str
    rates: ExchangeRates = CNY_ONLY
    # The rules with breakers (service.pipeline.breakers), for the risk data to count.
    breakers: tuple[BreakerWatch, ...] = ()

    @property
    def compiled(self) -> CompiledRuleset:
        return self.ruleset

    @property
    def revision(self) -> str:
        return self.ruleset.revision

    @property
    def list_checks(self) -> frozenset[tuple[str, str]]:
        return self.ruleset.list_checks

    def list_checks_for(self, kind: EventKind) -> frozenset[tuple[str, str]]:
        return self.ruleset.list_checks_for(kind)

    def evaluate(
        self, facts: Mapping[str, Scalar], counters: Mapping[str, int | float], list_hits: ListHits
    ) -> tuple[Reason, ...]:
        return self.ruleset.evaluate(facts, counters, list_hits)


def build(directory: RulesDirectory) -> ActiveRules:
    """Compile a loaded directory into durable rulesets; raises SourceError if durable refuses a rule."""
    compiled = build_ruleset(compile_ruleset(directory.ruleset))
    return ActiveRules(
        ruleset=compiled,
        counter_spec=directory.counter_spec,
        where=directory.filters,
        lists=directory.lists,
        content_hash=directory.content_hash,
        directory=directory.directory,
        rates=directory.rates,
        breakers=directory.ruleset.breaker_watches,
    )


class ReloadResult(NamedTuple):
    """What a reload did: the revision serving afterwards, whether it changed, and the directory's errors.

    `errors` is empty when the directory is valid; when it is not, they are
    its problems (`file:line: problem`) and the previous revision still serves.
    """

    revision: str
    changed: bool
    errors: list[str]


ReloadListener = Callable[[str, ReloadResult], None]


class RulesManager:
    """Owns the serving rules of one directory: loads it, watches it, reloads it, hands out leases.

    `on_reload(result, reload_result)` is called after every reload attempt,
    with result one of "loaded", "unchanged" or "rejected" (e.g. to count a
    metric), from the thread that reloads (`reload_async` and `watch` use a
    worker thread); `reload_counts` keeps the same counts.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        on_reload: ReloadListener | None = None,
        full_check_every: int = 30,
    ) -> None:
        self.directory = directory
        self._on_reload = on_reload
        self._full_check_every = max(1, full_check_every)
        self._live: Live[ActiveRules] | None = None
        self._reload_lock = threading.Lock()
        self._signature: tuple[tuple[str, int, int, int, int], ...] = ()
        self._failed_hash: str | None = None
        self._errors: tuple[str, ...] = ()
        self._counts = dict.fromkeys(RESULTS, 0)

    # ------------------------------------------------------------ serving

    def load(self) -> ActiveRules:
        """Load the directory to start serving; raises SourceError listing every problem.

        Once loaded, this returns the serving bundle (use `reload` to pick up changes).
        """
        with self._reload_lock:
            if self._live is not None:
                return self._live.current
            self._signature = stat_signature(self.directory)
            bundle = self._read_then(lambda texts: build(load_texts(texts)))
            self._live = Live(bundle)
            log.info(
                "rules loaded",
                extra={"fields": {"revision": bundle.revision, "rules": len(bundle.ruleset.rules)}},
            )
            return bundle

    @property
    def loaded(self) -> bool:
        return self._live is not None

    def _serving(self) -> Live[ActiveRules]:
        if self._live is None:
            raise EvaluationError("no rules are loaded yet: call load() first")
        return self._live

    def _open(self) -> Live[ActiveRules]:
        live = self._serving()
        if live.closed:
            raise EvaluationError("the rules manager is closed")
        return live

    @property
    def current(self) -> ActiveRules:
        """The bundle serving now. A request should `lease()` it instead, so a reload cannot delete it."""
        return self._serving().current

    @property
    def revision(self) -> str:
        return self.current.revision

    @contextmanager
    def lease(self) -> Iterator[ActiveRules]:
        """The serving bundle, kept alive (not deleted by a reload) until the block ends."""
        with self._serving().lease() as bundle:
            yield bundle

    @property
    def last_errors(self) -> tuple[str, ...]:
        """The problems of the directory's content if it is broken (the previous revision serves); else ()."""
        return self._errors

    @property
    def reload_counts(self) -> Mapping[str, int]:
        """Reload attempts by result: loaded, unchanged, rejected."""
        return dict(self._counts)

    def close(self) -> None:
        """Stop serving: the current durable rulesets are deleted once the last lease ends."""
        if self._live is not None:
            self._live.close()

    # ------------------------------------------------------------ reload

    def changed_on_disk(self) -> bool:
        """Whether the files' sizes, times or names changed since the last load or reload (stat only)."""
        return stat_signature(self.directory) != self._signature

    def reload(self) -> ReloadResult:
        """Load the directory again if its content changed, and serve it if it is fully valid.

        Thread-safe (reloads are serialised). Never rebuilds for unchanged
        content, nor for content that already failed.
        """
        with self._reload_lock:
            live = self._open()
            self._signature = stat_signature(self.directory)  # before reading: a later edit shows up again
            try:
                return self._read_then(lambda texts: self._reload_texts(live, texts))
            except SourceError as exc:  # unreadable, or still changing: no content to remember as failed
                return self._rejected(live, None, [str(p) for p in exc.problems])

    def _read_then(self, action: Callable[[DirectoryTexts], T]) -> T:
        """`action` on the directory's texts, read again if a file changed while it was being loaded."""
        attempts = _READ_ATTEMPTS
        while True:
            try:
                return action(read_directory(self.directory))
            except ContentChanged:
                attempts -= 1
                if attempts == 0:
                    raise

    async def reload_async(self) -> ReloadResult:
        """`reload` in a worker thread, so the event loop keeps answering while a ruleset compiles."""
        return await asyncio.to_thread(self.reload)

    def _reload_texts(self, live: Live[ActiveRules], texts: DirectoryTexts) -> ReloadResult:
        serving = live.current
        if texts.content_hash == serving.content_hash:
            self._failed_hash, self._errors = None, ()
            return self._finish(UNCHANGED, ReloadResult(serving.revision, False, []))
        if texts.content_hash == self._failed_hash:
            return self._finish(UNCHANGED, ReloadResult(serving.revision, False, list(self._errors)))
        if serving.rates.rates and texts.rates is None:
            # A rename or a copy in two steps would otherwise start refusing every foreign
            # transfer; going CNY-only is a decision for a restart, not for a reload.
            gone = SourceProblem(
                str(Path(texts.directory) / RATES_FILE), 0,
                "the rates in force are gone: restore rates.yaml (replace it with an atomic rename);"
                " to accept CNY only, restart without one",
            )  # fmt: skip
            return self._rejected(live, texts.content_hash, [str(gone)])
        try:
            bundle = build(load_texts(texts))
        except ContentChanged:
            raise
        except RiskgateError as exc:
            problems = [str(p) for p in exc.problems] if isinstance(exc, SourceError) else [str(exc)]
            return self._rejected(live, texts.content_hash, problems)
        try:
            live.swap(bundle)
        except EvaluationError:  # the manager was closed meanwhile: never serve, never leak
            bundle.ruleset.close()
            raise
        self._failed_hash, self._errors = None, ()
        log.info(
            "rules reloaded",
            extra={
                "fields": {
                    "revision": bundle.revision,
                    "previous_revision": serving.revision,
                    "rules": len(bundle.ruleset.rules),
                }
            },
        )
        return self._finish(LOADED, ReloadResult(bundle.revision, True, []))

    def _rejected(self, live: Live[ActiveRules], content_hash: str | None, errors: list[str]) -> ReloadResult:
        self._failed_hash = content_hash
        self._errors = tuple(errors)
        revision = live.current.revision
        log.error(
            "rules in %s rejected (%d problem%s); still serving %s:\n%s",
            self.directory,
            len(errors),
            "" if len(errors) == 1 else "s",
            revision,
            "\n".join(errors),
            extra={"fields": {"revision": revision, "errors": errors}},
        )
        return self._finish(REJECTED, ReloadResult(revision, False, list(errors)))

    def _finish(self, outcome: str, result: ReloadResult) -> ReloadResult:
        self._counts[outcome] += 1
        if self._on_reload is not None:
            try:
                self._on_reload(outcome, result)
            except Exception:
                log.exception("reload listener failed")
        return result

    # ------------------------------------------------------------- watch

    async def watch(self, interval_seconds: float) -> None:
        """Poll the directory every `interval_seconds` and reload on change, until cancelled."""
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        polls = 0
        while True:
            await asyncio.sleep(interval_seconds)
            polls += 1
            try:
                if polls % self._full_check_every == 0 or self.changed_on_disk():
                    await self.reload_async()
            except Exception:
                log.exception("rules reload failed unexpectedly; still serving %s", self.revision)
