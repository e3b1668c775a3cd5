"""The population: people, their accounts, phones and devices, derived on demand; the company payees.

The population is derived, not stored: person *i* is a pure function of ``(seed, i)``, so a
population of millions costs nothing until someone transacts. People live in the 31 mainland
provinces in proportion to the 2020 census; in the provinces that draw migrants (Shanghai 42 %,
Beijing 38 %, Guangdong 23 %, Zhejiang 19 % ...) that share hold an ID issued in a sending province
(Henan, Sichuan, Anhui ...). ID numbers use real county codes from python-stdnum's dated table:
mostly codes in use today, a few retired ones for people born while they were in use, and one in
a thousand Hong Kong, Macao or Taiwan residence permits (810000, 820000, 830000). Ages run 16-92
(13 % are 18-25, 26 % are 60 or over). Everyone has a mobile number in a real carrier range, a
phone (device id), an address, and one to four bank accounts (19-digit card numbers with the
bank's UnionPay BIN and a Luhn digit) at national banks or their province's rural credit union.
Phones, account numbers and devices never collide (bijective scrambles of serial numbers); two
people can, very rarely, draw the same ID number, as the 3-digit sequence is random.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import accumulate
from typing import Final

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.domain import CHINA_TZ
from service.pipeline.validate import resident_id_check_character
from service.synth.tables import (
    AGE_BANDS,
    CARRIER_CUM,
    CARRIERS,
    COMPOUND_SURNAMES,
    CURRENT_COUNTIES,
    DEFAULT_MIGRANT_SHARE,
    DIVISIONS,
    FEMALE_CHARS,
    MALE_CHARS,
    MIGRANT_ORIGINS,
    MIGRANT_SHARE,
    MODERN_CHARS,
    NATIONAL_BANKS,
    PERMIT_CODES,
    PERMIT_SHARE,
    PROVINCE_POPULATION,
    RURAL_BANKS,
    STREETS,
    SURNAME_CUM,
    SURNAMES,
    VILLAGE_PREFIXES,
    Bank,
    pick,
)

# The population sizes `generate` accepts.
MAX_POPULATION: Final = 20_000_000
MIN_POPULATION: Final = 1_000

_MASK64: Final = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit integers, so distinct inputs stay distinct."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


_LUHN_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn_digit(body: str) -> str:
    digits = [ord(char) - 48 for char in body]
    total = sum(_LUHN_DOUBLED[d] for d in digits[-1::-2]) + sum(digits[-2::-2])
    return str(-total % 10)


@dataclass(frozen=True, slots=True)
class Account:
    bank: Bank
    number: str
    opened: float  # epoch seconds
    county: str  # where it was opened


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    id_number: str
    name: str
    birth: date
    phone: str
    second_phone: str  # "" if none
    device: str
    address_key: str  # seeds the address, derived only when an event needs it
    home: str  # county code of residence
    accounts: tuple[Account, ...]
    contacts: tuple[int, ...]  # indices of people this person usually pays

    @property
    def province(self) -> str:
        return self.home[:2]

    def age_on(self, day: date) -> int:
        return day.year - self.birth.year - ((day.month, day.day) < (self.birth.month, self.birth.day))

    @property
    def address(self) -> str:
        return _address(random.Random(self.address_key), self.home)

    def proto(self, *, phone: str | None = None, address: bool = True) -> pb.Person:
        return pb.Person(
            id_number=self.id_number,
            name=self.name,
            phone=self.phone if phone is None else phone,
            address=self.address if address else "",
        )


def _address(rng: random.Random, county: str) -> str:
    names = DIVISIONS.names
    province = names.get(county[:2] + "0000", "")
    prefecture = names.get(county[:4] + "00", "")
    if prefecture in ("市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划") or prefecture == province:
        prefecture = ""
    place = province + prefecture + names.get(county, "")
    if rng.random() < 0.25:
        return place + f"{rng.choice(VILLAGE_PREFIXES)}家村{rng.randint(1, 9)}组{rng.randint(1, 80)}号"
    street = place + f"{rng.choice(STREETS)}{rng.randint(1, 400)}号"
    if rng.random() < 0.7:
        street += f"{rng.randint(1, 30)}栋{rng.randint(1, 4)}单元{rng.randint(1, 33)}{rng.randint(1, 4):02d}室"
    return street


class Population:
    """People derived on demand from (seed, index); a bounded cache keeps the recently used ones."""

    _CACHE_LIMIT: Final = 50_000
    _ACCOUNT_MODULUS: Final = 10**12
    _PHONE_MODULUS: Final = 10**8

    def __init__(self, seed: int, size: int, start: float) -> None:
        self.seed = seed
        self.start = start
        self.start_day = datetime.fromtimestamp(start, CHINA_TZ).date()
        provinces = tuple(PROVINCE_POPULATION)
        total_weight = sum(PROVINCE_POPULATION.values())
        sizes = [max(1, round(size * PROVINCE_POPULATION[p] / total_weight)) for p in provinces]
        self.provinces = provinces
        self.block_of = {province: block for block, province in enumerate(provinces)}
        self.block_starts = tuple(accumulate([0, *sizes[:-1]]))
        self.block_sizes = tuple(sizes)
        self.size = sum(sizes)
        self.province_cum = tuple(accumulate(PROVINCE_POPULATION[p] for p in provinces))
        self._origin_provinces = tuple(MIGRANT_ORIGINS)
        self._origin_cum = tuple(accumulate(MIGRANT_ORIGINS.values()))
        self._age_cum = tuple(accumulate(band[2] for band in AGE_BANDS))
        self._bank_cache: dict[str, tuple[tuple[Bank, ...], tuple[float, ...]]] = {}
        salt = random.Random(f"{seed}/salt")
        self._account_salt = salt.randrange(self._ACCOUNT_MODULUS)
        self._phone_salt = salt.randrange(self._PHONE_MODULUS)
        self._device_salt = salt.getrandbits(64)
        self._new_accounts = 0
        self._new_devices = 0
        self._cache: dict[int, Person] = {}

    # -- picking people --

    def random_province(self, rng: random.Random) -> str:
        return pick(rng, self.provinces, self.province_cum)

    def random_index(self, rng: random.Random, province: str | None = None) -> int:
        block = self.block_of[province or self.random_province(rng)]
        return self.block_starts[block] + int(rng.random() * self.block_sizes[block])

    def active_index(self, rng: random.Random) -> int:
        """One of the frequent transactors: every 20th person of each province."""
        block = self.block_of[self.random_province(rng)]
        return self.block_starts[block] + 20 * rng.randrange((self.block_sizes[block] + 19) // 20)

    def random_person(
        self, rng: random.Random, *, min_age: int = 0, max_age: int = 200, province: str | None = None
    ) -> Person:
        """A person in the age range if one turns up within a few draws (else the last drawn)."""
        for _ in range(40):
            person = self.person(self.random_index(rng, province))
            if min_age <= person.age_on(self.start_day) <= max_age:
                break
        return person

    def person(self, index: int) -> Person:
        person = self._cache.get(index)
        if person is None:
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            person = self._cache[index] = self._derive(index)
        return person

    # -- identifiers that never collide --

    def account_number(self, bank: Bank, serial: int) -> str:
        body = bank.bin + f"{(serial * 7_919_000_003 + self._account_salt) % self._ACCOUNT_MODULUS:012d}"
        return body + _luhn_digit(body)

    def new_account(self, rng: random.Random, bank: Bank, county: str, opened: float) -> Account:
        """An account opened during (or just before) the stream, never one of the population's."""
        self._new_accounts += 1
        return Account(bank, self.account_number(bank, self._ACCOUNT_MODULUS // 2 + self._new_accounts), opened, county)

    def phone(self, prefix: str, serial: int) -> str:
        return prefix + f"{(serial * 2_654_435_761 + self._phone_salt) % self._PHONE_MODULUS:08d}"

    def device(self, serial: int) -> str:
        return f"{_mix64(serial ^ self._device_salt):016x}"

    def new_device(self) -> str:
        self._new_devices += 1
        return self.device((1 << 62) + self._new_devices)

    def banks_in(self, province: str) -> tuple[tuple[Bank, ...], tuple[float, ...]]:
        cached = self._bank_cache.get(province)
        if cached is None:
            banks = (*NATIONAL_BANKS, RURAL_BANKS[province])
            cached = self._bank_cache[province] = (banks, tuple(accumulate(b.weight for b in banks)))
        return cached

    def random_bank(self, rng: random.Random, province: str) -> Bank:
        banks, cum = self.banks_in(province)
        return pick(rng, banks, cum)

    def county_in(self, rng: random.Random, province: str) -> str:
        return rng.choice(DIVISIONS.current[province])

    def other_province(self, rng: random.Random, *avoid: str) -> str:
        while True:
            province = self.random_province(rng)
            if province not in avoid:
                return province

    # -- deriving a person --

    def _derive(self, index: int) -> Person:
        rng = random.Random(f"{self.seed}/person/{index}")
        block = bisect.bisect_right(self.block_starts, index) - 1
        province = self.provinces[block]
        home = self.county_in(rng, province)

        band = pick(rng, AGE_BANDS, self._age_cum)
        age = rng.randint(band[0], band[1])
        birth = date.fromordinal(self.start_day.toordinal() - int((age + rng.random()) * 365.2425) + 1)
        male = rng.random() < 0.5

        draw = rng.random()
        if draw < PERMIT_SHARE and province in PERMIT_CODES:
            id_region = rng.choice(PERMIT_CODES[province])
        elif draw < MIGRANT_SHARE.get(province, DEFAULT_MIGRANT_SHARE):
            origin = pick(rng, self._origin_provinces, self._origin_cum)
            id_region = self.county_in(rng, origin if origin != province else "51")
        elif rng.random() < 0.75:
            id_region = home
        else:
            id_region = self.county_in(rng, province)
        retired = DIVISIONS.retired.get(id_region[:2], ())
        if retired and rng.random() < 0.03:
            code, last_year = rng.choice(retired)
            if birth.year <= last_year:
                id_region = code  # first issued before the county was renamed or merged
        sequence = rng.randrange(1, 500) * 2 + (1 if male else 0)
        body = f"{id_region}{birth:%Y%m%d}{sequence:03d}"
        id_number = body + resident_id_check_character(body)

        carrier = pick(rng, CARRIERS, CARRIER_CUM)
        prefix = rng.choice(carrier.prefixes)
        phone = self.phone(prefix, index)
        second_phone = ""
        if rng.random() < 0.3:
            other = rng.choice([p for c in CARRIERS for p in c.prefixes if p != prefix])
            second_phone = self.phone(other, index)  # same serial, other prefix: still unique

        accounts = self._accounts(rng, index, age, birth, home, id_region)
        contacts = tuple(self.random_index(rng, province if n < 3 else None) for n in range(4))
        return Person(
            index=index,
            id_number=id_number,
            name=self._name(rng, male, birth.year),
            birth=birth,
            phone=phone,
            second_phone=second_phone,
            device=self.device(index),
            address_key=f"{self.seed}/address/{index}",
            home=home,
            accounts=accounts,
            contacts=contacts,
        )

    def _accounts(
        self, rng: random.Random, index: int, age: int, birth: date, home: str, id_region: str
    ) -> tuple[Account, ...]:
        count = 1 if age < 18 else rng.randint(1, 2) if age <= 25 or age >= 60 else rng.randint(2, 4)
        hometown = id_region if id_region in CURRENT_COUNTIES else home
        earliest = max(
            datetime(birth.year + 16, 1, 1, tzinfo=UTC).timestamp(), datetime(2003, 1, 1, tzinfo=UTC).timestamp()
        )
        latest = max(self.start - 31 * 86400, earliest)
        accounts: list[Account] = []
        for slot in range(count):
            county = hometown if hometown != home and rng.random() < 0.4 else home
            for _ in range(6):
                bank = self.random_bank(rng, county[:2])
                if all(a.bank != bank for a in accounts):
                    break
            if rng.random() < 0.03:
                opened = self.start - rng.uniform(86400, 30 * 86400)  # a new account
            else:
                opened = rng.uniform(earliest, latest)
            accounts.append(Account(bank, self.account_number(bank, index * 8 + slot), min(opened, latest), county))
        return tuple(accounts)

    @staticmethod
    def _name(rng: random.Random, male: bool, birth_year: int) -> str:
        surname = rng.choice(COMPOUND_SURNAMES) if rng.random() < 0.003 else pick(rng, SURNAMES, SURNAME_CUM)
        chars = MALE_CHARS if male else FEMALE_CHARS
        if birth_year >= 1995 and rng.random() < 0.6:
            return surname + rng.choice(MODERN_CHARS) + rng.choice(chars + MODERN_CHARS)
        if rng.random() < 0.35:
            return surname + rng.choice(chars)
        return surname + rng.choice(chars) + rng.choice(chars)


def corporate_accounts(seed: int) -> list[str]:
    """The company accounts (utilities, schools, landlords, tax) that ordinary transfers pay.

    Each receives from many payers a day, as an allowlist entry would: feed them to
    ``riskgate lists import allowlist`` to tell them apart from mule accounts.
    """
    return [number for _bank, number, _province in corporates(seed)]


def corporates(seed: int) -> tuple[tuple[Bank, str, str], ...]:
    """(bank, account number, province) of the companies, `CORPORATES_PER_PROVINCE` a province in table order."""
    rng = random.Random(f"{seed}/corporate")
    found: list[tuple[Bank, str, str]] = []
    for serial, province in enumerate(p for p in PROVINCE_POPULATION for _ in range(CORPORATES_PER_PROVINCE)):
        bank = rng.choice(NATIONAL_BANKS[:7])
        found.append((bank, f"{bank.cnaps}{province}{_mix64(seed * 100_003 + serial) % 10**12:012d}", province))
    return tuple(found)


CORPORATES_PER_PROVINCE: Final = 30
# A province's companies are paid with Zipf weights: its first company the most.
CORPORATE_CUM: Final = tuple(accumulate(1.0 / (rank + 1) for rank in range(CORPORATES_PER_PROVINCE)))
