"""Tokenizer and recursive-descent parser for `when` conditions.

The author's text is never evaluated: it is tokenized and parsed into the
small syntax tree below, which `service.rules.check` then resolves and
type-checks. Grammar (lowest precedence first):

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | test
    test       := sum [ compare_op sum
                      | "in" target | "not" "in" target
                      | "startswith" STRING | "matches" STRING ]
    target     := "[" literal ("," literal)* [","] "]" | list.NAME
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | atom
    atom       := NUMBER | STRING | "true" | "false" | NAME | "(" condition ")"

    compare_op := "==" | "!=" | "<" | "<=" | ">" | ">="
    NAME       := [A-Za-z_][A-Za-z0-9_]* ("." [A-Za-z_][A-Za-z0-9_]*)*
    NUMBER     := digits with optional "_" separators and fraction: 3, 0.8, 5_000_000
    STRING     := "..." or '...' on one line, taken literally (no escapes)

Columns are 1-based offsets into the condition text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TypeAlias

from service.errors import ConditionSyntaxError


class Tok(enum.Enum):
    NAME = "name"
    NUMBER = "number"
    STRING = "string"
    OP = "operator"
    KEYWORD = "keyword"
    END = "end"


KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "startswith", "matches"})
COMPARE_OPS = ("==", "!=", "<=", ">=", "<", ">")
_TWO_CHAR = ("==", "!=", "<=", ">=")
_ONE_CHAR = "<>+-*/()[],"
_HINTS = {
    "=": "use '==' to compare",
    "&": "use 'and'",
    "|": "use 'or'",
    "!": "use 'not' (or '!=')",
    "%": "there is no '%' operator",
}


@dataclass(frozen=True, slots=True)
class Token:
    kind: Tok
    text: str
    column: int


def _describe(token: Token) -> str:
    if token.kind is Tok.END:
        return "end of condition"
    if token.kind is Tok.STRING:
        return f"string {token.text}"
    return f"'{token.text}'"


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        col = i + 1
        if ch in " \t\r\n":
            i += 1
            continue
        if ch.isascii() and (ch.isalpha() or ch == "_"):
            j = i
            while True:
                while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                    j += 1
                if (
                    j + 1 < n
                    and text[j] == "."
                    and text[j + 1].isascii()
                    and (text[j + 1].isalpha() or text[j + 1] == "_")
                ):
                    j += 1
                    continue
                break
            word = text[i:j]
            tokens.append(Token(Tok.KEYWORD if word in KEYWORDS else Tok.NAME, word, col))
            i = j
            continue
        if (ch.isascii() and ch.isdigit()) or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            j = i
            while j < n and (text[j].isascii() and (text[j].isalnum() or text[j] in "._")):
                j += 1
            tokens.append(Token(Tok.NUMBER, text[i:j], col))
            i = j
            continue
        if ch in "\"'":
            end = text.find(ch, i + 1)
            newline = text.find("\n", i + 1)
            if end < 0 or (0 <= newline < end):
                raise ConditionSyntaxError(col, "string is not closed")
            tokens.append(Token(Tok.STRING, text[i : end + 1], col))
            i = end + 1
            continue
        if text.startswith(_TWO_CHAR, i) and text[i : i + 2] in _TWO_CHAR:
            tokens.append(Token(Tok.OP, text[i : i + 2], col))
            i += 2
            continue
        if ch in _ONE_CHAR:
            tokens.append(Token(Tok.OP, ch, col))
            i += 1
            continue
        hint = _HINTS.get(ch)
        raise ConditionSyntaxError(col, f"unexpected character '{ch}'" + (f": {hint}" if hint else ""))
    tokens.append(Token(Tok.END, "", len(text.rstrip()) + 1))
    return tokens


# ------------------------------------------------------------ syntax tree


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    column: int


@dataclass(frozen=True, slots=True)
class NumberLit:
    value: float
    text: str
    column: int


@dataclass(frozen=True, slots=True)
class StringLit:
    value: str
    column: int


@dataclass(frozen=True, slots=True)
class BoolLit:
    value: bool
    column: int


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Expr
    column: int


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * /
    left: Expr
    right: Expr
    column: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != < <= > >=
    left: Expr
    right: Expr
    column: int


@dataclass(frozen=True, slots=True)
class InValues:
    value: Expr
    items: tuple[NumberLit | StringLit | BoolLit, ...]
    negated: bool
    column: int


@dataclass(frozen=True, slots=True)
class InList:
    value: Expr
    list_name: str
    negated: bool
    column: int
    list_column: int


@dataclass(frozen=True, slots=True)
class PatternTest:
    kind: str  # startswith | matches
    value: Expr
    pattern: str
    column: int
    pattern_column: int


@dataclass(frozen=True, slots=True)
class NotOp:
    operand: Expr
    column: int


@dataclass(frozen=True, slots=True)
class Logical:
    op: str  # and | or
    items: tuple[Expr, ...]
    column: int


Expr: TypeAlias = (
    Name
    | NumberLit
    | StringLit
    | BoolLit
    | Negate
    | Binary
    | Compare
    | InValues
    | InList
    | PatternTest
    | NotOp
    | Logical
)


def column_of(expr: Expr) -> int:
    return expr.column


# ---------------------------------------------------------------- parser

MAX_DEPTH = 40


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind is not Tok.END:
            self.pos += 1
        return token

    def at(self, kind: Tok, text: str | None = None) -> bool:
        return self.tok.kind is kind and (text is None or self.tok.text == text)

    def expect_op(self, text: str, what: str) -> Token:
        if not self.at(Tok.OP, text):
            raise ConditionSyntaxError(self.tok.column, f"expected {what}, found {_describe(self.tok)}")
        return self.advance()

    def parse(self) -> Expr:
        if self.at(Tok.END):
            raise ConditionSyntaxError(1, "the condition is empty")
        expr = self.parse_or()
        if not self.at(Tok.END):
            token = self.tok
            if token.kind is Tok.OP and token.text == ")":
                raise ConditionSyntaxError(token.column, "')' without a matching '('")
            raise ConditionSyntaxError(
                token.column, f"expected 'and', 'or' or the end of the condition, found {_describe(token)}"
            )
        return expr

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionSyntaxError(self.tok.column, "the condition is nested too deeply")

    def parse_or(self) -> Expr:
        first = self.parse_and()
        items = [first]
        while self.at(Tok.KEYWORD, "or"):
            self.advance()
            items.append(self.parse_and())
        return first if len(items) == 1 else Logical("or", tuple(items), column_of(first))

    def parse_and(self) -> Expr:
        first = self.parse_not()
        items = [first]
        while self.at(Tok.KEYWORD, "and"):
            self.advance()
            items.append(self.parse_not())
        return first if len(items) == 1 else Logical("and", tuple(items), column_of(first))

    def parse_not(self) -> Expr:
        if self.at(Tok.KEYWORD, "not"):
            token = self.advance()
            self.nested()
            operand = self.parse_not()
            self.depth -= 1
            return NotOp(operand, token.column)
        return self.parse_test()

    def parse_test(self) -> Expr:
        left = self.parse_sum()
        token = self.tok
        if token.kind is Tok.OP and token.text in COMPARE_OPS:
            self.advance()
            right = self.parse_sum()
            if self.tok.kind is Tok.OP and self.tok.text in COMPARE_OPS:
                raise ConditionSyntaxError(self.tok.column, "comparisons cannot be chained: join them with 'and'")
            return Compare(token.text, left, right, token.column)
        if token.kind is Tok.KEYWORD and token.text == "in":
            self.advance()
            return self.parse_in_target(left, negated=False, column=token.column)
        if token.kind is Tok.KEYWORD and token.text == "not" and self.peek().text == "in":
            self.advance()
            self.advance()
            return self.parse_in_target(left, negated=True, column=token.column)
        if token.kind is Tok.KEYWORD and token.text in ("startswith", "matches"):
            self.advance()
            pattern = self.tok
            if pattern.kind is not Tok.STRING:
                raise ConditionSyntaxError(
                    pattern.column, f"expected a string after '{token.text}', found {_describe(pattern)}"
                )
            self.advance()
            return PatternTest(token.text, left, pattern.text[1:-1], token.column, pattern.column)
        return left

    def parse_in_target(self, value: Expr, *, negated: bool, column: int) -> Expr:
        token = self.tok
        if token.kind is Tok.NAME and token.text.startswith("list."):
            self.advance()
            name = token.text[len("list.") :]
            if "." in name:
                raise ConditionSyntaxError(token.column + 5, f"'{name}' is not a list name")
            return InList(value, name, negated, column, token.column)
        if not self.at(Tok.OP, "["):
            raise ConditionSyntaxError(token.column, f"expected '[' or list.NAME after 'in', found {_describe(token)}")
        self.advance()
        items: list[NumberLit | StringLit | BoolLit] = []
        while True:
            if self.at(Tok.OP, "]"):
                if not items:
                    raise ConditionSyntaxError(self.tok.column, "the list is empty")
                self.advance()
                break
            items.append(self.parse_literal())
            if self.at(Tok.OP, ","):
                self.advance()
                continue
            if not self.at(Tok.OP, "]"):
                raise ConditionSyntaxError(self.tok.column, f"expected ',' or ']', found {_describe(self.tok)}")
        return InValues(value, tuple(items), negated, column)

    def parse_literal(self) -> NumberLit | StringLit | BoolLit:
        token = self.tok
        sign = ""
        if self.at(Tok.OP, "-"):
            self.advance()
            sign = "-"
            if not self.at(Tok.NUMBER):
                raise ConditionSyntaxError(self.tok.column, "expected a number after '-'")
        token_now = self.tok
        if token_now.kind is Tok.NUMBER:
            self.advance()
            return self.number(token_now, sign, token.column)
        if token_now.kind is Tok.STRING:
            self.advance()
            return StringLit(token_now.text[1:-1], token_now.column)
        if token_now.kind is Tok.KEYWORD and token_now.text in ("true", "false"):
            self.advance()
            return BoolLit(token_now.text == "true", token_now.column)
        raise ConditionSyntaxError(
            token_now.column, f"list items must be numbers or strings, found {_describe(token_now)}"
        )

    def number(self, token: Token, sign: str, column: int) -> NumberLit:
        text = token.text
        valid = all(part.isdigit() for part in text.replace("_", "").split(".", 1)) and not (
            text.startswith("_") or text.endswith("_") or "__" in text or "._" in text or "_." in text
        )
        if text.count(".") > 1 or text.endswith(".") or text.startswith("."):
            valid = False
        if not valid:
            raise ConditionSyntaxError(token.column, f"'{text}' is not a number")
        try:
            value = float(Decimal(sign + text.replace("_", "")))
        except InvalidOperation:  # pragma: no cover - the checks above exclude it
            raise ConditionSyntaxError(token.column, f"'{text}' is not a number") from None
        return NumberLit(value, sign + text, column)

    def parse_sum(self) -> Expr:
        left = self.parse_product()
        while self.tok.kind is Tok.OP and self.tok.text in "+-":
            token = self.advance()
            right = self.parse_product()
            left = Binary(token.text, left, right, token.column)
        return left

    def parse_product(self) -> Expr:
        left = self.parse_unary()
        while self.tok.kind is Tok.OP and self.tok.text in "*/":
            token = self.advance()
            right = self.parse_unary()
            left = Binary(token.text, left, right, token.column)
        return left

    def parse_unary(self) -> Expr:
        if self.at(Tok.OP, "-"):
            token = self.advance()
            self.nested()
            operand = self.parse_unary()
            self.depth -= 1
            if isinstance(operand, NumberLit):
                return NumberLit(-operand.value, "-" + operand.text, token.column)
            return Negate(operand, token.column)
        return self.parse_atom()

    def parse_atom(self) -> Expr:
        token = self.tok
        if token.kind is Tok.NUMBER:
            self.advance()
            return self.number(token, "", token.column)
        if token.kind is Tok.STRING:
            self.advance()
            return StringLit(token.text[1:-1], token.column)
        if token.kind is Tok.NAME:
            self.advance()
            return Name(token.text, token.column)
        if token.kind is Tok.KEYWORD and token.text in ("true", "false"):
            self.advance()
            return BoolLit(token.text == "true", token.column)
        if token.kind is Tok.OP and token.text == "(":
            self.advance()
            self.nested()
            inner = self.parse_or()
            self.depth -= 1
            self.expect_op(")", "')'")
            return inner
        if token.kind is Tok.END:
            raise ConditionSyntaxError(token.column, "the condition ends too early: expected a value")
        raise ConditionSyntaxError(token.column, f"expected a value, found {_describe(token)}")


def parse_condition(text: str) -> Expr:
    """Parse a `when` condition; raises ConditionSyntaxError with a 1-based column."""
    return _Parser(text).parse()
