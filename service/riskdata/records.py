"""Decisions at rest: the idempotency record and the decision log entry, both without clear identifiers.

* The **idempotency record** (`rg:r:{<hash of institution and request_id>}`)
  holds the decision made for a request as compact JSON, so that a retry
  within `RISKGATE_IDEMPOTENCY_HOURS` gets the same decision back, marked
  `replayed`, and counts nothing again.
  The record begins with the request's **fingerprint** (`fingerprint_text`,
  kept as a keyed hash): a retry is only "the same request" when every field
  but `request_id` and `occurred_at` is the same; anything else under a used
  request_id is refused (`RequestIdReused`), never answered from the record.
* The **decision log** is a Redis Stream (`rg:log:decisions`) capped at
  `RISKGATE_DECISION_LOG_MAXLEN` entries (approximate trimming). Each entry:
  decision id, request id, time, event kind, institution and outlet, outcome,
  fired rule ids (shadow ones prefixed `~`), the rules demoted to shadow by
  their breakers at that moment (`demoted`), ruleset revision, degraded flag,
  the counter values read and list hits, and the screened person's ID number
  only as its keyed hash. Backtests and the anti-fraud centre's daily
  monitoring read it with `riskgate decisions tail` / `export`.

  For replays (`riskgate backtest`) an entry also holds the request as rules
  see it: `facts`, every fact a rule can read (those under `person.` left
  out: they repeat the screened person's role, and `replay_facts` puts them
  back), and `ids`, each identifier field (and each region field a region
  list can be tested against) as the keyed hash counters and watchlists use
  for it (`KeyHasher.identifier`), never in clear. From these a replay
  recomputes every counter keyed by any combination of fields, and list
  membership, without the hashing secret. In Redis both are JSON arrays of
  values in the order of the event kind's `Layout`, named by `layout` (a
  hash of its field names): names would triple their size. `entry_document`
  gives them back by name; a layout this code does not know (an entry
  written by a riskgate with another field catalogue) leaves them empty and
  says so in `layout_known`. With them a transfer's entry takes ~1.3 KB of
  Redis memory instead of ~0.76 KB (README, "Backtests").
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from service.domain import Decision, EventKind, Outcome, Outlet, Person, Reason, ScreenRequest
from service.pipeline.facts import FIELDS, FieldType, Scalar

LOG_STREAM = "decisions"

# The encoders json.dumps(..., separators=(",", ":")) builds on every call, made once:
# 1.5 µs a call less (measured). sort_keys sorts a dict's items as sorted(d.items()) does,
# in C: 1.5 µs less than dict(sorted(...)) for a screening's dozen counters.
_SORTED_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
_COMPACT_UNICODE_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# Outcome.label, EventKind.value: enum properties, 0.2-0.3 µs each (measured); a dict look-up is 0.03.
_OUTCOME_LABELS = {outcome: outcome.label for outcome in Outcome}
_KIND_VALUES = {kind: kind.value for kind in EventKind}


def encode_decision(decision: Decision) -> bytes:
    """The decision as compact JSON, for the idempotency record."""
    document = {
        "r": decision.request_id,
        "d": decision.decision_id,
        "o": int(decision.outcome),
        "v": decision.ruleset_revision,
        "g": decision.degraded,
        "t": decision.decided_at.timestamp(),
        "e": decision.evaluation_time.total_seconds(),
        "k": _KIND_VALUES[decision.kind] if decision.kind else None,
        "x": [
            [r.rule_id, int(r.outcome), r.message_zh, r.message_en, [list(p) for p in r.evidence], r.shadow, r.priority]
            for r in decision.reasons
        ],
    }
    return _COMPACT_UNICODE_JSON.encode(document).encode()


def decode_decision(data: bytes) -> Decision:
    """A stored decision, marked as replayed."""
    document = json.loads(data)
    return Decision(
        request_id=document["r"],
        decision_id=document["d"],
        outcome=Outcome(document["o"]),
        reasons=tuple(
            Reason(rule_id, Outcome(outcome), zh, en, tuple((n, v) for n, v in evidence), shadow, priority)
            for rule_id, outcome, zh, en, evidence, shadow, priority in document["x"]
        ),
        ruleset_revision=document["v"],
        degraded=document["g"],
        decided_at=datetime.fromtimestamp(document["t"], UTC),
        evaluation_time=timedelta(seconds=document["e"]),
        replayed=True,
        kind=EventKind(document["k"]) if document["k"] else None,
    )


# --- the request's fingerprint ---------------------------------------------------------

# Fields the validator derives from others, left out (so a retry re-stamped across midnight is
# still the same request): a person's birth date, age, sex and region come from the ID number and
# the event date, an outlet's province from its region.
_DERIVED: dict[type, frozenset[str]] = {
    Person: frozenset({"birth_date", "age", "sex", "region_code", "province_code", "region_known", "non_local"}),
    Outlet: frozenset({"province_code"}),
}
_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields_of(kind: type) -> tuple[str, ...]:
    names = _FIELDS.get(kind)
    if names is None:
        derived = _DERIVED.get(kind, frozenset())
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(kind) if f.name not in derived)
    return names


def _canonical(value: object, out: list[str]) -> None:
    if dataclasses.is_dataclass(value):
        out.append("(" + type(value).__name__)
        for name in _fields_of(type(value)):
            out.append(name)
            _canonical(getattr(value, name), out)
        out.append(")")
    elif value is None:
        out.append("~")
    elif isinstance(value, datetime):
        out.append(value.astimezone(UTC).isoformat(timespec="microseconds"))
    elif isinstance(value, enum.Enum):
        out.append(f"{type(value).__name__}.{value.name}")
    else:
        out.append(repr(value))


def fingerprint_text(request: ScreenRequest) -> str:
    """What makes a request "the same" for idempotency: every field as validated (normalised: an
    ID number's check character upper-cased, defaults filled in) except `request_id`, which
    names it, and `occurred_at`, which a terminal's retry may stamp again. Contains identifiers
    in clear: only its keyed hash is ever kept."""
    out: list[str] = []
    _canonical(request.outlet, out)
    _canonical(request.event, out)
    return "\x1f".join(out)


RECORD_SEPARATOR = b"|"


def encode_record(fingerprint: bytes, decision: Decision) -> bytes:
    """The idempotency record: the request's fingerprint (its keyed hash), then the decision."""
    return fingerprint + RECORD_SEPARATOR + encode_decision(decision)


def decode_record(stored: bytes) -> tuple[bytes | None, Decision]:
    """A stored record's fingerprint and decision (marked replayed). A record written before
    fingerprints were kept (plain JSON) has none: it is replayed as before, for its last hours."""
    if stored.startswith(b"{"):
        return None, decode_decision(stored)
    fingerprint, _, document = stored.partition(RECORD_SEPARATOR)
    return fingerprint, decode_decision(document)


def log_entry(
    request: ScreenRequest,
    decision: Decision,
    *,
    subject_hash: str,
    counters: Mapping[str, int | float],
    list_hits: Mapping[tuple[str, str], bool],
    facts: Mapping[str, Scalar] | None = None,
    id_hashes: Mapping[str, str] | None = None,
    late: bool = False,
    demoted: frozenset[str] = frozenset(),
    clerk_ref: str = "",
) -> dict[str, str]:
    """The decision log's fields for one decision: flat strings, no clear identifiers.

    `facts` are the request's facts (those under `person.` are left out); `id_hashes` its
    identifier fields' keyed hashes (`history_ids`); `late`: a degraded decision whose counter
    update was sent but not answered in time (it probably counted); `demoted`: the rules that were
    demoted to shadow by their breakers at the decision (service.pipeline.breakers), so a replay
    can demote them too (their fires show as shadow, `~ID`, in `rules`); `clerk_ref`: the clerk
    as a short keyed hash (`tallies.CLERK_REF_LENGTH` characters), for the console. A decision
    in which a rule fired also keeps its `reasons` as the clerk was shown them (`encode_reasons`)."""
    rules = ",".join(("~" if r.shadow else "") + r.rule_id for r in decision.reasons)
    hits = sorted(f"{name}:{field}" for (name, field), hit in list_hits.items() if hit)
    return {
        "decision_id": decision.decision_id,
        "request_id": decision.request_id,
        "decided_at": decision.decided_at.isoformat(timespec="microseconds"),
        "occurred_at": request.occurred_at.isoformat(timespec="microseconds"),
        "kind": _KIND_VALUES[request.kind],
        "institution_id": request.outlet.institution_id,
        "outlet_id": request.outlet.outlet_id,
        "region_code": request.outlet.region_code,
        "outcome": _OUTCOME_LABELS[decision.outcome],
        "rules": rules,
        "demoted": ",".join(sorted(demoted)),
        "revision": decision.ruleset_revision,
        "degraded": "1" if decision.degraded else "0",
        "late": "1" if late else "0",
        "counters": _SORTED_COMPACT_JSON.encode(dict(counters)),
        "list_hits": ",".join(hits),
        "subject": subject_hash,
        "clerk": clerk_ref,
        **({"reasons": encode_reasons(decision.reasons)} if decision.reasons else {}),
        **_positional(request.kind, facts or {}, id_hashes or {}),
    }


def encode_reasons(reasons: tuple[Reason, ...]) -> str:
    """A decision's reasons as compact JSON: [rule_id, outcome, message_zh, message_en, evidence
    pairs, shadow] each, in the order the answer gave them."""
    return _COMPACT_UNICODE_JSON.encode(
        [
            [r.rule_id, _OUTCOME_LABELS[r.outcome], r.message_zh, r.message_en, [list(p) for p in r.evidence], r.shadow]
            for r in reasons
        ]
    )


def decode_reasons(text: str) -> list[dict[str, Any]]:
    """`encode_reasons` read back, by name ([] for an entry without reasons)."""
    if not text:
        return []
    return [
        {
            "rule_id": rule_id,
            "outcome": outcome,
            "message_zh": zh,
            "message_en": en,
            "evidence": [(str(n), str(v)) for n, v in evidence],
            "shadow": bool(shadow),
        }
        for rule_id, outcome, zh, en, evidence, shadow in json.loads(text)
    ]


def entry_document(entry_id: str, fields: Mapping[Any, Any]) -> dict[str, Any]:
    """A stream entry as a JSON-ready document (for `riskgate decisions export`/`tail`)."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    document: dict[str, Any] = {"stream_id": entry_id, **text}
    document["degraded"] = text.get("degraded") == "1"
    document["late"] = text.get("late") == "1"
    document["rules"] = [r for r in text.get("rules", "").split(",") if r]
    document["demoted"] = [r for r in text.get("demoted", "").split(",") if r]
    document["list_hits"] = [h for h in text.get("list_hits", "").split(",") if h]
    document["counters"] = json.loads(text.get("counters") or "{}")
    document["reasons"] = decode_reasons(text.get("reasons", ""))
    document["facts"], document["ids"], document["layout_known"] = _named(
        text.get("layout", ""), text.get("facts") or "[]", text.get("ids") or "[]"
    )
    return document


# --- what a replay reads -----------------------------------------------------------------

_PERSON = "person."
# The role of the screened person in each kind of event: `person.*` repeats its facts.
SUBJECT_ROLE: Mapping[EventKind, str] = {
    EventKind.CARD_OPENING: "applicant.",
    EventKind.SIM_SALE: "buyer.",
    EventKind.TRANSFER: "payer.",
    EventKind.CLOSURE: "holder.",
}
# Fields tested against region lists (ListKind.REGION), which are strings in the facts: the log
# keeps their hashes too, so a replay can test them against a list's entries.
_REGION_LEAVES = (".region_code", ".ip_region_code")


@dataclass(frozen=True, slots=True)
class Layout:
    """The order of an event kind's facts and identifier hashes in its log entries."""

    kind: EventKind
    facts: tuple[str, ...]
    ids: tuple[str, ...]
    tag: str  # 12 hex characters naming the two orders

    @classmethod
    def of(cls, kind: EventKind) -> Layout:
        own = [spec for spec in FIELDS.values() if kind in spec.kinds and not spec.name.startswith(_PERSON)]
        facts = tuple(spec.name for spec in own if spec.type is not FieldType.IDENTIFIER)
        ids = tuple(spec.name for spec in own if spec.type is FieldType.IDENTIFIER) + tuple(
            name for name in facts if name.endswith(_REGION_LEAVES)
        )
        text = "\n".join((kind.value, *facts, "", *ids))
        return cls(kind, facts, ids, hashlib.sha256(text.encode()).hexdigest()[:12])


LAYOUTS: Mapping[EventKind, Layout] = {kind: Layout.of(kind) for kind in EventKind}
# Layouts by tag. One whose catalogue changed must stay readable: add the old one here.
_LAYOUTS_BY_TAG: Mapping[str, Layout] = {layout.tag: layout for layout in LAYOUTS.values()}


def _positional(kind: EventKind, facts: Mapping[str, Scalar], id_hashes: Mapping[str, str]) -> dict[str, str]:
    layout = LAYOUTS[kind]
    return {
        "layout": layout.tag,
        "facts": _COMPACT_UNICODE_JSON.encode([facts.get(name) for name in layout.facts]),
        "ids": _COMPACT_UNICODE_JSON.encode([id_hashes.get(name) for name in layout.ids]),
    }


def _named(tag: str, facts: str, ids: str) -> tuple[dict[str, Any], dict[str, str], bool]:
    layout = _LAYOUTS_BY_TAG.get(tag)
    if layout is None:
        return {}, {}, False
    fact_values, id_values = json.loads(facts), json.loads(ids)
    return (
        {name: value for name, value in zip(layout.facts, fact_values, strict=False) if value is not None},
        {name: value for name, value in zip(layout.ids, id_values, strict=False) if value is not None},
        True,
    )


def history_ids(
    ids: Mapping[str, str], facts: Mapping[str, Scalar], identifier: Callable[[str, str], str]
) -> dict[str, str]:
    """The keyed hash of each identifier field (and region field) of a request, by field name,
    as `identifier(field, value)` (`KeyHasher.identifier`) gives it; `person.*` left out."""
    out = {name: identifier(name, value) for name, value in ids.items() if not name.startswith(_PERSON)}
    for name, value in facts.items():
        if name.endswith(_REGION_LEAVES) and isinstance(value, str) and value and not name.startswith(_PERSON):
            out[name] = identifier(name, value)
    return out


def replay_facts(kind: EventKind, stored: Mapping[str, Any]) -> dict[str, Any]:
    """A logged entry's facts as the rules were given them: `person.*` put back from the role."""
    out = dict(stored)
    role = SUBJECT_ROLE[kind]
    for name, value in stored.items():
        if name.startswith(role):
            out[_PERSON + name[len(role) :]] = value
    return out


def replay_ids(kind: EventKind, stored: Mapping[str, str]) -> dict[str, str]:
    """A logged entry's identifier hashes with `person.*` put back from the role."""
    return replay_facts(kind, stored)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
