"""The console's tallies: what each logged decision adds to the per-minute, per-day and per-hour counts.

The monitoring console (and the daily report) must stay fast with a million decisions logged,
so it never scans the log: the decision log's script (`decision_log.LOG_ONCE`) adds each
decision, in the same atomic step that appends it to the stream (so exactly once, whatever
copies of the write reach Redis), to a few small hashes in the log stream's cluster slot:

* `{rg:log:decisions}:m:<unix minute>`, kept `MINUTES_KEPT`: the last hours, minute by minute.
  Fields `n:<kind>:<outcome>`; `g:<kind>` degraded decisions; `r:<rule>` enforced fires and
  `s:<rule>` shadow fires; `v:<revision>` decisions by ruleset revision.
* `{rg:log:decisions}:t:<YYYY-MM-DD>`, one local day (China, UTC+8: the day the centres
  report), kept as long as dispositions (`RISKGATE_DISPOSITION_DAYS`). The minute's fields, and
  `p:<province>:<outcome>` (every outcome), `i:<institution>:<outcome>`, `h:<hour>:<outcome>`
  (local hour), and for warnings and blocks only `c:<region>:<outcome>` (the outlet's 6-digit
  region) and `u:<institution>/<outlet>:<outcome>`. Dispositions add `d:<disposition>` and
  `dr:<rule>:<disposition>` to the day they are reported (`service.riskdata.dispositions`).
* `{rg:log:decisions}:k:<unix hour>`, kept `HOURS_KEPT`: openings (card openings and SIM sales)
  by clerk, `c:<clerk ref>`, and by outlet, `o:<institution>/<outlet>`, for opening bursts.
* `{rg:log:decisions}:f`, a stream capped at `DecisionLogConfig.flagged_maxlen` entries (50,000:
  about 0.6 KB each with their reasons): every WARN and BLOCK, as a summary (`FLAGGED_FIELDS`:
  the reasons as the clerk saw them included) and the id of its log entry (`e`), so the
  console lists the latest warnings, filtered, without reading the whole log.

A clerk appears only as `clerk_ref`, a short keyed hash; an identifier of a customer never
reaches a tally. This module is pure: field names from a log entry's flat fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
# Mainland China keeps UTC+8 all year (service.domain.CHINA_TZ): local days and hours by arithmetic.
_CHINA_OFFSET_MS: Final = 8 * HOUR_MS
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
MINUTES_KEPT: Final = timedelta(hours=48)
HOURS_KEPT: Final = timedelta(hours=48)
CLERK_REF_LENGTH: Final = 10
# Event kinds whose decisions are openings: a clerk opening many in an hour is worth a look.
OPENING_KINDS: Final = frozenset({"card_opening", "sim_sale"})
FLAGGED_OUTCOMES: Final = frozenset({"warn", "block"})
# The flagged stream's fields (beside `e`, the log entry's stream id), by the log entry's name.
FLAGGED_FIELDS: Final = {
    "decision_id": "d",
    "request_id": "q",
    "decided_at": "t",
    "kind": "k",
    "institution_id": "i",
    "outlet_id": "u",
    "region_code": "g",
    "outcome": "o",
    "rules": "x",
    "clerk": "c",
    "reasons": "w",
}


def clerk_ref(identifier: Callable[[str, str], str], clerk_id: str) -> str:
    """A clerk as the console shows them: the start of their keyed hash ("" for self-service)."""
    return identifier("outlet.clerk_id", clerk_id)[:CLERK_REF_LENGTH] if clerk_id else ""


def minute_key(stream_key: str, decided_ms: int) -> str:
    return f"{{{stream_key}}}:m:{decided_ms // MINUTE_MS}"


def hour_key(stream_key: str, decided_ms: int) -> str:
    return f"{{{stream_key}}}:k:{decided_ms // HOUR_MS}"


def local_day(decided_ms: int) -> date:
    """The local (UTC+8) day of a unix time in ms."""
    return date.fromordinal(_EPOCH_ORDINAL + (decided_ms + _CHINA_OFFSET_MS) // DAY_MS)


def day_key(stream_key: str, day: date) -> str:
    return f"{{{stream_key}}}:t:{day.isoformat()}"


def day_end_ms(day: date) -> int:
    """When a local day ends, in unix ms."""
    return (day.toordinal() - _EPOCH_ORDINAL + 1) * DAY_MS - _CHINA_OFFSET_MS


def flagged_key(stream_key: str) -> str:
    return f"{{{stream_key}}}:f"


@dataclass(frozen=True, slots=True)
class Tallies:
    """What one decision adds: hash fields to increment by one, and its flagged summary."""

    minute: tuple[str, ...]
    day: tuple[str, ...]
    hour: tuple[str, ...]
    flagged: tuple[str, ...]  # name, value, ... for the flagged stream; () when not flagged


def tallies_of(fields: Mapping[str, str], decided_ms: int) -> Tallies:
    """The tallies of a log entry (its fields by name, `records.log_entry`)."""
    kind, outcome = fields.get("kind", ""), fields.get("outcome", "")
    minute = [f"n:{kind}:{outcome}"]
    if fields.get("degraded") == "1":
        minute.append(f"g:{kind}")
    for rule in filter(None, fields.get("rules", "").split(",")):
        minute.append(f"s:{rule[1:]}" if rule.startswith("~") else f"r:{rule}")
    day = minute.copy()
    minute.append(f"v:{fields.get('revision', '')}")
    region = fields.get("region_code", "")
    institution, outlet = fields.get("institution_id", ""), fields.get("outlet_id", "")
    hour_of_day = (decided_ms + _CHINA_OFFSET_MS) // HOUR_MS % 24
    day += [f"p:{region[:2]}:{outcome}", f"i:{institution}:{outcome}", f"h:{hour_of_day:02d}:{outcome}"]
    flagged: tuple[str, ...] = ()
    if outcome in FLAGGED_OUTCOMES:
        day += [f"c:{region}:{outcome}", f"u:{institution}/{outlet}:{outcome}"]
        flagged = tuple(part for name, short in FLAGGED_FIELDS.items() for part in (short, fields.get(name, "")))
    hour: tuple[str, ...] = ()
    if kind in OPENING_KINDS:
        clerk = fields.get("clerk", "")
        hour = (f"o:{institution}/{outlet}", *((f"c:{clerk}",) if clerk else ()))
    return Tallies(tuple(minute), tuple(day), hour, flagged)
