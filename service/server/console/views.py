"""What each console view shows, as JSON-ready documents: pure functions of the tallies the
monitor reads (`service.riskdata.monitoring`) and the server's status. No HTTP, no Redis.

Every document is for people: times in China local time, counts as integers, shares as
fractions, names in Chinese and English. Nothing here sees a clear identifier: people are
the monitor's short keyed-hash references (clerks), outlets and institutions their own codes.
"""

from __future__ import annotations

import functools
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

from stdnum import numdb

from service.dispositions import Disposition, disposition_label
from service.domain import local_time
from service.pipeline.validate import PROVINCES
from service.riskdata.monitoring import Flagged, Minute

KINDS: Final = ("card_opening", "sim_sale", "transfer", "closure")
OUTCOMES: Final = ("allow", "warn", "block")
KIND_NAMES: Final = {
    "card_opening": ("开户", "card opening"),
    "sim_sale": ("售卡", "SIM sale"),
    "transfer": ("转账", "transfer"),
    "closure": ("销户", "closure"),
}
OUTCOME_NAMES: Final = {"allow": ("放行", "allow"), "warn": ("提醒", "warn"), "block": ("拦截", "block")}
DISPOSITION_NAMES: Final[Mapping[str, tuple[str, str]]] = {
    Disposition.CUSTOMER_DISSUADED: ("劝阻成功", "customer dissuaded"),
    Disposition.VERIFIED_LEGITIMATE: ("核实正常", "verified legitimate"),
    Disposition.CONFIRMED_FRAUD: ("确认诈骗", "confirmed fraud"),
    Disposition.STOP_PAYMENT_REQUESTED: ("止付", "stop-payment requested"),
    Disposition.FALSE_ALARM: ("误报", "false alarm"),
    Disposition.APPEAL_FILED: ("申诉", "appeal filed"),
    Disposition.APPEAL_UPHELD: ("申诉成立", "appeal upheld"),
    Disposition.APPEAL_REJECTED: ("申诉不成立", "appeal rejected"),
}
assert set(DISPOSITION_NAMES) == set(Disposition), "every disposition needs its names"

# Charts draw at most this many points: 48 hours of minutes are summed into 12-minute buckets.
MAX_POINTS: Final = 240

# Opening bursts (README, Console): a clerk or an outlet is unusual when its openings in the
# current or the previous hour reach the floor AND at least BURST_FACTOR times the median of
# every clerk's (outlet's) openings per active hour over the span. The floors follow the
# starting rule 14 (20+ openings at an outlet in an hour); a clerk's is half of it.
BURST_FACTOR: Final = 3
CLERK_BURST_FLOOR: Final = 10
OUTLET_BURST_FLOOR: Final = 20
BURSTS_SHOWN: Final = 15


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """A rule of the serving ruleset, as the console lists it."""

    rule_id: str
    outcome: str  # warn or block
    shadow: bool  # in shadow mode by its file
    kinds: tuple[str, ...]
    description: str = ""
    breaker: bool = False  # it has a breaker


@dataclass(frozen=True, slots=True)
class ConsoleStatus:
    """The serving process's state, for the Now view (handed in by the server as a callable)."""

    revision: str
    serving: bool
    components: Mapping[str, bool]  # health component → SERVING
    demoted: tuple[str, ...]  # rules demoted to shadow by their breakers
    rules: tuple[RuleInfo, ...]
    reloads: Mapping[str, int]  # reload attempts by result: loaded, unchanged, rejected
    rule_errors: tuple[str, ...] = ()  # the rules directory's problems, if its latest content is refused
    redis_breaker_open: bool = False
    unwritten_log_entries: int = 0
    replica: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


def kind_name(kind: str) -> str:
    zh, en = KIND_NAMES.get(kind, ("", kind))
    return f"{zh} {en}".strip()


def _iso(moment: datetime) -> str:
    return local_time(moment).isoformat(timespec="seconds")


def status_document(status: ConsoleStatus) -> dict[str, Any]:
    return {
        "revision": status.revision,
        "serving": status.serving,
        "components": dict(status.components),
        "demoted": list(status.demoted),
        "reloads": dict(status.reloads),
        "rule_errors": list(status.rule_errors),
        "redis_breaker_open": status.redis_breaker_open,
        "unwritten_log_entries": status.unwritten_log_entries,
        "replica": status.replica,
    }


# --- regions ---------------------------------------------------------------------------------


def province_names(code: str) -> tuple[str, str]:
    names = PROVINCES.get(code[:2])
    return (names.zh, names.en) if names is not None else ("", "")


_PERIOD = re.compile(r"^\[[^\]]*\]")


@functools.lru_cache(maxsize=4096)
def region_name(code: str) -> str:
    """The current name of a 6-digit region (GB/T 2260, from python-stdnum's dated table), with its
    province: 广东省 深圳市; "" when unknown."""
    if len(code) != 6 or not code.isdigit():
        return ""
    names: list[str] = []
    for _, info in numdb.get("cn/loc").info(code):
        for value in info.values():
            latest = str(value).split(",")[-1]
            names.append(_PERIOD.sub("", latest))
    return " ".join(n for n in names if n)


# --- the Now view ----------------------------------------------------------------------------


def bucket_minutes(count: int, points: int = MAX_POINTS) -> int:
    """Minutes summed per chart point so that `count` minutes make at most `points` points."""
    return max(1, -(-count // points))


def _buckets(minutes: Sequence[Minute], width: int) -> list[tuple[datetime, Counter[str]]]:
    """`width` minutes summed per bucket, oldest first; the newest minute ends the last bucket (the
    chart's right edge is now), the oldest bucket may be shorter."""
    out: list[tuple[datetime, Counter[str]]] = []
    groups: list[Sequence[Minute]] = []
    index = len(minutes)
    while index > 0:
        groups.append(minutes[max(0, index - width) : index])
        index -= width
    for group in reversed(groups):
        total: Counter[str] = Counter()
        for minute in group:
            total.update(minute.counts)
        out.append((group[0].start, total))
    return out


def outcome_totals(counts: Mapping[str, int], kind: str | None = None) -> dict[str, int]:
    """allow/warn/block/degraded/total of `n:` and `g:` fields, of one kind or all."""
    totals = dict.fromkeys((*OUTCOMES, "degraded", "total"), 0)
    for name, value in counts.items():
        parts = name.split(":")
        if parts[0] == "n" and len(parts) == 3 and (kind is None or parts[1] == kind) and parts[2] in OUTCOMES:
            totals[parts[2]] += value
            totals["total"] += value
        elif parts[0] == "g" and len(parts) == 2 and (kind is None or parts[1] == kind):
            totals["degraded"] += value
    return totals


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def now_view(minutes: Sequence[Minute], status: ConsoleStatus, *, generated_at: datetime) -> dict[str, Any]:
    """Decisions per minute by outcome and kind over the span, the degraded share, health, breakers,
    the ruleset revision (and which revisions decided in the span), rule reloads."""
    width = bucket_minutes(len(minutes))
    span: Counter[str] = Counter()
    for minute in minutes:
        span.update(minute.counts)
    series = []
    for start, counts in _buckets(minutes, width):
        point: dict[str, Any] = {"t": _iso(start), **outcome_totals(counts)}
        point["flagged_by_kind"] = {
            k: outcome_totals(counts, k)["warn"] + outcome_totals(counts, k)["block"] for k in KINDS
        }
        series.append(point)
    totals = outcome_totals(span)
    last = outcome_totals(minutes[-1].counts) if minutes else outcome_totals({})
    revisions = {name[2:]: value for name, value in span.items() if name.startswith("v:")}
    return {
        "generated_at": _iso(generated_at),
        "span_minutes": len(minutes),
        "bucket_minutes": width,
        "series": series,
        "totals": {**totals, "degraded_share": _share(totals["degraded"], totals["total"])},
        "last_minute": last,
        "per_minute": totals["total"] / len(minutes) if minutes else 0.0,
        "by_kind": [
            {"kind": k, "name": kind_name(k), **outcome_totals(span, k)}
            for k in KINDS
        ],
        "revisions": dict(sorted(revisions.items(), key=lambda item: -item[1])),
        "status": status_document(status),
    }  # fmt: skip


# --- the Rules view --------------------------------------------------------------------------


def precision_of(mix: Mapping[str, int]) -> tuple[int, int, int, float | None]:
    """(positives, negatives, pending, precision) of a disposition mix."""
    positives = negatives = pending = 0
    for name, count in mix.items():
        try:
            label = disposition_label(name)
        except ValueError:
            continue
        if label is True:
            positives += count
        elif label is False:
            negatives += count
        else:
            pending += count
    disposed = positives + negatives
    return positives, negatives, pending, (positives / disposed if disposed else None)


def rule_dispositions(days: Iterable[Mapping[str, int]]) -> dict[str, Counter[str]]:
    """Per rule, the dispositions reported (`dr:<rule>:<disposition>`) in the given days."""
    out: dict[str, Counter[str]] = {}
    for tallies in days:
        for name, value in tallies.items():
            if name.startswith("dr:"):
                rule, _, disposition = name[3:].rpartition(":")
                out.setdefault(rule, Counter())[disposition] += value
    return out


def rules_view(
    minutes: Sequence[Minute], days: Sequence[Mapping[str, int]], status: ConsoleStatus, *, generated_at: datetime
) -> dict[str, Any]:
    """Per rule: fires and shadow fires over the span (a series), its share of the events of the
    kinds it screens, the dispositions reported in the last days and their precision; the rules
    demoted by their breakers first."""
    width = bucket_minutes(len(minutes))
    buckets = _buckets(minutes, width)
    span: Counter[str] = Counter()
    for minute in minutes:
        span.update(minute.counts)
    events = {k: outcome_totals(span, k)["total"] for k in KINDS}
    mixes = rule_dispositions(days)
    known = {rule.rule_id: rule for rule in status.rules}
    seen = {name[2:] for name in span if name[:2] in ("r:", "s:")} | set(mixes)
    demoted = set(status.demoted)
    rows: list[dict[str, Any]] = []
    for rule_id in sorted(set(known) | seen):
        info = known.get(rule_id)
        fires, shadow = span.get(f"r:{rule_id}", 0), span.get(f"s:{rule_id}", 0)
        kinds = info.kinds if info is not None else KINDS
        screened = sum(events.get(k, 0) for k in kinds)
        mix = mixes.get(rule_id, Counter())
        positives, negatives, pending, precision = precision_of(mix)
        rows.append(
            {
                "rule_id": rule_id,
                "outcome": info.outcome if info is not None else "",
                "mode": "shadow" if info is not None and info.shadow else "enforce",
                "kinds": list(kinds),
                "description": info.description if info is not None else "",
                "served": info is not None,
                "breaker": info.breaker if info is not None else False,
                "demoted": rule_id in demoted,
                "fires": fires,
                "shadow_fires": shadow,
                "share": _share(fires + shadow, screened),
                "fires_series": [c.get(f"r:{rule_id}", 0) for _, c in buckets],
                "shadow_series": [c.get(f"s:{rule_id}", 0) for _, c in buckets],
                "dispositions": dict(sorted(mix.items())),
                "positives": positives,
                "negatives": negatives,
                "pending": pending,
                "precision": precision,
            }
        )
    rows.sort(key=lambda r: (not r["demoted"], -(r["fires"] + r["shadow_fires"]), r["rule_id"]))
    return {
        "generated_at": _iso(generated_at),
        "span_minutes": len(minutes),
        "bucket_minutes": width,
        "starts": [_iso(start) for start, _ in buckets],
        "disposition_days": len(days),
        "events": events,
        "revision": status.revision,
        "demoted": sorted(demoted),
        "rules": rows,
    }


# --- the Warnings view -----------------------------------------------------------------------


def disposition_document(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    zh, en = DISPOSITION_NAMES.get(value, ("", value))
    try:
        label = disposition_label(value)
    except ValueError:
        label = None
    shown = "pending" if label is None else "positive" if label else "negative"
    return {"value": value, "zh": zh, "en": en, "label": shown}


def flagged_document(item: Flagged) -> dict[str, Any]:
    return {
        "decision_id": item.decision_id,
        "request_id": item.request_id,
        "decided_at": _iso(item.decided_at),
        "kind": item.kind,
        "kind_name": kind_name(item.kind),
        "institution_id": item.institution_id,
        "outlet_id": item.outlet_id,
        "region_code": item.region_code,
        "region_name": region_name(item.region_code),
        "outcome": item.outcome,
        "rules": list(item.rules),
        "clerk": item.clerk,
        "reasons": [
            {
                "rule_id": r.rule_id,
                "outcome": r.outcome,
                "message_zh": r.message_zh,
                "message_en": r.message_en,
                "evidence": [list(pair) for pair in r.evidence],
                "shadow": r.shadow,
            }
            for r in item.reasons
        ],
        "disposition": disposition_document(item.disposition),
    }


def dispositions_catalogue() -> list[dict[str, Any]]:
    """The dispositions a page may record, with their names and labels."""
    return [d for d in (disposition_document(value.value) for value in Disposition) if d is not None]


# --- the Where view --------------------------------------------------------------------------


def _fields(tallies: Mapping[str, int], prefix: str) -> dict[str, dict[str, int]]:
    """`<prefix>:<key>:<outcome>` fields as key → outcome → count (with a total)."""
    out: dict[str, dict[str, int]] = {}
    for name, value in tallies.items():
        if not name.startswith(prefix + ":"):
            continue
        key, _, outcome = name[len(prefix) + 1 :].rpartition(":")
        if outcome not in OUTCOMES or not key:
            continue
        row = out.setdefault(key, dict.fromkeys((*OUTCOMES, "total"), 0))
        row[outcome] += value
        row["total"] += value
    return out


def provinces(tallies: Mapping[str, int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for code, counts in _fields(tallies, "p").items():
        zh, en = province_names(code)
        rows.append({"code": code, "zh": zh, "en": en, **counts, "flagged": counts["warn"] + counts["block"]})
    rows.sort(key=lambda r: (-r["flagged"], -r["total"], r["code"]))
    return rows


def cities(tallies: Mapping[str, int]) -> list[dict[str, Any]]:
    """Warnings and blocks by the outlet's region (6 digits), and by city (its first 4)."""
    rows: list[dict[str, Any]] = []
    for code, counts in _fields(tallies, "c").items():
        rows.append({"code": code, "name": region_name(code), **counts, "flagged": counts["warn"] + counts["block"]})
    rows.sort(key=lambda r: (-r["flagged"], r["code"]))
    return rows


def outlets(tallies: Mapping[str, int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for key, counts in _fields(tallies, "u").items():
        institution, _, outlet = key.partition("/")
        rows.append(
            {"institution_id": institution, "outlet_id": outlet, **counts, "flagged": counts["warn"] + counts["block"]}
        )
    rows.sort(key=lambda r: (-r["flagged"], r["institution_id"], r["outlet_id"]))
    return rows


def bursts(hours: Sequence[Minute], prefix: str, floor: int) -> dict[str, Any]:
    """The clerks (`c`) or outlets (`o`) by their openings in the current and the previous hour,
    the unusual ones (see BURST_FACTOR) first."""
    cells = [v for hour in hours for name, v in hour.counts.items() if name.startswith(prefix + ":") and v > 0]
    baseline = float(statistics.median(cells)) if cells else 0.0
    current = hours[-1].counts if hours else {}
    previous = hours[-2].counts if len(hours) > 1 else {}
    names = {n for n in (*current, *previous) if n.startswith(prefix + ":")}
    rows: list[dict[str, Any]] = []
    for name in names:
        now, before = current.get(name, 0), previous.get(name, 0)
        peak = max(now, before)
        unusual = peak >= floor and peak >= BURST_FACTOR * max(baseline, 1.0)
        rows.append({"ref": name[len(prefix) + 1 :], "this_hour": now, "previous_hour": before, "unusual": unusual})
    rows.sort(key=lambda r: (not r["unusual"], -max(r["this_hour"], r["previous_hour"]), r["ref"]))
    return {
        "baseline": baseline,
        "floor": floor,
        "factor": BURST_FACTOR,
        "unusual": sum(1 for r in rows if r["unusual"]),
        "rows": rows[:BURSTS_SHOWN],
    }


def where_view(
    day: date, tallies: Mapping[str, int], hours: Sequence[Minute], *, generated_at: datetime
) -> dict[str, Any]:
    return {
        "generated_at": _iso(generated_at),
        "day": day.isoformat(),
        "provinces": provinces(tallies),
        "cities": cities(tallies)[:50],
        "outlets": outlets(tallies)[:30],
        "span_hours": len(hours),
        "hour_start": _iso(hours[-1].start) if hours else None,
        "clerks": bursts(hours, "c", CLERK_BURST_FLOOR),
        "outlet_bursts": bursts(hours, "o", OUTLET_BURST_FLOOR),
    }
