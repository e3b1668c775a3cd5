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

from service.backtest.events import KINDS
from service.backtest.run import History, Outcomes, Ruleset
from service.dispositions import disposition_label
from service.domain import EventKind, Outcome, local_time
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
class _Seen:
    """One compared event, as the report needs it."""

    index: int
    decision_id: str
    request_id: str
    kind: EventKind
    revision: str
    institution_id: str
    outlet_id: str
    region_code: str
    outcome: Outcome
    rules: tuple[str, ...]
    degraded: bool
    occurred_at: datetime


def _seen(history: History) -> list[_Seen]:
    events = history.events
    strings = events.strings
    rules = events.recorded_rules
    out = []
    for index in history.selected.tolist():
        out.append(
            _Seen(
                index,
                strings["decision_id"][index],
                strings["request_id"][index],
                KINDS[events.kind[index]],
                strings["revision"][index],
                strings["institution_id"][index],
                strings["outlet_id"][index],
                strings["region_code"][index],
                Outcome(int(events.outcome[index])),
                tuple(rules[index]),
                bool(events.degraded[index]),
                datetime.fromtimestamp(int(events.occurred_us[index]) / 1_000_000, UTC),
            )
        )
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
    seen = _seen(history)
    reads = _reads((baseline, candidate))
    known = [labels.of(e.decision_id, e.request_id) for e in seen] if labels is not None else None
    return {
        "history": {
            "events_read": history.events.n,
            "events_compared": len(seen),
            "since": history.since.isoformat() if history.since else None,
            "until": history.until.isoformat() if history.until else None,
            "first_event": history.first.isoformat() if history.first else None,
            "longest_window_seconds": int(history.longest_window.total_seconds()),
            "too_short": history.short,
            "revisions": dict(Tally(e.revision for e in seen).most_common()),
            "degraded": sum(e.degraded for e in seen),
        },
        "baseline": _ruleset_summary(baseline, base),
        "candidate": _ruleset_summary(candidate, cand),
        "agreement": _agreement(history, seen, baseline, base),
        "rules": _rules(baseline, base, candidate, cand, known),
        "changes": _changes(history, seen, base, cand, reads),
        "labels": None if labels is None or known is None else _label_summary(labels, known),
    }


def _ruleset_summary(ruleset: Ruleset, outcomes: Outcomes) -> dict[str, Any]:
    tally = Tally(v.outcome.label for v in outcomes.verdicts)
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
    differ = np.zeros(len(rows), dtype=bool)
    for name in set(recorded) | set(replayed):
        a, b = recorded.get(name), replayed.get(name)
        a_present = a.present[rows] if a is not None else np.zeros(len(rows), dtype=bool)
        b_present = b.present[rows] if b is not None else np.zeros(len(rows), dtype=bool)
        differ |= a_present != b_present
        if a is not None and b is not None:
            differ |= a_present & b_present & (a.values[rows] != b.values[rows])
    return differ


def _agreement(history: History, seen: Sequence[_Seen], baseline: Ruleset, base: Outcomes) -> dict[str, Any]:
    """The baseline against what the service decided, for the events the same revision decided."""
    same = [position for position, event in enumerate(seen) if event.revision == baseline.revision]
    rows = np.array([seen[p].index for p in same if not seen[p].degraded], dtype=np.int64)
    counter_mismatches = int(_counter_mismatches(history, base, rows).sum()) if len(rows) else 0
    mismatched = 0
    examples: list[dict[str, Any]] = []
    for position in same:
        event, verdict = seen[position], base.verdicts[position]
        if verdict.outcome is event.outcome and sorted(verdict.rules) == sorted(event.rules):
            continue
        mismatched += 1
        if len(examples) < EXAMPLES:
            recorded = history.events.recorded_counters(event.index)
            values = base.values.values_of(event.index)
            examples.append(
                {
                    "decision_id": event.decision_id,
                    "occurred_at": event.occurred_at.isoformat(),
                    "recorded": {"outcome": event.outcome.label, "rules": list(event.rules)},
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
        "mismatches": mismatched,
        "counter_mismatches": counter_mismatches,
        "examples": examples,
    }


def _rules(
    baseline: Ruleset,
    base: Outcomes,
    candidate: Ruleset,
    cand: Outcomes,
    known: Sequence[bool | None] | None,
) -> list[dict[str, Any]]:
    ids = sorted(set(baseline.rules) | set(candidate.rules))
    total_positive = sum(1 for k in known if k) if known is not None else 0
    tallies: dict[str, dict[str, Tally[str]]] = {}
    for name, outcomes in (("baseline", base), ("candidate", cand)):
        tally: dict[str, Tally[str]] = {rule_id: Tally() for rule_id in ids}
        for position, verdict in enumerate(outcomes.verdicts):
            for shown in verdict.rules:
                rule_id = shown.lstrip("~")
                if rule_id not in tally:
                    continue  # RISK_DATA_UNAVAILABLE
                tally[rule_id]["shadow" if shown.startswith("~") else "enforced"] += 1
                if known is not None and known[position] is not None:
                    tally[rule_id]["true_positives" if known[position] else "false_positives"] += 1
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


def _changes(
    history: History,
    seen: Sequence[_Seen],
    base: Outcomes,
    cand: Outcomes,
    reads: Mapping[str, tuple[str, ...]],
) -> dict[str, Any]:
    matrix: Tally[str] = Tally()
    by: dict[str, dict[str, Tally[str]]] = {d: {} for d in ("kind", "institution", "outlet", "region", "hour")}
    examples: dict[str, list[dict[str, Any]]] = {}
    changed_rules = new_blocks = new_warns = 0
    for event, before, after in zip(seen, base.verdicts, cand.verdicts, strict=True):
        if before.rules != after.rules and sorted(before.rules) != sorted(after.rules):
            changed_rules += 1
        if before.outcome is after.outcome:
            continue
        new_blocks += after.outcome is Outcome.BLOCK
        new_warns += after.outcome is Outcome.WARN and before.outcome is Outcome.ALLOW
        change = _transition(before.outcome, after.outcome)
        matrix[change] += 1
        dimensions = {
            "kind": event.kind.value,
            "institution": event.institution_id,
            "outlet": f"{event.institution_id}/{event.outlet_id}",
            "region": event.region_code,
            "hour": f"{local_time(event.occurred_at).hour:02d}",
        }
        for dimension, value in dimensions.items():
            by[dimension].setdefault(value, Tally())[change] += 1
        shown = examples.setdefault(change, [])
        if len(shown) < EXAMPLES:
            differing = set(before.rules) ^ set(after.rules)
            names = [n for r in sorted(differing) for n in reads.get(r.lstrip("~"), ())]
            facts = history.events.facts_of(event.index)
            values = cand.values.values_of(event.index)
            shown.append(
                {
                    "decision_id": event.decision_id,
                    "occurred_at": event.occurred_at.isoformat(),
                    "kind": event.kind.value,
                    "baseline": {"outcome": before.outcome.label, "rules": list(before.rules)},
                    "candidate": {"outcome": after.outcome.label, "rules": list(after.rules)},
                    "values": {n: values.get(n, facts.get(n)) for n in dict.fromkeys(names)},
                }
            )
    total = len(seen)
    changed = sum(matrix.values())
    return {
        "events": total,
        "changed": changed,
        "changed_share": _share(changed, total),
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


def _label_summary(labels: Labels, known: Sequence[bool | None]) -> dict[str, Any]:
    return {
        "source": labels.source,
        "complete": labels.complete,
        "positives": sum(1 for k in known if k is True),
        "negatives": sum(1 for k in known if k is False),
        "unknown": sum(1 for k in known if k is None),
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
