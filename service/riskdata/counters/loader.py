"""The counter file: its format, the exact meaning of its values, and its loader (into `model`).

The counter file
================

One YAML file (shipped: `rules/counters.yaml`) holding a `counters:` list::

    counters:
      - name: banks                       # [a-z][a-z0-9_]*, unique
        description: distinct banks where this ID opened accounts
        on: [card_opening]                # event kinds that UPDATE it
        key: person.id_number             # the entity it is kept per
        aggregate: distinct(outlet.institution_id)
        windows: [30d]                    # Nm / Nh / Nd (1m..180d) and/or `all`

Keys of a declaration (anything else is an error):

``name``
    Rules read the value of window `w` as ``{name}_{w}``: `banks_30d`,
    `pair_payments_all`. `CounterSpec.value_names()` lists every such name.
``description``
    Free text, shown to rule authors.
``on``
    An event kind or a list: card_opening, sim_sale, transfer, closure.
``key``
    The entity: one field (``person.id_number``), a list of fields forming
    one entity (``[transfer.payer_account, transfer.payee_account]``), or a
    mapping from event kind to either, for an entity that appears under
    different fields on different kinds::

        key:
          sim_sale: [person.id_number, sim_sale.carrier]
          closure: [person.id_number, closure.carrier]

    Key fields are identifier or string fields of the catalogue
    (`service.pipeline.facts.FIELDS`) available on every kind that uses the key.
    All the kinds' keys must name the same kind of entity, position by
    position (same hashing domain, see `service.redis.keys`).
``aggregate``
    ``count`` (events), ``sum(FIELD)`` (a number field; values are rounded
    to whole numbers, e.g. fen, and negative ones count as 0),
    ``distinct(FIELD)`` (different values), or ``idle_days`` (see below).
``windows``
    A list of at most 8 sliding windows ``Nm``, ``Nh``, ``Nd`` from 1 minute
    to 180 days, and ``all`` (all-time; not for idle_days).
``where``
    A condition in the rule expression language, as a string (applies to
    every kind the counter is updated on) or a mapping of event kind to
    string. It is kept as text with its line; the rules layer compiles it
    and hands `counters_to_update` a predicate.
``decrement_on``
    Event kinds that subtract 1 (a closure closes one card or account).
    Only for ``count`` or ``sum(FIELD)`` with ``windows: [all]``: "active"
    counts, e.g. class-I accounts per ID per bank. Never below 0.
``read_as``
    Extra names under which the SAME stored counter is read for another key
    of the same kind of entity: ``read_as: [{name: inflow_to_payer, key:
    transfer.payer_account}]`` on a counter kept per payee account makes
    `inflow_to_payer_30m` "how much came INTO the account now sending".
    Nothing is stored twice: it is a read of the payer's own inflow
    counter. Items take ``name``, ``key``, optional ``read_on`` and
    ``description``.
``read_on``
    The event kinds that read the value (default: every kind on which the
    key fields exist). Must include the ``on`` and ``decrement_on`` kinds.
    Narrowing it saves Redis work on kinds whose rules never read it.
``exact_up_to``
    distinct() only: how many members are counted exactly (default 64);
    above that the counter switches to HyperLogLog (standard error 0.81 %).
``retain``
    ``Nd`` (1d..3650d, default 400d): how long an all-time or idle_days
    counter is kept after its entity's last update. Idle entities vanish.

The file is read by the strict reader of rule files (`service.yamlsrc`): only
``true`` / ``false`` are booleans, numbers are plain decimals, and duplicate
keys, several documents, unknown tags and keys that are not strings are
errors. Texts (``name``, ``description``, ``where``) must be strings,
``exact_up_to`` a whole number and ``undo_on_block`` a boolean: ``"64"``,
``yes`` or ``"true"`` are refused with ``file:line: problem``.

Semantics
=========

* **The current event is included.** Counters are updated before rules run
  and the values returned are after the update: at the third bank,
  `banks_30d` is 3 ("this is the 3rd bank"). Blocked attempts are counted
  too: being turned away at three banks today is itself a signal.
* **Active counts exclude blocked openings.** A counter with
  ``decrement_on`` counts what exists (class-I accounts held, SIMs active),
  and a BLOCKed opening never opens anything. Its increment is made before
  the decision like every other one (so the event's own value reads "this
  would be the 2nd class-I account"), and when the decision is BLOCK the
  caller sends `CounterStore.prepare_retract(plan)` in its post-decision
  round trip: that subtracts exactly the amounts this event added to its
  ``decrement_on`` counters (never below 0) and touches nothing else, so
  attempt counters such as `banks_30d` keep the blocked attempt. Given a
  token (the request's idempotency key), a retract sent twice undoes once
  for 48 hours; without one, each send subtracts again. A blocked closure
  is not undone: its decrement may have stopped at 0, so adding 1 back
  could overcount. ``undo_on_block: true`` gives a count or sum with
  ``windows: [all]`` the same undo without a ``decrement_on``: a BLOCKed
  transfer was never paid, so it must not make its payee "paid before"
  (fraud coaching is exactly a retry of the blocked transfer).
* **Event time** is the request's `occurred_at` (whole seconds, UTC), which
  validation bounds to [server now - 24 h, server now + max future skew]
  (`RISKGATE_MAX_FUTURE_SKEW_SECONDS`, default 5 min; the store is given
  the same bound for its TTLs), so a wrong client clock cannot push
  counters far into the future or past.
* **Who updates, who reads.** A counter is UPDATED by events of its ``on``
  kinds (``decrement_on``: decremented) whose ``where`` holds and whose key
  fields and aggregate field are present (an absent or empty value, e.g.
  no companion or clerk id '', updates nothing). It is READ by every event
  of a ``read_on`` kind whose key fields are present; a value whose key is
  absent is absent from the result, and a comparison on it is false.
  Reading without updating changes nothing.
* **Sliding windows in buckets.** A window of length W is cut into
  n = W / g buckets of granularity g: the largest of 10 s, 1 m, 5 m, 15 m,
  1 h, 6 h, 1 d that divides W into at least 20 buckets (10 s when none
  does). The window ending at time t holds the buckets floor(t/g) - n + 1
  .. floor(t/g): every event in [t - W + g, t] and nothing older than
  t - W. **The error bound is one bucket**: events between t - W and
  t - W + g may already have dropped out. Common windows:

  ====== ============ ======= ==================
  window granularity buckets dropped early (max)
  ====== ============ ======= ==================
  1m     10 s         6       10 s
  5m     10 s         30      10 s
  30m    1 m          30      1 m
  1h     1 m          60      1 m
  2h     5 m          24      5 m
  24h    1 h          24      1 h
  7d     6 h          28      6 h
  30d    1 d          30      1 d
  90d    1 d          90      1 d
  180d   1 d          180     1 d
  ====== ============ ======= ==================

* **Out-of-order events.** Per entity, a window ends at the newest bucket
  any event of that entity has reached, or at the current event's bucket if
  that is newer. A late event (older than the newest) is added to its own
  bucket when that bucket is still inside the window, so it counts and is
  included; an event later than a whole window behind the newest is
  dropped by that window. With time bounded as above this only affects
  windows shorter than a day.
* ``all`` never expires on its own; the key vanishes ``retain`` after the
  entity's last update.
* **distinct(FIELD)** counts the different values whose newest occurrence
  lies in the window. Exact while at most ``exact_up_to`` members are in
  the longest window; beyond that HyperLogLog per bucket, merged on read:
  standard error 0.81 % (Redis's 16384 registers), plus the bucket bound.
  It returns to exact counting after the entity has been idle for its
  longest window. An event that lacks the field updates nothing.
* **idle_days** with windows ``[G]`` (a run gap, e.g. 24h): whole days of
  silence before the entity's current run of activity, a run being events
  each less than G after the previous one. The first event ever seen for a
  key gives 0 (no known silence); a read with no update gives the silence
  up to now when the last event is more than G ago. Events older than the
  newest change nothing. For rule 24 (dormant account): `out_idle_24h >= 180`.
* **Decrements** (``decrement_on``) subtract 1 per event, flooring at 0 (a
  closure of a card opened before the service kept counts).
* **Storage.** All count, sum and idle_days counters of one entity (one key
  value, e.g. one account) live in one Redis hash, each under its 2-byte
  tag (`service.redis.keys.counter_tag`); two counters kept for the
  same kind of entity must not share a tag (the loader says which to
  rename). A distinct() counter keeps its newest time there too, and its
  member while it has one; from two members on, a set of its own. Layout
  and costs: `service.riskdata.counters.store`.
* Hashes of identifiers, never identifiers, reach Redis
  (`service.redis.keys`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from service.domain import EventKind
from service.durations import seconds_of
from service.errors import SourceError, SourceProblem
from service.pipeline.facts import FIELDS, FieldType
from service.redis.keys import counter_tag, field_domain
from service.riskdata.counters.kernels import LADDER, granularity_for
from service.riskdata.counters.model import (
    ALL,
    DEFAULT_EXACT_UP_TO,
    DEFAULT_RETAIN_DAYS,
    MAX_BUCKETS,
    MAX_EXACT_UP_TO,
    MAX_RETAIN_DAYS,
    MAX_WINDOW_SECONDS,
    MAX_WINDOWS,
    Aggregate,
    Counter,
    CounterSpec,
    Filter,
    Key,
    ReadAs,
    ValueInfo,
    Window,
    duration_label,
)
from service.suggest import did_you_mean
from service.yamlsrc import YMap, YNode, YScalar, YSeq, describe, parse_yaml

_KIND_ORDER = {kind: index for index, kind in enumerate(EventKind)}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_DAYS = re.compile(r"([1-9][0-9]{0,4})d")
_AGGREGATE = re.compile(r"(count|idle_days)|(sum|distinct)\(\s*([A-Za-z0-9_.]+)\s*\)")
_COUNTER_KEYS = (
    "name",
    "description",
    "on",
    "decrement_on",
    "key",
    "aggregate",
    "windows",
    "where",
    "read_as",
    "read_on",
    "exact_up_to",
    "retain",
    "undo_on_block",
)
_READ_AS_KEYS = ("name", "key", "read_on", "description")


def load_counters(path: Path | str) -> CounterSpec:
    """Load and check a counter file; raises SourceError listing every problem as `file:line: problem`."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError([SourceProblem(file, 1, f"cannot read the counter file: {exc}")]) from None
    return parse_counters(text, file)


def parse_counters(text: str, file: str) -> CounterSpec:
    return _Loader(file).load(text)


def _line(node: YNode) -> int:
    """The line a problem with `node` is reported on (a block scalar's: its text's first line)."""
    return node.text_line if isinstance(node, YScalar) else node.line


def _word(node: YScalar) -> str:
    """A scalar where a word is expected (an event kind, a field, a window, an aggregate).

    No word is a number or a boolean, so such a scalar is refused by the check of the word
    itself, which names it as written (near enough: `50_000` shows as 50000).
    """
    value = node.value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _kinds_text(kinds: Iterable[EventKind]) -> str:
    return ", ".join(k.value for k in sorted(kinds, key=_KIND_ORDER.__getitem__))


def _sorted_kinds(kinds: Iterable[EventKind]) -> list[EventKind]:
    return sorted(kinds, key=_KIND_ORDER.__getitem__)


class _Loader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[SourceProblem] = []
        self.where: str = ""  # "counter 'x': " prefix of the messages being produced

    def problem(self, line: int, text: str) -> None:
        self.problems.append(SourceProblem(self.file, line, self.where + text))

    def load(self, text: str) -> CounterSpec:
        root, problems = parse_yaml(text, self.file)
        if root is None and problems:  # a syntax error, or several documents
            raise SourceError(problems)
        self.problems += problems  # duplicate keys, keys that are not strings, unknown tags
        counters: list[Counter] = []
        if not isinstance(root, YMap):
            line = _line(root) if root is not None else 1
            self.problem(line, "expected a mapping with a 'counters' list")
        else:
            for key, _ in root.items:
                if key.value != "counters":
                    self.problem(key.line, f"unknown key '{key.value}'{did_you_mean(str(key.value), ['counters'])}")
            items = root.get("counters")
            if items is None:
                self.problem(root.line, "missing 'counters'")
            elif not isinstance(items, YSeq):
                self.problem(_line(items), "'counters' must be a list of counter declarations")
            else:
                counters = self.counters(items)
        self.check_tags(counters)
        values = self.value_infos(counters)
        if self.problems:
            self.problems.sort(key=lambda p: p.line)
            raise SourceError(self.problems)
        return CounterSpec(tuple(counters), values, self.file)

    # ------------------------------------------------------------ counters

    def counters(self, items: YSeq) -> list[Counter]:
        counters: list[Counter] = []
        first_line: dict[str, int] = {}
        for index, item in enumerate(items.items, start=1):
            self.where = ""
            if not isinstance(item, YMap):
                self.problem(_line(item), "a counter declaration must be a mapping")
                continue
            counter = self.counter(item, index)
            self.where = ""
            if counter is None:
                continue
            if counter.name in first_line:
                self.problem(
                    counter.line,
                    f"counter '{counter.name}': duplicate name (first declared at line {first_line[counter.name]})",
                )
                continue
            first_line[counter.name] = counter.line
            counters.append(counter)
        return counters

    def counter(self, node: YMap, index: int) -> Counter | None:
        errors_before = len(self.problems)
        name_node = node.get("name")
        name = self.name(name_node, node.line, f"counter #{index}")
        self.where = f"counter '{name}': " if name else f"counter #{index}: "
        for entry, _ in node.items:
            if entry.value not in _COUNTER_KEYS:
                self.unknown_key(entry, _COUNTER_KEYS)
        on = self.kinds(node, "on", required=True)
        decrement_on = self.kinds(node, "decrement_on", required=False)
        for kind in _sorted_kinds(on & decrement_on):
            self.problem(self.line_of(node, "decrement_on"), f"{kind.value} is in both 'on' and 'decrement_on'")
        updaters = on | decrement_on
        aggregate, field = self.aggregate(node, on)
        windows = self.windows(node, aggregate)
        key = self.key(node.get("key"), self.line_of(node, "key"), updaters, "key", required=True)
        where = self.where_clause(node, updaters)
        read_on = self.read_on(node.get("read_on"), key, updaters)
        exact_up_to = self.exact_up_to(node, aggregate)
        retain = self.retain(node, aggregate, windows)
        description = self.text(node.get("description"), "description")
        undo_on_block = self.undo_on_block(node, aggregate, windows)
        if decrement_on and aggregate not in (Aggregate.COUNT, Aggregate.SUM):
            self.problem(self.line_of(node, "decrement_on"), "decrement_on needs aggregate count or sum(FIELD)")
        elif decrement_on and windows and [w.label for w in windows] != [ALL]:
            self.problem(self.line_of(node, "decrement_on"), "decrement_on needs windows: [all] (an active count)")
        read_as = self.read_as_list(node.get("read_as"), key)
        self.where = ""
        if len(self.problems) > errors_before or name is None or key is None or aggregate is None:
            return None
        return Counter(
            name=name,
            description=description,
            on=on,
            decrement_on=decrement_on,
            key=key,
            aggregate=aggregate,
            field=field,
            windows=windows,
            where=where,
            read_as=read_as,
            read_on=read_on,
            exact_up_to=exact_up_to,
            undo_on_block=undo_on_block,
            retain_seconds=retain,
            file=self.file,
            line=node.line,
        )

    def check_tags(self, counters: list[Counter]) -> None:
        """Counters of one kind of entity share its hash, each under its tag: tags must differ."""
        owners: dict[tuple[tuple[str, ...], bytes], Counter] = {}
        for counter in counters:
            slot = (counter.key.domains, counter_tag(counter.name))
            first = owners.setdefault(slot, counter)
            if first is not counter:
                self.problem(
                    counter.line,
                    f"counter '{counter.name}': its storage tag equals that of counter '{first.name}' "
                    f"(line {first.line}), which is kept for the same kind of entity "
                    f"({', '.join(counter.key.domains)}); rename one of them",
                )

    @staticmethod
    def line_of(node: YMap, key: str) -> int:
        key_node = node.key_node(key)
        return key_node.line if key_node is not None else node.line

    def unknown_key(self, key: YScalar, allowed: Iterable[str]) -> None:
        text = str(key.value)
        hint = did_you_mean(text, allowed)
        if not hint:
            hint = f" (expected one of: {', '.join(sorted(allowed))})"
        self.problem(key.line, f"unknown key '{text}'{hint}")

    def name(self, node: YNode | None, line: int, what: str) -> str | None:
        if node is None:
            self.problem(line, f"{what}: missing 'name'")
            return None
        if not isinstance(node, YScalar) or not isinstance(node.value, str):
            self.problem(_line(node), f"{what}: 'name' must be a string, got {describe(node)}")
            return None
        if not _NAME.fullmatch(node.value):
            self.problem(
                _line(node),
                f"{what}: bad name '{node.value}'; use lower-case letters, digits and '_', "
                "starting with a letter (at most 48 characters)",
            )
            return None
        return node.value

    def text(self, node: YNode | None, key: str) -> str:
        if node is None:
            return ""
        if isinstance(node, YScalar) and node.value is None:
            return ""
        if not isinstance(node, YScalar) or not isinstance(node.value, str):
            self.problem(_line(node), f"'{key}' must be a string, got {describe(node)}")
            return ""
        return node.value.strip()

    def scalars(self, node: YNode, what: str) -> list[YScalar] | None:
        """A scalar or a list of scalars."""
        if isinstance(node, YScalar) and node.value is not None:
            return [node]
        if (
            isinstance(node, YSeq)
            and node.items
            and all(isinstance(i, YScalar) and i.value is not None for i in node.items)
        ):
            return [i for i in node.items if isinstance(i, YScalar)]
        self.problem(_line(node), what)
        return None

    def kinds(self, node: YMap, key: str, *, required: bool) -> frozenset[EventKind]:
        value = node.get(key)
        if value is None:
            if required:
                self.problem(node.line, f"missing '{key}'")
            return frozenset()
        items = self.scalars(value, f"'{key}' must be an event kind or a list of event kinds")
        kinds: set[EventKind] = set()
        for item in items or ():
            kind = self.kind(_word(item), _line(item), f" in '{key}'")
            if kind is not None:
                kinds.add(kind)
        return frozenset(kinds)

    def kind(self, text: str, line: int, context: str = "") -> EventKind | None:
        try:
            return EventKind(text)
        except ValueError:
            self.problem(
                line, f"unknown event kind '{text}'{context}{did_you_mean(text, [k.value for k in EventKind])}"
            )
            return None

    def field(self, text: str, line: int) -> str | None:
        spec = FIELDS.get(text)
        if spec is not None and spec.shown_only is not None:
            self.problem(line, f"'{text}' {spec.shown_only}")
            return None
        if spec is not None:
            return text
        self.problem(line, f"unknown field '{text}'{did_you_mean(text, FIELDS)}")
        return None

    # ------------------------------------------------------------ aggregate

    def aggregate(self, node: YMap, on: frozenset[EventKind]) -> tuple[Aggregate | None, str | None]:
        value = node.get("aggregate")
        if value is None:
            self.problem(node.line, "missing 'aggregate'")
            return None, None
        text = _word(value).strip() if isinstance(value, YScalar) else ""
        match = _AGGREGATE.fullmatch(text)
        if match is None:
            shown = f"'{text}'" if isinstance(value, YScalar) else "(not a string)"
            self.problem(
                _line(value), f"bad aggregate {shown}; expected count, sum(FIELD), distinct(FIELD) or idle_days"
            )
            return None, None
        if match.group(1):
            return Aggregate(match.group(1)), None
        aggregate = Aggregate(match.group(2))
        field = self.field(match.group(3), _line(value))
        if field is None:
            return None, None
        spec = FIELDS[field]
        if aggregate is Aggregate.SUM and spec.type is not FieldType.NUMBER:
            self.problem(_line(value), f"sum() needs a number field; '{field}' is a {spec.type.value} field")
            return None, None
        if aggregate is Aggregate.DISTINCT and spec.type is FieldType.BOOL:
            self.problem(_line(value), f"distinct() of a bool field counts at most 2; '{field}' is a bool field")
            return None, None
        for kind in _sorted_kinds(on - spec.kinds):
            self.problem(
                _line(value),
                f"aggregate field '{field}' is not available on {kind.value} events "
                f"(only on {_kinds_text(spec.kinds)})",
            )
            return None, None
        return aggregate, field

    # -------------------------------------------------------------- windows

    def windows(self, node: YMap, aggregate: Aggregate | None) -> tuple[Window, ...]:
        value = node.get("windows")
        if value is None:
            self.problem(node.line, "missing 'windows'")
            return ()
        items = self.scalars(value, "'windows' must be a list of windows, e.g. [30m, 24h]")
        windows: list[Window] = []
        for item in items or ():
            window = self.window(item, aggregate)
            if window is None:
                continue
            same = next((w for w in windows if w.seconds == window.seconds), None)
            if same is not None:
                extra = "" if same.label == window.label else f" (same as '{same.label}')"
                self.problem(_line(item), f"duplicate window '{window.label}'{extra}")
                continue
            windows.append(window)
        if len(windows) > MAX_WINDOWS:
            self.problem(_line(value), f"at most {MAX_WINDOWS} windows per counter")
        return tuple(windows)

    def window(self, item: YScalar, aggregate: Aggregate | None) -> Window | None:
        text = _word(item).strip()
        if text == ALL:
            if aggregate is Aggregate.IDLE_DAYS:
                self.problem(_line(item), "idle_days needs a run gap window such as 24h, not 'all'")
                return None
            return Window(ALL, 0, 0)
        seconds = seconds_of(text)
        if seconds is None:
            self.problem(_line(item), f"bad window '{text}'; expected Nm, Nh or Nd (1 minute to 180 days) or all")
            return None
        if seconds > MAX_WINDOW_SECONDS:
            self.problem(_line(item), f"window '{text}' is longer than 180 days")
            return None
        granularity = int(granularity_for.py_func(seconds))
        if aggregate is not Aggregate.IDLE_DAYS and seconds // granularity > MAX_BUCKETS:
            units = [duration_label(g) for g in LADDER if g > granularity and g >= 300]
            coarser = ", ".join(units[:-1]) + f" or {units[-1]}" if len(units) > 1 else units[0]
            self.problem(
                _line(item),
                f"window '{text}' would need {seconds // granularity} buckets of "
                f"{duration_label(granularity)}; make it a multiple of {coarser}",
            )
            return None
        return Window(text, seconds, granularity)

    # ------------------------------------------------------------------ key

    def key(
        self,
        node: YNode | None,
        line: int,
        updaters: frozenset[EventKind],
        what: str,
        *,
        required: bool,
    ) -> Key | None:
        if node is None:
            if required:
                self.problem(line, f"missing '{what}'")
            return None
        if isinstance(node, YMap):
            by_kind: list[tuple[EventKind, tuple[str, ...]]] = []
            lines: list[int] = []
            ok = True
            for kind_node, value in node.items:
                kind_line = kind_node.line
                kind = self.kind(str(kind_node.value), kind_line, f" in '{what}'")
                fields = self.key_fields(value, frozenset({kind}) if kind else frozenset(), what)
                if kind is None or fields is None:
                    ok = False
                    continue
                by_kind.append((kind, fields))
                lines.append(kind_line)
            present = {k for k, _ in by_kind}
            for kind in _sorted_kinds(updaters - present):
                if ok:
                    self.problem(line, f"'{what}' has no entry for {kind.value}, which updates the counter")
                ok = False
            if not ok or not by_kind:
                return None
            domains = tuple(field_domain(f) for f in by_kind[0][1])
            for (kind, fields), kind_line in zip(by_kind[1:], lines[1:], strict=True):
                other = tuple(field_domain(f) for f in fields)
                if other != domains:
                    self.problem(
                        kind_line,
                        f"'{what}' names different entities: {by_kind[0][0].value} ({', '.join(domains)}) "
                        f"vs {kind.value} ({', '.join(other)})",
                    )
                    return None
            by_kind.sort(key=lambda kv: _KIND_ORDER[kv[0]])
            return Key(domains, tuple(by_kind))
        fields = self.key_fields(node, updaters, what)
        if fields is None:
            return None
        available = frozenset(EventKind)
        for field in fields:
            available &= FIELDS[field].kinds
        if not available:
            self.problem(_line(node), f"the fields of '{what}' are never all present on one event kind")
            return None
        return Key(
            tuple(field_domain(f) for f in fields),
            tuple((kind, fields) for kind in _sorted_kinds(available)),
        )

    def key_fields(self, node: YNode, kinds: frozenset[EventKind], what: str) -> tuple[str, ...] | None:
        items = self.scalars(node, f"'{what}' must be a field, a list of fields, or a mapping of event kind to those")
        if items is None:
            return None
        fields: list[str] = []
        ok = True
        for item in items:
            field = self.field(_word(item).strip(), _line(item))
            if field is None:
                ok = False
                continue
            spec = FIELDS[field]
            if spec.type not in (FieldType.IDENTIFIER, FieldType.STRING):
                self.problem(
                    _line(item),
                    f"key field '{field}' is a {spec.type.value} field; key fields must be identifier or string fields",
                )
                ok = False
                continue
            if field in fields:
                self.problem(_line(item), f"key field '{field}' is listed twice")
                ok = False
                continue
            for kind in _sorted_kinds(kinds - spec.kinds):
                self.problem(
                    _line(item),
                    f"key field '{field}' is not available on {kind.value} events (only on {_kinds_text(spec.kinds)})",
                )
                ok = False
                break
            fields.append(field)
        return tuple(fields) if ok else None

    def read_on(self, node: YNode | None, key: Key | None, updaters: frozenset[EventKind]) -> frozenset[EventKind]:
        if key is None:
            return frozenset()
        if node is None:
            return key.kinds
        items = self.scalars(node, "'read_on' must be an event kind or a list of event kinds")
        kinds: set[EventKind] = set()
        for item in items or ():
            kind = self.kind(_word(item), _line(item), " in 'read_on'")
            if kind is None:
                continue
            if kind not in key.kinds:
                self.problem(_line(item), f"read_on: the key is not available on {kind.value} events")
                continue
            kinds.add(kind)
        missing = updaters - kinds
        if items and missing:
            self.problem(
                _line(node),
                f"read_on must include every kind that updates the counter; missing {_kinds_text(missing)}",
            )
        return frozenset(kinds)

    # ---------------------------------------------------------------- where

    def where_clause(self, node: YMap, updaters: frozenset[EventKind]) -> tuple[tuple[EventKind, Filter], ...]:
        value = node.get("where")
        if value is None:
            return ()
        if isinstance(value, YScalar) and isinstance(value.value, str) and value.value.strip():
            condition = Filter(value.value.strip(), self.file, _line(value))
            return tuple((kind, condition) for kind in _sorted_kinds(updaters))
        if isinstance(value, YMap):
            out: list[tuple[EventKind, Filter]] = []
            for kind_node, item in value.items:
                kind_line = kind_node.line
                kind = self.kind(str(kind_node.value), kind_line, " in 'where'")
                if kind is None:
                    continue
                if kind not in updaters:
                    self.problem(kind_line, f"where for {kind.value}, but {kind.value} does not update the counter")
                    continue
                if not isinstance(item, YScalar) or not isinstance(item.value, str) or not item.value.strip():
                    self.problem(
                        _line(item), f"where for {kind.value} must be a condition string, got {describe(item)}"
                    )
                    continue
                out.append((kind, Filter(item.value.strip(), self.file, _line(item))))
            out.sort(key=lambda kv: _KIND_ORDER[kv[0]])
            return tuple(out)
        self.problem(
            _line(value),
            f"'where' must be a condition string or a mapping of event kind to condition, got {describe(value)}",
        )
        return ()

    # -------------------------------------------------------------- options

    def undo_on_block(self, node: YMap, aggregate: Aggregate | None, windows: tuple[Window, ...]) -> bool:
        value = node.get("undo_on_block")
        if value is None:
            return False
        undo = value.value if isinstance(value, YScalar) else None
        if not isinstance(undo, bool):
            self.problem(_line(value), f"undo_on_block must be true or false, got {describe(value)}")
            return False
        if undo and aggregate not in (Aggregate.COUNT, Aggregate.SUM):
            self.problem(_line(value), "undo_on_block needs aggregate count or sum(FIELD)")
        elif undo and windows and [w.label for w in windows] != [ALL]:
            self.problem(_line(value), "undo_on_block needs windows: [all]")
        return undo

    def exact_up_to(self, node: YMap, aggregate: Aggregate | None) -> int:
        value = node.get("exact_up_to")
        if value is None:
            return DEFAULT_EXACT_UP_TO
        if aggregate is not Aggregate.DISTINCT:
            self.problem(self.line_of(node, "exact_up_to"), "exact_up_to applies only to distinct(FIELD)")
            return DEFAULT_EXACT_UP_TO
        number = value.value if isinstance(value, YScalar) else None
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_EXACT_UP_TO:
            self.problem(
                _line(value), f"exact_up_to must be a whole number from 1 to {MAX_EXACT_UP_TO}, got {describe(value)}"
            )
            return DEFAULT_EXACT_UP_TO
        return number

    def retain(self, node: YMap, aggregate: Aggregate | None, windows: tuple[Window, ...]) -> int:
        value = node.get("retain")
        if value is None:
            return DEFAULT_RETAIN_DAYS * 86400
        if aggregate is not Aggregate.IDLE_DAYS and not any(w.all_time for w in windows):
            self.problem(self.line_of(node, "retain"), "retain applies only with window 'all' or aggregate idle_days")
            return DEFAULT_RETAIN_DAYS * 86400
        match = _DAYS.fullmatch(_word(value).strip()) if isinstance(value, YScalar) else None
        if match is None or int(match.group(1)) > MAX_RETAIN_DAYS:
            self.problem(_line(value), f"retain must be Nd, from 1d to {MAX_RETAIN_DAYS}d")
            return DEFAULT_RETAIN_DAYS * 86400
        return int(match.group(1)) * 86400

    # -------------------------------------------------------------- read_as

    def read_as_list(self, node: YNode | None, key: Key | None) -> tuple[ReadAs, ...]:
        if node is None:
            return ()
        if not isinstance(node, YSeq) or not node.items:
            self.problem(_line(node), "'read_as' must be a list of {name, key} mappings")
            return ()
        prefix = self.where
        out: list[ReadAs] = []
        for item in node.items:
            self.where = prefix
            if not isinstance(item, YMap):
                self.problem(_line(item), "'read_as' must be a list of {name, key} mappings")
                continue
            alias = self.name(item.get("name"), item.line, "read_as")
            if alias is None:
                continue
            self.where = f"{prefix}read_as '{alias}': "
            errors_before = len(self.problems)
            for k, _ in item.items:
                if k.value not in _READ_AS_KEYS:
                    self.unknown_key(k, _READ_AS_KEYS)
            alias_key = self.key(item.get("key"), self.line_of(item, "key"), frozenset(), "key", required=True)
            if alias_key is not None and key is not None and alias_key.domains != key.domains:
                self.problem(
                    self.line_of(item, "key"),
                    f"the key names a different entity than the counter's key "
                    f"({', '.join(alias_key.domains)} vs {', '.join(key.domains)})",
                )
                continue
            read_on = self.read_on(item.get("read_on"), alias_key, frozenset())
            description = self.text(item.get("description"), "description")
            if alias_key is None or len(self.problems) > errors_before:
                continue
            out.append(ReadAs(alias, alias_key, read_on, description, item.line))
        self.where = prefix
        return tuple(out)

    # --------------------------------------------------------------- values

    def value_infos(self, counters: list[Counter]) -> tuple[ValueInfo, ...]:
        values: list[ValueInfo] = []
        produced: dict[str, Counter] = {}

        def add(name: str, counter: Counter, window: Window, kinds: frozenset[EventKind], text: str) -> None:
            owner = produced.get(name)
            if owner is not None:
                self.problem(
                    counter.line,
                    f"counter '{counter.name}': value name '{name}' is already produced by counter "
                    f"'{owner.name}' (line {owner.line})",
                )
                return
            produced[name] = counter
            values.append(ValueInfo(name, counter.name, window, kinds, text))

        for counter in counters:
            for window in counter.windows:
                add(f"{counter.name}_{window.label}", counter, window, counter.read_on, counter.description)
            for alias in counter.read_as:
                text = alias.description or f"{counter.description} (counter '{counter.name}' read for another key)"
                for window in counter.windows:
                    add(f"{alias.name}_{window.label}", counter, window, alias.read_on, text)
        return tuple(values)
