"""The pattern subset: what is refused, and that durable_rules and Python agree on what is accepted."""

from __future__ import annotations

import re

import pytest

from service.errors import PatternError
from service.rules.patterns import (
    alternatives_pattern,
    durable_literal,
    matches_pattern,
    startswith_pattern,
    text_problem,
)
from tests.unit.rules.conftest import built

PATTERNS = (
    "44%d%d%d%d",
    "%d+",
    "a.c",
    "中.",
    ".*x",
    "[0-9A-F]+",
    "[a-z_]+[A-Z0-9]",
    "ab?c",
    "a{1,3}",
    "a{0,2}b",
    "a{2}",
    "(ab)+c",
    "((a|b)c)*d",
    "44|4401|45",
    "(ab)?x",
    "a^b$",
    "a%.b",
    "a%%b",
    "a%(%)%[%]%{%}%|%*%+%?",
    "a-b:c/d e",
    "a*",
)
SUBJECTS = (
    "",
    "a",
    "aa",
    "aaa",
    "aaaa",
    "ab",
    "abc",
    "a\nc",
    'a"c',
    "a\\c",
    "a\tc",
    "a中c",
    "中国",
    "中",
    "中x",
    "x",
    "\ufffd",
    "12",
    "440101",
    "44010",
    "4401",
    "45",
    "450",
    "0F",
    "ff",
    "ab_cZ",
    "z9",
    "acbcd",
    "d",
    "ababc",
    "c",
    "abx",
    "a^b$",
    "a.b",
    "a%b",
    "a()[]{}|*+?",
    "a-b:c/d e",
    "١٢",
    "😀x",
)


def test_durable_and_python_agree_on_every_accepted_pattern() -> None:
    rules = "rules:\n" + "".join(
        f"  - id: p{i}\n    on: [transfer]\n    when: 'transfer.payee_bank matches \"{p}\"'\n"
        f"    outcome: warn\n    reason: {{zh: a, en: b}}\n"
        for i, p in enumerate(PATTERNS)
    )
    compiled_patterns = [matches_pattern(p) for p in PATTERNS]
    with built(rules) as compiled:
        for subject in SUBJECTS:
            fired = {
                r.rule_id for r in compiled.evaluate({"event": "transfer", "transfer.payee_bank": subject}, {}, {})
            }
            expected = {
                f"p{i}"
                for i, pattern in enumerate(compiled_patterns)
                if re.fullmatch(pattern.python, subject, re.DOTALL)
            }
            assert fired == expected, subject


def test_prefixes_and_alternatives_are_literal() -> None:
    assert startswith_pattern("a.b(").durable == "a%.b%(.*"
    assert durable_literal("1+1=2?") == "1%+1=2%?"
    both = alternatives_pattern(("a.b", "中"))
    assert both.durable == "a%.b|中"
    assert re.fullmatch(both.python, "a.b") and not re.fullmatch(both.python, "axb")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(a|)", "pattern \"(a|)\": empty alternative (nothing before or after '|', or empty '()')"),
        ("()", "pattern \"()\": empty alternative (nothing before or after '|', or empty '()')"),
        ("[^0-9]", "pattern \"[^0-9]\": negated sets '[^...]' are not supported"),
        ("[a-", "pattern \"[a-\": '[' is not closed"),
        ("[]", "pattern \"[]\": empty set '[]'"),
        ("[a-Z]", "pattern \"[a-Z]\": invalid range 'a-Z'"),
        ("[z-a]", "pattern \"[z-a]\": invalid range 'z-a'"),
        ("[é]", "pattern \"[é]\": sets may list only ASCII letters, digits and '_', found 'é'"),
        ("[a-]", "pattern \"[a-]\": '-' in a set must join a range such as a-z"),
        ("a**", 'pattern "a**": a repetition cannot be repeated directly: use a group'),
        ("*a", "pattern \"*a\": '*' has nothing to repeat"),
        ("a{21}", "pattern \"a{21}\": '{21}' must have 0 <= m <= n <= 20 and n > 0"),
        ("a{3,2}", "pattern \"a{3,2}\": '{3,2}' must have 0 <= m <= n <= 20 and n > 0"),
        ("a{x}", "pattern \"a{x}\": '{x}' must be {n} or {m,n}"),
        ("a{2", "pattern \"a{2\": '{' is not closed"),
        ("a%", "pattern \"a%\": '%' at the end: escape a character, e.g. %. or %%"),
        ("a%-", "pattern \"a%-\": '%-' is not an escape: only . % [ ] ( ) { } | * + ? can follow '%'"),
        ("%w", "pattern \"%w\": unsupported class '%w': use %d or a set such as [A-Za-z]"),
        ("a]", "pattern \"a]\": unexpected ']': write %] for the character itself"),
        ("(a", "pattern \"(a\": '(' is not closed"),
        ("a)", "pattern \"a)\": ')' without a matching '('"),
        ("((((((a))))))", 'pattern "((((((a))))))": groups nested deeper than 4'),
        (
            "\\d",
            'pattern "\\d" contains a backslash: durable_rules silently never matches backslash patterns; '
            "use Lua-style escapes such as %d and %.",
        ),
        ("", "the pattern is empty"),
        ("a" * 201, "the pattern is longer than 200 characters"),
        ("a\tb", "the pattern contains a control character"),
    ],
)
def test_refused_patterns(pattern: str, message: str) -> None:
    with pytest.raises(PatternError) as caught:
        matches_pattern(pattern)
    assert str(caught.value) == message


def test_text_problems() -> None:
    assert text_problem("工商银行 ABC-1") is None
    assert text_problem('a"b') == "contains a double quote"
    assert text_problem("a\x7f") == "contains a control character"
    assert text_problem("\ufffd") == "contains U+FFFD"
    assert text_problem("\ud800") == "contains a lone surrogate"
    with pytest.raises(PatternError, match="the prefix contains a backslash"):
        startswith_pattern("a\\")
