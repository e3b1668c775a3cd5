"""A whole rules directory: rule files, counters.yaml, lists.yaml and rates.yaml, loaded and checked together.

    rules/
      openings.rules.yaml       rules (service.rules.loader)
      openings.cases.yaml       their test cases (service.rules.cases)
      counters.yaml             velocity counters (service.riskdata.counters.loader); their `where` filters
                                are checked here with the rules language (service.rules.filters)
      lists.yaml                watchlists (service.riskdata.lists)
      rates.yaml                exchange rates into CNY (service.rules.rates, service.pipeline.money)

The kinds of file are one unit: the counters declare which counter values
rules may read (and on which event kinds), the lists which `list.NAME` exist
and what kind of value each holds, the rates what a foreign amount is in the
CNY the thresholds are written in. So `load_directory` checks them together,
and the content hash (what hot reload compares) and the ruleset revision
(stamped on every decision) cover all of them: editing counters.yaml or a
rate gives a new revision even when no rule file changed. Case files are not part
of either: they do not change what the service decides.

A missing counters.yaml means no counters; a missing lists.yaml, no lists; a
missing rates.yaml, CNY only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ContentChanged, SourceError, SourceProblem
from service.pipeline.money import CNY_ONLY, ExchangeRates
from service.riskdata.counters.loader import parse_counters
from service.riskdata.counters.model import CounterSpec
from service.riskdata.lists import LISTS_FILE, ListSpec, load_lists
from service.rules.filters import CounterFilters, compile_filters
from service.rules.loader import RULES_SUFFIX, SourceText, find_files, load_sources, read_source
from service.rules.model import CounterInfo, RuleSet
from service.rules.rates import RATES_FILE, parse_rates

COUNTERS_FILE = "counters.yaml"
_LOAD_ATTEMPTS = 3


def counters_of(spec: CounterSpec) -> dict[str, CounterInfo]:
    """The counter values rules may read, by name, with the event kinds that read each."""
    return {value.name: CounterInfo(value.name, value.kinds, value.description) for value in spec.values}


@dataclass(frozen=True, slots=True)
class DirectoryTexts:
    """The exact texts of a rules directory's files at one moment, and their content hash."""

    directory: str  # as given: names in problems are this joined with the relative path
    rules: tuple[SourceText, ...]
    counters: SourceText | None
    lists: SourceText | None
    content_hash: str  # SHA-256 hex over every file's relative path and text
    rates: SourceText | None = None

    @property
    def context(self) -> tuple[SourceText, ...]:
        """The non-rule files that shape what the rules mean (hashed into the revision)."""
        return tuple(t for t in (self.counters, self.lists, self.rates) if t is not None)


@dataclass(frozen=True, slots=True)
class RulesDirectory:
    """A fully valid rules directory: the rules, the counters with their compiled filters, the lists, the rates."""

    directory: str
    content_hash: str
    ruleset: RuleSet
    counter_spec: CounterSpec
    filters: CounterFilters
    lists: Mapping[str, ListSpec] = field(default_factory=dict)
    rates: ExchangeRates = CNY_ONLY

    @property
    def revision(self) -> str:
        return self.ruleset.revision


def _hash(texts: Iterable[SourceText]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.relative.encode("utf-8") + b"\0" + text.text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _read_optional(root: Path, directory: str | Path, name: str, problems: list[SourceProblem]) -> SourceText | None:
    path = root / name
    if not path.exists():
        return None
    shown = str(Path(directory) / name)
    text, read_problems = read_source(path, shown)
    problems.extend(read_problems)
    return None if text is None else SourceText(shown, text, name)


def read_directory(directory: str | Path) -> DirectoryTexts:
    """Read every file of the directory that decisions depend on; raises SourceError if one cannot be read."""
    root = Path(directory)
    if not root.is_dir():
        raise SourceError([SourceProblem(str(directory), 0, "not a directory")])
    problems: list[SourceProblem] = []
    rules: list[SourceText] = []
    for path in find_files(root, RULES_SUFFIX):
        relative = path.relative_to(root)
        shown = str(Path(directory) / relative)
        text, read_problems = read_source(path, shown)
        problems.extend(read_problems)
        if text is not None:
            rules.append(SourceText(shown, text, relative.as_posix()))
    counters = _read_optional(root, directory, COUNTERS_FILE, problems)
    lists = _read_optional(root, directory, LISTS_FILE, problems)
    rates = _read_optional(root, directory, RATES_FILE, problems)
    if problems:
        raise SourceError(problems)
    context = tuple(t for t in (counters, lists, rates) if t is not None)
    return DirectoryTexts(str(directory), tuple(rules), counters, lists, _hash((*rules, *context)), rates)


def stat_signature(directory: str | Path) -> tuple[tuple[str, int, int, int, int], ...]:
    """What `os.stat` says of the files `read_directory` reads: cheap to compare between polls.

    (relative path, size, mtime ns, ctime ns, inode) per file; a file added,
    removed, replaced or written changes it. Unreadable or missing: left out.
    """
    root = Path(directory)
    if not root.is_dir():
        return ()
    paths = [*find_files(root, RULES_SUFFIX), root / COUNTERS_FILE, root / LISTS_FILE, root / RATES_FILE]
    out = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        out.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))
    return tuple(out)


def _load_lists(root: Path, expected: SourceText | None, problems: list[SourceProblem]) -> dict[str, ListSpec]:
    if expected is None:
        return {}
    try:
        specs = load_lists(root)
    except SourceError as exc:
        problems.extend(_renamed(exc.problems, expected.shown))
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(SourceProblem(expected.shown, 0, f"cannot read the file: {exc}"))
        return {}
    # service.riskdata.lists reads the file itself: make sure it read what was hashed.
    again, _ = read_source(root / LISTS_FILE, expected.shown)
    if again != expected.text:
        raise ContentChanged([SourceProblem(expected.shown, 0, "the file changed while it was being loaded")])
    return specs


def _renamed(problems: Sequence[SourceProblem], shown: str) -> list[SourceProblem]:
    """Problems of lists.yaml named as the directory was given (service.riskdata.lists names it by its path)."""
    return [SourceProblem(shown, p.line, p.problem) for p in problems]


def load_texts(texts: DirectoryTexts, *, extra_counters: Iterable[str] = ()) -> RulesDirectory:
    """Check and load read texts; raises SourceError with every problem as `file:line: problem`.

    counters.yaml and lists.yaml are checked first, with the counters' `where`
    filters; the rule files only when both are valid (rules are checked
    against them, and would otherwise report every counter and list they
    name as unknown). `extra_counters`: counter names to accept besides the
    declared ones, on every event kind (for rules written before their counter).
    """
    problems: list[SourceProblem] = []
    spec = CounterSpec((), (), COUNTERS_FILE)
    filters = CounterFilters({})
    if texts.counters is not None:
        try:
            spec = parse_counters(texts.counters.text, texts.counters.shown)
            filters = compile_filters(spec)
        except SourceError as exc:
            problems.extend(exc.problems)
    lists = _load_lists(Path(texts.directory), texts.lists, problems)
    rates = CNY_ONLY
    if texts.rates is not None:
        try:
            rates = parse_rates(texts.rates.text, texts.rates.shown)
        except SourceError as exc:
            problems.extend(exc.problems)
    if problems:
        problems.append(
            SourceProblem(
                texts.directory, 0, "the rule files are checked once counters.yaml, lists.yaml and rates.yaml are valid"
            )
        )
        raise SourceError(problems)
    if not texts.rules:
        raise SourceError([SourceProblem(texts.directory, 0, f"no rule files (*{RULES_SUFFIX}) in this directory")])
    counters = counters_of(spec)
    for name in extra_counters:
        counters.setdefault(name, CounterInfo(name))
    ruleset = load_sources(texts.rules, counters=counters, lists=lists, also_hashed=texts.context)
    return RulesDirectory(texts.directory, texts.content_hash, ruleset, spec, filters, lists, rates)


def load_directory(directory: str | Path, *, extra_counters: Iterable[str] = ()) -> RulesDirectory:
    """Read, check and load a rules directory; raises SourceError with every problem."""
    attempts = _LOAD_ATTEMPTS
    while True:
        try:
            return load_texts(read_directory(directory), extra_counters=extra_counters)
        except ContentChanged:
            attempts -= 1
            if attempts == 0:
                raise
