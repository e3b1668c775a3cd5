"""ScreenRequests built from people, accounts and outlets: the building blocks of every event.

A `RequestBuilder` makes the outlets (a bank branch and its clerk, a bank's app, a carrier shop)
and the requests (a transfer, a card opening, a SIM sale) that ordinary traffic and the planted
patterns both use, drawing the details neither of them decides (an identity check's result, an
address given or not) from the stream's random generator.
"""

from __future__ import annotations

import random

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.synth.population import Account, Person
from service.synth.tables import Bank, Carrier


def round_amount(rng: random.Random, yuan: float) -> int:
    """An amount in fen as people send it: often whole hundreds or whole yuan, at least ¥1."""
    draw = rng.random()
    if yuan >= 100 and draw < 0.45:
        fen = round(yuan / 100) * 10_000
    elif draw < 0.75:
        fen = round(yuan) * 100
    else:
        fen = round(yuan * 100)
    return max(fen, 100)


class RequestBuilder:
    """Outlets and requests, their incidental details drawn from `rng` (the stream's generator)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def branch(self, bank: Bank, county: str, *, clerk: int | None = None, branch: int | None = None) -> pb.Outlet:
        rng = self.rng
        k = branch if branch is not None else rng.randint(1, 3)
        c = clerk if clerk is not None else rng.randint(1, 6)
        return pb.Outlet(
            institution_id=bank.code,
            outlet_id=f"{bank.code}-{county}-{k:02d}",
            clerk_id=f"{county}{k:02d}{c:02d}",
            region_code=county,
        )

    @staticmethod
    def app(bank: Bank, county: str, channel: str = "MOBILE") -> pb.Outlet:
        return pb.Outlet(institution_id=bank.code, outlet_id=f"{bank.code}-{channel}", region_code=county)

    def shop(self, carrier: Carrier, county: str, *, shop: int | None = None, clerk: int | None = None) -> pb.Outlet:
        k = shop if shop is not None else self.rng.randint(1, 4)
        c = clerk if clerk is not None else self.rng.randint(1, 4)
        return pb.Outlet(
            institution_id=carrier.code,
            outlet_id=f"{carrier.code}-{county}-S{k:02d}",
            clerk_id=f"{county}S{k:02d}{c:02d}",
            region_code=county,
        )

    def identity_check(self) -> pb.IdentityCheck.ValueType:
        draw = self.rng.random()
        if draw < 0.975:
            return pb.IDENTITY_CHECK_PASSED
        if draw < 0.985:
            return pb.IDENTITY_CHECK_FACE_MISMATCH
        if draw < 0.992:
            return pb.IDENTITY_CHECK_INVALID
        if draw < 0.995:
            return pb.IDENTITY_CHECK_REPORTED_LOST
        return pb.IDENTITY_CHECK_UNSPECIFIED

    def _local_tie(self, person: Person, outlet_county: str) -> bool:
        return person.id_number[:2] != outlet_county[:2] and self.rng.random() < 0.8

    def transfer(
        self,
        payer: Person,
        account: Account,
        payee_account: str,
        payee_bank: str,
        amount_fen: int,
        *,
        channel: pb.TransferChannel.ValueType = pb.TRANSFER_CHANNEL_MOBILE,
        payee_opened: float | None = None,
        device: str | None = None,
        ip_region: str | None = None,
        country: str = "",
        currency: str = "",
    ) -> pb.ScreenRequest:
        bank = account.bank
        if channel == pb.TRANSFER_CHANNEL_COUNTER and (bank.province and bank.province != payer.province):
            channel = pb.TRANSFER_CHANNEL_MOBILE  # a provincial credit union has no branch here
        if channel == pb.TRANSFER_CHANNEL_MOBILE:
            outlet = self.app(bank, account.county)
            device = payer.device if device is None else device
            ip_region = payer.home if ip_region is None else ip_region
        elif channel == pb.TRANSFER_CHANNEL_ONLINE:
            outlet = self.app(bank, account.county, "ONLINE")
            device = "" if device is None else device
            ip_region = payer.home if ip_region is None else ip_region
        elif channel == pb.TRANSFER_CHANNEL_COUNTER:
            outlet = self.branch(bank, payer.home)
            device, ip_region = device or "", ip_region or ""
        else:
            outlet = pb.Outlet(
                institution_id=bank.code,
                outlet_id=f"{bank.code}-ATM-{payer.home}-{self.rng.randint(1, 40):03d}",
                region_code=payer.home,
            )
            device, ip_region = device or "", ip_region or ""
        transfer = pb.Transfer(
            payer_account=account.number,
            payer=payer.proto(address=False),
            payee_account=payee_account,
            payee_bank=payee_bank,
            amount_fen=amount_fen,
            currency=currency,
            channel=channel,
            device_id=device,
            ip_region_code=ip_region,
            payee_country=country,
        )
        if payee_opened is not None:
            transfer.payee_account_opened_at.seconds = int(payee_opened)
        return pb.ScreenRequest(outlet=outlet, transfer=transfer)

    def card_opening(
        self,
        applicant: Person,
        outlet: pb.Outlet,
        account_class: pb.AccountClass.ValueType,
        *,
        companion: Person | None = None,
        relation: pb.CompanionRelation.ValueType = pb.COMPANION_RELATION_UNSPECIFIED,
        phone: str | None = None,
        device: str = "",
        daily_limit_fen: int = 0,
        account_number: str = "",
        identity_check: pb.IdentityCheck.ValueType = pb.IDENTITY_CHECK_PASSED,
        local_tie: bool | None = None,
    ) -> pb.ScreenRequest:
        opening = pb.CardOpening(
            applicant=applicant.proto(phone=phone, address=self.rng.random() < 0.7),
            account_class=account_class,
            device_id=device,
            requested_daily_limit_fen=daily_limit_fen,
            limited_function=self.rng.random() < 0.01,
            identity_check=identity_check,
            has_local_tie=self._local_tie(applicant, outlet.region_code) if local_tie is None else local_tie,
            account_number=account_number,
        )
        if companion is not None:
            opening.companion.CopyFrom(companion.proto(address=False))
            opening.companion_relation = relation
        return pb.ScreenRequest(outlet=outlet, card_opening=opening)

    def sim_sale(
        self,
        buyer: Person,
        carrier: Carrier,
        outlet: pb.Outlet,
        quantity: int,
        *,
        phone: str | None = None,
        address: str | None = None,
        iot: bool = False,
    ) -> pb.ScreenRequest:
        person = buyer.proto(phone=phone, address=self.rng.random() < 0.6)
        if address is not None:
            person.address = address
        sale = pb.SimSale(
            buyer=person,
            carrier=carrier.enum,
            quantity=quantity,
            iot=iot,
            device_id=buyer.device if self.rng.random() < 0.5 else "",
            identity_check=self.identity_check(),
            has_local_tie=self._local_tie(buyer, outlet.region_code),
        )
        return pb.ScreenRequest(outlet=outlet, sim_sale=sale)
