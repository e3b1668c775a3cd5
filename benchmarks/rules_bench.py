"""Rules alone: the shipped ruleset through our durable_rules adapter, and the same rules in GoRules ZEN.

    python -m benchmarks.rules_bench [--events 5000] [--repeats 5]

Events are `riskgate synth` requests, validated (`service.pipeline.validate`) and turned into facts
(`service.pipeline.facts`), with counter values and watchlist hits supplied: for each event, every counter
the rules read for its kind gets a seeded value with a long tail (so thresholds are crossed now and
then, as in traffic with fraud in it), and 2 % of the list look-ups hit. Both engines get exactly
the same inputs, prepared before timing.

* ours: `CompiledRuleset.evaluate(facts, counters, list_hits)`, what a screening calls: the durable
  message built, asserted, fired rules drained and retracted, the reasons rendered. Also
  `fire only`: the message and the durable calls without the reasons.
* ZEN: the ruleset translated from the same typed model (`benchmarks.zen_rules.to_jdm`: one
  decision table, hit policy collect), evaluated through the zen-engine Python binding:
  the input dict built from the same facts, `decision.evaluate(input)`, the fired ids read back.

First both must fire the same rule ids on every event (else the run fails, naming the events);
then each is timed over all the events, `repeats` times, alternating; µs per event is the median.
Ours is also timed event by event, for the median by case: event kind, and whether a rule fired
(`rules.us_per_event_by_case`; the slowest case is the figure to hold against a budget).

The counters' `where` filters (rules/counters.yaml), over the same events of the kinds they apply
to: `counters_to_update` with no filter, with the Python closures the service uses
(`service.rules.filters.compile_filters`), and with the alternative they were chosen over, one
durable ruleset holding a rule per filter evaluated once per event (the best durable can do for a
per-counter predicate; measured, not used); and one predicate call of the closures. Both must
choose the same counters on every event, else the run fails.

Prints one summary line for the rules and one for the filters.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Json, median, package_version
from benchmarks.traffic import read_requests, write_pool
from service.domain import EventKind, Outcome
from service.pipeline.facts import Scalar, facts
from service.pipeline.validate import screen_request
from service.riskdata.counters.model import CounterSpec, Filter, Predicate, counters_to_update
from service.rules.check import collect_reads
from service.rules.compiler import compile_ruleset
from service.rules.engine import CompiledRuleset, build_ruleset
from service.rules.filters import CounterFilters
from service.rules.model import Rule, RuleSet
from service.rules.reload import ActiveRules, RulesManager
from service.rules.templates import parse_template

Inputs = tuple[dict[str, Scalar], dict[str, int | float], dict[tuple[str, str], bool]]


def _counter_value(rng: random.Random, name: str) -> int:
    """A plausible value with a long tail, by what the counter measures."""
    draw = rng.random()
    if "flow" in name:  # sums of money, fen
        return int(10 ** rng.uniform(4, 8)) if draw < 0.6 else 0
    if "idle" in name:  # days
        return rng.choice((0, 0, 0, 1, 3, 30, 200, 400))
    if draw < 0.7:
        return 1
    if draw < 0.9:
        return rng.randint(2, 4)
    if draw < 0.98:
        return rng.randint(5, 15)
    return rng.randint(20, 60)


def make_inputs(active: ActiveRules, events: int, seed: int, path: Path) -> list[Inputs]:
    now = datetime.now(UTC)
    write_pool(path, seed=seed, events=events, now=now)
    rng = random.Random(seed)
    ruleset = active.ruleset
    out: list[Inputs] = []
    for message in read_requests(path):
        request = screen_request(message, now=now)
        request_facts = facts(request, active.rates)
        kind = request.kind
        counters: dict[str, int | float] = {
            name: _counter_value(rng, name) for name in sorted(ruleset.counters_for(kind))
        }
        hits = {check: rng.random() < 0.02 for check in sorted(ruleset.list_checks_for(kind))}
        out.append((request_facts, counters, hits))
    return out


class Zen:
    """The ruleset as a ZEN decision, and the input builder."""

    def __init__(self, active: ActiveRules) -> None:
        import zen

        from benchmarks.zen_rules import ZenInputs, to_jdm

        self.jdm = to_jdm(active.ruleset.ruleset)
        self.engine = zen.ZenEngine()
        self.decision = self.engine.create_decision(json.dumps(self.jdm, ensure_ascii=False))
        self.inputs = ZenInputs(active.ruleset.ruleset)

    def fired(self, inputs: Inputs) -> set[str]:
        result: Any = self.decision.evaluate(self.inputs.build(*inputs))["result"]
        return {row["rule"] for row in result}


_UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def zen_internal_us(text: str) -> float:
    """ZEN's own timing of one evaluation (the response's "performance", e.g. "121.9µs"), in µs."""
    for unit in ("ns", "µs", "us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * _UNITS[unit]
    return float("nan")


def durable_fired(ruleset: CompiledRuleset, inputs: Inputs) -> set[str]:
    return {reason.rule_id for reason in ruleset.evaluate(*inputs)}


def durable_fire_only(ruleset: CompiledRuleset) -> Callable[[Inputs], object]:
    def fire(inputs: Inputs) -> object:
        request_facts, counters, hits = inputs
        kind = EventKind(str(request_facts["event"]))
        message = ruleset._message(kind, request_facts, counters, hits)
        with ruleset_lock():
            return ruleset._fire_locked(kind, message)

    return fire


def ruleset_lock() -> Any:
    from service.rules import engine

    return engine._LOCK


def _time(fn: Callable[[Inputs], object], events: Sequence[Inputs]) -> float:
    started = time.perf_counter()
    for inputs in events:
        fn(inputs)
    return (time.perf_counter() - started) / len(events) * 1e6


def _time_each(fn: Callable[[Inputs], object], events: Sequence[Inputs]) -> list[float]:
    """µs of each call, in the order of `events`."""
    clock = time.perf_counter
    out: list[float] = []
    for inputs in events:
        started = clock()
        fn(inputs)
        out.append((clock() - started) * 1e6)
    return out


def case_of(ruleset: CompiledRuleset, inputs: Inputs) -> str:
    """The event's kind, and whether a rule fired on it: "transfer firing", "card_opening quiet"..."""
    return f"{inputs[0]['event']} {'firing' if durable_fired(ruleset, inputs) else 'quiet'}"


def check_same(ruleset: CompiledRuleset, zen_rules: Zen, events: Sequence[Inputs]) -> Json:
    mismatches = []
    fired_events = 0
    fired_ids: dict[str, int] = {}
    for n, inputs in enumerate(events):
        ours, theirs = durable_fired(ruleset, inputs), zen_rules.fired(inputs)
        if ours != theirs:
            mismatches.append((n, sorted(ours), sorted(theirs)))
        fired_events += bool(ours)
        for rule_id in ours:
            fired_ids[rule_id] = fired_ids.get(rule_id, 0) + 1
    if mismatches:
        raise AssertionError(f"durable and ZEN disagree on {len(mismatches)} events, e.g. {mismatches[:3]}")
    return {
        "rules.events_checked": len(events),
        "rules.events_with_a_rule_fired": fired_events,
        "rules.rules_fired_at_least_once": len(fired_ids),
        "rules.rules_enabled": len(ruleset.rules),
    }


def bench(events: int = 5000, repeats: int = 5, seed: int = 3) -> Json:
    manager = RulesManager(REPO / "rules")
    active = manager.load()
    try:
        with tempfile.TemporaryDirectory(prefix="rg-rules-") as tmp:
            inputs = make_inputs(active, events, seed, Path(tmp) / "pool.bin")
        ruleset = active.ruleset
        zen_rules = Zen(active)
        figures = check_same(ruleset, zen_rules, inputs)
        zen_inputs = [zen_rules.inputs.build(*i) for i in inputs]
        evaluate = zen_rules.decision.evaluate
        timings: dict[str, list[float]] = {"ours": [], "ours_fire_only": [], "zen": [], "zen_evaluate_only": []}
        fire_only = durable_fire_only(ruleset)
        cases = [case_of(ruleset, i) for i in inputs]
        by_case: dict[str, list[float]] = {case: [] for case in sorted(set(cases))}
        for _ in range(repeats):
            timings["ours"].append(_time(lambda i: ruleset.evaluate(*i), inputs))
            each = _time_each(lambda i: ruleset.evaluate(*i), inputs)
            for case, runs in by_case.items():
                runs.append(median([us for us, c in zip(each, cases, strict=True) if c == case]))
            timings["zen"].append(_time(zen_rules.fired, inputs))
            timings["ours_fire_only"].append(_time(fire_only, inputs))
            started = time.perf_counter()
            internal = [evaluate(item)["performance"] for item in zen_inputs]
            timings["zen_evaluate_only"].append((time.perf_counter() - started) / len(zen_inputs) * 1e6)
            timings.setdefault("zen_internal", []).append(median([zen_internal_us(t) for t in internal]))
    finally:
        manager.close()
    ours, zen_us = median(timings["ours"]), median(timings["zen"])
    case_us = {case: round(median(runs), 2) for case, runs in by_case.items()}
    slowest = max(case_us, key=lambda case: case_us[case])
    figures.update(
        {
            "rules.us_per_event": round(ours, 2),
            "rules.us_per_event_by_case": case_us,
            "rules.events_by_case": {case: cases.count(case) for case in case_us},
            "rules.us_per_event_slowest_case": case_us[slowest],
            "rules.us_per_event_fire_only": round(median(timings["ours_fire_only"]), 2),
            "rules.zen_us_per_event": round(zen_us, 2),
            "rules.zen_us_per_event_evaluate_only": round(median(timings["zen_evaluate_only"]), 2),
            "rules.zen_internal_us_per_event": round(median(timings["zen_internal"]), 2),
            "rules.over_zen_ratio": round(ours / zen_us, 3),
            "rules.events": len(inputs),
            "rules.repeats": repeats,
            "rules.revision": active.revision,
            "rules.zen_jdm_rows": len(zen_rules.jdm["nodes"][1]["content"]["rules"]),
            "rules.zen_engine": package_version("zen-engine"),
        }
    )
    print(
        f"rules: ours {ours:.1f} us/event (durable fire only {figures['rules.us_per_event_fire_only']:.1f}) vs ZEN "
        f"{zen_us:.1f} us/event (evaluate only {figures['rules.zen_us_per_event_evaluate_only']:.1f}, "
        f"ZEN's own timing {figures['rules.zen_internal_us_per_event']:.1f}) = "
        f"{ours / zen_us:.2f}; {figures['rules.rules_enabled']} rules, same ids fired on all {len(inputs)} events "
        f"({figures['rules.events_with_a_rule_fired']} with a rule fired, "
        f"{figures['rules.rules_fired_at_least_once']} rules fired at least once); slowest case {slowest} "
        f"{case_us[slowest]:.1f} us/event (event by event); median of {repeats}",
        flush=True,
    )
    # The closures are plain Python: they outlive the manager's durable rulesets.
    figures.update(filters_bench(active, [i[0] for i in inputs], repeats))
    return figures


# ------------------------------------------------------------------------------------ counter filters


class DurableFilters:
    """The counters' `where` filters as one durable ruleset, a rule per filter: the alternative to
    the closures, evaluated once per event (`predicate(facts)`); measured, not used."""

    def __init__(self, spec: CounterSpec, filters: CounterFilters) -> None:
        rules: list[Rule] = []
        self.ids: dict[Filter, str] = {}
        for index, (condition, checked) in enumerate(filters.conditions.items()):
            kinds = {k for counter in spec.counters for k, f in counter.where if f == condition}
            self.ids[condition] = f"where_{index}"
            rules.append(
                Rule(
                    id=f"where_{index}",
                    on=tuple(k for k in EventKind if k in kinds),
                    when=checked,
                    when_text=condition.text,
                    outcome=Outcome.WARN,
                    reason_zh=parse_template("-"),
                    reason_en=parse_template("-"),
                    reads=collect_reads(checked),
                )
            )
        self.compiled = build_ruleset(compile_ruleset(RuleSet("filters", tuple(rules), ("counters.yaml",))))

    def predicate(self, event: dict[str, Scalar]) -> Predicate:
        fired = {reason.rule_id for reason in self.compiled.evaluate(event, {}, {})}
        ids = self.ids

        def holds(condition: Filter, _: object) -> bool:
            return ids[condition] in fired

        return holds

    def close(self) -> None:
        self.compiled.close()


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) / calls * 1e6


def filters_bench(active: ActiveRules, events: Sequence[dict[str, Scalar]], repeats: int) -> Json:
    """`counters_to_update` for the active counters over `events` (facts): no filter, closures, durable."""
    spec, closures = active.counter_spec, active.where
    filtered = [(EventKind(str(e["event"])), e) for e in events]
    filtered = [(kind, e) for kind, e in filtered if any(c.where_for(kind) for c in spec.counters)]
    calls = [(f, e) for kind, e in filtered for c in spec.counters if (f := c.where_for(kind)) is not None]
    if not calls:
        raise AssertionError("no event of a kind that a counter's where applies to")
    durable = DurableFilters(spec, closures)
    try:
        mismatches = [
            (n, kind.value)
            for n, (kind, e) in enumerate(filtered)
            if counters_to_update(spec, kind, e, closures) != counters_to_update(spec, kind, e, durable.predicate(e))
        ]
        if mismatches:
            raise AssertionError(
                f"closures and durable choose other counters on {len(mismatches)} events: {mismatches[:5]}"
            )

        def no_filter() -> None:
            for kind, e in filtered:
                counters_to_update(spec, kind, e, lambda f, _: True)

        def with_closures() -> None:
            for kind, e in filtered:
                counters_to_update(spec, kind, e, closures)

        def with_durable() -> None:
            for kind, e in filtered:
                counters_to_update(spec, kind, e, durable.predicate(e))

        def predicate_calls() -> None:
            for condition, e in calls:
                closures(condition, e)

        timings: dict[str, list[float]] = {"none": [], "closures": [], "durable": [], "call": []}
        for _ in range(repeats):
            timings["none"].append(_per_call_us(no_filter, len(filtered)))
            timings["closures"].append(_per_call_us(with_closures, len(filtered)))
            timings["durable"].append(_per_call_us(with_durable, len(filtered)))
            timings["call"].append(_per_call_us(predicate_calls, len(calls)))
    finally:
        durable.close()
    us = {name: median(runs) for name, runs in timings.items()}
    figures: Json = {
        "rules.filters": len(closures),
        "rules.filters_events": len(filtered),
        "rules.filters_us_per_event_no_filter": round(us["none"], 2),
        "rules.filters_us_per_event_closures": round(us["closures"], 2),
        "rules.filters_us_per_event_durable": round(us["durable"], 2),
        "rules.filters_us_per_predicate_call": round(us["call"], 3),
        "rules.filters_closures_over_durable": round(us["closures"] / us["durable"], 3),
    }
    print(
        f"rules filters: counters_to_update {us['closures']:.2f} us/event with the closures "
        f"({us['call']:.2f} us per predicate call) vs {us['durable']:.1f} with one durable evaluation = "
        f"{figures['rules.filters_closures_over_durable']:.3f}; {us['none']:.2f} with no filter; "
        f"{len(closures)} where filters in rules/counters.yaml, same counters chosen on all {len(filtered)} events; "
        f"median of {repeats}",
        flush=True,
    )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rules_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events (default 5000, at most 50000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the events (default 5)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if not 100 <= args.events <= 50_000 or not 1 <= args.repeats <= 20:
        parser.error("--events 100..50000, --repeats 1..20")
    figures = bench(args.events, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
