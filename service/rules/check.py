"""Resolve and type-check a parsed `when` condition into the typed rule model.

Names resolve against the field catalogue (`service.pipeline.facts.FIELDS`), the
declared counters and the declared watchlists (`service.riskdata.lists.ListSpec`, by
name), for the rule's event kinds. Every problem found is collected (not
just the first), each as one message.

The same checker types a counter's `where` filter (service.rules.filters),
in its fields-only mode: no counters, no lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service.domain import EventKind
from service.errors import NegatedPatternError, PatternError
from service.pipeline.facts import FIELDS, FieldType
from service.riskdata.lists import ListSpec
from service.rules import expr as ast
from service.rules.logic import nnf
from service.rules.model import (
    And,
    Arith,
    ArithOp,
    CmpOp,
    Condition,
    CounterInfo,
    CounterRef,
    FieldRef,
    Flag,
    ListIn,
    Match,
    Not,
    Number,
    NumCompare,
    NumExpr,
    NumIn,
    Or,
    Pattern,
    PatternKind,
    Read,
    Text,
    TextCompare,
    TextIn,
    atoms,
    operands,
)
from service.rules.patterns import matches_pattern, startswith_pattern, text_problem
from service.suggest import suggest, suggest_value

MAX_ABS_NUMBER = 1e15
MAX_ARITHMETIC = 8

_TYPE_WORD = {
    FieldType.NUMBER: "number",
    FieldType.STRING: "string",
    FieldType.BOOL: "yes/no",
    FieldType.IDENTIFIER: "identifier",
}


@dataclass(slots=True)
class _Value:
    """A typed operand: kind is number, string, bool or identifier."""

    kind: str
    node: NumExpr | Text | FieldRef | bool
    text: str  # how to name it in a message


@dataclass(slots=True)
class CheckResult:
    condition: Condition | None
    reads: tuple[Read, ...]
    problems: list[str] = field(default_factory=list)


def kinds_text(kinds: Sequence[EventKind] | frozenset[EventKind]) -> str:
    ordered = [k for k in EventKind if k in kinds]
    return ", ".join(k.value for k in ordered)


def choice_problem(field_name: str, value: str) -> str | None:
    """Why `value` can never be the value of `field_name` (an enum-like field), or None."""
    spec = FIELDS.get(field_name)
    if spec is None or spec.choices is None or value in spec.choices:
        return None
    guess = suggest_value(value, spec.choices)
    if guess is not None:
        return f"'{value}' is not a value of {field_name}, did you mean '{guess}'?"
    return f"'{value}' is not a value of {field_name} (one of {choices_text(spec.choices)})"


def choices_text(choices: frozenset[str]) -> str:
    return ", ".join(f"'{c}'" for c in sorted(choices))


class Checker:
    """Types one condition. `fields_only` (a counter's `where`): no counters, no lists."""

    def __init__(
        self,
        on: Sequence[EventKind],
        counters: Mapping[str, CounterInfo],
        lists: Mapping[str, ListSpec],
        *,
        fields_only: bool = False,
    ) -> None:
        self.on = tuple(on)
        self.counters = counters
        self.lists = lists
        self.fields_only = fields_only
        self.problems: list[str] = []
        self._reported_names: set[str] = set()

    # ------------------------------------------------------------ names

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def _fields_for_kinds(self) -> list[str]:
        return [name for name, spec in FIELDS.items() if set(self.on) <= spec.kinds]

    def resolve(self, name: str) -> FieldRef | CounterRef | None:
        if name.startswith("list."):
            if self.fields_only:
                self.problem(f"a counter's where cannot use lists ('{name}'): it reads request fields only")
            else:
                self.problem(f"'{name}' can only follow 'in', as in 'transfer.payee_account in {name}'")
            return None
        spec = FIELDS.get(name)
        if spec is not None and spec.shown_only is not None:
            if name not in self._reported_names:
                self._reported_names.add(name)
                self.problem(f"'{name}' {spec.shown_only}")
            return None
        if spec is not None:  # a field wins over a counter of the same bare name
            missing = [k for k in self.on if k not in spec.kinds]
            if missing:
                self._unavailable(name, "field", missing, spec.kinds)
                return None
            return FieldRef(name, spec.type)
        if self.fields_only:
            self._not_a_field(name)
            return None
        info = self.counters.get(name)
        if info is not None and "." not in name:
            missing = [k for k in self.on if k not in info.kinds]
            if missing:
                self._unavailable(name, "counter", missing, info.kinds)
                return None
            return CounterRef(name)
        if name in self._reported_names:
            return None
        self._reported_names.add(name)
        candidates = list(FIELDS) + list(self.counters)
        guess = suggest(name, candidates, preferred=self._fields_for_kinds())
        what = "field" if "." in name else "counter"
        hint = f", did you mean '{guess}'?" if guess else ""
        self.problem(f"unknown {what} '{name}'{hint}")
        return None

    def _not_a_field(self, name: str) -> None:
        if name in self._reported_names:
            return
        self._reported_names.add(name)
        guess = suggest(name, list(FIELDS), preferred=self._fields_for_kinds())
        hint = f", did you mean '{guess}'?" if guess else ""
        if "." in name:
            self.problem(f"unknown field '{name}'{hint}")
        else:
            self.problem(f"'{name}' is not a field (a counter's where reads request fields only){hint}")

    def _unavailable(self, name: str, what: str, missing: list[EventKind], available: frozenset[EventKind]) -> None:
        if name in self._reported_names:
            return
        self._reported_names.add(name)
        where = kinds_text(available) or "no event kind"
        leaf = name.rsplit(".", 1)[-1]
        alternative = f"person.{leaf}"
        hint = (
            f"; use '{alternative}'"
            if "." in name and alternative in FIELDS and set(self.on) <= FIELDS[alternative].kinds
            else ""
        )
        if self.fields_only:
            consequence = (
                "the where can never hold"
                if len(missing) == len(self.on)
                else "give 'where' per event kind (a mapping of event kind to condition)"
            )
            self.problem(
                f"{what} '{name}' does not exist on {kinds_text(missing)} events (only on {where}): {consequence}{hint}"
            )
            return
        if len(missing) == len(self.on):
            self.problem(
                f"{what} '{name}' does not exist on {kinds_text(missing)} events (only on {where}): "
                f"the rule can never fire on its declared event kinds"
            )
            return
        self.problem(
            f"{what} '{name}' does not exist on {kinds_text(missing)} events (only on {where}): "
            f"narrow 'on' or split the rule{hint}"
        )

    # ------------------------------------------------------------ values

    def value(self, node: ast.Expr) -> _Value | None:
        if isinstance(node, ast.Name):
            ref = self.resolve(node.name)
            if ref is None:
                return None
            if isinstance(ref, CounterRef):
                return _Value("number", ref, f"counter '{ref.name}'")
            word = _TYPE_WORD[ref.type]
            kind = {"yes/no": "bool"}.get(word, word)
            return _Value(kind, ref, f"{word} '{ref.name}'")
        if isinstance(node, ast.NumberLit):
            if abs(node.value) > MAX_ABS_NUMBER:
                self.problem(f"number {node.text} is too large (at most 10^15)")
                return None
            return _Value("number", Number(node.value), f"number {node.text}")
        if isinstance(node, ast.StringLit):
            problem = text_problem(node.value)
            if problem:
                self.problem(f'string "{node.value}" {problem}, which the engine cannot compare reliably')
                return None
            return _Value("string", Text(node.value), f'string "{node.value}"')
        if isinstance(node, ast.BoolLit):
            return _Value("bool", node.value, "true" if node.value else "false")
        if isinstance(node, ast.Negate):
            operand = self.number(node.operand, "'-'")
            if operand is None:
                return None
            if isinstance(operand, Number):
                return _Value("number", Number(-operand.value), "number expression")
            return _Value("number", Arith(ArithOp.MUL, operand, Number(-1.0)), "number expression")
        if isinstance(node, ast.Binary):
            return self.arithmetic(node)
        self.problem("a condition (comparison, 'and', 'or', 'not', 'in') cannot be used as a value")
        return None

    def number(self, node: ast.Expr, where: str) -> NumExpr | None:
        value = self.value(node)
        if value is None:
            return None
        if value.kind != "number":
            self._not_number(value, where)
            return None
        assert isinstance(value.node, FieldRef | CounterRef | Number | Arith)
        return value.node

    def _not_number(self, value: _Value, where: str) -> None:
        if value.kind == "identifier":
            self._identifier_misuse(value)
        else:
            self.problem(f"{where} needs numbers, but {value.text} is not a number")

    def arithmetic(self, node: ast.Binary) -> _Value | None:
        left = self.number(node.left, f"'{node.op}'")
        right = self.number(node.right, f"'{node.op}'")
        if left is None or right is None:
            return None
        op = ArithOp(node.op)
        if op is ArithOp.DIV and not (isinstance(right, Number) and right.value != 0):
            self.problem("'/' can only divide by a non-zero number constant, e.g. 'x / 100'")
            return None
        if isinstance(left, Number) and isinstance(right, Number):
            folded = _fold(op, left.value, right.value)
            if abs(folded) > MAX_ABS_NUMBER:
                self.problem("a constant expression is too large (at most 10^15)")
                return None
            return _Value("number", Number(folded), "number expression")
        return _Value("number", Arith(op, left, right), "number expression")

    def _identifier_misuse(self, value: _Value) -> None:
        assert isinstance(value.node, FieldRef)
        self.problem(
            f"'{value.node.name}' is an identifier: it can only be tested with 'in list.NAME' "
            "(identifiers are never compared or shown)"
        )

    # -------------------------------------------------------- conditions

    def condition(self, node: ast.Expr) -> Condition | None:
        if isinstance(node, ast.Logical):
            items = [self.condition(item) for item in node.items]
            if any(item is None for item in items):
                return None
            checked = tuple(item for item in items if item is not None)
            return And(checked) if node.op == "and" else Or(checked)
        if isinstance(node, ast.NotOp):
            inner = self.condition(node.operand)
            return None if inner is None else Not(inner)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.InValues):
            return self.in_values(node)
        if isinstance(node, ast.InList):
            return self.in_list(node)
        if isinstance(node, ast.PatternTest):
            return self.pattern(node)
        if isinstance(node, ast.BoolLit):
            self.problem("a condition cannot be the constant true or false")
            return None
        value = self.value(node)
        if value is None:
            return None
        if value.kind == "bool":
            assert isinstance(value.node, FieldRef)
            return Flag(value.node, True)
        if value.kind == "identifier":
            self._identifier_misuse(value)
        elif value.kind == "number":
            example = f"'{value.node} >= 3'" if isinstance(value.node, FieldRef | CounterRef) else "'x >= 3'"
            self.problem(f"{value.text} is not a yes/no test: compare it, e.g. {example}")
        else:
            self.problem(f"{value.text} is not a yes/no test: compare it with == or !=")
        return None

    def compare(self, node: ast.Compare) -> Condition | None:
        left = self.value(node.left)
        right = self.value(node.right)
        if left is None or right is None:
            return None
        op = CmpOp(node.op)
        for side in (left, right):
            if side.kind == "identifier":
                self._identifier_misuse(side)
                return None
        if left.kind == "bool" or right.kind == "bool":
            return self._compare_bool(left, op, right)
        if left.kind != right.kind:
            self.problem(f"cannot compare {left.text} with {right.text}")
            return None
        if left.kind == "string":
            return self._compare_text(left, op, right)
        return self._compare_numbers(left, op, right)

    def _compare_bool(self, left: _Value, op: CmpOp, right: _Value) -> Condition | None:
        if left.kind != right.kind:
            other = right if left.kind == "bool" else left
            this = left if left.kind == "bool" else right
            self.problem(f"cannot compare {this.text} with {other.text}")
            return None
        if op not in (CmpOp.EQ, CmpOp.NE):
            self.problem(f"cannot use '{op.value}' on yes/no values: they compare only with == and !=")
            return None
        if isinstance(left.node, FieldRef) and isinstance(right.node, bool):
            field_ref, constant = left.node, right.node
        elif isinstance(right.node, FieldRef) and isinstance(left.node, bool):
            field_ref, constant = right.node, left.node
        elif isinstance(left.node, FieldRef):
            self.problem("compare a yes/no field only with true or false")
            return None
        else:
            self.problem("the comparison has no field or counter: it compares two constants")
            return None
        return Flag(field_ref, constant if op is CmpOp.EQ else not constant)

    def _compare_text(self, left: _Value, op: CmpOp, right: _Value) -> Condition | None:
        if op not in (CmpOp.EQ, CmpOp.NE):
            subject = left if isinstance(left.node, FieldRef) else right
            self.problem(f"cannot use '{op.value}' on {subject.text}: strings compare only with == and !=")
            return None
        field_ref: FieldRef
        other: Text | FieldRef
        if isinstance(left.node, FieldRef):
            assert isinstance(right.node, Text | FieldRef)
            field_ref, other = left.node, right.node
        elif isinstance(right.node, FieldRef):
            assert isinstance(left.node, Text)
            field_ref, other = right.node, left.node
        else:
            self.problem("the comparison has no field or counter: it compares two constants")
            return None
        if isinstance(other, Text) and not self._check_choices(field_ref, [other.value]):
            return None
        return TextCompare(field_ref, op, other)

    def _check_choices(self, ref: FieldRef, values: Sequence[str]) -> bool:
        """False (with a problem each) if a value is not one an enum-like field can take."""
        ok = True
        for value in values:
            problem = choice_problem(ref.name, value)
            if problem is not None:
                self.problem(problem)
                ok = False
        return ok

    def _compare_numbers(self, left: _Value, op: CmpOp, right: _Value) -> Condition | None:
        lnode, rnode = left.node, right.node
        assert isinstance(lnode, FieldRef | CounterRef | Number | Arith)
        assert isinstance(rnode, FieldRef | CounterRef | Number | Arith)
        if isinstance(lnode, FieldRef | CounterRef):
            ref, other, final_op = lnode, rnode, op
        elif isinstance(rnode, FieldRef | CounterRef):
            ref, other, final_op = rnode, lnode, op.flipped()
        elif isinstance(lnode, Number) and isinstance(rnode, Number):
            self.problem("the comparison has no field or counter: it compares two constants")
            return None
        else:
            self.problem(
                "a comparison needs a single field or counter on one side, "
                "e.g. 'transfer.amount_fen >= 0.8 * inflow_fen_30m'"
            )
            return None
        if _arith_count(other) > MAX_ARITHMETIC:
            self.problem(f"the arithmetic is too long (at most {MAX_ARITHMETIC} operations per comparison)")
            return None
        return NumCompare(ref, final_op, other)

    def in_values(self, node: ast.InValues) -> Condition | None:
        value = self.value(node.value)
        if value is None:
            return None
        if value.kind == "identifier":
            self._identifier_misuse(value)
            return None
        if value.kind == "bool":
            self.problem(f"{value.text} is yes/no: test it alone or with 'not', not with 'in [..]'")
            return None
        if not isinstance(value.node, FieldRef | CounterRef):
            self.problem("'in [..]' needs a single field or counter on its left")
            return None
        numbers: list[float] = []
        texts: list[str] = []
        ok = True
        for item in node.items:
            if isinstance(item, ast.NumberLit) and value.kind == "number":
                if item.value not in numbers:
                    numbers.append(item.value)
            elif isinstance(item, ast.StringLit) and value.kind == "string":
                problem = text_problem(item.value)
                if problem:
                    self.problem(f'string "{item.value}" {problem}, which the engine cannot compare reliably')
                    ok = False
                elif item.value not in texts:
                    texts.append(item.value)
            else:
                shown = (
                    f"number {item.text}"
                    if isinstance(item, ast.NumberLit)
                    else f'string "{item.value}"'
                    if isinstance(item, ast.StringLit)
                    else ("true" if item.value else "false")
                )
                self.problem(f"cannot compare {value.text} with {shown} in the list")
                ok = False
        if not ok:
            return None
        if value.kind == "number":
            return NumIn(value.node, tuple(numbers), node.negated)
        assert isinstance(value.node, FieldRef)
        if not self._check_choices(value.node, texts):
            return None
        return TextIn(value.node, tuple(texts), node.negated)

    def in_list(self, node: ast.InList) -> Condition | None:
        if self.fields_only:
            self.problem(f"a counter's where cannot use lists ('list.{node.list_name}'): it reads request fields only")
            return None
        spec = self.lists.get(node.list_name)
        if spec is None:
            self.problem(unknown_list_problem(node.list_name, self.lists))
            return None
        value = self.value(node.value)
        if value is None:
            return None
        if not isinstance(value.node, FieldRef) or value.kind not in ("identifier", "string"):
            self.problem(f"only identifier and string fields can be looked up in a list, not {value.text}")
            return None
        if not spec.accepts_field(value.node.name):
            self.problem(list_kind_problem(spec, value.node.name, self.on))
            return None
        return ListIn(value.node, node.list_name, node.negated)

    def pattern(self, node: ast.PatternTest) -> Condition | None:
        value = self.value(node.value)
        try:
            pattern = startswith_pattern(node.pattern) if node.kind == "startswith" else matches_pattern(node.pattern)
        except PatternError as exc:
            self.problem(str(exc))
            return None
        if value is None:
            return None
        if value.kind == "identifier":
            self._identifier_misuse(value)
            return None
        if value.kind != "string" or not isinstance(value.node, FieldRef):
            self.problem(f"'{node.kind}' needs a string field on its left, not {value.text}")
            return None
        choices = FIELDS[value.node.name].choices
        if choices is not None and not any(_pattern_matches(pattern, c) for c in choices):
            self.problem(
                f"'{value.node.name} {node.kind} \"{node.pattern}\"' matches none of its values "
                f"({choices_text(choices)}): it can never hold"
            )
            return None
        return Match(value.node, pattern)


def _pattern_matches(pattern: Pattern, text: str) -> bool:
    if pattern.kind is PatternKind.STARTSWITH:
        return text.startswith(pattern.source)
    return re.fullmatch(pattern.python, text, re.DOTALL) is not None


def unknown_list_problem(name: str, lists: Mapping[str, ListSpec]) -> str:
    if not lists:
        return f"unknown list '{name}' (no lists are declared: see lists.yaml)"
    guess = suggest(name, sorted(lists))
    hint = f", did you mean '{guess}'?" if guess else f" (declared lists: {', '.join(sorted(lists))})"
    return f"unknown list '{name}'{hint}"


def list_kind_problem(spec: ListSpec, field_name: str, on: Sequence[EventKind]) -> str:
    """`field_name` cannot be looked up in list `spec` (its kind holds another kind of value)."""
    fitting = [
        name
        for name, field_spec in FIELDS.items()
        if spec.accepts_field(name) and set(on) <= field_spec.kinds and field_spec.type in _LOOKUP_TYPES
    ]
    kind = spec.kind.value
    where = f"{kind} fields on {kinds_text(on)} events"
    hint = f"the {where}: {', '.join(fitting)}" if fitting else f"there are no {where}"
    return f"list '{spec.name}' is of kind '{kind}': '{field_name}' cannot be looked up in it ({hint})"


_LOOKUP_TYPES = (FieldType.IDENTIFIER, FieldType.STRING)


def _fold(op: ArithOp, left: float, right: float) -> float:
    if op is ArithOp.ADD:
        return left + right
    if op is ArithOp.SUB:
        return left - right
    if op is ArithOp.MUL:
        return left * right
    return left / right


def _arith_count(expr: NumExpr) -> int:
    if isinstance(expr, Arith):
        return 1 + _arith_count(expr.left) + _arith_count(expr.right)
    return 0


def collect_reads(condition: Condition) -> tuple[Read, ...]:
    """The values a condition reads, in order of first appearance."""
    out: list[Read] = []

    def add(read: Read) -> None:
        if read not in out:
            out.append(read)

    for atom in atoms(condition):
        if isinstance(atom, NumCompare | TextCompare):
            add(atom.left)
            for leaf in operands(atom.right):
                if isinstance(leaf, FieldRef | CounterRef):
                    add(leaf)
        elif isinstance(atom, Flag):
            add(atom.field)
        elif isinstance(atom, NumIn | TextIn | Match):
            add(atom.ref)
        else:
            add(atom.check)
    return tuple(out)


def check_condition(
    tree: ast.Expr,
    on: Sequence[EventKind],
    counters: Mapping[str, CounterInfo],
    lists: Mapping[str, ListSpec],
    *,
    fields_only: bool = False,
) -> CheckResult:
    """Type-check a parsed condition for a rule on `on`; problems are messages without location.

    `fields_only`: a counter's where, which reads request fields only (no counters, no lists).
    """
    checker = Checker(on, counters, lists, fields_only=fields_only)
    condition = checker.condition(tree)
    if condition is None or checker.problems:
        return CheckResult(None, (), checker.problems or ["the condition is invalid"])
    try:
        nnf(condition)
    except NegatedPatternError as exc:
        return CheckResult(None, (), [str(exc)])
    return CheckResult(condition, collect_reads(condition), [])
