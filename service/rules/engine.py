"""The adapter to durable_rules: the only module that imports it.

How it is used, and why (measured; see /work/shared/DURABLE_RULES.md):

* The C extension `durable_rules_engine` directly, never `durable.lang.Host`
  (its timer threads steal pending firings).
* Each request is asserted as a *fact* (every matching rule fires once; an
  event would be consumed by the first), under one constant sid per durable
  ruleset. The pending actions are drained (`start_action_for_state`, then
  `complete_and_start_action` until none), their rule names recorded, and
  the fact retracted. Return code 1 from `assert_fact` means nothing
  matched. If anything fails mid-drain, the action is abandoned and the
  queue drained again before retracting: retracting with an abandoned
  action still queued crashes the process on the next request.
* All durable calls of the process run under one lock (`_LOCK`): the C
  calls interleave between threads and give wrong answers otherwise.
  Threads add no throughput; scale with processes, and build rulesets
  after a fork, never before.
* Rulesets get versioned names, so a new one is built beside the serving one
  and swapped in (`Live.swap`); the old handles are deleted once the
  requests still using them finish. `delete_state` is never called.

The message sent to durable holds only what the ruleset reads for the
event's kind, under mangled names (compiler.py): numbers as doubles, strings
JSON-escaped, yes/no fields and list hits as booleans, and for string fields
that a pattern reads, a copy in which quotes, backslashes and control
characters are replaced by U+FFFD (durable's patterns see JSON escapes
otherwise, so `.` would not match a quote).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import durable_rules_engine

from service.domain import EventKind, Outcome, Reason
from service.errors import EvaluationError, SourceError, SourceProblem
from service.pipeline.facts import FieldType, Scalar
from service.pipeline.money import CNY
from service.pipeline.outcome import order_reasons, outcome_of
from service.riskdata.lists import ListSpec
from service.rules.compiler import CompiledPlan, KindInputs, compile_ruleset, number_text
from service.rules.loader import load_rules
from service.rules.model import (
    CounterInfo,
    CounterRef,
    FieldRef,
    Rule,
    RuleSet,
    format_value,
)
from service.rules.templates import AMOUNT, CURRENCY, ORIGINAL_AMOUNT, render

_LOCK = threading.Lock()
_GENERATIONS = itertools.count(1)
_SID = "0"
_FACT_ID = "1"
_HEADER = f'"sid":"{_SID}","id":"{_FACT_ID}"'
_EXACT_INT = 2**53
_MAX_STRING_BYTES = 65_535
# What JSON escapes: plain strings without these are written as they are, and in the
# copy patterns read they become U+FFFD (which no rule constant may contain).
_JSON_ESCAPED = re.compile(r'[\x00-\x1f"\\]')
_DURABLE_CODES = {
    501: "the pattern cannot be parsed",
    503: "the pattern is too complex (more than 4,096 states)",
    106: "too many rules in one ruleset",
    303: "too many condition tests at once",
}

ListHits = Mapping[tuple[str, str], bool]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one request matched, and under which ruleset revision."""

    revision: str
    reasons: tuple[Reason, ...]

    @property
    def outcome(self) -> Outcome:
        return outcome_of(self.reasons)


def _encode_number(name: str, value: object) -> str:
    if type(value) is int:
        if -_EXACT_INT <= value <= _EXACT_INT:
            return f"{value}.0"
        try:
            return number_text(float(value))
        except OverflowError:
            raise EvaluationError(f"{name}: {value} is too large for a double") from None
    if type(value) is float:
        if not math.isfinite(value):
            raise EvaluationError(f"{name}: {value} is not a finite number")
        return number_text(value)
    raise EvaluationError(f"{name}: expected a number, got {type(value).__name__}")


def _check_string(name: str, value: object) -> str:
    if type(value) is not str:
        raise EvaluationError(f"{name}: expected a string, got {type(value).__name__}")
    if not value.isascii():
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise EvaluationError(f"{name}: the string is not valid Unicode") from None
        if size > _MAX_STRING_BYTES:
            raise EvaluationError(f"{name}: the string is longer than {_MAX_STRING_BYTES} bytes")
    elif len(value) > _MAX_STRING_BYTES:
        raise EvaluationError(f"{name}: the string is longer than {_MAX_STRING_BYTES} bytes")
    return value


def _pattern_text(name: str, value: object) -> str:
    text = _check_string(name, value)
    return '"' + _JSON_ESCAPED.sub("\ufffd", text) + '"'


_NUMBER, _BOOL, _STRING, _PATTERN = 0, 1, 2, 3
_CODES = {FieldType.NUMBER: _NUMBER, FieldType.BOOL: _BOOL, FieldType.STRING: _STRING}


@dataclass(frozen=True, slots=True)
class _Layout:
    """The message for one event kind, precomputed: (input name, '"key":' prefix, encoding)."""

    facts: tuple[tuple[str, str, int], ...]
    counters: tuple[tuple[str, str], ...]
    lists: tuple[tuple[tuple[str, str], str], ...]

    @classmethod
    def of(cls, inputs: KindInputs) -> _Layout:
        facts = [(name, f'"{key}":', _CODES[ftype]) for name, key, ftype in inputs.fields]
        facts += [(name, f'"{key}":', _PATTERN) for name, key in inputs.patterns]
        return cls(
            facts=tuple(facts),
            counters=tuple((name, f'"{key}":') for name, key in inputs.counters),
            lists=tuple(((c.list_name, c.field), f'"{key}":') for c, key in inputs.lists),
        )


_FROM_FACTS, _FROM_COUNTERS, _FROM_LISTS, _FROM_CONFIDENTIAL = 0, 1, 2, 3


def confidential_evidence(field: str) -> str:
    """The evidence name of a rule's look-ups of `field` in confidential lists, merged: which list
    (a police warning, a vulnerable-person flag) is never shown, only whether any of them hit."""
    return f"{field} in a confidential list"


@dataclass(frozen=True, slots=True)
class _ReasonPlan:
    """A rule's evidence sources, and its reason texts when they have no placeholder."""

    reads: tuple[tuple[int, str, tuple[str, str]], ...]
    static_zh: str | None
    static_en: str | None
    reads_amount: bool = False  # a transfer in another currency adds its currency and own amount

    @classmethod
    def of(cls, rule: Rule, confidential: frozenset[str] = frozenset()) -> _ReasonPlan:
        reads: list[tuple[int, str, tuple[str, str]]] = []
        for read in rule.reads:
            if isinstance(read, FieldRef):
                reads.append((_FROM_FACTS, read.name, ("", "")))
            elif isinstance(read, CounterRef):
                reads.append((_FROM_COUNTERS, read.name, ("", "")))
            elif read.list_name in confidential:
                reads.append((_FROM_CONFIDENTIAL, confidential_evidence(read.field), (read.list_name, read.field)))
            else:
                reads.append((_FROM_LISTS, str(read), (read.list_name, read.field)))
        zh = rule.reason_zh.source if not rule.reason_zh.placeholders else None
        en = rule.reason_en.source if not rule.reason_en.placeholders else None
        # A text without placeholders may still hold {{ or }}: render it once.
        return cls(
            tuple(reads),
            render(rule.reason_zh, {}, "zh") if zh is not None else None,
            render(rule.reason_en, {}, "en") if en is not None else None,
            any(source == _FROM_FACTS and name == AMOUNT for source, name, _ in reads),
        )


class _Shard:
    """One durable ruleset: its handle and the JSON it was created from."""

    __slots__ = ("definition", "handle", "index", "name", "rule_ids")

    def __init__(self, index: int, definition: str, rule_ids: tuple[str, ...]) -> None:
        self.index = index
        self.definition = definition
        self.rule_ids = rule_ids
        self.name = ""
        self.handle: int = 0

    def create(self) -> None:
        self.name = f"riskgate_{next(_GENERATIONS)}_{self.index}"
        self.handle = durable_rules_engine.create_ruleset(self.name, self.definition)


class CompiledRuleset:
    """A ruleset compiled into durable rulesets, ready to evaluate requests.

    Build it with `build_ruleset(plan)` or `load_compiled(directory, ...)`.
    `evaluate` is thread-safe (one process-wide lock); `close` deletes the
    durable rulesets, after which `evaluate` raises.
    """

    def __init__(self, plan: CompiledPlan) -> None:
        self.plan = plan
        self.ruleset: RuleSet = plan.ruleset
        self.revision: str = plan.ruleset.revision
        self.rules: Mapping[str, Rule] = {r.id: r for r in plan.ruleset.enabled_rules}
        reads = [read for rule in self.rules.values() for read in rule.reads]
        self.counters_used: frozenset[str] = frozenset(r.name for r in reads if isinstance(r, CounterRef))
        self.fields_used: frozenset[str] = frozenset(r.name for r in reads if isinstance(r, FieldRef))
        self.list_checks: frozenset[tuple[str, str]] = frozenset(
            (check.list_name, check.field) for inputs in plan.inputs.values() for check, _ in inputs.lists
        )
        self._layouts = {kind: _Layout.of(inputs) for kind, inputs in plan.inputs.items()}
        confidential = frozenset(name for name, spec in plan.ruleset.lists.items() if spec.confidential)
        self._reason_plans = {rule.id: _ReasonPlan.of(rule, confidential) for rule in self.rules.values()}
        self._shards = [_Shard(s.index, s.definition, s.rule_ids) for s in plan.shards]
        self._closed = False
        self._retired = False
        self._leases = 0
        with _LOCK:
            self._create_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def compiled(self) -> CompiledRuleset:
        """Itself: a compiled ruleset can be served by `Live` on its own."""
        return self

    def __enter__(self) -> CompiledRuleset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    def list_checks_for(self, kind: EventKind) -> frozenset[tuple[str, str]]:
        """The (list, field) lookups the rules on `kind` read."""
        return frozenset((c.list_name, c.field) for c, _ in self.plan.inputs[kind].lists)

    def counters_for(self, kind: EventKind) -> frozenset[str]:
        return frozenset(name for name, _ in self.plan.inputs[kind].counters)

    # ------------------------------------------------------------ build

    def _create_all(self) -> None:
        created: list[_Shard] = []
        try:
            for shard in self._shards:
                shard.create()
                created.append(shard)
        except durable_rules_engine.error as exc:
            for shard in created:
                durable_rules_engine.delete_ruleset(shard.handle)
            self._closed = True
            raise SourceError(self._locate_failure(exc)) from None

    def _locate_failure(self, exc: Exception) -> list[SourceProblem]:
        """Find which rule durable refused, by creating each alone (failure path only)."""
        code = _error_code(exc)
        explanation = _DURABLE_CODES.get(code, "see durable_rules' error codes")
        problems = []
        for rule in self.rules.values():
            definition = "{" + f'"{rule.id}":{self.plan.rule_json[rule.id]}' + "}"
            try:
                handle = durable_rules_engine.create_ruleset(f"riskgate_probe_{next(_GENERATIONS)}", definition)
            except durable_rules_engine.error as rule_exc:
                rule_code = _error_code(rule_exc)
                problems.append(
                    SourceProblem(
                        rule.file,
                        rule.line,
                        f"durable_rules rejected rule '{rule.id}' (error {rule_code}: "
                        f"{_DURABLE_CODES.get(rule_code, 'see its error codes')})",
                    )
                )
            else:
                durable_rules_engine.delete_ruleset(handle)
        if not problems:
            first = self.ruleset.rules[0] if self.ruleset.rules else None
            file, line = (first.file, first.line) if first else ("<rules>", 0)
            problems.append(
                SourceProblem(file, line, f"durable_rules rejected the ruleset (error {code}: {explanation})")
            )
        return problems

    # --------------------------------------------------------- evaluate

    def evaluate(
        self,
        facts: Mapping[str, Scalar],
        counters: Mapping[str, int | float],
        list_hits: ListHits,
    ) -> tuple[Reason, ...]:
        """Every rule that matches, as reasons sorted by severity, priority and id.

        `facts` are `service.pipeline.facts.facts(request)` (the event kind under
        "event"); `counters` the declared counters' values; `list_hits`
        maps (list, field) to whether the field's value is on the list, for
        each of `list_checks` whose field the request has. A value missing
        from these mappings is absent: every test on it is false.
        """
        kind = _kind_of(facts)
        message = self._message(kind, facts, counters, list_hits)
        with _LOCK:
            fired = self._fire_locked(kind, message)
        if not fired:
            return ()
        return order_reasons(self._reason(self.rules[rule_id], facts, counters, list_hits) for rule_id in fired)

    def fired(
        self,
        facts: Mapping[str, Scalar],
        counters: Mapping[str, int | float],
        list_hits: ListHits,
    ) -> frozenset[str]:
        """The ids of the rules that match, as `evaluate` finds them, without building their
        reasons (for replays, which need only which rules fired)."""
        kind = _kind_of(facts)
        message = self._message(kind, facts, counters, list_hits)
        with _LOCK:
            return frozenset(self._fire_locked(kind, message))

    def _message(
        self, kind: EventKind, facts: Mapping[str, Scalar], counters: Mapping[str, int | float], list_hits: ListHits
    ) -> str:
        layout = self._layouts[kind]
        parts = [_HEADER]
        append = parts.append
        for name, prefix, code in layout.facts:
            value = facts.get(name)
            if value is None:
                continue
            if code == _NUMBER:
                if type(value) is int and -_EXACT_INT <= value <= _EXACT_INT:
                    append(f"{prefix}{value}.0")
                else:
                    append(prefix + _encode_number(name, value))
            elif code == _BOOL:
                if value is True:
                    append(prefix + "true")
                elif value is False:
                    append(prefix + "false")
                else:
                    raise EvaluationError(f"{name}: expected true or false, got {type(value).__name__}")
            elif code == _STRING:
                if type(value) is str and len(value) < 1024 and value.isascii() and not _JSON_ESCAPED.search(value):
                    append(f'{prefix}"{value}"')
                else:
                    append(prefix + json.dumps(_check_string(name, value), ensure_ascii=False))
            else:
                append(prefix + _pattern_text(name, value))
        for name, prefix in layout.counters:
            count = counters.get(name)
            if count is not None:
                if type(count) is int and -_EXACT_INT <= count <= _EXACT_INT:
                    append(f"{prefix}{count}.0")
                else:
                    append(prefix + _encode_number(f"counter {name}", count))
        for check, prefix in layout.lists:
            hit = list_hits.get(check)
            if hit is True:
                append(prefix + "true")
            elif hit is False:
                append(prefix + "false")
            elif hit is not None:
                raise EvaluationError(
                    f"{check[1]} in list.{check[0]}: expected true or false, got {type(hit).__name__}"
                )
        return "{" + ",".join(parts) + "}"

    def _fire_locked(self, kind: EventKind, message: str) -> set[str]:
        """The ids of the rules `message` fires, over every shard with rules for `kind` (lock held)."""
        if self._closed:
            raise EvaluationError(f"ruleset {self.revision} is closed")
        fired: set[str] = set()
        for index in self.plan.inputs[kind].shards:
            self._run(self._shards[index], message, fired)
        return fired

    def _run(self, shard: _Shard, message: str, fired: set[str]) -> None:
        handle = shard.handle
        try:
            code, state = durable_rules_engine.assert_fact(handle, message)
        except durable_rules_engine.error as exc:
            # Not expected (the compiler keeps every shard inside durable's limits), and
            # what it left behind is unknown: serve this shard from a fresh ruleset.
            shard.create()
            raise EvaluationError(f"durable_rules refused the request: {exc}") from None
        if code == 1:  # no rule matched: nothing was stored
            return
        if code != 0:
            # 2: the same fact is already stored, so an earlier retract failed.
            self._recover(shard, message, None)
            code, state = durable_rules_engine.assert_fact(shard.handle, message)
            if code == 1:
                return
            if code != 0:
                raise EvaluationError(f"durable_rules refused the request (code {code})")
            handle = shard.handle
        try:
            result = durable_rules_engine.start_action_for_state(handle, state)
            action: str | None = result[1] if result else None
            while action:
                # '{"<rule id>":{"m":{...}}}': rule ids are [A-Za-z0-9_]+, so no escaping.
                fired.add(action[2 : action.index('"', 2)])
                action = durable_rules_engine.complete_and_start_action(handle, state)
        except BaseException:
            self._recover(shard, message, state)
            raise
        durable_rules_engine.retract_fact(handle, message)

    def _recover(self, shard: _Shard, message: str, state: int | None) -> None:
        """Leave the shard clean after a failure: abandon, drain, retract; else replace it."""
        try:
            if state is not None:
                durable_rules_engine.abandon_action(shard.handle, state)
                result = durable_rules_engine.start_action_for_state(shard.handle, state)
                while result:
                    result = durable_rules_engine.complete_and_start_action(shard.handle, state)
            durable_rules_engine.retract_fact(shard.handle, message)
        except Exception:  # noqa: BLE001 - whatever failed, the state is now unknown
            # Never touch that handle again (not even to delete it: it may still be
            # leased); serve from a fresh durable ruleset built from the same JSON.
            shard.create()

    def _reason(
        self, rule: Rule, facts: Mapping[str, Scalar], counters: Mapping[str, int | float], list_hits: ListHits
    ) -> Reason:
        plan = self._reason_plans[rule.id]
        evidence: list[tuple[str, str]] = []
        values: dict[str, object] = {}
        merged: dict[str, int] = {}  # confidential look-ups: evidence name -> its place in `evidence`
        for source, name, check in plan.reads:
            if source in (_FROM_LISTS, _FROM_CONFIDENTIAL):
                hit = list_hits.get(check)
                if hit is None:
                    continue
                if source == _FROM_LISTS:
                    evidence.append((name, "hit" if hit else "miss"))
                elif name not in merged:
                    merged[name] = len(evidence)
                    evidence.append((name, "hit" if hit else "miss"))
                elif hit:
                    evidence[merged[name]] = (name, "hit")  # any of them hit; never which
                continue
            value: object = (facts if source == _FROM_FACTS else counters).get(name)
            if value is not None:
                values[name] = value
                evidence.append((name, str(value) if type(value) is int else format_value(value)))
        if plan.reads_amount and facts.get(CURRENCY, CNY) != CNY:
            # The amount read is in CNY: say what the transfer was made in (`:money` shows both).
            for name in (CURRENCY, ORIGINAL_AMOUNT):
                if name not in values and name in facts:
                    values[name] = facts[name]
                    evidence.append((name, format_value(facts[name])))
        return Reason(
            rule_id=rule.id,
            outcome=rule.outcome,
            message_zh=plan.static_zh if plan.static_zh is not None else render(rule.reason_zh, values, "zh"),
            message_en=plan.static_en if plan.static_en is not None else render(rule.reason_en, values, "en"),
            evidence=tuple(evidence),
            shadow=rule.shadow,
            priority=rule.priority,
        )

    # ------------------------------------------------------------ close

    def close(self) -> None:
        """Delete the durable rulesets (idempotent). Never while another thread evaluates: it takes the lock."""
        with _LOCK:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        for shard in self._shards:
            durable_rules_engine.delete_ruleset(shard.handle)


def _kind_of(facts: Mapping[str, Scalar]) -> EventKind:
    raw_kind = facts.get("event")
    try:
        return EventKind(raw_kind) if isinstance(raw_kind, str) else EventKind(str(raw_kind))
    except ValueError:
        raise EvaluationError(f"event: {raw_kind!r} is not an event kind") from None


def _error_code(exc: Exception) -> int:
    match = re.search(r"error code: (\d+)", str(exc))
    return int(match.group(1)) if match else -1


def build_ruleset(plan: CompiledPlan) -> CompiledRuleset:
    """Create the durable rulesets for a compiled plan; raises SourceError if durable refuses a rule."""
    return CompiledRuleset(plan)


def load_compiled(
    directory: str | Path,
    *,
    counters: Mapping[str, CounterInfo],
    lists: Mapping[str, ListSpec],
) -> CompiledRuleset:
    """Load, validate, compile and build the rules under `directory`; raises SourceError."""
    return build_ruleset(compile_ruleset(load_rules(directory, counters=counters, lists=lists)))


class Serving(Protocol):
    """What `Live` serves: a compiled ruleset, possibly with what goes with it (service.rules.reload)."""

    @property
    def compiled(self) -> CompiledRuleset: ...


S = TypeVar("S", bound=Serving)


class Live(Generic[S]):
    """The serving ruleset (with whatever goes with it), replaceable while requests run (hot reload).

    Requests take a lease (`with live.lease() as serving:`), read what the
    ruleset needs (counters, list checks), and evaluate on that same
    ruleset. `swap` installs a new one built aside; the old one's durable
    rulesets are deleted as soon as its last lease ends.
    """

    def __init__(self, serving: S) -> None:
        self._current = serving
        self._closed = False

    @property
    def current(self) -> S:
        return self._current

    @property
    def closed(self) -> bool:
        return self._closed

    @contextmanager
    def lease(self) -> Iterator[S]:
        with _LOCK:
            serving = self._current
            ruleset = serving.compiled
            ruleset._leases += 1
        try:
            yield serving
        finally:
            with _LOCK:
                ruleset._leases -= 1
                if ruleset._retired and ruleset._leases == 0:
                    ruleset._close_locked()

    def swap(self, new: S) -> S:
        """Serve `new` from now on; returns the old one (its ruleset closed once no lease holds it)."""
        with _LOCK:
            if new.compiled.closed or self._closed:
                raise EvaluationError("cannot serve a closed ruleset")
            old = self._current
            self._current = new
            if new.compiled is not old.compiled:
                _retire_locked(old.compiled)
            return old

    def close(self) -> None:
        """Stop serving: the current ruleset is deleted once its last lease ends (idempotent)."""
        with _LOCK:
            self._closed = True
            _retire_locked(self._current.compiled)


def _retire_locked(ruleset: CompiledRuleset) -> None:
    ruleset._retired = True
    if ruleset._leases == 0:
        ruleset._close_locked()


class LiveRuleset(Live[CompiledRuleset]):
    """A `Live` compiled ruleset on its own: `with live.lease() as ruleset:`, or `live.evaluate(...)`."""

    @property
    def revision(self) -> str:
        return self._current.revision

    def evaluate(
        self,
        facts: Mapping[str, Scalar],
        counters: Mapping[str, int | float],
        list_hits: ListHits,
    ) -> Evaluation:
        with self.lease() as ruleset:
            return Evaluation(ruleset.revision, ruleset.evaluate(facts, counters, list_hits))
