"""Ordinary traffic: the events of people going about their day, one at a time.

An event's kind follows the hour (`rhythm.HOURLY_KIND_CUM`). Transfers go mostly to the payer's
own circle (same province), to strangers, to company accounts (`corporate_accounts`, 10 %:
allowlist candidates, which many payers pay every day), or between the payer's own accounts;
amounts are log-normal in fen (median about ¥500) with a heavy tail up to ¥1,000,000. Most
events happen in the person's home province. Card openings lean young; outside 08:00-18:00, and
for 15 % by day, they are made in the bank's app, else at a branch, where a quarter of the
applicants under 18 or aged 65 and over come with a relative.
"""

from __future__ import annotations

import bisect
import math
import random

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.synth.population import CORPORATE_CUM, CORPORATES_PER_PROVINCE, Person, Population, corporates
from service.synth.requests import RequestBuilder, round_amount
from service.synth.rhythm import HOURLY_KIND_CUM, local_hour
from service.synth.tables import ABROAD, CARRIER_CUM, CARRIERS, carrier_of, pick


class OrdinaryTraffic:
    """Ordinary events of the stream starting at `start` (epoch seconds), drawn from `rng`."""

    def __init__(self, rng: random.Random, people: Population, requests: RequestBuilder, start: float) -> None:
        self.rng = rng
        self.people = people
        self.requests = requests
        self.start = start
        self.corporates = corporates(people.seed)

    def event(self, t: float) -> pb.ScreenRequest:
        """One ordinary event at `t`, of a kind drawn for its local hour."""
        cum = HOURLY_KIND_CUM[local_hour(t)]
        kind = bisect.bisect_right(cum, self.rng.random() * cum[-1])
        if kind == 0:
            return self._transfer(t)
        if kind == 1:
            return self._card_opening(t)
        if kind == 2:
            return self._sim_sale(t)
        return self._closure(t)

    def _transfer(self, t: float) -> pb.ScreenRequest:
        rng, people = self.rng, self.people
        payer = people.person(people.active_index(rng) if rng.random() < 0.3 else people.random_index(rng))
        account = payer.accounts[0] if rng.random() < 0.7 else rng.choice(payer.accounts)
        age = payer.age_on(people.start_day)
        draw = rng.random()
        payee_opened: float | None = None
        if draw < 0.07 and len(payer.accounts) > 1:  # between one's own accounts
            own = rng.choice([a for a in payer.accounts if a is not account])
            payee, payee_bank, payee_opened = own.number, own.bank.code, own.opened
            yuan = rng.lognormvariate(math.log(3000), 1.3)
        elif draw < 0.17:  # a company: rent, school fees, utilities, tax
            bank, payee, _ = self.corporates[
                people.block_of[payer.province] * CORPORATES_PER_PROVINCE
                + bisect.bisect_right(CORPORATE_CUM, rng.random() * CORPORATE_CUM[-1])
            ]
            payee_bank = bank.code
            payee_opened = self.start - 3 * 365 * 86400
            yuan = rng.lognormvariate(math.log(400), 1.1)
        else:
            if draw < 0.77:  # someone in the payer's circle
                other = people.person(rng.choice(payer.contacts))
            elif draw < 0.94:
                other = people.person(people.random_index(rng, payer.province))
            else:
                other = people.person(people.random_index(rng))
            if other.index == payer.index:
                other = people.person(payer.contacts[0] if payer.contacts[0] != payer.index else payer.index + 1)
            target = other.accounts[0]
            payee, payee_bank, payee_opened = target.number, target.bank.code, target.opened
            yuan = rng.lognormvariate(math.log(500), 1.4)
        if rng.random() < 0.003:  # a car, a house deposit, a wedding
            yuan = math.exp(rng.uniform(math.log(50_000), math.log(1_000_000)))
            amount = round(yuan / 1000) * 100_000
        else:
            amount = round_amount(rng, min(yuan, 1_000_000))
        # The payer's bank knows when its own accounts were opened, and often others' too.
        if payee_bank != account.bank.code and rng.random() < 0.5:
            payee_opened = None
        draw = rng.random()
        if age >= 60:
            channel = (pb.TRANSFER_CHANNEL_COUNTER if draw < 0.25 else pb.TRANSFER_CHANNEL_MOBILE
                       if draw < 0.85 else pb.TRANSFER_CHANNEL_ATM)  # fmt: skip
        else:
            channel = (pb.TRANSFER_CHANNEL_MOBILE if draw < 0.8 else pb.TRANSFER_CHANNEL_ONLINE if draw < 0.9
                       else pb.TRANSFER_CHANNEL_COUNTER if draw < 0.95 else pb.TRANSFER_CHANNEL_ATM)  # fmt: skip
        ip_region: str | None = None
        if channel in (pb.TRANSFER_CHANNEL_MOBILE, pb.TRANSFER_CHANNEL_ONLINE) and rng.random() < 0.04:
            ip_region = people.county_in(rng, people.other_province(rng, payer.province))  # travelling
        country = currency = ""
        if rng.random() < 0.002:
            country, currency, cny_per_unit = rng.choice(ABROAD)
            amount = max(1, round(amount / cny_per_unit))
            payee = f"{rng.randrange(10**11, 10**12)}"
            payee_bank, payee_opened = f"{country}-BANK-{rng.randint(1, 9)}", None
        return self.requests.transfer(
            payer, account, payee, payee_bank, amount,
            channel=channel, payee_opened=payee_opened, ip_region=ip_region, country=country, currency=currency,
        )  # fmt: skip

    def _card_opening(self, t: float) -> pb.ScreenRequest:
        rng, people = self.rng, self.people
        applicant = people.random_person(rng)
        for _ in range(3):  # openings lean young: students, first jobs
            age = applicant.age_on(people.start_day)
            if rng.random() < (1.0 if age <= 25 else 0.6 if age < 46 else 0.4 if age < 60 else 0.3):
                break
            applicant = people.random_person(rng)
        hour = local_hour(t)
        remote = not 8 <= hour < 18 or rng.random() < 0.15
        held = {a.bank.code for a in applicant.accounts}
        bank = people.random_bank(rng, applicant.province)
        for _ in range(4):
            if bank.code not in held:
                break
            bank = people.random_bank(rng, applicant.province)
        opened = people.new_account(rng, bank, applicant.home, t)
        number = opened.number if rng.random() < 0.6 else ""
        if remote:
            account_class = pb.ACCOUNT_CLASS_II if rng.random() < 0.7 else pb.ACCOUNT_CLASS_III
            return self.requests.card_opening(
                applicant, self.requests.app(bank, applicant.home), account_class,
                device=applicant.device, account_number=number, identity_check=self.requests.identity_check(),
            )  # fmt: skip
        draw = rng.random()
        account_class = (
            pb.ACCOUNT_CLASS_II
            if bank.code in held or draw < 0.3
            else pb.ACCOUNT_CLASS_III
            if draw < 0.35
            else pb.ACCOUNT_CLASS_I
        )
        county = applicant.home if rng.random() < 0.85 else people.county_in(rng, applicant.province)
        age = applicant.age_on(people.start_day)
        # Family bring the old and the young; now and then a friend or colleague comes along.
        companion: Person | None = None
        relation = pb.COMPANION_RELATION_UNSPECIFIED
        draw = rng.random()
        family = 0.25 if age >= 65 or age < 18 else 0.05
        if draw < family + 0.01:
            companion = people.person(applicant.contacts[0 if draw < family else 1])
            relation = pb.COMPANION_RELATION_RELATIVE if draw < family else pb.COMPANION_RELATION_NON_RELATIVE
            if companion.index == applicant.index:
                companion, relation = None, pb.COMPANION_RELATION_UNSPECIFIED
        limit = 0 if rng.random() < 0.7 else rng.choice((500_000, 1_000_000, 2_000_000, 5_000_000, 20_000_000))
        return self.requests.card_opening(
            applicant, self.requests.branch(bank, county), account_class,
            companion=companion, relation=relation,
            device=applicant.device if rng.random() < 0.4 else "",
            daily_limit_fen=limit, account_number=number, identity_check=self.requests.identity_check(),
        )  # fmt: skip

    def _sim_sale(self, t: float) -> pb.ScreenRequest:
        rng, people = self.rng, self.people
        buyer = people.random_person(rng)
        carrier = pick(rng, CARRIERS, CARRIER_CUM)
        county = buyer.home if rng.random() < 0.9 else people.county_in(rng, buyer.province)
        draw = rng.random()
        quantity = 1 if draw < 0.93 else 2 if draw < 0.98 else 3 if draw < 0.995 else rng.randint(4, 5)
        return self.requests.sim_sale(
            buyer, carrier, self.requests.shop(carrier, county), quantity,
            phone=buyer.phone if rng.random() < 0.8 else "", iot=rng.random() < 0.003,
        )  # fmt: skip

    def _closure(self, t: float) -> pb.ScreenRequest:
        rng, people = self.rng, self.people
        holder = people.random_person(rng)
        if rng.random() < 0.65:
            account = rng.choice(holder.accounts)
            if account.bank.province and account.bank.province != holder.province:
                outlet = self.requests.branch(account.bank, account.county)
            else:
                outlet = self.requests.branch(account.bank, holder.home)
            closure = pb.Closure(
                holder=holder.proto(address=False),
                account_number=account.number,
                account_class=pb.ACCOUNT_CLASS_I if rng.random() < 0.6 else pb.ACCOUNT_CLASS_II,
            )
            return pb.ScreenRequest(outlet=outlet, closure=closure)
        msisdn = holder.second_phone or holder.phone
        carrier = carrier_of(msisdn)
        closure = pb.Closure(holder=holder.proto(address=False), msisdn=msisdn, carrier=carrier.enum)
        return pb.ScreenRequest(outlet=self.requests.shop(carrier, holder.home), closure=closure)
