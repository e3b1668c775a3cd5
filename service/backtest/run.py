"""A backtest: recorded history replayed through a baseline and a candidate rules directory.

For each ruleset, every event of the history is given what the service would have given it
under that directory: its facts as recorded (a transfer in another currency converted again at
the directory's `rates.yaml`), its counters recomputed as of the event from the directory's
counter file (`service.backtest.replay`), its list hits as recorded, and the rules of the
directory evaluated by the same durable_rules adapter that serves (`CompiledRuleset.fired`).
Rules the service's breaker had demoted for that decision (the log's `demoted`) run as shadow.

Order and warm-up. The whole history is replayed in the order the service made its decisions;
only events whose `occurred_at` lies in [since, until) are evaluated and compared, the ones
before warm the counters' windows. `History.short` says when the history starts too late for
the longest window the rules read.

Outcomes feed back into counters: a BLOCKed opening or transfer takes back its increments of
active counts (`decrement_on`, `undo_on_block`). Each ruleset is therefore replayed with its
own blocks: first with the recorded ones, then again while its blocks differ (events whose
counter values changed are evaluated again), at most `_MAX_ROUNDS` times.

List membership. The log records the hits of the checks the serving rules made, as of the
decision (`list_hits`). A candidate check the served rules did not make has no record: it is
taken as a miss and counted in `Outcomes.unobserved_checks`, per check.
"""

from __future__ import annotations

import contextlib
import enum
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from service.backtest.events import KINDS, Column, Events
from service.backtest.replay import CounterReplay, Replayed
from service.backtest.vector import Columns, UnsupportedCondition, VectorRuleset
from service.domain import EventKind, Outcome
from service.errors import ValidationError
from service.pipeline.money import CNY
from service.pipeline.outcome import UNAVAILABLE_RULE_ID
from service.rules.directory import load_directory
from service.rules.model import Rule
from service.rules.reload import ActiveRules, build

_MAX_ROUNDS = 5
_OUTCOMES = {o.label: o for o in Outcome}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one ruleset decided for one event: its outcome and fired rules (shadow ones as ~ID)."""

    outcome: Outcome
    rules: tuple[str, ...]


class _Verdicts:
    """Distinct verdicts, numbered in the order first met: a batch has few."""

    def __init__(self) -> None:
        self._codes: dict[Verdict, int] = {}

    def code(self, verdict: Verdict) -> int:
        return self._codes.setdefault(verdict, len(self._codes))

    @property
    def distinct(self) -> tuple[Verdict, ...]:
        return tuple(self._codes)


@dataclass(slots=True)
class Outcomes:
    """One ruleset's verdicts over the evaluated events, and what the replay noticed."""

    codes: np.ndarray  # per evaluated event, its verdict: an index into `distinct`
    distinct: tuple[Verdict, ...]
    values: Replayed  # counters of every event
    rounds: int = 1  # replays until its blocks and its counters agreed
    approximate: int = 0  # events whose distinct() values are HyperLogLog online
    unobserved_checks: dict[str, int] = field(default_factory=dict)  # "list:field" -> events
    engine: str = "durable"

    @property
    def verdicts(self) -> list[Verdict]:
        """The verdict of each evaluated event."""
        return [self.distinct[code] for code in self.codes.tolist()]


class Engine(enum.StrEnum):
    """How a backtest evaluates rules: NumPy over columns of events (`service.backtest.vector`,
    which fires exactly what durable_rules fires), or durable_rules event by event."""

    VECTOR = "vector"
    DURABLE = "durable"


class Ruleset:
    """A rules directory loaded and compiled for a backtest (close it: it holds durable rulesets).

    With `engine` VECTOR, the rules are also compiled for columns; a rule the vectorised evaluator
    cannot compute exactly (`UnsupportedCondition`) makes the whole ruleset run on durable_rules,
    and `engine_note` says why."""

    def __init__(self, directory: str | Path, engine: Engine = Engine.VECTOR) -> None:
        self.directory = str(directory)
        loaded = load_directory(directory)
        self.active: ActiveRules = build(loaded)
        self.revision = self.active.revision
        self.rules = self.active.ruleset.rules
        counters = Path(directory) / "counters.yaml"
        self.counters_text = counters.read_bytes() if counters.exists() else b""
        rates = Path(directory) / "rates.yaml"
        self.rates_text = rates.read_bytes() if rates.exists() else b""
        self.vector: VectorRuleset | None = None
        self.engine_note = ""
        if engine is Engine.VECTOR:
            try:
                self.vector = VectorRuleset(loaded.ruleset)
            except UnsupportedCondition as error:
                self.engine_note = f"evaluated by durable_rules: {error}"
        self.engine = Engine.VECTOR if self.vector is not None else Engine.DURABLE

    def close(self) -> None:
        if self.vector is not None:
            self.vector.close()
        self.active.ruleset.close()

    def __enter__(self) -> Ruleset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def evaluate(
    ruleset: Ruleset,
    events: Events,
    selected: np.ndarray,
    *,
    fail_outcome: Outcome,
    observed_checks: frozenset[tuple[str, str]] | None = None,
    replay: CounterReplay | None = None,
    reconvert: bool = False,
) -> Outcomes:
    """`ruleset`'s verdicts for the events `selected` (indices into `events`), its counters
    recomputed from all of `events` with its own blocks. `observed_checks`: the list checks the
    log has hits for (default: the ruleset's own); `replay`: one made for the same counter file
    and facts; `reconvert`: amounts in other currencies converted again at `ruleset`'s rates (a
    candidate with other rates than the baseline; else the recorded CNY amounts), for its rules
    and its counters alike."""
    active = ruleset.active
    facts = _facts_at_rates(ruleset, events) if reconvert else events.facts
    if replay is None:
        replay = CounterReplay(active.counter_spec, active.where, events, facts)
    retracting = replay.retracting()
    blocked = events.outcome == int(Outcome.BLOCK)
    unobserved: Tally[str] = Tally()
    checks = {kind: sorted(active.list_checks_for(kind)) for kind in EventKind}
    observed = observed_checks if observed_checks is not None else active.ruleset.list_checks
    distinct = _Verdicts()
    verdicts: dict[int, Verdict] = {}  # durable_rules: by event index
    codes = np.zeros(len(selected), dtype=np.int64)
    values = replay.run(blocked)
    todo = [int(i) for i in selected]
    rounds = 0
    while True:
        rounds += 1
        tally = unobserved if rounds == 1 else Tally[str]()  # each event's checks counted once
        if ruleset.vector is not None:
            # Every selected event again: on columns that costs less than finding the changed ones.
            codes = _vector_verdicts(
                ruleset.vector, ruleset, events, selected, facts, values, observed, fail_outcome, tally, distinct
            )
        else:
            for index in todo:
                verdicts[index] = _verdict(ruleset, events, index, values, checks, observed, fail_outcome, tally, facts)
            codes = np.array([distinct.code(verdicts[i]) for i in selected.tolist()], dtype=np.int64)
        if rounds >= _MAX_ROUNDS or not retracting.any():
            break
        now_blocked = blocked.copy()
        blocks = np.array([v.outcome is Outcome.BLOCK for v in distinct.distinct], dtype=bool)
        now_blocked[selected] = blocks[codes]
        if np.array_equal(now_blocked & retracting, blocked & retracting):
            break
        blocked = now_blocked
        again = replay.run(blocked)
        moved = _moved(values, again)[selected]
        todo = [int(i) for i in selected[moved]]
        values = again
        if not todo:
            break
    return Outcomes(
        codes=codes,
        distinct=distinct.distinct,
        values=values,
        rounds=rounds,
        approximate=values.approximate,
        unobserved_checks=dict(unobserved) if observed_checks is not None else {},
        engine=ruleset.engine,
    )


def _facts_at_rates(ruleset: Ruleset, events: Events) -> Mapping[str, Column]:
    """The facts columns, with transfers in another currency converted at `ruleset`'s rates."""
    facts = events.facts
    currency = facts.get("transfer.currency")
    original = facts.get("transfer.original_amount_fen")
    amount = facts.get("transfer.amount_fen")
    if currency is None or original is None or amount is None:
        return facts
    foreign = np.flatnonzero(currency.present & (currency.values != CNY) & original.present)
    if not len(foreign):
        return facts
    values = amount.values.copy()
    rates = ruleset.active.rates
    for index in foreign.tolist():
        with contextlib.suppress(ValidationError):  # no rate for it in these rules: as recorded
            values[index] = rates.cny_fen(int(original.values[index]), str(currency.values[index]))
    return events.facts.replacing("transfer.amount_fen", Column(values, amount.present))


def _vector_verdicts(
    vector: VectorRuleset,
    ruleset: Ruleset,
    events: Events,
    selected: np.ndarray,
    facts: Mapping[str, Column],
    values: Replayed,
    observed: frozenset[tuple[str, str]],
    fail_outcome: Outcome,
    unobserved: Tally[str],
    distinct: _Verdicts,
) -> np.ndarray:
    """The verdicts of the events `selected` (codes into `distinct`), the rules evaluated over
    columns, a kind at a time."""
    out = np.full(len(selected), -1, dtype=np.int64)
    usable = ~events.degraded  # a degraded decision read no counters and no lists
    counters = {name: Column(c.values, c.present & usable) for name, c in values.columns.items()}
    rules = ruleset.active.ruleset.rules
    demoted = events.demoted
    kinds = events.kind[selected]
    for kind_index, kind in enumerate(KINDS):
        positions = np.flatnonzero(kinds == kind_index)
        if not len(positions):
            continue
        rows = selected[positions]
        hits: dict[tuple[str, str], Column] = {}
        for check in sorted(vector.list_checks_for(kind)):
            name, field_name = check
            source = events.facts.get(field_name) or events.hashes.get(field_name)
            if source is None:
                continue
            present = source.present & usable
            key = f"{name}:{field_name}"
            hits[check] = Column(events.list_hit(key), present)
            if check not in observed:
                seen = int(present[rows].sum())
                if seen:
                    unobserved[key] += seen
        columns = Columns.from_arrays(kind, len(rows), facts=facts, counters=counters, list_hits=hits, index=rows)
        fired, sets = vector.evaluate(kind, columns).combos()
        # One verdict per distinct (fired rules, demoted rules, degraded) of the batch.
        variants = len(demoted.distinct)
        combination = (fired.astype(np.int64) * variants + demoted.codes[rows]) * 2 + events.degraded[rows]
        unique, inverse = np.unique(combination, return_inverse=True)
        found = np.array(
            [
                distinct.code(
                    _verdict_of(
                        rules, sets[c // 2 // variants], demoted.distinct[c // 2 % variants], c % 2 == 1, fail_outcome
                    )
                )
                for c in unique.tolist()
            ],
            dtype=np.int64,
        )
        out[positions] = found[inverse.reshape(-1)]
    assert (out >= 0).all()
    return out


def _verdict_of(
    rules: Mapping[str, Rule], fired: Iterable[str], demoted: frozenset[str], degraded: bool, fail_outcome: Outcome
) -> Verdict:
    """The outcome of the rules that fired (demoted ones as shadow) and their ids, as the log shows them."""
    outcome = Outcome.ALLOW
    shown: list[tuple[int, int, str, str]] = []
    for rule_id in fired:
        rule = rules[rule_id]
        shadow = rule.shadow or rule_id in demoted
        if not shadow and rule.outcome > outcome:
            outcome = rule.outcome
        shown.append((-int(rule.outcome), rule.priority, rule_id, ("~" if shadow else "") + rule_id))
    if degraded:
        outcome = max(outcome, fail_outcome)
        shown.append((-int(fail_outcome), 0, UNAVAILABLE_RULE_ID, UNAVAILABLE_RULE_ID))
    shown.sort()
    return Verdict(outcome, tuple(name for *_, name in shown))


def _has(events: Events, name: str, index: int) -> bool:
    """Whether a list check's field has a value, as the service looked it up: an identifier's
    hash, or a text fact (absent: the check is absent, not a miss)."""
    column = events.facts.get(name) or events.hashes.get(name)
    return column is not None and bool(column.present[index])


def _moved(before: Replayed, after: Replayed) -> np.ndarray:
    """The events given another counter value by `after` than by `before`."""
    moved = np.zeros(len(next(iter(before.columns.values())).present) if before.columns else 0, dtype=bool)
    for name, column in before.columns.items():
        moved |= column.present & (column.values != after.columns[name].values)
    return moved


def _verdict(
    ruleset: Ruleset,
    events: Events,
    index: int,
    values: Replayed,
    checks: Mapping[EventKind, Sequence[tuple[str, str]]],
    observed: frozenset[tuple[str, str]],
    fail_outcome: Outcome,
    unobserved: Tally[str],
    facts_in_use: Mapping[str, Column],
) -> Verdict:
    kind = KINDS[events.kind[index]]
    degraded = bool(events.degraded[index])
    facts = events.fact_row(index)
    converted = facts_in_use.get("transfer.amount_fen")
    if converted is not None and converted is not events.facts.get("transfer.amount_fen") and converted.present[index]:
        facts["transfer.amount_fen"] = int(converted.values[index])  # at these rules' rates
    hits: dict[tuple[str, str], bool] = {}
    if not degraded:
        for check in checks[kind]:
            name, field_name = check
            if not _has(events, field_name, index):
                continue
            if check not in observed:
                unobserved[f"{name}:{field_name}"] += 1
            hits[check] = bool(events.list_hit(f"{name}:{field_name}")[index])
    fired = ruleset.active.ruleset.fired(facts, {} if degraded else values.value_row(index), hits)
    demoted = events.demoted.distinct[events.demoted.codes[index]]
    return _verdict_of(ruleset.active.ruleset.rules, fired, demoted, degraded, fail_outcome)


@dataclass(frozen=True, slots=True)
class History:
    """The history a backtest read, and how far back its counters could see."""

    events: Events
    selected: np.ndarray  # indices of the events in [since, until)
    since: datetime | None
    until: datetime | None
    longest_window: timedelta
    first: datetime | None
    short: str  # why the history is too short for the windows, or ""


def _moment(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def select(events: Events, since: datetime | None, until: datetime | None, *rulesets: Ruleset) -> History:
    keep = np.ones(events.n, dtype=bool)
    if since is not None:
        keep &= events.occurred_us >= int(since.timestamp() * 1_000_000)
    if until is not None:
        keep &= events.occurred_us < int(until.timestamp() * 1_000_000)
    selected = np.flatnonzero(keep).astype(np.int64)
    longest = max(
        (
            w.seconds
            for r in rulesets
            for c in r.active.counter_spec.counters
            for w in c.windows
            if not w.all_time and c.aggregate.value != "idle_days"
        ),
        default=0,
    )
    first = _moment(int(events.occurred_us.min())) if events.n else None
    short = ""
    if first is not None and since is not None and since - first < timedelta(seconds=longest):
        short = (
            f"the history starts {first.isoformat(timespec='seconds')}, less than the longest window"
            f" ({timedelta(seconds=longest)}) before the first event compared: counters of events until"
            f" {(first + timedelta(seconds=longest)).isoformat(timespec='seconds')} miss what came before"
            " (and all-time counters miss everything before the history)"
        )
    return History(events, selected, since, until, timedelta(seconds=longest), first, short)
