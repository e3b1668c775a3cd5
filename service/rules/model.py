"""The typed rule model: what the loader produces and the compiler, the engine
and the reference evaluator (tests/reference_evaluator.py) consume.

Every value here is frozen and already validated: names resolve, types agree,
and each comparison has a single field or counter on its left.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeAlias

from service.domain import EventKind, Outcome
from service.pipeline.breakers import Breaker, BreakerWatch
from service.pipeline.facts import ALL_KINDS, FieldType
from service.pipeline.outcome import Appeal
from service.riskdata.lists import ListSpec


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    SHADOW = "shadow"


@dataclass(frozen=True, slots=True)
class CounterInfo:
    """A declared velocity counter rules can read by its bare name. Its value is a number."""

    name: str
    kinds: frozenset[EventKind] = ALL_KINDS
    description: str = ""


def counters_from_names(names: Iterable[str]) -> dict[str, CounterInfo]:
    """`{name: CounterInfo(name)}` for counter names kept for every event kind."""
    if isinstance(names, str):
        raise TypeError("counters_from_names needs an iterable of names, not one string")
    return {name: CounterInfo(name) for name in names}


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A request field from `service.pipeline.facts.FIELDS`, by its dotted name."""

    name: str
    type: FieldType

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class CounterRef:
    """A declared counter, by its bare name. Always a number."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Number:
    """A numeric constant. Every number is an IEEE double, as in the engine."""

    value: float

    def __str__(self) -> str:
        return format_number(self.value)


@dataclass(frozen=True, slots=True)
class Text:
    value: str

    def __str__(self) -> str:
        return f'"{self.value}"'


class ArithOp(enum.StrEnum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"


@dataclass(frozen=True, slots=True)
class Arith:
    op: ArithOp
    left: NumExpr
    right: NumExpr

    def __str__(self) -> str:
        return f"({self.left} {self.op.value} {self.right})"


NumRef: TypeAlias = FieldRef | CounterRef
NumExpr: TypeAlias = FieldRef | CounterRef | Number | Arith


class CmpOp(enum.StrEnum):
    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="

    def negated(self) -> CmpOp:
        return _NEGATED[self]

    def flipped(self) -> CmpOp:
        """The operator with its operands swapped: `a < b` is `b > a`."""
        return _FLIPPED[self]


_NEGATED = {
    CmpOp.EQ: CmpOp.NE,
    CmpOp.NE: CmpOp.EQ,
    CmpOp.LT: CmpOp.GE,
    CmpOp.GE: CmpOp.LT,
    CmpOp.GT: CmpOp.LE,
    CmpOp.LE: CmpOp.GT,
}
_FLIPPED = {
    CmpOp.EQ: CmpOp.EQ,
    CmpOp.NE: CmpOp.NE,
    CmpOp.LT: CmpOp.GT,
    CmpOp.GT: CmpOp.LT,
    CmpOp.LE: CmpOp.GE,
    CmpOp.GE: CmpOp.LE,
}


# ------------------------------------------------------------ conditions


@dataclass(frozen=True, slots=True)
class NumCompare:
    """`left op right`: a number field or counter against a number expression."""

    left: NumRef
    op: CmpOp
    right: NumExpr


@dataclass(frozen=True, slots=True)
class TextCompare:
    """`left == right` or `left != right` between a string field and a string or another string field."""

    left: FieldRef
    op: CmpOp
    right: Text | FieldRef


@dataclass(frozen=True, slots=True)
class Flag:
    """A yes/no field tested for `value`: `payer.non_local` is Flag(payer.non_local, True)."""

    field: FieldRef
    value: bool


@dataclass(frozen=True, slots=True)
class NumIn:
    ref: NumRef
    values: tuple[float, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class TextIn:
    ref: FieldRef
    values: tuple[str, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class ListCheck:
    """One watchlist lookup: is the value of `field` on list `list_name`?"""

    list_name: str
    field: str

    def __str__(self) -> str:
        return f"{self.field} in list.{self.list_name}"


@dataclass(frozen=True, slots=True)
class ListIn:
    ref: FieldRef
    list_name: str
    negated: bool

    @property
    def check(self) -> ListCheck:
        return ListCheck(self.list_name, self.ref.name)


class PatternKind(enum.StrEnum):
    STARTSWITH = "startswith"
    MATCHES = "matches"


@dataclass(frozen=True, slots=True)
class Pattern:
    """A validated string pattern, with its two equivalent compiled forms."""

    kind: PatternKind
    source: str  # the prefix (startswith) or the pattern text (matches) as written
    durable: str  # durable_rules `$mt` syntax (Lua-style classes, whole-string match)
    python: str  # Python `re` syntax for re.fullmatch(..., re.DOTALL)


@dataclass(frozen=True, slots=True)
class Match:
    ref: FieldRef
    pattern: Pattern


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Condition, ...]


Atom: TypeAlias = NumCompare | TextCompare | Flag | NumIn | TextIn | ListIn | Match
Condition: TypeAlias = NumCompare | TextCompare | Flag | NumIn | TextIn | ListIn | Match | Not | And | Or


def atoms(condition: Condition) -> Iterator[Atom]:
    """The primitive tests of a condition, left to right, through and / or / not: the one walk
    of the tree that checking, evidence, benchmarks and tests share."""
    if isinstance(condition, And | Or):
        for item in condition.items:
            yield from atoms(item)
    elif isinstance(condition, Not):
        yield from atoms(condition.item)
    else:
        yield condition


def operands(expr: NumExpr | Text | FieldRef) -> Iterator[FieldRef | CounterRef | Number | Text]:
    """The leaves of a value expression (`0.8 * inflow_fen_30m`: 0.8, inflow_fen_30m), left to right."""
    if isinstance(expr, Arith):
        yield from operands(expr.left)
        yield from operands(expr.right)
    else:
        yield expr


# A value a rule reads, shown as evidence: a field, a counter or a list lookup.
Read: TypeAlias = FieldRef | CounterRef | ListCheck


def read_name(read: Read) -> str:
    return str(read)


# -------------------------------------------------------------- reasons


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str
    format: str = ""  # "" (as is), "yuan" (fen shown in yuan), "days" / "days_ago" (whole days; templates.py)


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[str | Placeholder, ...]

    @property
    def placeholders(self) -> tuple[Placeholder, ...]:
        return tuple(p for p in self.parts if isinstance(p, Placeholder))


# ----------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    on: tuple[EventKind, ...]
    when: Condition
    when_text: str
    outcome: Outcome  # WARN or BLOCK
    reason_zh: Template  # what is said, the appeal (if any) included
    reason_en: Template
    reads: tuple[Read, ...]  # in order of first appearance in `when`
    mode: Mode = Mode.ENFORCE
    priority: int = 100
    description: str = ""
    owner: str = ""
    enabled: bool = True
    basis: str = ""
    file: str = ""
    line: int = 0
    # The appeal route appended to both reason texts (the rule's own `appeal:` or its file's);
    # every enforced block rule has one (Art 32), a warn rule never.
    appeal: Appeal | None = None
    # The rule's breaker (its own `breaker:` or its file's), block rules only; None: none.
    breaker: Breaker | None = None

    @property
    def shadow(self) -> bool:
        return self.mode is Mode.SHADOW

    @property
    def identity(self) -> str:
        """`<id>@<12 hex>`: the rule's id and a hash of what it blocks and how its breaker guards it
        (event kinds, condition, outcome, breaker), the key of its breaker's state. An edit of the
        condition or the breaker gives a new identity, so a demoted rule is re-armed by fixing it;
        its texts, priority, mode, another rule or a comment do not change it."""
        breaker = self.breaker
        definition = {
            "id": self.id,
            "on": sorted(kind.value for kind in self.on),
            "when": " ".join(self.when_text.split()),
            "outcome": int(self.outcome),
            "breaker": [breaker.share_ppm, breaker.window_seconds, breaker.min_events] if breaker else None,
        }
        text = json.dumps(definition, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return f"{self.id}@{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"

    @property
    def watched(self) -> bool:
        """Whether the rule's breaker counts it: an enabled, enforced block rule with a breaker."""
        return self.breaker is not None and self.enabled and not self.shadow and self.outcome is Outcome.BLOCK

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every rule of a rules directory, validated; `revision` identifies the files' content."""

    revision: str
    rules: tuple[Rule, ...]
    files: tuple[str, ...]
    counters: Mapping[str, CounterInfo] = field(default_factory=dict)
    lists: Mapping[str, ListSpec] = field(default_factory=dict)

    @property
    def enabled_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    @property
    def breaker_watches(self) -> tuple[BreakerWatch, ...]:
        """The rules whose breakers count (service.pipeline.breakers), in file order."""
        return tuple(
            BreakerWatch(r.id, r.identity, frozenset(r.on), r.breaker)
            for r in self.rules
            if r.watched and r.breaker is not None
        )

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


# ------------------------------------------------------------ formatting


def format_number(value: float) -> str:
    """A number as a clerk reads it: 4, 0.8, 1500000 (no exponent, no trailing .0)."""
    if isinstance(value, bool):  # pragma: no cover - guarded by callers
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e17:
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        # The shortest digits that round-trip, written out without an exponent.
        text = format(Decimal(text), "f")
    return text


def format_value(value: object) -> str:
    """Evidence text for a fact or counter value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    return str(value)
