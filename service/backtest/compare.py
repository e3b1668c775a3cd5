"""What a backtest found: agreement with the log, per-rule fires, the outcome changes, labels, the gate.

Pure: it takes the recorded events and the two rulesets' outcomes (`service.backtest.run`) and
returns `Report`, a JSON-ready document that the terminal summary, the JSON output and the HTML
report (`service.backtest.html`) all render. No clear identifier is in it: events are named by
decision id, and "the values that made the difference" are counter values and non-identifier
facts only.
"""

from __future__ import annotations

import json
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.backtest.events import KINDS, Column, Events
from service.backtest.run import History, Outcomes, Ruleset, Verdict
from service.dispositions import disposition_label
from service.domain import Outcome, local_time
from service.errors import InvalidValue
from service.pipeline.facts import FIELDS, FieldType
from service.rules.model import CounterRef, FieldRef

EXAMPLES = 5  # per change class
_ORDER = (Outcome.ALLOW, Outcome.WARN, Outcome.BLOCK)


@dataclass(frozen=True, slots=True)
class Labels:
    """Which events were fraud: from `riskgate synth --labels` (every planted event is fraud and every
    other one is not: `complete`), or from dispositions (only the disposed events are known)."""

    by_request: Mapping[str, bool]
    by_decision: Mapping[str, bool]
    complete: bool
    source: str

    def of(self, decision_id: str, request_id: str) -> bool | None:
        if decision_id in self.by_decision:
            return self.by_decision[decision_id]
        if request_id in self.by_request:
            return self.by_request[request_id]
        return False if self.complete else None


def read_labels(path: str | Path) -> Labels:
    """A labels file: JSON Lines of synth labels ({request_id, pattern, ...}) or dispositions
    ({decision_id, disposition, reported_at?}; the latest line of a decision wins)."""
    by_request: dict[str, bool] = {}
    by_decision: dict[str, bool] = {}
    synth = False
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                if "disposition" in row:
                    label = disposition_label(str(row["disposition"]))
                    decision = str(row["decision_id"])
                    if label is None:
                        by_decision.pop(decision, None)  # the latest says: not known (yet)
                    else:
                        by_decision[decision] = label
                elif "pattern" in row:
                    by_request[str(row["request_id"])] = True
                    synth = True
                else:
                    raise ValueError("neither a disposition nor a synth label")
            except (ValueError, KeyError) as error:  # InvalidValue, an unknown disposition, is a ValueError
                raise InvalidValue(f"{path}:{number}: not a label ({error})") from None
    return Labels(by_request, by_decision, synth and not by_decision, str(path))


def _transition(before: Outcome, after: Outcome) -> str:
    return f"{before.label}→{after.label}"


def _reads(rulesets: Iterable[Ruleset]) -> dict[str, tuple[str, ...]]:
    """Per rule id, the counters and non-identifier fields its condition reads."""
    out: dict[str, tuple[str, ...]] = {}
    for ruleset in rulesets:
        for rule in ruleset.rules.values():
            names = [
                read.name
                for read in rule.reads
                if isinstance(read, CounterRef)
                or (isinstance(read, FieldRef) and FIELDS[read.name].type is not FieldType.IDENTIFIER)
            ]
            out[rule.id] = tuple(dict.fromkeys((*out.get(rule.id, ()), *names)))
    return out


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass(frozen=True, slots=True)
class _Compared:
    """The compared events (`history.selected`) as columns, one entry per event."""

    rows: np.ndarray  # event indices
    revision: np.ndarray  # the revision that decided, a code of `revisions`
    revisions: Column
    outcome: np.ndarray  # the recorded outcome (int8)
    rules: np.ndarray  # the recorded rules, a code of `Events.recorded_rules`
    degraded: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def _compared(history: History) -> _Compared:
    events, rows = history.events, history.selected
    revisions = events.text("revision")
    assert revisions.codes is not None
    return _Compared(
        rows=rows,
        revision=revisions.codes[rows],
        revisions=revisions,
        outcome=events.outcome[rows],
        rules=events.recorded_rules.codes[rows],
        degraded=events.degraded[rows],
    )


def _names(column: Column) -> list[str | None]:
    """A coded column's text by code, with None last (code -1: absent)."""
    return [*column.uniques.tolist(), None]


def _moment(events: Events, index: int) -> datetime:
    return datetime.fromtimestamp(int(events.occurred_us[index]) / 1_000_000, UTC)


def _hours(events: Events, rows: np.ndarray) -> np.ndarray:
    """The local hour of day of the events `rows` (China time: a whole number of hours from UTC,
    so one answer per UTC hour)."""
    hour_us = 3_600_000_000
    buckets, inverse = np.unique(events.occurred_us[rows] // hour_us, return_inverse=True)
    hours = [local_time(datetime.fromtimestamp(int(b) * 3600, UTC)).hour for b in buckets.tolist()]
    return np.asarray(np.array(hours, dtype=np.int64)[inverse.reshape(-1)])


def known_labels(labels: Labels, events: Events, rows: np.ndarray) -> np.ndarray:
    """`labels.of` for the events `rows`, as one array: 1 fraud, 0 not, -1 not known."""
    out = np.full(len(rows), 0 if labels.complete else -1, dtype=np.int8)
    index = pa.array(events.in_table(rows), type=pa.int64())
    for mapping, name in ((labels.by_request, "request_id"), (labels.by_decision, "decision_id")):
        if not mapping:
            continue
        keys = pa.array(list(mapping), type=pa.string())
        flags = np.array([1 if flag else 0 for flag in mapping.values()], dtype=np.int8)
        ids = pc.take(events.table.column(name), index)
        found = pc.index_in(ids, value_set=keys).fill_null(-1).to_numpy(zero_copy_only=False)
        out = np.where(found >= 0, flags[np.maximum(found, 0)], out).astype(np.int8)
    return out


def compare(
    history: History,
    baseline: Ruleset,
    base: Outcomes,
    candidate: Ruleset,
    cand: Outcomes,
    labels: Labels | None = None,
) -> dict[str, Any]:
    """The backtest's report document."""
    seen = _compared(history)
    reads = _reads((baseline, candidate))
    known = known_labels(labels, history.events, seen.rows) if labels is not None else None
    return {
        "history": {
            "events_read": history.events.n,
            "events_compared": len(seen),
            "since": history.since.isoformat() if history.since else None,
            "until": history.until.isoformat() if history.until else None,
            "first_event": history.first.isoformat() if history.first else None,
            "longest_window_seconds": int(history.longest_window.total_seconds()),
            "too_short": history.short,
            "revisions": _most_common(seen.revision, _names(seen.revisions)),
            "degraded": int(seen.degraded.sum()),
        },
        "baseline": _ruleset_summary(baseline, base),
        "candidate": _ruleset_summary(candidate, cand),
        "agreement": _agreement(history, seen, baseline, base),
        "rules": _rules(baseline, base, candidate, cand, known),
        "changes": _changes(history, seen, base, cand, reads),
        "labels": None if labels is None or known is None else _label_summary(labels, known),
    }


def _most_common(codes: np.ndarray, names: Sequence[str | None]) -> dict[str | None, int]:
    """`dict(Counter(values).most_common())` of coded values: by count, ties in order of first appearance."""
    unique, first, counts = np.unique(codes, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    ranked = sorted(((names[int(unique[i])], int(counts[i])) for i in order), key=lambda kv: kv[1], reverse=True)
    return dict(ranked)


def _ruleset_summary(ruleset: Ruleset, outcomes: Outcomes) -> dict[str, Any]:
    counts = np.bincount(outcomes.codes, minlength=len(outcomes.distinct))
    tally: Tally[str] = Tally()
    for verdict, count in zip(outcomes.distinct, counts.tolist(), strict=True):
        tally[verdict.outcome.label] += count
    return {
        "directory": ruleset.directory,
        "revision": ruleset.revision,
        "outcomes": {o.label: tally.get(o.label, 0) for o in _ORDER},
        "replay_rounds": outcomes.rounds,
        "approximate_distinct_events": outcomes.approximate,
        "unobserved_list_checks": outcomes.unobserved_checks,
    }


def _counter_mismatches(history: History, base: Outcomes, rows: np.ndarray) -> np.ndarray:
    """Which of the events `rows` were given other counter values than the service gave them."""
    recorded = history.events.recorded_counter_columns
    replayed = base.values.columns
    count = len(rows)
    # Every event (the usual case): views of the columns, not copies.
    index: np.ndarray | slice = slice(None) if count == history.events.n and (np.diff(rows) == 1).all() else rows
    differ = np.zeros(count, dtype=bool)
    for name in set(recorded) | set(replayed):
        a, b = recorded.get(name), replayed.get(name)
        a_present = a.present[index] if a is not None else np.zeros(count, dtype=bool)
        b_present = b.present[index] if b is not None else np.zeros(count, dtype=bool)
        differ |= a_present != b_present
        if a is not None and b is not None:
            differ |= a_present & b_present & (a.values[index] != b.values[index])
    return differ


def _agreement(history: History, seen: _Compared, baseline: Ruleset, base: Outcomes) -> dict[str, Any]:
    """The baseline against what the service decided, for the events the same revision decided."""
    events = history.events
    code = seen.revisions.code_of(baseline.revision)
    same = np.flatnonzero(seen.revision == code) if code >= 0 else np.zeros(0, dtype=np.int64)
    rows = seen.rows[same][~seen.degraded[same]]
    counter_mismatches = int(_counter_mismatches(history, base, rows).sum()) if len(rows) else 0
    # Whether a verdict matches the record, once per distinct (verdict, recorded rules, outcome).
    recorded_rules = events.recorded_rules.distinct
    combination = (base.codes[same] * len(recorded_rules) + seen.rules[same]) * 256 + seen.outcome[same]
    unique, inverse = np.unique(combination, return_inverse=True)
    variants = len(recorded_rules)
    differs = np.array(
        [
            _differs(base.distinct[c // 256 // variants], recorded_rules[c // 256 % variants], c % 256)
            for c in unique.tolist()
        ],
        dtype=bool,
    )
    mismatched = same[differs[inverse.reshape(-1)]] if len(same) else same
    examples: list[dict[str, Any]] = []
    for position in mismatched[:EXAMPLES].tolist():
        index = int(seen.rows[position])
        verdict = base.distinct[int(base.codes[position])]
        recorded = events.recorded_counters(index)
        values = base.values.values_of(index)
        examples.append(
            {
                "decision_id": events.string("decision_id", index),
                "occurred_at": _moment(events, index).isoformat(),
                "recorded": {
                    "outcome": Outcome(int(seen.outcome[position])).label,
                    "rules": list(recorded_rules[int(seen.rules[position])]),
                },
                "replayed": {"outcome": verdict.outcome.label, "rules": list(verdict.rules)},
                "counters": {
                    k: [recorded.get(k), values.get(k)]
                    for k in sorted(set(recorded) | set(values))
                    if recorded.get(k) != values.get(k)
                },
            }
        )
    return {
        "revision": baseline.revision,
        "compared": len(same),
        "mismatches": len(mismatched),
        "counter_mismatches": counter_mismatches,
        "examples": examples,
    }


def _differs(verdict: Verdict, rules: Sequence[str], outcome: int) -> bool:
    """Whether a replayed verdict is not the recorded outcome and rules (in any order)."""
    return not (verdict.outcome is Outcome(outcome) and sorted(verdict.rules) == sorted(rules))


def _rules(
    baseline: Ruleset,
    base: Outcomes,
    candidate: Ruleset,
    cand: Outcomes,
    known: np.ndarray | None,
) -> list[dict[str, Any]]:
    ids = sorted(set(baseline.rules) | set(candidate.rules))
    total_positive = int((known == 1).sum()) if known is not None else 0
    tallies: dict[str, dict[str, Tally[str]]] = {}
    for name, outcomes in (("baseline", base), ("candidate", cand)):
        tally: dict[str, Tally[str]] = {rule_id: Tally() for rule_id in ids}
        size = len(outcomes.distinct)
        events = np.bincount(outcomes.codes, minlength=size).tolist()
        if known is not None:
            positives = np.bincount(outcomes.codes[known == 1], minlength=size).tolist()
            negatives = np.bincount(outcomes.codes[known == 0], minlength=size).tolist()
        for code, verdict in enumerate(outcomes.distinct):
            for shown in verdict.rules:
                rule_id = shown.lstrip("~")
                if rule_id not in tally:
                    continue  # RISK_DATA_UNAVAILABLE
                tally[rule_id]["shadow" if shown.startswith("~") else "enforced"] += events[code]
                if known is not None:
                    tally[rule_id]["true_positives"] += positives[code]
                    tally[rule_id]["false_positives"] += negatives[code]
        tallies[name] = tally
    out = []
    for rule_id in ids:
        row: dict[str, Any] = {"rule_id": rule_id}
        for name, ruleset in (("baseline", baseline), ("candidate", candidate)):
            counts = tallies[name][rule_id]
            rule = ruleset.rules.get(rule_id)
            entry: dict[str, Any] = {
                "mode": rule.mode.value if rule is not None else None,
                "enforced": counts["enforced"],
                "shadow": counts["shadow"],
            }
            if known is not None:
                tp, fp = counts["true_positives"], counts["false_positives"]
                entry["true_positives"] = tp
                entry["false_positives"] = fp
                entry["precision"] = tp / (tp + fp) if tp + fp else None
                entry["recall"] = tp / total_positive if total_positive else None
            row[name] = entry
        out.append(row)
    return out


def _dimensions(events: Events, rows: np.ndarray) -> dict[str, tuple[np.ndarray, Sequence[str | None]]]:
    """Per dimension of the change report, each of the events `rows`' value as a code, and the
    text of each code."""
    institution, outlet, region = (events.text(n) for n in ("institution_id", "outlet_id", "region_code"))
    assert institution.codes is not None and outlet.codes is not None and region.codes is not None
    institutions, outlets = _names(institution), _names(outlet)
    pairs, count = _dense_pairs(institution.codes[rows], outlet.codes[rows])
    firsts = np.unique(pairs, return_index=True)[1] if len(pairs) else np.zeros(0, dtype=np.int64)
    first_rows = rows[firsts]
    outlet_names = [
        f"{institutions[i]}/{outlets[o]}"
        for i, o in zip(institution.codes[first_rows].tolist(), outlet.codes[first_rows].tolist(), strict=True)
    ]
    assert len(outlet_names) == count
    return {
        "kind": (events.kind[rows].astype(np.int64), [kind.value for kind in KINDS]),
        "institution": (institution.codes[rows].astype(np.int64), institutions),
        "outlet": (pairs, outlet_names),
        "region": (region.codes[rows].astype(np.int64), _names(region)),
        "hour": (_hours(events, rows), [f"{hour:02d}" for hour in range(24)]),
    }


def _dense_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ids of the (a, b) code pairs (codes from -1 up)."""
    key = (a.astype(np.int64) + 1) * (int(b.max(initial=-1)) + 2) + (b.astype(np.int64) + 1)
    unique, inverse = np.unique(key, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), len(unique)


def _changes(
    history: History,
    seen: _Compared,
    base: Outcomes,
    cand: Outcomes,
    reads: Mapping[str, tuple[str, ...]],
) -> dict[str, Any]:
    events = history.events
    matrix: Tally[str] = Tally()
    changed_rules = new_blocks = new_warns = 0
    # Each distinct (baseline verdict, candidate verdict) pair once.
    pair = base.codes * len(cand.distinct) + cand.codes
    unique, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
    changes: list[str] = []  # the change classes met
    class_of_pair = np.full(len(unique), -1, dtype=np.int64)
    for number, (code, count) in enumerate(zip(unique.tolist(), counts.tolist(), strict=True)):
        before, after = base.distinct[code // len(cand.distinct)], cand.distinct[code % len(cand.distinct)]
        if before.rules != after.rules and sorted(before.rules) != sorted(after.rules):
            changed_rules += count
        if before.outcome is after.outcome:
            continue
        new_blocks += count * (after.outcome is Outcome.BLOCK)
        new_warns += count * (after.outcome is Outcome.WARN and before.outcome is Outcome.ALLOW)
        change = _transition(before.outcome, after.outcome)
        matrix[change] += count
        if change not in changes:
            changes.append(change)
        class_of_pair[number] = changes.index(change)
    change_of = class_of_pair[inverse.reshape(-1)] if len(pair) else np.zeros(0, dtype=np.int64)
    changed = np.flatnonzero(change_of >= 0)
    classes = change_of[changed]
    # Per dimension, value -> change -> events, each in order of first appearance (as counted event by event).
    by: dict[str, dict[str | None, Tally[str]]] = {}
    for dimension, (codes, names) in _dimensions(events, seen.rows[changed]).items():
        tallies: dict[str | None, Tally[str]] = {}
        by[dimension] = tallies
        key = codes * max(len(changes), 1) + classes
        keys, first, key_counts = np.unique(key, return_index=True, return_counts=True)
        for position in np.argsort(first, kind="stable").tolist():
            value, change_class = divmod(int(keys[position]), max(len(changes), 1))
            tallies.setdefault(names[value], Tally())[changes[change_class]] += int(key_counts[position])
    examples: dict[str, list[dict[str, Any]]] = {}
    met, first_met = np.unique(classes, return_index=True)
    for change_class in met[np.argsort(first_met, kind="stable")].tolist():
        shown = examples[changes[change_class]] = []
        for position in changed[classes == change_class][:EXAMPLES].tolist():
            index = int(seen.rows[position])
            before = base.distinct[int(base.codes[position])]
            after = cand.distinct[int(cand.codes[position])]
            differing = set(before.rules) ^ set(after.rules)
            names_read = [n for r in sorted(differing) for n in reads.get(r.lstrip("~"), ())]
            facts = events.facts_of(index)
            values = cand.values.values_of(index)
            shown.append(
                {
                    "decision_id": events.string("decision_id", index),
                    "occurred_at": _moment(events, index).isoformat(),
                    "kind": KINDS[events.kind[index]].value,
                    "baseline": {"outcome": before.outcome.label, "rules": list(before.rules)},
                    "candidate": {"outcome": after.outcome.label, "rules": list(after.rules)},
                    "values": {n: values.get(n, facts.get(n)) for n in dict.fromkeys(names_read)},
                }
            )
    total = len(seen)
    changed_count = sum(matrix.values())
    return {
        "events": total,
        "changed": changed_count,
        "changed_share": _share(changed_count, total),
        "changed_rules": changed_rules,
        "new_blocks": new_blocks,
        "new_blocks_share": _share(new_blocks, total),
        "new_warns": new_warns,
        "new_warns_share": _share(new_warns, total),
        "matrix": {_transition(b, a): matrix.get(_transition(b, a), 0) for b in _ORDER for a in _ORDER if a is not b},
        "by": {
            dimension: {value: dict(t) for value, t in sorted(values.items(), key=lambda kv: -sum(kv[1].values()))}
            for dimension, values in by.items()
        },
        "examples": examples,
    }


def _label_summary(labels: Labels, known: np.ndarray) -> dict[str, Any]:
    return {
        "source": labels.source,
        "complete": labels.complete,
        "positives": int((known == 1).sum()),
        "negatives": int((known == 0).sum()),
        "unknown": int((known == -1).sum()),
    }


# --- the gate -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """One gate: a measure of `changes` ('new_blocks', 'new_warns', 'changed') at most a count or a share."""

    measure: str
    count: int | None = None
    share: float | None = None

    @property
    def text(self) -> str:
        bound = str(self.count) if self.count is not None else f"{self.share or 0:.3%}"
        return f"{self.measure.replace('_', ' ')} ≤ {bound}"

    def check(self, changes: Mapping[str, Any]) -> str | None:
        """Why the limit is exceeded, or None."""
        value = int(changes[self.measure])
        share = float(changes[f"{self.measure}_share"])
        name = self.measure.replace("_", " ")
        if self.count is not None and value > self.count:
            return f"{name}: {value}, more than the {self.count} allowed"
        if self.share is not None and share > self.share:
            return f"{name}: {value} ({share:.3%} of {changes['events']}), more than the {self.share:.3%} allowed"
        return None


def parse_limit(measure: str, text: str) -> Limit:
    """'0.1%' (a share of the events compared) or '25' (a count)."""
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 <= share <= 1:
                raise ValueError
            return Limit(measure, share=share)
        count = int(text)
        if count < 0:
            raise ValueError
        return Limit(measure, count=count)
    except ValueError:
        raise InvalidValue(f"{text!r} is neither a count (25) nor a share (0.1%)") from None


def gate(report: Mapping[str, Any], limits: Sequence[Limit]) -> list[str]:
    """The limits the candidate exceeds, as sentences (none: it passes)."""
    return [problem for limit in limits if (problem := limit.check(report["changes"])) is not None]
