"""Amounts in other currencies, in CNY.

Every threshold in the rules and every sum a counter keeps is in CNY fen, so a
transfer made in another currency is converted once, on the way into the facts:
`transfer.amount_fen` is the amount in CNY fen, `transfer.original_amount_fen`
and `transfer.currency` what the request said. The rates come from the rules
directory's `rates.yaml` (`service.rules.rates`), loaded, hashed into the
ruleset revision and hot-reloaded with the rule files, so a decision's revision
says which rates it used.

A rate is CNY per one unit of the currency, a decimal (`USD: 7.1186`). The
amount on the wire is in hundredths of its currency's unit whatever that
currency's own minor unit (a yen amount of 100,000 means ¥1,000 JPY), so the CNY
amount is `round(amount * rate)` in fen, half to even, in decimal arithmetic.

A currency without a rate is refused (`INVALID_ARGUMENT` on
`transfer.currency`): screening it against CNY thresholds would be wrong in
either direction, and a guess is worse than a clear refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path

from service.errors import FieldProblem, ValidationError

CNY = "CNY"
STALE_AFTER_DAYS = 10  # rates.yaml's default: older rates are still used, but reported
MAX_CNY_FEN = 10**14  # the bound validation sets on a CNY amount, which the counters' sums are sized for
_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class ExchangeRates:
    """CNY per one unit of each currency, as of a date, from a named source."""

    rates: Mapping[str, Decimal] = field(default_factory=dict)
    as_of: date | None = None
    source: str = ""
    file: str = ""  # where the rates were read: named in refusals
    stale_after_days: int = STALE_AFTER_DAYS  # older rates are still used, but reported (log, metric)

    def known(self) -> tuple[str, ...]:
        """The currencies accepted: CNY and every one with a rate."""
        return (CNY, *sorted(self.rates))

    def cny_fen(self, amount_fen: int, currency: str) -> int:
        """`amount_fen` (hundredths of `currency`) in CNY fen; ValidationError on `transfer.currency`
        for a currency without a rate."""
        if currency == CNY:
            return amount_fen
        rate = self.rates.get(currency)
        if rate is None:
            raise ValidationError([FieldProblem("transfer.currency", self._no_rate(currency))])
        with localcontext(prec=40):  # exact for any amount up to 10^14 and any rate the file allows
            cny = int((rate * amount_fen).quantize(_ONE, rounding=ROUND_HALF_EVEN))
        if cny > MAX_CNY_FEN:
            raise ValidationError(
                [FieldProblem("transfer.amount_fen", f"must be at most 10^14 fen once converted to CNY ({currency})")]
            )
        return cny

    def _no_rate(self, currency: str) -> str:
        # The file's name, not its path: the path is the server's business, not the client's.
        where = Path(self.file).name if self.file else "rates.yaml in the rules directory"
        if not self.rates:
            return f"only CNY is accepted: {where} gives no exchange rates"
        return f"no exchange rate for {currency} in {where} (accepted: {', '.join(self.known())})"

    def age_days(self, today: date) -> int | None:
        """Whole days since `as_of`, None when undated."""
        return None if self.as_of is None else max(0, (today - self.as_of).days)

    def stale(self, today: date) -> bool:
        """Dated more than `stale_after_days` before `today`."""
        age = self.age_days(today)
        return age is not None and age > self.stale_after_days


CNY_ONLY = ExchangeRates()  # no rates file: CNY alone is accepted
