"""The six planted fraud patterns, how often each starts, and the events of one instance.

Planted fraud (`PATTERNS`, nominal rates in `PATTERN_RATES`) is scheduled among the ordinary
events; each planted event's label names the pattern, the instance and the event's role:

* ``batch_opening``: one companion brings 3-7 students or elderly people to one bank counter
  within 90 minutes (rule 6); often the same contact phone or e-signing device.
* ``sim_batch``: a recruiter's 5-8 buyers at one carrier shop, minutes apart, 4-6 SIMs each (20 or
  more in the first hour), all giving the recruiter's phone (rules 6, 7, 11, 14).
* ``multi_bank_opening``: a young person opens Class I accounts at 3-5 banks within days, or within
  hours when the window is short (rule 5).
* ``money_mule``: a days-old account receives from 6-12 distinct victims within an hour, then pays
  on to 2-4 fresh accounts from a device elsewhere in the country (rules 18, 19, 21).
* ``rapid_in_out``: an account takes ¥20,000-300,000 in and sends 85-100 % of it out within
  25 minutes, in 1-3 cycles at least an hour apart (rule 20).
* ``elderly_victim``: a person aged 60+ transfers ¥50,000-500,000 to a fresh "safe account" at
  night (00:00-05:00), or at any hour from a remote-controlled device located in another province
  (rules 17, 22, 25).

A pattern confined to business hours starts only in them (more often, so that a whole day holds
its nominal number): `trigger_rates`. ``fraud_scale`` multiplies every rate. Whether an instance
fits in the stream is the stream's decision (`service.synth.stream`), not the pattern's.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Mapping
from itertools import accumulate
from types import MappingProxyType
from typing import Final

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.synth.population import Population
from service.synth.requests import RequestBuilder, round_amount
from service.synth.rhythm import HOURLY_INTENSITY, within_hours
from service.synth.tables import CARRIER_CUM, CARRIERS, pick

PATTERNS: Final = (
    "batch_opening",
    "sim_batch",
    "multi_bank_opening",
    "money_mule",
    "rapid_in_out",
    "elderly_victim",
)
"""The planted fraud patterns, by label."""

PATTERN_RATES: Final[Mapping[str, float]] = MappingProxyType(
    {
        "batch_opening": 6.0,
        "sim_batch": 5.0,
        "multi_bank_opening": 10.0,
        "money_mule": 8.0,
        "rapid_in_out": 12.0,
        "elderly_victim": 20.0,
    }
)
"""Nominal pattern instances per 100,000 events (before ``fraud_scale``; see the module docstring)."""

Planned = tuple[float, pb.ScreenRequest, str]  # (epoch seconds, request, role)

# How planted patterns start: (pattern, variant, share of the pattern's rate, local hours it may
# start in). A pattern confined to some hours starts only there, more often, so that a whole
# day still holds its nominal number; the elderly victim is half night-time, half remote device.
_VARIANTS: Final = (
    ("batch_opening", "batch_opening", 1.0, range(9, 15)),
    ("sim_batch", "sim_batch", 1.0, range(9, 19)),
    ("multi_bank_opening", "multi_bank_opening", 1.0, range(9, 15)),
    ("money_mule", "money_mule", 1.0, range(24)),
    ("rapid_in_out", "rapid_in_out", 1.0, range(24)),
    ("elderly_victim", "elderly_victim_night", 0.5, range(0, 4)),
    ("elderly_victim", "elderly_victim_remote", 0.5, range(24)),
)


def trigger_rates(fraud_scale: float) -> tuple[tuple[float, ...], ...]:
    """Per local hour, the cumulative per-event probability of starting each variant."""
    total = sum(HOURLY_INTENSITY)
    table = []
    for hour in range(24):
        rates = []
        for pattern, _variant, share, hours in _VARIANTS:
            covered = sum(HOURLY_INTENSITY[h] for h in hours) / total
            active = hour in hours
            rates.append(PATTERN_RATES[pattern] * share * fraud_scale / 100_000 / covered if active else 0.0)
        table.append(tuple(accumulate(rates)))
    return tuple(table)


class Patterns:
    """The planted patterns of a stream ending at `end` (epoch seconds), drawn from `rng`."""

    def __init__(self, rng: random.Random, people: Population, requests: RequestBuilder, end: float) -> None:
        self.rng = rng
        self.people = people
        self.requests = requests
        self.end = end
        builders: dict[str, Callable[[float], list[Planned]]] = {
            "batch_opening": self._batch_opening,
            "sim_batch": self._sim_batch,
            "multi_bank_opening": self._multi_bank_opening,
            "money_mule": self._money_mule,
            "rapid_in_out": self._rapid_in_out,
            "elderly_victim_night": functools.partial(self._elderly_victim, night=True),
            "elderly_victim_remote": functools.partial(self._elderly_victim, night=False),
        }
        # (pattern, build) in the order of `trigger_rates`' columns: build(t) plans one instance after t.
        self.variants = tuple((pattern, builders[variant]) for pattern, variant, _, _ in _VARIANTS)

    def _batch_opening(self, t: float) -> list[Planned]:
        rng, people = self.rng, self.people
        companion = people.random_person(rng, min_age=28, max_age=50)
        province = companion.province
        bank = people.random_bank(rng, province)
        outlet = self.requests.branch(bank, companion.home)
        at = t + rng.uniform(120, 900)
        same_phone = rng.random() < 0.5
        same_device = rng.random() < 0.4
        relation = rng.choices(
            (pb.COMPANION_RELATION_NON_RELATIVE, pb.COMPANION_RELATION_RELATIVE, pb.COMPANION_RELATION_UNSPECIFIED),
            (0.7, 0.1, 0.2),
        )[0]
        planned: list[Planned] = []
        seen: set[str] = set()
        wanted = rng.randint(3, 7)
        for _ in range(3 * wanted):
            if len(planned) == wanted:
                break
            young = rng.random() < 0.7
            applicant = people.random_person(
                rng,
                min_age=18 if young else 60,
                max_age=25 if young else 85,
                province=province if rng.random() < 0.8 else None,
            )
            if applicant.id_number in seen or applicant.index == companion.index:
                continue
            seen.add(applicant.id_number)
            request = self.requests.card_opening(
                applicant, pb.Outlet(), pb.ACCOUNT_CLASS_I,
                companion=companion, relation=relation,
                phone=companion.phone if same_phone else None,
                device=companion.device if same_device else "",
                daily_limit_fen=rng.choice((5_000_000, 10_000_000, 20_000_000)),
                local_tie=False,
            )  # fmt: skip
            request.outlet.CopyFrom(outlet)
            planned.append((at, request, "applicant"))
            at += rng.uniform(300, 900)
        return planned

    def _sim_batch(self, t: float) -> list[Planned]:
        rng, people = self.rng, self.people
        recruiter = people.random_person(rng, min_age=22, max_age=45)
        carrier = pick(rng, CARRIERS[:3], CARRIER_CUM[:3])
        outlet = self.requests.shop(carrier, recruiter.home)
        address = recruiter.address if rng.random() < 0.5 else None
        at = t + rng.uniform(120, 900)
        planned: list[Planned] = []
        seen: set[int] = {recruiter.index}
        wanted = rng.randint(5, 8)
        for _ in range(3 * wanted):
            if len(planned) == wanted:
                break
            buyer = people.random_person(rng, min_age=18, max_age=70, province=recruiter.province)
            if buyer.index in seen:
                continue
            seen.add(buyer.index)
            request = self.requests.sim_sale(
                buyer, carrier, pb.Outlet(), rng.randint(4, 6), phone=recruiter.phone, address=address
            )
            request.outlet.CopyFrom(outlet)
            planned.append((at, request, "buyer"))
            at += rng.uniform(180, 540)
        return planned

    def _multi_bank_opening(self, t: float) -> list[Planned]:
        rng, people = self.rng, self.people
        applicant = people.random_person(rng, min_age=18, max_age=30)
        banks, _ = people.banks_in(applicant.province)
        chosen = rng.sample(
            [b for b in banks if b.code not in {a.bank.code for a in applicant.accounts}], rng.randint(3, 5)
        )
        spread_days = self.end - t > 3 * 86400
        at = t + rng.uniform(120, 900)
        planned: list[Planned] = []
        for bank in chosen:
            opened = people.new_account(rng, bank, applicant.home, at)
            request = self.requests.card_opening(
                applicant, self.requests.branch(bank, applicant.home), pb.ACCOUNT_CLASS_I,
                device=applicant.device if rng.random() < 0.5 else "",
                daily_limit_fen=rng.choice((0, 5_000_000, 10_000_000)),
                account_number=opened.number if rng.random() < 0.6 else "",
            )  # fmt: skip
            planned.append((at, request, "opening"))
            gap = rng.uniform(4 * 3600, 30 * 3600) if spread_days else rng.uniform(600, 2400)
            at = within_hours(at + gap, 9, 17, rng)
        return planned

    def _money_mule(self, t: float) -> list[Planned]:
        rng, people = self.rng, self.people
        holder = people.random_person(rng, min_age=18, max_age=30)
        bank = people.random_bank(rng, holder.province)
        start = t + rng.uniform(60, 1800)
        mule = people.new_account(rng, bank, holder.home, start - rng.uniform(86400, 10 * 86400))
        planned: list[Planned] = []
        total = 0
        payers: set[int] = {holder.index}
        times = sorted(start + rng.uniform(0, 3000) for _ in range(rng.randint(6, 12)))
        for at in times:
            victim = people.person(people.random_index(rng))
            while victim.index in payers:
                victim = people.person(people.random_index(rng))
            payers.add(victim.index)
            amount = round_amount(rng, min(max(rng.lognormvariate(math.log(8000), 0.8), 1000.0), 49_900.0))
            total += amount
            request = self.requests.transfer(
                victim, victim.accounts[0], mule.number, bank.code, amount,
                payee_opened=mule.opened if rng.random() < 0.7 else None,
            )  # fmt: skip
            planned.append((at, request, "inflow"))
        ring_device = people.new_device()
        ring_region = people.county_in(rng, people.other_province(rng, holder.province, holder.id_number[:2]))
        at = times[-1] + rng.uniform(180, 900)
        payouts = rng.randint(2, 4)
        remaining = int(total * rng.uniform(0.9, 0.98))
        for n in range(payouts):
            amount = remaining if n == payouts - 1 else int(remaining * rng.uniform(0.3, 0.6))
            remaining -= amount
            next_bank = people.random_bank(rng, people.random_province(rng))
            onward = people.new_account(rng, next_bank, people.county_in(rng, next_bank.province or "44"), at)
            request = self.requests.transfer(
                holder, mule, onward.number, next_bank.code, amount, device=ring_device, ip_region=ring_region
            )
            planned.append((at, request, "payout"))
            at += rng.uniform(60, 360)
        return planned

    def _rapid_in_out(self, t: float) -> list[Planned]:
        rng, people = self.rng, self.people
        holder = people.random_person(rng, min_age=20, max_age=45)
        bank = people.random_bank(rng, holder.province)
        cycle = t + rng.uniform(60, 1200)
        account = people.new_account(rng, bank, holder.home, cycle - rng.uniform(5 * 86400, 60 * 86400))
        planned: list[Planned] = []
        for _ in range(rng.choices((1, 2, 3), (0.5, 0.25, 0.25))[0]):
            inflow = 0
            sources = rng.randint(1, 3)
            cycle_yuan = rng.uniform(20_000, 300_000)
            for at in sorted(cycle + rng.uniform(0, 300) for _ in range(sources)):
                source = people.random_person(rng, min_age=20, max_age=55)
                source_bank = people.random_bank(rng, source.province)
                upstream = people.new_account(rng, source_bank, source.home, at - rng.uniform(86400, 90 * 86400))
                amount = round(cycle_yuan / sources) * 100
                inflow += amount
                planned.append(
                    (at, self.requests.transfer(source, upstream, account.number, bank.code, amount), "inflow")
                )
            out = int(inflow * rng.uniform(0.85, 1.0))
            at = cycle + rng.uniform(480, 900)
            parts = rng.randint(1, 2)
            for n in range(parts):
                amount = out if n == parts - 1 else int(out * rng.uniform(0.4, 0.6))
                out -= amount
                next_bank = people.random_bank(rng, people.random_province(rng))
                onward = people.new_account(rng, next_bank, holder.home, at)
                planned.append(
                    (at, self.requests.transfer(holder, account, onward.number, next_bank.code, amount), "outflow")
                )
                at += rng.uniform(60, 480)
            cycle += rng.uniform(3600, 3 * 3600)
        return planned

    def _elderly_victim(self, t: float, *, night: bool) -> list[Planned]:
        """At night (started between 00:00 and 04:00) or, by day, from a device in another province."""
        rng, people = self.rng, self.people
        victim = people.random_person(rng, min_age=60)
        account = victim.accounts[0]
        at = t + rng.uniform(60, 600)
        device: str | None = None
        ip_region: str | None = None
        if not night or rng.random() < 0.3:  # "remote assistance": a screen-sharing app on a phone elsewhere
            device = people.new_device()
            ip_region = people.county_in(
                rng, people.other_province(rng, victim.province, victim.id_number[:2], account.county[:2])
            )
        planned: list[Planned] = []
        for _ in range(1 if rng.random() < 0.8 else 2):
            safe_bank = people.random_bank(rng, people.random_province(rng))
            safe = people.new_account(
                rng, safe_bank, people.county_in(rng, safe_bank.province or "44"), at - 86400 * rng.uniform(2, 30)
            )
            amount = round(math.exp(rng.uniform(math.log(50_000), math.log(500_000))) / 1000) * 100_000
            channel = pb.TRANSFER_CHANNEL_MOBILE if rng.random() < 0.8 else pb.TRANSFER_CHANNEL_ONLINE
            request = self.requests.transfer(
                victim, account, safe.number, safe_bank.code, max(amount, 5_000_000),
                channel=channel, payee_opened=safe.opened if rng.random() < 0.5 else None,
                device=device, ip_region=ip_region,
            )  # fmt: skip
            planned.append((at, request, "victim_transfer"))
            at += rng.uniform(600, 2400) if not night else rng.uniform(300, 900)
        return planned
