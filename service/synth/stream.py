"""Synthetic traffic: a seeded population and a stream of screening events with planted fraud.

`generate` yields ``(ScreenRequest, Label | None)`` pairs in ``occurred_at`` order, one at a time
(memory does not grow with the number of events). ``riskgate synth`` writes the requests as JSON
Lines in the protobuf JSON mapping that ``riskgate screen`` reads, and the planted events' labels
to a side file: the requests themselves carry no hint of which events are fraud. The same seed,
clock and options give the same stream, byte for byte, request ids included (``syn{seed}-{start
epoch}-{n}``), so a replay of a fixed-``start`` stream is an idempotent retry to the service.

**The population** is derived, not stored: person *i* is a pure function of ``(seed, i)``, so a
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

**The stream** spreads the events over the window with a daily rhythm in China time: transfers
all day but few between 01:00 and 06:00, card openings and closures in counter hours (mobile-app
openings at night), SIM sales in shop hours. Kinds are drawn in the proportions of `EVENT_SHARES`
(transfers 93.5 %). Transfers go mostly to the payer's own circle (same province), to strangers,
to company accounts (`corporate_accounts`, 10 %: allowlist candidates, which many payers pay
every day), or between the payer's own accounts; amounts are log-normal in fen (median about
¥500) with a heavy tail up to ¥1,000,000. Most events happen in the person's home province.

**Planted fraud** (`PATTERNS`, nominal rates in `PATTERN_RATES`) is scheduled among the ordinary
events; each planted event's `Label` names the pattern, the instance and the event's role:

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
its nominal number). A pattern that would not end inside the window is dropped, so the realised
rate is somewhat below the nominal one: the labels are the truth. ``fraud_scale`` multiplies
every rate.

**Time.** Without ``start``, the stream ends one minute before ``now`` (an injected clock) and
starts ``days`` earlier, but never more than 23 h 45 min before ``now``: the service refuses
events more than 24 hours old by default, and the quarter of an hour leaves room to replay the
stream. ``end`` moves that end (up to 5 minutes ahead of ``now``, the service's default skew; the
same seed and end give the same stream), and the stream then starts at most 23 h 45 min before
it. A stream whose events span S is accepted for 24 h - S after its end: the default day for a
quarter of an hour, a quarter of a day for 18 hours. Longer streams need ``start`` and a server
with ``RISKGATE_MAX_EVENT_AGE_SECONDS`` raised.
Counters start empty when a stream is replayed into a fresh store, so "first payment to this
payee" and "no night activity in 90 days" are true of every first occurrence: warm a backtest up
with an earlier stretch of the stream before measuring.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import heapq
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

from google.protobuf import json_format
from stdnum import numdb

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.clock import SystemClock
from service.domain import CHINA_TZ
from service.pipeline.validate import DEFAULT_TIME_BOUNDS, resident_id_check_character

__all__ = [
    "EVENT_SHARES",
    "PATTERNS",
    "PATTERN_RATES",
    "Label",
    "Labelled",
    "add_synth_command",
    "corporate_accounts",
    "generate",
    "label_json_line",
    "stream_window",
    "to_json_line",
    "valid_until",
]

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

EVENT_SHARES: Final[Mapping[str, float]] = MappingProxyType(
    {"transfer": 0.935, "card_opening": 0.03, "sim_sale": 0.025, "closure": 0.01}
)
"""The share of each event kind among the ordinary events."""

END_LAG: Final = timedelta(minutes=1)
"""Without a start, the stream ends this long before now."""
MAX_DEFAULT_AGE: Final = timedelta(hours=23, minutes=45)
"""Without a start, no event is older than this (the service's default limit is 24 hours)."""

MAX_POPULATION: Final = 20_000_000
MIN_POPULATION: Final = 1_000


@dataclass(frozen=True, slots=True)
class Label:
    """Why an event was planted: the pattern, which instance of it, and the event's part in it."""

    pattern: str  # one of PATTERNS
    instance: str  # e.g. "money_mule-3": the events of one planted case share it
    role: str  # e.g. "inflow", "payout", "applicant"


Labelled = tuple[pb.ScreenRequest, Label | None]


# --- reference data ------------------------------------------------------------

# 2020 census resident population, millions: where people live.
_PROVINCE_POPULATION: Final = {
    "11": 21.9, "12": 13.9, "13": 74.6, "14": 34.9, "15": 24.0, "21": 42.6, "22": 24.1, "23": 31.9,
    "31": 24.9, "32": 84.7, "33": 64.6, "34": 61.0, "35": 41.5, "36": 45.2, "37": 101.5, "41": 99.4,
    "42": 57.8, "43": 66.4, "44": 126.0, "45": 50.1, "46": 10.1, "50": 32.1, "51": 83.7, "52": 38.6,
    "53": 47.2, "54": 3.6, "61": 39.5, "62": 25.0, "63": 5.9, "64": 7.2, "65": 25.9,
}  # fmt: skip
# Share of residents whose ID was issued in another province (inter-provincial migrants).
_MIGRANT_SHARE: Final = {"11": 0.38, "12": 0.25, "31": 0.42, "32": 0.10, "33": 0.19, "35": 0.12, "44": 0.23}
_DEFAULT_MIGRANT_SHARE: Final = 0.03
# Where migrants' IDs come from, relative weights.
_MIGRANT_ORIGINS: Final = {
    "41": 14, "51": 11, "34": 11, "43": 10, "36": 8, "45": 7, "42": 7, "52": 6, "50": 5, "13": 5,
    "37": 4, "62": 3, "23": 3, "61": 2, "14": 2, "22": 2,
}  # fmt: skip
# Hong Kong, Macao and Taiwan residence permits, and where their holders mostly live.
_PERMIT_SHARE: Final = 0.001
_PERMIT_CODES: Final = {"44": ("810000", "820000"), "35": ("830000",), "31": ("810000", "830000")}

_AGE_BANDS: Final = ((16, 17, 1.5), (18, 25, 13.0), (26, 35, 18.5), (36, 45, 16.5), (46, 55, 19.0),
                     (56, 59, 6.0), (60, 69, 14.0), (70, 79, 8.0), (80, 92, 3.5))  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Bank:
    code: str  # institution_id
    cnaps: str  # the 3-digit CNAPS bank class code
    bin: str  # a 6-digit UnionPay debit-card BIN of the bank
    weight: float  # share of personal accounts
    province: str = ""  # a provincial rural credit union serves only its province


# National banks with the BIN on their common debit cards (for realism; nothing checks them).
_NATIONAL_BANKS: Final = (
    _Bank("ICBC", "102", "622202", 16.0),
    _Bank("ABC", "103", "622848", 14.0),
    _Bank("BOC", "104", "621661", 10.0),
    _Bank("CCB", "105", "621700", 14.0),
    _Bank("BOCOM", "301", "622262", 5.0),
    _Bank("PSBC", "403", "621799", 10.0),
    _Bank("CMB", "308", "622588", 6.0),
    _Bank("CITIC", "302", "622690", 3.0),
    _Bank("SPDB", "310", "622521", 3.0),
    _Bank("CIB", "309", "622908", 3.0),
    _Bank("CMBC", "305", "622622", 2.0),
    _Bank("CEB", "303", "622660", 2.0),
    _Bank("HXB", "304", "622630", 1.0),
    _Bank("PAB", "307", "622155", 2.0),
    _Bank("CGB", "306", "622568", 1.0),
)
_RURAL_WEIGHT: Final = 8.0
_RURAL_BANKS: Final = {p: _Bank(f"RCU{p}", "402", f"6230{p}", _RURAL_WEIGHT, p) for p in _PROVINCE_POPULATION}


@dataclass(frozen=True, slots=True)
class _Carrier:
    code: str  # institution_id
    enum: pb.Carrier.ValueType
    prefixes: tuple[str, ...]  # mobile number ranges
    share: float  # of SIM sales


_CARRIERS: Final = (
    _Carrier("CMCC", pb.CARRIER_CHINA_MOBILE, ("134", "135", "136", "137", "138", "139", "147", "150", "151", "152",
              "157", "158", "159", "172", "178", "182", "183", "184", "187", "188", "195", "197", "198"), 0.58),
    _Carrier("CUCC", pb.CARRIER_CHINA_UNICOM, ("130", "131", "132", "145", "155", "156", "166", "167", "171", "175",
              "176", "185", "186", "196"), 0.19),
    _Carrier("CTCC", pb.CARRIER_CHINA_TELECOM, ("133", "149", "153", "173", "177", "180", "181", "189", "190", "191",
              "193", "199"), 0.21),
    _Carrier("CBN", pb.CARRIER_CHINA_BROADNET, ("192",), 0.02),
)  # fmt: skip
_CARRIER_CUM: Final = tuple(accumulate(c.share for c in _CARRIERS))

# Surnames by frequency (weights roughly proportional to bearers).
_SURNAMES: Final = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
_SURNAME_CUM: Final = tuple(accumulate(1.0 / (rank + 4) for rank in range(len(_SURNAMES))))
_COMPOUND_SURNAMES: Final = ("欧阳", "司马", "诸葛", "上官", "慕容")
_MALE_CHARS: Final = "伟强磊军洋勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆帅旭宁龙林建国志文海东峰亮成永兵振光庆福"
_FEMALE_CHARS: Final = "芳娜敏静丽艳娟霞秀英慧巧美玲婷雪琳晶妍倩颖露瑶怡佳欣悦梦雨萱涵诗琴燕红梅兰凤洁莉月"
_MODERN_CHARS: Final = "子梓宇轩涵浩睿一诺欣然思雨泽博文晨奕辰沐锦芮嘉铭昊宸若熙可"
_STREETS: Final = (
    "人民路", "解放路", "中山路", "建设路", "和平路", "新华路", "胜利路", "文化路", "青年路", "朝阳路",
    "光明路", "长江路", "黄河路", "东风路", "幸福路", "学府路", "工业路", "滨江路", "迎宾大道", "世纪大道",
    "府前街", "南大街", "北大街", "东大街", "西大街",
)  # fmt: skip
_VILLAGE_PREFIXES: Final = "王李张刘陈杨赵周吴徐孙马胡朱郭何高林"
# Payee countries abroad, their currency and about how many CNY one unit is (the amount a person
# means in CNY is sent in that currency; the service converts it back with rules/rates.yaml).
_ABROAD: Final = (
    ("HK", "HKD", 0.91), ("SG", "SGD", 5.5), ("US", "USD", 7.1), ("GB", "GBP", 9.0), ("JP", "JPY", 0.047),
    ("AU", "AUD", 4.65),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Divisions:
    """County-level divisions from python-stdnum's dated table, by province."""

    current: Mapping[str, tuple[str, ...]]  # codes in use today
    retired: Mapping[str, tuple[tuple[str, int], ...]]  # (code, last year in use)
    names: Mapping[str, str]  # code -> current (or last) name, provinces and prefectures included


def _load_divisions() -> _Divisions:
    current: dict[str, list[str]] = {p: [] for p in _PROVINCE_POPULATION}
    retired: dict[str, list[tuple[str, int]]] = {p: [] for p in _PROVINCE_POPULATION}
    names: dict[str, str] = {}
    for _length, province, _high, props, children in numdb.get("cn/loc").prefixes:
        names[province + "0000"] = str(props.get("province", ""))
        for _l, rest, _h, county_props, _c in children:
            code = province + rest
            last = str(county_props.get("county", "")).split(",")[-1]
            period, _, name = last.rpartition("]")
            names[code] = name
            if province not in current or rest.endswith("00") or name in ("市辖区", "县", ""):
                continue
            end = period.partition("-")[2] if period else ""
            if not end:
                current[province].append(code)
            elif int(end) >= 1985:  # resident ID numbers started in 1984-85
                retired[province].append((code, int(end)))
    return _Divisions(
        current={p: tuple(codes) for p, codes in current.items()},
        retired={p: tuple(codes) for p, codes in retired.items()},
        names=names,
    )


_DIVISIONS: Final = _load_divisions()
_CURRENT_COUNTIES: Final = frozenset(code for codes in _DIVISIONS.current.values() for code in codes)


# --- small pure helpers --------------------------------------------------------

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


_T = TypeVar("_T")


def _pick(rng: random.Random, items: Sequence[_T], cum_weights: Sequence[float]) -> _T:
    """``rng.choices(items, cum_weights=cum_weights)[0]``, without the list."""
    return items[bisect.bisect_right(cum_weights, rng.random() * cum_weights[-1])]


def _local_seconds_of_day(t: float) -> float:
    return (t + 8 * 3600) % 86400


def _local_hour(t: float) -> int:
    return int(_local_seconds_of_day(t) // 3600)


def _within_hours(t: float, opens: float, closes: float, rng: random.Random) -> float:
    """`t` if it falls between local hours `opens` and `closes`, else a moment soon after the next opening."""
    of_day = _local_seconds_of_day(t)
    if opens * 3600 <= of_day < closes * 3600:
        return t
    wait = opens * 3600 - of_day if of_day < opens * 3600 else 86400 - of_day + opens * 3600
    return t + wait + rng.uniform(0, min(5400.0, (closes - opens) * 1200))


def _round_amount(rng: random.Random, yuan: float) -> int:
    """An amount in fen as people send it: often whole hundreds or whole yuan, at least ¥1."""
    draw = rng.random()
    if yuan >= 100 and draw < 0.45:
        fen = round(yuan / 100) * 10_000
    elif draw < 0.75:
        fen = round(yuan) * 100
    else:
        fen = round(yuan * 100)
    return max(fen, 100)


# Relative hourly activity (China local hour 0-23) of each kind of event.
_TRANSFER_RHYTHM: Final = (0.35, 0.2, 0.12, 0.08, 0.08, 0.15, 0.35, 0.65, 0.95, 1.2, 1.35, 1.35,
                           1.2, 1.15, 1.25, 1.3, 1.3, 1.25, 1.2, 1.2, 1.25, 1.15, 0.9, 0.6)  # fmt: skip
_COUNTER_RHYTHM: Final = (0.02, 0.02, 0.01, 0.01, 0.01, 0.01, 0.02, 0.05, 0.3, 1.4, 1.4, 1.4,
                          0.9, 1.0, 1.4, 1.4, 1.4, 0.5, 0.1, 0.1, 0.08, 0.06, 0.04, 0.03)  # fmt: skip
_SHOP_RHYTHM: Final = (0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.02, 0.2, 0.8, 1.2, 1.2,
                       1.2, 1.1, 1.2, 1.2, 1.2, 1.2, 1.4, 1.4, 1.4, 0.6, 0.1, 0.02)  # fmt: skip
_KINDS: Final = ("transfer", "card_opening", "sim_sale", "closure")
_RHYTHMS: Final = (_TRANSFER_RHYTHM, _COUNTER_RHYTHM, _SHOP_RHYTHM, _COUNTER_RHYTHM)


def _hourly_weights() -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """Per local hour: the total event intensity, and the cumulative weights of each kind."""
    totals: list[float] = []
    cums: list[tuple[float, ...]] = []
    for hour in range(24):
        weights = [
            EVENT_SHARES[kind] * rhythm[hour] / (sum(rhythm) / 24)
            for kind, rhythm in zip(_KINDS, _RHYTHMS, strict=True)
        ]
        totals.append(sum(weights))
        cums.append(tuple(accumulate(weights)))
    return tuple(totals), tuple(cums)


_HOURLY_INTENSITY, _HOURLY_KIND_CUM = _hourly_weights()

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


def _trigger_rates(fraud_scale: float) -> tuple[tuple[float, ...], ...]:
    """Per local hour, the cumulative per-event probability of starting each variant."""
    total = sum(_HOURLY_INTENSITY)
    table = []
    for hour in range(24):
        rates = []
        for pattern, _variant, share, hours in _VARIANTS:
            covered = sum(_HOURLY_INTENSITY[h] for h in hours) / total
            active = hour in hours
            rates.append(PATTERN_RATES[pattern] * share * fraud_scale / 100_000 / covered if active else 0.0)
        table.append(tuple(accumulate(rates)))
    return tuple(table)


class _Timeline:
    """Event times over [start, end] following the daily rhythm: the inverse of cumulative intensity."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self._bounds: list[float] = []
        self._cum: list[float] = []
        self._rates: list[float] = []
        t, total = start, 0.0
        while t < end:
            of_day = _local_seconds_of_day(t)
            boundary = min(end, t + 3600 - of_day % 3600)
            rate = _HOURLY_INTENSITY[int(of_day // 3600)]
            self._bounds.append(t)
            self._cum.append(total)
            self._rates.append(rate)
            total += rate * (boundary - t)
            t = boundary
        self.total = total

    def at(self, fraction: float) -> float:
        """The time by which `fraction` of the stream's events have happened."""
        target = min(max(fraction, 0.0), 1.0) * self.total
        i = max(bisect.bisect_right(self._cum, target) - 1, 0)
        return min(self._bounds[i] + (target - self._cum[i]) / self._rates[i], self.end)


# --- the population --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Account:
    bank: _Bank
    number: str
    opened: float  # epoch seconds
    county: str  # where it was opened


@dataclass(frozen=True, slots=True)
class _Person:
    index: int
    id_number: str
    name: str
    birth: date
    phone: str
    second_phone: str  # "" if none
    device: str
    address_key: str  # seeds the address, derived only when an event needs it
    home: str  # county code of residence
    accounts: tuple[_Account, ...]
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
    names = _DIVISIONS.names
    province = names.get(county[:2] + "0000", "")
    prefecture = names.get(county[:4] + "00", "")
    if prefecture in ("市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划") or prefecture == province:
        prefecture = ""
    place = province + prefecture + names.get(county, "")
    if rng.random() < 0.25:
        return place + f"{rng.choice(_VILLAGE_PREFIXES)}家村{rng.randint(1, 9)}组{rng.randint(1, 80)}号"
    street = place + f"{rng.choice(_STREETS)}{rng.randint(1, 400)}号"
    if rng.random() < 0.7:
        street += f"{rng.randint(1, 30)}栋{rng.randint(1, 4)}单元{rng.randint(1, 33)}{rng.randint(1, 4):02d}室"
    return street


def _carrier_of(phone: str) -> _Carrier:
    return next(c for c in _CARRIERS if phone[:3] in c.prefixes)


class _Population:
    """People derived on demand from (seed, index); a bounded cache keeps the recently used ones."""

    _CACHE_LIMIT: Final = 50_000
    _ACCOUNT_MODULUS: Final = 10**12
    _PHONE_MODULUS: Final = 10**8

    def __init__(self, seed: int, size: int, start: float) -> None:
        self.seed = seed
        self.start = start
        self.start_day = datetime.fromtimestamp(start, CHINA_TZ).date()
        provinces = tuple(_PROVINCE_POPULATION)
        total_weight = sum(_PROVINCE_POPULATION.values())
        sizes = [max(1, round(size * _PROVINCE_POPULATION[p] / total_weight)) for p in provinces]
        self.provinces = provinces
        self.block_of = {province: block for block, province in enumerate(provinces)}
        self.block_starts = tuple(accumulate([0, *sizes[:-1]]))
        self.block_sizes = tuple(sizes)
        self.size = sum(sizes)
        self.province_cum = tuple(accumulate(_PROVINCE_POPULATION[p] for p in provinces))
        self._origin_provinces = tuple(_MIGRANT_ORIGINS)
        self._origin_cum = tuple(accumulate(_MIGRANT_ORIGINS.values()))
        self._age_cum = tuple(accumulate(band[2] for band in _AGE_BANDS))
        self._bank_cache: dict[str, tuple[tuple[_Bank, ...], tuple[float, ...]]] = {}
        salt = random.Random(f"{seed}/salt")
        self._account_salt = salt.randrange(self._ACCOUNT_MODULUS)
        self._phone_salt = salt.randrange(self._PHONE_MODULUS)
        self._device_salt = salt.getrandbits(64)
        self._new_accounts = 0
        self._new_devices = 0
        self._cache: dict[int, _Person] = {}

    # -- picking people --

    def random_province(self, rng: random.Random) -> str:
        return _pick(rng, self.provinces, self.province_cum)

    def random_index(self, rng: random.Random, province: str | None = None) -> int:
        block = self.block_of[province or self.random_province(rng)]
        return self.block_starts[block] + int(rng.random() * self.block_sizes[block])

    def active_index(self, rng: random.Random) -> int:
        """One of the frequent transactors: every 20th person of each province."""
        block = self.block_of[self.random_province(rng)]
        return self.block_starts[block] + 20 * rng.randrange((self.block_sizes[block] + 19) // 20)

    def random_person(
        self, rng: random.Random, *, min_age: int = 0, max_age: int = 200, province: str | None = None
    ) -> _Person:
        """A person in the age range if one turns up within a few draws (else the last drawn)."""
        for _ in range(40):
            person = self.person(self.random_index(rng, province))
            if min_age <= person.age_on(self.start_day) <= max_age:
                break
        return person

    def person(self, index: int) -> _Person:
        person = self._cache.get(index)
        if person is None:
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            person = self._cache[index] = self._derive(index)
        return person

    # -- identifiers that never collide --

    def account_number(self, bank: _Bank, serial: int) -> str:
        body = bank.bin + f"{(serial * 7_919_000_003 + self._account_salt) % self._ACCOUNT_MODULUS:012d}"
        return body + _luhn_digit(body)

    def new_account(self, rng: random.Random, bank: _Bank, county: str, opened: float) -> _Account:
        """An account opened during (or just before) the stream, never one of the population's."""
        self._new_accounts += 1
        return _Account(
            bank, self.account_number(bank, self._ACCOUNT_MODULUS // 2 + self._new_accounts), opened, county
        )

    def phone(self, prefix: str, serial: int) -> str:
        return prefix + f"{(serial * 2_654_435_761 + self._phone_salt) % self._PHONE_MODULUS:08d}"

    def device(self, serial: int) -> str:
        return f"{_mix64(serial ^ self._device_salt):016x}"

    def new_device(self) -> str:
        self._new_devices += 1
        return self.device((1 << 62) + self._new_devices)

    def banks_in(self, province: str) -> tuple[tuple[_Bank, ...], tuple[float, ...]]:
        cached = self._bank_cache.get(province)
        if cached is None:
            banks = (*_NATIONAL_BANKS, _RURAL_BANKS[province])
            cached = self._bank_cache[province] = (banks, tuple(accumulate(b.weight for b in banks)))
        return cached

    def random_bank(self, rng: random.Random, province: str) -> _Bank:
        banks, cum = self.banks_in(province)
        return _pick(rng, banks, cum)

    def county_in(self, rng: random.Random, province: str) -> str:
        return rng.choice(_DIVISIONS.current[province])

    def other_province(self, rng: random.Random, *avoid: str) -> str:
        while True:
            province = self.random_province(rng)
            if province not in avoid:
                return province

    # -- deriving a person --

    def _derive(self, index: int) -> _Person:
        rng = random.Random(f"{self.seed}/person/{index}")
        block = bisect.bisect_right(self.block_starts, index) - 1
        province = self.provinces[block]
        home = self.county_in(rng, province)

        band = _pick(rng, _AGE_BANDS, self._age_cum)
        age = rng.randint(band[0], band[1])
        birth = date.fromordinal(self.start_day.toordinal() - int((age + rng.random()) * 365.2425) + 1)
        male = rng.random() < 0.5

        draw = rng.random()
        if draw < _PERMIT_SHARE and province in _PERMIT_CODES:
            id_region = rng.choice(_PERMIT_CODES[province])
        elif draw < _MIGRANT_SHARE.get(province, _DEFAULT_MIGRANT_SHARE):
            origin = _pick(rng, self._origin_provinces, self._origin_cum)
            id_region = self.county_in(rng, origin if origin != province else "51")
        elif rng.random() < 0.75:
            id_region = home
        else:
            id_region = self.county_in(rng, province)
        retired = _DIVISIONS.retired.get(id_region[:2], ())
        if retired and rng.random() < 0.03:
            code, last_year = rng.choice(retired)
            if birth.year <= last_year:
                id_region = code  # first issued before the county was renamed or merged
        sequence = rng.randrange(1, 500) * 2 + (1 if male else 0)
        body = f"{id_region}{birth:%Y%m%d}{sequence:03d}"
        id_number = body + resident_id_check_character(body)

        carrier = _pick(rng, _CARRIERS, _CARRIER_CUM)
        prefix = rng.choice(carrier.prefixes)
        phone = self.phone(prefix, index)
        second_phone = ""
        if rng.random() < 0.3:
            other = rng.choice([p for c in _CARRIERS for p in c.prefixes if p != prefix])
            second_phone = self.phone(other, index)  # same serial, other prefix: still unique

        accounts = self._accounts(rng, index, age, birth, home, id_region)
        contacts = tuple(self.random_index(rng, province if n < 3 else None) for n in range(4))
        return _Person(
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
    ) -> tuple[_Account, ...]:
        count = 1 if age < 18 else rng.randint(1, 2) if age <= 25 or age >= 60 else rng.randint(2, 4)
        hometown = id_region if id_region in _CURRENT_COUNTIES else home
        earliest = max(
            datetime(birth.year + 16, 1, 1, tzinfo=UTC).timestamp(), datetime(2003, 1, 1, tzinfo=UTC).timestamp()
        )
        latest = max(self.start - 31 * 86400, earliest)
        accounts: list[_Account] = []
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
            accounts.append(_Account(bank, self.account_number(bank, index * 8 + slot), min(opened, latest), county))
        return tuple(accounts)

    @staticmethod
    def _name(rng: random.Random, male: bool, birth_year: int) -> str:
        surname = rng.choice(_COMPOUND_SURNAMES) if rng.random() < 0.003 else _pick(rng, _SURNAMES, _SURNAME_CUM)
        chars = _MALE_CHARS if male else _FEMALE_CHARS
        if birth_year >= 1995 and rng.random() < 0.6:
            return surname + rng.choice(_MODERN_CHARS) + rng.choice(chars + _MODERN_CHARS)
        if rng.random() < 0.35:
            return surname + rng.choice(chars)
        return surname + rng.choice(chars) + rng.choice(chars)


def corporate_accounts(seed: int) -> list[str]:
    """The company accounts (utilities, schools, landlords, tax) that ordinary transfers pay.

    Each receives from many payers a day, as an allowlist entry would: feed them to
    ``riskgate lists import allowlist`` to tell them apart from mule accounts.
    """
    return [number for _bank, number, _province in _corporates(seed)]


def _corporates(seed: int) -> tuple[tuple[_Bank, str, str], ...]:
    rng = random.Random(f"{seed}/corporate")
    found: list[tuple[_Bank, str, str]] = []
    for serial, province in enumerate(p for p in _PROVINCE_POPULATION for _ in range(_CORPORATES_PER_PROVINCE)):
        bank = rng.choice(_NATIONAL_BANKS[:7])
        found.append((bank, f"{bank.cnaps}{province}{_mix64(seed * 100_003 + serial) % 10**12:012d}", province))
    return tuple(found)


_CORPORATES_PER_PROVINCE: Final = 30
_CORPORATE_CUM: Final = tuple(accumulate(1.0 / (rank + 1) for rank in range(_CORPORATES_PER_PROVINCE)))


# --- the stream ------------------------------------------------------------------------


def stream_window(
    now: datetime, days: float, start: datetime | None = None, end: datetime | None = None
) -> tuple[datetime, datetime]:
    """The (start, end) of a stream of `days` (see "Time" in the module docstring).

    `start` fixes the window's start, `end` its end (not both). An end further ahead of `now`
    than the service's default skew is refused: the stream's last events would be too.
    """
    if any(t is not None and t.utcoffset() is None for t in (now, start, end)):
        raise ValueError("now, start and end must be timezone-aware")
    if not (math.isfinite(days) and days > 0):
        raise ValueError("days must be positive")
    span = timedelta(days=days)
    if start is not None:
        if end is not None:
            raise ValueError("give a start or an end, not both")
        return start.astimezone(UTC), (start + span).astimezone(UTC)
    if end is None:
        end = (now - END_LAG).astimezone(UTC).replace(microsecond=0)
        earliest = (now - MAX_DEFAULT_AGE).astimezone(UTC).replace(microsecond=0)
    else:
        _check_not_ahead(end, now)
        end = end.astimezone(UTC)
        earliest = end - MAX_DEFAULT_AGE
    if end - span >= earliest:
        return end - span, end
    if days > 1:
        raise ValueError(
            "a stream longer than a day needs a start time: the service refuses events older than 24 hours"
            " unless RISKGATE_MAX_EVENT_AGE_SECONDS is raised"
        )
    return earliest, end


def _check_not_ahead(end: datetime, now: datetime) -> None:
    skew = DEFAULT_TIME_BOUNDS.max_future_skew_seconds
    ahead = (end - now).total_seconds()
    if ahead > skew:
        raise ValueError(
            f"the end is {ahead:.0f} s ahead of now: the service refuses events more than {skew:g} s in the"
            " future (RISKGATE_MAX_FUTURE_SKEW_SECONDS)"
        )


def valid_until(window_start: datetime) -> datetime:
    """Until when the service, at its default age limit, accepts every event of a stream starting then.

    The first event must be newer than now - 24 h when it is sent; no event is older than the window.
    """
    return window_start + timedelta(seconds=DEFAULT_TIME_BOUNDS.max_age_seconds)


def generate(
    seed: int,
    events: int,
    days: float,
    now: datetime,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    population: int | None = None,
    fraud_scale: float = 1.0,
) -> Iterator[Labelled]:
    """`events` requests with their labels (None for ordinary events), in occurred_at order.

    `now` is the clock (injected, timezone-aware); `start` or `end` fixes the window for replays
    (see `stream_window`); `population` defaults to twice the events (at least 10,000);
    `fraud_scale` multiplies `PATTERN_RATES`.
    """
    if events < 0:
        raise ValueError("events must not be negative")
    if not (math.isfinite(fraud_scale) and fraud_scale >= 0):
        raise ValueError("fraud_scale must be a non-negative number")
    size = population if population is not None else min(max(2 * events, 10_000), MAX_POPULATION)
    if not MIN_POPULATION <= size <= MAX_POPULATION:
        raise ValueError(f"population must be {MIN_POPULATION:,} to {MAX_POPULATION:,}")
    window = stream_window(now, days, start, end)
    return _Generator(seed, events, window, size, fraud_scale).run()


_Planned = tuple[float, pb.ScreenRequest, str]  # (epoch seconds, request, role)


class _Generator:
    def __init__(
        self, seed: int, events: int, window: tuple[datetime, datetime], size: int, fraud_scale: float
    ) -> None:
        self.seed = seed
        self.events = events
        self.start, self.end = window[0].timestamp(), window[1].timestamp()
        self.timeline = _Timeline(self.start, self.end)
        self.rng = random.Random(f"{seed}/stream")
        self.people = _Population(seed, size, self.start)
        self.id_prefix = f"syn{seed}-{int(self.start)}-"
        self.corporates = _corporates(seed)
        self.triggers = _trigger_rates(fraud_scale)
        builders: dict[str, Callable[[float], list[_Planned]]] = {
            "batch_opening": self._batch_opening,
            "sim_batch": self._sim_batch,
            "multi_bank_opening": self._multi_bank_opening,
            "money_mule": self._money_mule,
            "rapid_in_out": self._rapid_in_out,
            "elderly_victim_night": functools.partial(self._elderly_victim, night=True),
            "elderly_victim_remote": functools.partial(self._elderly_victim, night=False),
        }
        self.variants = tuple((pattern, builders[variant]) for pattern, variant, _, _ in _VARIANTS)
        self.instances: Counter[str] = Counter()
        # Planted events waiting for their time: (ms, tie-breaker, request, label).
        self.pending: list[tuple[int, int, pb.ScreenRequest, Label]] = []
        self.pending_latest = 0
        self.pushed = 0

    # -- the merge of ordinary slots and planted events --

    def slot_floor(self, k: int) -> float:
        """The earliest time slot `k` can have."""
        return self.timeline.at(k / self.events)

    def run(self) -> Iterator[Labelled]:
        for k in range(self.events):
            t = self.timeline.at((k + self.rng.random()) / self.events)
            t_ms = int(t * 1000)
            if self.pending and self.pending[0][0] <= t_ms:
                # A planted event is due: it takes this slot, so the count stays exact.
                at_ms, _, request, label = heapq.heappop(self.pending)
                yield self._stamp(request, k, at_ms), label
            else:
                yield self._stamp(self._ordinary(t), k, t_ms), None
                triggers = self.triggers[_local_hour(t)]
                draw = self.rng.random()
                if draw < triggers[-1]:
                    self._plant(k, t, bisect.bisect_right(triggers, draw))
        if self.pending:  # unreachable: _plant only admits what the remaining slots can carry
            raise RuntimeError("planted events left over")

    def _stamp(self, request: pb.ScreenRequest, n: int, at_ms: int) -> pb.ScreenRequest:
        request.request_id = f"{self.id_prefix}{n:08d}"
        request.occurred_at.seconds = at_ms // 1000
        request.occurred_at.nanos = at_ms % 1000 * 1_000_000
        return request

    def _plant(self, k: int, t: float, variant: int) -> None:
        pattern, build = self.variants[variant]
        planned = build(t)
        if not planned:
            return
        t_ms = int(t * 1000)
        times = [int(at * 1000) for at, _, _ in planned]
        waiting = len(self.pending) + len(planned)
        # Every planted event must be due before the last `waiting` slots begin, so that those
        # slots can carry it; and none may precede the slot that planted it.
        latest_slot = self.events - 1 - waiting
        if latest_slot <= k or min(times) <= t_ms:
            return
        latest = max(*times, self.pending_latest if self.pending else 0)
        if latest > int(self.slot_floor(latest_slot) * 1000):
            return
        self.instances[pattern] += 1
        instance = f"{pattern}-{self.instances[pattern]}"
        for at_ms, (_, request, role) in zip(times, planned, strict=True):
            self.pushed += 1
            heapq.heappush(self.pending, (at_ms, self.pushed, request, Label(pattern, instance, role)))
        self.pending_latest = latest

    def _ordinary(self, t: float) -> pb.ScreenRequest:
        cum = _HOURLY_KIND_CUM[_local_hour(t)]
        kind = bisect.bisect_right(cum, self.rng.random() * cum[-1])
        if kind == 0:
            return self._ordinary_transfer(t)
        if kind == 1:
            return self._ordinary_card_opening(t)
        if kind == 2:
            return self._ordinary_sim_sale(t)
        return self._ordinary_closure(t)

    # -- building blocks --

    def _branch(self, bank: _Bank, county: str, *, clerk: int | None = None, branch: int | None = None) -> pb.Outlet:
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
    def _app(bank: _Bank, county: str, channel: str = "MOBILE") -> pb.Outlet:
        return pb.Outlet(institution_id=bank.code, outlet_id=f"{bank.code}-{channel}", region_code=county)

    def _shop(self, carrier: _Carrier, county: str, *, shop: int | None = None, clerk: int | None = None) -> pb.Outlet:
        k = shop if shop is not None else self.rng.randint(1, 4)
        c = clerk if clerk is not None else self.rng.randint(1, 4)
        return pb.Outlet(
            institution_id=carrier.code,
            outlet_id=f"{carrier.code}-{county}-S{k:02d}",
            clerk_id=f"{county}S{k:02d}{c:02d}",
            region_code=county,
        )

    def _identity_check(self) -> pb.IdentityCheck.ValueType:
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

    def _local_tie(self, person: _Person, outlet_county: str) -> bool:
        return person.id_number[:2] != outlet_county[:2] and self.rng.random() < 0.8

    def _transfer(
        self,
        payer: _Person,
        account: _Account,
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
            outlet = self._app(bank, account.county)
            device = payer.device if device is None else device
            ip_region = payer.home if ip_region is None else ip_region
        elif channel == pb.TRANSFER_CHANNEL_ONLINE:
            outlet = self._app(bank, account.county, "ONLINE")
            device = "" if device is None else device
            ip_region = payer.home if ip_region is None else ip_region
        elif channel == pb.TRANSFER_CHANNEL_COUNTER:
            outlet = self._branch(bank, payer.home)
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

    def _card_opening(
        self,
        applicant: _Person,
        outlet: pb.Outlet,
        account_class: pb.AccountClass.ValueType,
        *,
        companion: _Person | None = None,
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

    def _sim_sale(
        self,
        buyer: _Person,
        carrier: _Carrier,
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
            identity_check=self._identity_check(),
            has_local_tie=self._local_tie(buyer, outlet.region_code),
        )
        return pb.ScreenRequest(outlet=outlet, sim_sale=sale)

    # -- ordinary events --

    def _ordinary_transfer(self, t: float) -> pb.ScreenRequest:
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
                people.block_of[payer.province] * _CORPORATES_PER_PROVINCE
                + bisect.bisect_right(_CORPORATE_CUM, rng.random() * _CORPORATE_CUM[-1])
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
            amount = _round_amount(rng, min(yuan, 1_000_000))
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
            country, currency, cny_per_unit = rng.choice(_ABROAD)
            amount = max(1, round(amount / cny_per_unit))
            payee = f"{rng.randrange(10**11, 10**12)}"
            payee_bank, payee_opened = f"{country}-BANK-{rng.randint(1, 9)}", None
        return self._transfer(
            payer, account, payee, payee_bank, amount,
            channel=channel, payee_opened=payee_opened, ip_region=ip_region, country=country, currency=currency,
        )  # fmt: skip

    def _ordinary_card_opening(self, t: float) -> pb.ScreenRequest:
        rng, people = self.rng, self.people
        applicant = people.random_person(rng)
        for _ in range(3):  # openings lean young: students, first jobs
            age = applicant.age_on(people.start_day)
            if rng.random() < (1.0 if age <= 25 else 0.6 if age < 46 else 0.4 if age < 60 else 0.3):
                break
            applicant = people.random_person(rng)
        hour = _local_hour(t)
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
            return self._card_opening(
                applicant, self._app(bank, applicant.home), account_class,
                device=applicant.device, account_number=number, identity_check=self._identity_check(),
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
        companion: _Person | None = None
        relation = pb.COMPANION_RELATION_UNSPECIFIED
        draw = rng.random()
        family = 0.25 if age >= 65 or age < 18 else 0.05
        if draw < family + 0.01:
            companion = people.person(applicant.contacts[0 if draw < family else 1])
            relation = pb.COMPANION_RELATION_RELATIVE if draw < family else pb.COMPANION_RELATION_NON_RELATIVE
            if companion.index == applicant.index:
                companion, relation = None, pb.COMPANION_RELATION_UNSPECIFIED
        limit = 0 if rng.random() < 0.7 else rng.choice((500_000, 1_000_000, 2_000_000, 5_000_000, 20_000_000))
        return self._card_opening(
            applicant, self._branch(bank, county), account_class,
            companion=companion, relation=relation,
            device=applicant.device if rng.random() < 0.4 else "",
            daily_limit_fen=limit, account_number=number, identity_check=self._identity_check(),
        )  # fmt: skip

    def _ordinary_sim_sale(self, t: float) -> pb.ScreenRequest:
        rng, people = self.rng, self.people
        buyer = people.random_person(rng)
        carrier = _pick(rng, _CARRIERS, _CARRIER_CUM)
        county = buyer.home if rng.random() < 0.9 else people.county_in(rng, buyer.province)
        draw = rng.random()
        quantity = 1 if draw < 0.93 else 2 if draw < 0.98 else 3 if draw < 0.995 else rng.randint(4, 5)
        return self._sim_sale(
            buyer, carrier, self._shop(carrier, county), quantity,
            phone=buyer.phone if rng.random() < 0.8 else "", iot=rng.random() < 0.003,
        )  # fmt: skip

    def _ordinary_closure(self, t: float) -> pb.ScreenRequest:
        rng, people = self.rng, self.people
        holder = people.random_person(rng)
        if rng.random() < 0.65:
            account = rng.choice(holder.accounts)
            if account.bank.province and account.bank.province != holder.province:
                outlet = self._branch(account.bank, account.county)
            else:
                outlet = self._branch(account.bank, holder.home)
            closure = pb.Closure(
                holder=holder.proto(address=False),
                account_number=account.number,
                account_class=pb.ACCOUNT_CLASS_I if rng.random() < 0.6 else pb.ACCOUNT_CLASS_II,
            )
            return pb.ScreenRequest(outlet=outlet, closure=closure)
        msisdn = holder.second_phone or holder.phone
        carrier = _carrier_of(msisdn)
        closure = pb.Closure(holder=holder.proto(address=False), msisdn=msisdn, carrier=carrier.enum)
        return pb.ScreenRequest(outlet=self._shop(carrier, holder.home), closure=closure)

    # -- planted patterns: each returns its events; _plant decides whether they fit --

    def _batch_opening(self, t: float) -> list[_Planned]:
        rng, people = self.rng, self.people
        companion = people.random_person(rng, min_age=28, max_age=50)
        province = companion.province
        bank = people.random_bank(rng, province)
        outlet = self._branch(bank, companion.home)
        at = t + rng.uniform(120, 900)
        same_phone = rng.random() < 0.5
        same_device = rng.random() < 0.4
        relation = rng.choices(
            (pb.COMPANION_RELATION_NON_RELATIVE, pb.COMPANION_RELATION_RELATIVE, pb.COMPANION_RELATION_UNSPECIFIED),
            (0.7, 0.1, 0.2),
        )[0]
        planned: list[_Planned] = []
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
            request = self._card_opening(
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

    def _sim_batch(self, t: float) -> list[_Planned]:
        rng, people = self.rng, self.people
        recruiter = people.random_person(rng, min_age=22, max_age=45)
        carrier = _pick(rng, _CARRIERS[:3], _CARRIER_CUM[:3])
        outlet = self._shop(carrier, recruiter.home)
        address = recruiter.address if rng.random() < 0.5 else None
        at = t + rng.uniform(120, 900)
        planned: list[_Planned] = []
        seen: set[int] = {recruiter.index}
        wanted = rng.randint(5, 8)
        for _ in range(3 * wanted):
            if len(planned) == wanted:
                break
            buyer = people.random_person(rng, min_age=18, max_age=70, province=recruiter.province)
            if buyer.index in seen:
                continue
            seen.add(buyer.index)
            request = self._sim_sale(
                buyer, carrier, pb.Outlet(), rng.randint(4, 6), phone=recruiter.phone, address=address
            )
            request.outlet.CopyFrom(outlet)
            planned.append((at, request, "buyer"))
            at += rng.uniform(180, 540)
        return planned

    def _multi_bank_opening(self, t: float) -> list[_Planned]:
        rng, people = self.rng, self.people
        applicant = people.random_person(rng, min_age=18, max_age=30)
        banks, _ = people.banks_in(applicant.province)
        chosen = rng.sample(
            [b for b in banks if b.code not in {a.bank.code for a in applicant.accounts}], rng.randint(3, 5)
        )
        spread_days = self.end - t > 3 * 86400
        at = t + rng.uniform(120, 900)
        planned: list[_Planned] = []
        for bank in chosen:
            opened = people.new_account(rng, bank, applicant.home, at)
            request = self._card_opening(
                applicant, self._branch(bank, applicant.home), pb.ACCOUNT_CLASS_I,
                device=applicant.device if rng.random() < 0.5 else "",
                daily_limit_fen=rng.choice((0, 5_000_000, 10_000_000)),
                account_number=opened.number if rng.random() < 0.6 else "",
            )  # fmt: skip
            planned.append((at, request, "opening"))
            gap = rng.uniform(4 * 3600, 30 * 3600) if spread_days else rng.uniform(600, 2400)
            at = _within_hours(at + gap, 9, 17, rng)
        return planned

    def _money_mule(self, t: float) -> list[_Planned]:
        rng, people = self.rng, self.people
        holder = people.random_person(rng, min_age=18, max_age=30)
        bank = people.random_bank(rng, holder.province)
        start = t + rng.uniform(60, 1800)
        mule = people.new_account(rng, bank, holder.home, start - rng.uniform(86400, 10 * 86400))
        planned: list[_Planned] = []
        total = 0
        payers: set[int] = {holder.index}
        times = sorted(start + rng.uniform(0, 3000) for _ in range(rng.randint(6, 12)))
        for at in times:
            victim = people.person(people.random_index(rng))
            while victim.index in payers:
                victim = people.person(people.random_index(rng))
            payers.add(victim.index)
            amount = _round_amount(rng, min(max(rng.lognormvariate(math.log(8000), 0.8), 1000.0), 49_900.0))
            total += amount
            request = self._transfer(
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
            request = self._transfer(
                holder, mule, onward.number, next_bank.code, amount, device=ring_device, ip_region=ring_region
            )
            planned.append((at, request, "payout"))
            at += rng.uniform(60, 360)
        return planned

    def _rapid_in_out(self, t: float) -> list[_Planned]:
        rng, people = self.rng, self.people
        holder = people.random_person(rng, min_age=20, max_age=45)
        bank = people.random_bank(rng, holder.province)
        cycle = t + rng.uniform(60, 1200)
        account = people.new_account(rng, bank, holder.home, cycle - rng.uniform(5 * 86400, 60 * 86400))
        planned: list[_Planned] = []
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
                planned.append((at, self._transfer(source, upstream, account.number, bank.code, amount), "inflow"))
            out = int(inflow * rng.uniform(0.85, 1.0))
            at = cycle + rng.uniform(480, 900)
            parts = rng.randint(1, 2)
            for n in range(parts):
                amount = out if n == parts - 1 else int(out * rng.uniform(0.4, 0.6))
                out -= amount
                next_bank = people.random_bank(rng, people.random_province(rng))
                onward = people.new_account(rng, next_bank, holder.home, at)
                planned.append((at, self._transfer(holder, account, onward.number, next_bank.code, amount), "outflow"))
                at += rng.uniform(60, 480)
            cycle += rng.uniform(3600, 3 * 3600)
        return planned

    def _elderly_victim(self, t: float, *, night: bool) -> list[_Planned]:
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
        planned: list[_Planned] = []
        for _ in range(1 if rng.random() < 0.8 else 2):
            safe_bank = people.random_bank(rng, people.random_province(rng))
            safe = people.new_account(
                rng, safe_bank, people.county_in(rng, safe_bank.province or "44"), at - 86400 * rng.uniform(2, 30)
            )
            amount = round(math.exp(rng.uniform(math.log(50_000), math.log(500_000))) / 1000) * 100_000
            channel = pb.TRANSFER_CHANNEL_MOBILE if rng.random() < 0.8 else pb.TRANSFER_CHANNEL_ONLINE
            request = self._transfer(
                victim, account, safe.number, safe_bank.code, max(amount, 5_000_000),
                channel=channel, payee_opened=safe.opened if rng.random() < 0.5 else None,
                device=device, ip_region=ip_region,
            )  # fmt: skip
            planned.append((at, request, "victim_transfer"))
            at += rng.uniform(600, 2400) if not night else rng.uniform(300, 900)
        return planned


# --- output and the command -------------------------------------------------------


def to_json_line(request: pb.ScreenRequest) -> str:
    """One request in the protobuf JSON mapping, on one line (what ``riskgate screen`` reads)."""
    document = json_format.MessageToDict(request, preserving_proto_field_name=True)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def label_json_line(request_id: str, label: Label) -> str:
    return json.dumps(
        {"request_id": request_id, "pattern": label.pattern, "instance": label.instance, "role": label.role},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _start_time(text: str) -> datetime:
    """``YYYY-MM-DD`` (midnight, China time) or an ISO 8601 time with an offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("must be YYYY-MM-DD or an ISO 8601 time with an offset") from None
    if len(text.strip()) == 10:
        return moment.replace(tzinfo=CHINA_TZ)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a UTC offset, e.g. 2025-06-15T00:00:00+08:00")
    return moment


def _end_time(text: str) -> datetime:
    """An ISO 8601 time with an offset (a bare date would be ambiguous as an end)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("must be an ISO 8601 time with an offset") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a time and a UTC offset, e.g. 2025-06-15T18:00:00+08:00")
    return moment


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _synth(args: argparse.Namespace) -> int:
    now = SystemClock().now()  # the command is the edge: the only place the clock is read
    began = time.perf_counter()
    try:
        window = stream_window(now, args.days, args.start, args.end)
        stream = generate(
            args.seed,
            args.events,
            args.days,
            now,
            start=args.start,
            end=args.end,
            population=args.population,
            fraud_scale=args.fraud_scale,
        )
    except ValueError as error:
        print(f"riskgate synth: {error}", file=sys.stderr)
        return 2
    kinds: Counter[str] = Counter()
    instances: set[str] = set()
    labelled = 0
    try:
        with contextlib.ExitStack() as files:
            out = sys.stdout if args.out in (None, "-") else files.enter_context(open(args.out, "w", encoding="utf-8"))
            labels = files.enter_context(open(args.labels, "w", encoding="utf-8")) if args.labels else None
            batch: list[str] = []
            for request, label in stream:
                kinds[request.WhichOneof("event") or ""] += 1
                batch.append(to_json_line(request))
                if label is not None:
                    labelled += 1
                    instances.add(label.instance)
                    if labels is not None:
                        labels.write(label_json_line(request.request_id, label) + "\n")
                if len(batch) >= 1000:
                    out.write("\n".join(batch) + "\n")
                    batch.clear()
            if batch:
                out.write("\n".join(batch) + "\n")
            out.flush()
        if args.allowlist:
            Path(args.allowlist).write_text("".join(f"{n}\n" for n in corporate_accounts(args.seed)), encoding="utf-8")
    except BrokenPipeError:  # e.g. `riskgate synth | head`: the reader has all it wants
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    except OSError as error:
        print(f"riskgate synth: {error}", file=sys.stderr)
        return 1
    total = sum(kinds.values())
    shares = ", ".join(f"{kind} {kinds[kind] / (total or 1):.1%}" for kind in _KINDS)
    print(
        f"riskgate synth: {total} events ({shares}), {labelled} planted in {len(instances)} pattern instances,"
        f" {time.perf_counter() - began:.1f} s; {_validity(window[0], now)}",
        file=sys.stderr,
    )
    return 0


def _validity(window_start: datetime, now: datetime) -> str:
    """How long the file is good for, so that nobody replays it after the service stops taking it."""
    deadline = valid_until(window_start)
    if deadline <= now:
        return "already older than the service's default 24-hour limit (RISKGATE_MAX_EVENT_AGE_SECONDS)"
    return f"the service takes it until {deadline.astimezone(CHINA_TZ).isoformat(timespec='seconds')} (24-hour limit)"


def add_synth_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``riskgate synth`` (its handler is ``args.handler(args) -> exit code``)."""
    synth = subparsers.add_parser(
        "synth",
        help="write a seeded synthetic event stream (JSON Lines of ScreenRequest) with planted fraud",
        description=(
            "Write a synthetic but realistic stream of card openings, SIM sales, transfers and closures as JSON"
            " Lines (one ScreenRequest per line, the protobuf JSON mapping `riskgate screen` reads). The same seed"
            " and --start (or --end) give the same stream. Planted fraud is listed only in the --labels file."
            " The service refuses events more than 24 hours old (RISKGATE_MAX_EVENT_AGE_SECONDS), so a file whose"
            " events span S stays valid for 24 h - S after its end: the default day (23h45m ending a minute ago)"
            " for about 15 minutes, --days 0.25 for 18 hours. The summary on stderr says until when."
        ),
    )
    synth.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    synth.add_argument("--events", type=_positive_int, default=10_000, help="number of events (default 10000)")
    synth.add_argument("--days", type=float, default=1.0, help="time span of the stream in days (default 1)")
    window = synth.add_mutually_exclusive_group()
    window.add_argument(
        "--start",
        type=_start_time,
        help="start of the stream, YYYY-MM-DD (China time) or ISO 8601 with offset; default: the stream ends"
        " a minute ago (and starts at most 23h45m ago)",
    )
    window.add_argument(
        "--end",
        type=_end_time,
        help="end of the stream, ISO 8601 with offset, at most 5 minutes ahead (RISKGATE_MAX_FUTURE_SKEW_SECONDS);"
        " it starts --days earlier, at most 23h45m; the file stays valid for 24 h - that span after this end"
        " (default: a minute ago)",
    )
    synth.add_argument("--out", help="output file (default stdout)")
    synth.add_argument("--labels", help="write JSON Lines {request_id, pattern, instance, role} of planted events here")
    synth.add_argument("--allowlist", help="write the company payee accounts here, one per line (for `lists import`)")
    synth.add_argument("--population", type=int, help="number of people (default twice the events, at least 10000)")
    synth.add_argument("--fraud-scale", type=float, default=1.0, help="multiply the planted-pattern rates (default 1)")
    synth.set_defaults(handler=_synth)
    return synth


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.synth.stream ...``: the same as ``riskgate synth ...``."""
    root = argparse.ArgumentParser(prog="riskgate")
    add_synth_command(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["synth", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
