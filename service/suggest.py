"""One "did you mean": the closest known name to an unknown one, for every error message that offers it.

Rule, counter, list, case and policy files, settings and `riskgate screen`'s
field names all suggest through here, so a misspelling gets the same kind of
hint wherever it is made.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

CUTOFF = 0.6  # difflib's similarity ratio a suggestion must reach


def closest(word: str, candidates: Iterable[str], *, cutoff: float = CUTOFF) -> str | None:
    """The candidate most like `word`, if one is close enough."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest candidate, else ""."""
    guess = closest(word, candidates)
    return f"; did you mean '{guess}'?" if guess else ""


def suggest(name: str, candidates: Sequence[str], preferred: Sequence[str] = ()) -> str | None:
    """A candidate for an unknown dotted name: a bare leaf (`age`) suggests a full name with that
    leaf (`payer.age`, the `preferred` one first), else the closest spelling."""
    leaf = name.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf and c != name]
    if same_leaf and "." not in name:
        for c in preferred:
            if c in same_leaf:
                return c
        return sorted(same_leaf)[0]
    return closest(name, candidates)


def suggest_value(value: str, choices: Iterable[str]) -> str | None:
    """A candidate for a value that is not one of `choices`: the same letters in another case,
    else the closest spelling."""
    ordered = sorted(choices)
    for choice in ordered:
        if choice.lower() == value.lower():
            return choice
    return closest(value, ordered)
