"""Dispositions: what happened after a decision, and what that says of the rules that fired in it.

An outlet's clerk, the back office or the anti-fraud centre reports a disposition for a decision
(`riskgate.v1.Dispositions/Report`, stored by `service.riskdata.dispositions`). Each one is a
label of the decision: **positive** when it shows the warning or block was right (the customer
was dissuaded, fraud was confirmed, a stop-payment was requested, an appeal was rejected),
**negative** when it was wrong (verified legitimate, a false alarm, an appeal upheld), and
**pending** when it is not known yet (an appeal filed). A decision's latest disposition is its
label. `DISPOSITION_CLASS` / `disposition_label` are the one place that says which is which:
`riskgate rules report` computes precision with it, and so does the backtest.

The values here are pure (no protobuf, no Redis), and so are the checks of what a caller sends:
`parse_decision_id`, `clean_note` (a note is free text, and must never carry an ID, phone or
account number).
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from service.errors import InvalidValue
from service.suggest import closest

NOTE_MAX_CHARS = 512


class Disposition(enum.StrEnum):
    """What happened after a decision (the proto's `Disposition` without its prefix, lower-case)."""

    CUSTOMER_DISSUADED = "customer_dissuaded"  # 劝阻成功
    VERIFIED_LEGITIMATE = "verified_legitimate"  # 核实正常 (and the business went ahead)
    CONFIRMED_FRAUD = "confirmed_fraud"  # 确认诈骗
    STOP_PAYMENT_REQUESTED = "stop_payment_requested"  # 止付
    FALSE_ALARM = "false_alarm"  # 误报
    APPEAL_FILED = "appeal_filed"  # 申诉
    APPEAL_UPHELD = "appeal_upheld"  # 申诉成立
    APPEAL_REJECTED = "appeal_rejected"  # 申诉不成立


# True: the decision's warning or block was right (a positive for the rules that fired in it);
# False: it was wrong (a negative); None: not known yet (pending, counted neither way).
DISPOSITION_CLASS: Mapping[Disposition, bool | None] = {
    Disposition.CUSTOMER_DISSUADED: True,
    Disposition.CONFIRMED_FRAUD: True,
    Disposition.STOP_PAYMENT_REQUESTED: True,
    Disposition.APPEAL_REJECTED: True,
    Disposition.VERIFIED_LEGITIMATE: False,
    Disposition.FALSE_ALARM: False,
    Disposition.APPEAL_UPHELD: False,
    Disposition.APPEAL_FILED: None,
}
assert set(DISPOSITION_CLASS) == set(Disposition), "every disposition needs its class"


def parse_disposition(value: Disposition | str) -> Disposition:
    """A disposition from its name (`confirmed_fraud`, any case, with or without the proto's
    `DISPOSITION_` prefix); InvalidValue naming the known ones, with a suggestion."""
    if isinstance(value, Disposition):
        return value
    text = value.strip().lower().removeprefix("disposition_")
    try:
        return Disposition(text)
    except ValueError:
        names = [d.value for d in Disposition]
        close = closest(text, names)
        hint = f" (did you mean {close}?)" if close else ""
        raise InvalidValue(f"unknown disposition{hint}; known: {', '.join(names)}", "disposition") from None


def disposition_label(value: Disposition | str) -> bool | None:
    """The label a disposition gives its decision: True (positive), False (negative), None (pending)."""
    return DISPOSITION_CLASS[parse_disposition(value)]


def current_disposition(dispositions: Iterable[Disposition]) -> Disposition | None:
    """The latest of a decision's dispositions (given oldest first): its disposition."""
    latest = None
    for disposition in dispositions:
        latest = disposition
    return latest


@dataclass(frozen=True, slots=True)
class DispositionRecord:
    """One disposition of one decision, as stored."""

    decision_id: str
    disposition: Disposition
    note: str
    reported_by: str  # the principal of the reporter's credentials
    identity: str  # the identity they showed (cert:..., token:..., local:...)
    reported_at: datetime
    request_id: str = ""  # of the screened request, from the decision index
    already_recorded: bool = False  # a retry: this is the record first made


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def parse_decision_id(text: str) -> str:
    """A decision id as the service writes it (a UUID, lower-case); InvalidValue on `decision_id`
    otherwise, never repeating what was sent (it could be anything, an ID number included)."""
    if not text:
        raise InvalidValue("required", "decision_id")
    if not _UUID.match(text):
        raise InvalidValue("must be the decision_id of a Decision (a UUID like 8-4-4-4-12 hex digits)", "decision_id")
    return str(uuid.UUID(text))


# Runs of digits, groups of them set off by a single space, hyphen, dot, slash, underscore or
# middle dot, ASCII or full-width ("6222 0202 0011 2233 445", "138.0013.8000", "138／0013／8000"),
# with an ID number's check character X at the end. \d is any Unicode digit: full-width ones too.
_SEPARATOR = r"[ \-./_\u00b7\u3000\uff0d\uff0e\uff0f\uff3f]"
_DIGIT_RUN = re.compile(rf"\d(?:{_SEPARATOR}?\d)*(?:[xX](?![0-9A-Za-z]))?")
_SEPARATORS = re.compile(_SEPARATOR)


def _looks_like_identifier(run: str) -> bool:
    """An 18-character resident ID (17 digits and X, or 18 digits), a mainland mobile number
    (11 digits from 1, or 13 from 861), or a bank account number (16-19 digits)."""
    check_x = run[-1] in "xX"
    digits = "".join(str(int(c)) for c in (run[:-1] if check_x else run) if c.isdigit())
    if check_x:
        return len(digits) == 17
    if 16 <= len(digits) <= 19:
        return True
    return (len(digits) == 11 and digits[0] == "1") or (len(digits) == 13 and digits.startswith("861"))


def clean_note(text: str) -> str:
    """A disposition's note as kept: whitespace runs as one space, at most NOTE_MAX_CHARS
    characters, printable, and nothing that looks like an ID, phone or account number
    (InvalidValue on `note` otherwise, without the note's text)."""
    note = " ".join(text.split())
    if len(note) > NOTE_MAX_CHARS:
        raise InvalidValue(f"at most {NOTE_MAX_CHARS} characters (found {len(note)})", "note")
    if not note.isprintable():
        raise InvalidValue("must be printable text (no control characters)", "note")
    for match in _DIGIT_RUN.finditer(note):
        run = match.group()
        if any(_looks_like_identifier(part) for part in (run, *_SEPARATORS.split(run))):
            raise InvalidValue(
                "looks like it holds an ID, phone or account number (notes must not carry personal"
                " identifiers: write a case or notice number instead)",
                "note",
            )
    return note
