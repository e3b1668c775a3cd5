"""String patterns for `startswith` and `matches`, in the subset both engines agree on.

durable_rules' `$mt` matches the *whole* string against a pattern with
Lua-style escapes (`%d`, `%.`); a backslash pattern is accepted and silently
never matches. Rule authors write that syntax, restricted to what was
measured to behave exactly like Python's `re.fullmatch(..., re.DOTALL)`:

    .          any one character
    %d         an ASCII digit 0-9
    %x         the character x itself, for x in  . % [ ] ( ) { } | * + ?
    [...]      one of the listed ASCII letters, digits or '_'; ranges a-z, A-Z, 0-9
    ( ... )    a group;  a|b  alternatives
    * + ?      repetition of the previous item;  {n}  {m,n}  (n <= 20)
    other      itself (letters, digits, Chinese text, '-', ':', '/', space, ...)

Not allowed: backslashes, other classes (%a, %w, ... differ between the two
engines on non-ASCII text), negated sets `[^...]`, empty alternatives, quotes
and control characters. `startswith "44"` takes its prefix literally.
"""

from __future__ import annotations

import re

from service.errors import PatternError
from service.rules.model import Pattern, PatternKind

MAX_PATTERN_LENGTH = 200
MAX_REPEAT = 20
MAX_GROUP_DEPTH = 4
# Characters that need a `%` escape in durable patterns.
SPECIAL = frozenset(".%[](){}|*+?")
_QUANTIFIERS = frozenset("*+?{")
_SET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def text_problem(value: str) -> str | None:
    """Why `value` cannot be a string constant in a condition, or None.

    The engine sees strings JSON-escaped, so quotes, backslashes and control
    characters would silently change what patterns and equality see; U+FFFD
    is what the engine adapter substitutes for them in pattern tests.
    """
    for ch in value:
        if ch == '"':
            return "contains a double quote"
        if ch == "\\":
            return "contains a backslash"
        if ord(ch) < 0x20 or ch == "\x7f":
            return "contains a control character"
        if ch == "\ufffd":
            return "contains U+FFFD"
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return "contains a lone surrogate"
    return None


def durable_literal(text: str) -> str:
    """`text` as a durable pattern matching exactly itself."""
    return "".join("%" + ch if ch in SPECIAL else ch for ch in text)


def startswith_pattern(prefix: str) -> Pattern:
    if not prefix:
        raise PatternError("startswith needs a non-empty prefix")
    problem = text_problem(prefix)
    if problem:
        raise PatternError(f"the prefix {problem}")
    return Pattern(
        PatternKind.STARTSWITH,
        prefix,
        durable=durable_literal(prefix) + ".*",
        python=re.escape(prefix) + ".*",
    )


def alternatives_pattern(values: tuple[str, ...]) -> Pattern:
    """A pattern matching exactly one of `values` (all non-empty, already checked with text_problem)."""
    durable = "|".join(durable_literal(v) for v in values)
    python = "|".join(re.escape(v) for v in values)
    return Pattern(PatternKind.MATCHES, durable, durable=durable, python=f"(?:{python})")


class _PatternParser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = 0
        self.depth = 0

    def error(self, message: str) -> PatternError:
        return PatternError(f'pattern "{self.source}": {message}')

    def parse(self) -> str:
        python = self.alternatives()
        if self.pos < len(self.source):
            raise self.error("')' without a matching '('")
        return python

    def alternatives(self) -> str:
        branches = [self.sequence()]
        while self.pos < len(self.source) and self.source[self.pos] == "|":
            self.pos += 1
            branches.append(self.sequence())
        return "|".join(branches)

    def sequence(self) -> str:
        parts: list[str] = []
        while self.pos < len(self.source) and self.source[self.pos] not in "|)":
            item = self.item()
            parts.append(self.quantified(item))
        if not parts:
            raise self.error("empty alternative (nothing before or after '|', or empty '()')")
        return "".join(parts)

    def item(self) -> str:
        src = self.source
        ch = src[self.pos]
        if ch == ".":
            self.pos += 1
            return "."
        if ch == "%":
            if self.pos + 1 >= len(src):
                raise self.error("'%' at the end: escape a character, e.g. %. or %%")
            nxt = src[self.pos + 1]
            self.pos += 2
            if nxt == "d":
                return "[0-9]"
            if nxt in SPECIAL:
                return re.escape(nxt)
            if nxt.isascii() and nxt.isalpha():
                raise self.error(f"unsupported class '%{nxt}': use %d or a set such as [A-Za-z]")
            raise self.error(f"'%{nxt}' is not an escape: only . % [ ] ( ) {{ }} | * + ? can follow '%'")
        if ch == "[":
            return self.char_set()
        if ch == "(":
            self.pos += 1
            self.depth += 1
            if self.depth > MAX_GROUP_DEPTH:
                raise self.error(f"groups nested deeper than {MAX_GROUP_DEPTH}")
            inner = self.alternatives()
            if self.pos >= len(src) or src[self.pos] != ")":
                raise self.error("'(' is not closed")
            self.pos += 1
            self.depth -= 1
            return f"(?:{inner})"
        if ch in _QUANTIFIERS:
            raise self.error(f"'{ch}' has nothing to repeat")
        if ch in "]}":
            raise self.error(f"unexpected '{ch}': write %{ch} for the character itself")
        self.pos += 1
        return re.escape(ch)

    def char_set(self) -> str:
        src = self.source
        end = src.find("]", self.pos + 1)
        if end < 0:
            raise self.error("'[' is not closed")
        body = src[self.pos + 1 : end]
        self.pos = end + 1
        if not body:
            raise self.error("empty set '[]'")
        if body.startswith("^"):
            raise self.error("negated sets '[^...]' are not supported")
        out: list[str] = []
        i = 0
        while i < len(body):
            ch = body[i]
            if ch not in _SET_CHARS:
                raise self.error(f"sets may list only ASCII letters, digits and '_', found '{ch}'")
            if i + 2 < len(body) and body[i + 1] == "-":
                last = body[i + 2]
                same_class = (
                    (ch.isdigit() and last.isdigit())
                    or (ch.islower() and last.islower())
                    or (ch.isupper() and last.isupper())
                )
                if not same_class or last < ch:
                    raise self.error(f"invalid range '{ch}-{last}'")
                out.append(f"{ch}-{last}")
                i += 3
                continue
            if ch == "-" or (i + 1 < len(body) and body[i + 1] == "-"):
                raise self.error("'-' in a set must join a range such as a-z")
            out.append(ch)
            i += 1
        return "[" + "".join(out) + "]"

    def quantified(self, item: str) -> str:
        src = self.source
        if self.pos >= len(src) or src[self.pos] not in _QUANTIFIERS:
            return item
        ch = src[self.pos]
        if ch in "*+?":
            self.pos += 1
            quantifier = ch
        else:
            end = src.find("}", self.pos)
            if end < 0:
                raise self.error("'{' is not closed")
            body = src[self.pos + 1 : end]
            self.pos = end + 1
            m = re.fullmatch(r"([0-9]{1,2})(?:,([0-9]{1,2}))?", body)
            if not m:
                raise self.error(f"'{{{body}}}' must be {{n}} or {{m,n}}")
            low = int(m.group(1))
            high = int(m.group(2)) if m.group(2) is not None else low
            if high > MAX_REPEAT or low > high or high == 0:
                raise self.error(f"'{{{body}}}' must have 0 <= m <= n <= {MAX_REPEAT} and n > 0")
            quantifier = f"{{{low}}}" if m.group(2) is None else f"{{{low},{high}}}"
        if self.pos < len(src) and src[self.pos] in _QUANTIFIERS:
            raise self.error("a repetition cannot be repeated directly: use a group")
        return item + quantifier


def matches_pattern(source: str) -> Pattern:
    """Validate a `matches` pattern; raises PatternError naming the problem."""
    if "\\" in source:
        raise PatternError(
            f'pattern "{source}" contains a backslash: durable_rules silently never matches '
            "backslash patterns; use Lua-style escapes such as %d and %."
        )
    if not source:
        raise PatternError("the pattern is empty")
    if len(source) > MAX_PATTERN_LENGTH:
        raise PatternError(f"the pattern is longer than {MAX_PATTERN_LENGTH} characters")
    problem = text_problem(source)
    if problem:
        raise PatternError(f"the pattern {problem}")
    python = _PatternParser(source).parse()
    return Pattern(PatternKind.MATCHES, source, durable=source, python=python)
