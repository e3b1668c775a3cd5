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
Prints one summary line.
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
from service.domain import EventKind
from service.pipeline.facts import Scalar, facts
from service.pipeline.validate import screen_request
from service.rules.engine import CompiledRuleset
from service.rules.reload import ActiveRules, RulesManager

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
        request_facts = facts(request)
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
        for _ in range(repeats):
            timings["ours"].append(_time(lambda i: ruleset.evaluate(*i), inputs))
            timings["zen"].append(_time(zen_rules.fired, inputs))
            timings["ours_fire_only"].append(_time(fire_only, inputs))
            started = time.perf_counter()
            internal = [evaluate(item)["performance"] for item in zen_inputs]
            timings["zen_evaluate_only"].append((time.perf_counter() - started) / len(zen_inputs) * 1e6)
            timings.setdefault("zen_internal", []).append(median([zen_internal_us(t) for t in internal]))
    finally:
        manager.close()
    ours, zen_us = median(timings["ours"]), median(timings["zen"])
    figures.update(
        {
            "rules.us_per_event": round(ours, 2),
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
        f"{figures['rules.rules_fired_at_least_once']} rules fired at least once); median of {repeats}",
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
