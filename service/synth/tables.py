"""The static tables synthetic people and events are drawn from.

Where people live (the 2020 census by province), who holds an ID from elsewhere (migration shares
and where migrants come from, Hong Kong, Macao and Taiwan residence permits), ages, county codes
(python-stdnum's dated table: in use today, or retired and until when), banks with their UnionPay
BINs, carriers with their number ranges, surnames and given-name characters, streets, and the
countries abroad a few transfers go to. The ``*_CUM`` tuples are cumulative weights for `pick`.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Final, TypeVar

from stdnum import numdb

from service._gen.riskgate.v1 import screening_pb2 as pb

# 2020 census resident population, millions: where people live.
PROVINCE_POPULATION: Final = {
    "11": 21.9, "12": 13.9, "13": 74.6, "14": 34.9, "15": 24.0, "21": 42.6, "22": 24.1, "23": 31.9,
    "31": 24.9, "32": 84.7, "33": 64.6, "34": 61.0, "35": 41.5, "36": 45.2, "37": 101.5, "41": 99.4,
    "42": 57.8, "43": 66.4, "44": 126.0, "45": 50.1, "46": 10.1, "50": 32.1, "51": 83.7, "52": 38.6,
    "53": 47.2, "54": 3.6, "61": 39.5, "62": 25.0, "63": 5.9, "64": 7.2, "65": 25.9,
}  # fmt: skip
# Share of residents whose ID was issued in another province (inter-provincial migrants).
MIGRANT_SHARE: Final = {"11": 0.38, "12": 0.25, "31": 0.42, "32": 0.10, "33": 0.19, "35": 0.12, "44": 0.23}
DEFAULT_MIGRANT_SHARE: Final = 0.03
# Where migrants' IDs come from, relative weights.
MIGRANT_ORIGINS: Final = {
    "41": 14, "51": 11, "34": 11, "43": 10, "36": 8, "45": 7, "42": 7, "52": 6, "50": 5, "13": 5,
    "37": 4, "62": 3, "23": 3, "61": 2, "14": 2, "22": 2,
}  # fmt: skip
# Hong Kong, Macao and Taiwan residence permits, and where their holders mostly live.
PERMIT_SHARE: Final = 0.001
PERMIT_CODES: Final = {"44": ("810000", "820000"), "35": ("830000",), "31": ("810000", "830000")}

AGE_BANDS: Final = ((16, 17, 1.5), (18, 25, 13.0), (26, 35, 18.5), (36, 45, 16.5), (46, 55, 19.0),
                     (56, 59, 6.0), (60, 69, 14.0), (70, 79, 8.0), (80, 92, 3.5))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Bank:
    code: str  # institution_id
    cnaps: str  # the 3-digit CNAPS bank class code
    bin: str  # a 6-digit UnionPay debit-card BIN of the bank
    weight: float  # share of personal accounts
    province: str = ""  # a provincial rural credit union serves only its province


# National banks with the BIN on their common debit cards (for realism; nothing checks them).
NATIONAL_BANKS: Final = (
    Bank("ICBC", "102", "622202", 16.0),
    Bank("ABC", "103", "622848", 14.0),
    Bank("BOC", "104", "621661", 10.0),
    Bank("CCB", "105", "621700", 14.0),
    Bank("BOCOM", "301", "622262", 5.0),
    Bank("PSBC", "403", "621799", 10.0),
    Bank("CMB", "308", "622588", 6.0),
    Bank("CITIC", "302", "622690", 3.0),
    Bank("SPDB", "310", "622521", 3.0),
    Bank("CIB", "309", "622908", 3.0),
    Bank("CMBC", "305", "622622", 2.0),
    Bank("CEB", "303", "622660", 2.0),
    Bank("HXB", "304", "622630", 1.0),
    Bank("PAB", "307", "622155", 2.0),
    Bank("CGB", "306", "622568", 1.0),
)
_RURAL_WEIGHT: Final = 8.0
RURAL_BANKS: Final = {p: Bank(f"RCU{p}", "402", f"6230{p}", _RURAL_WEIGHT, p) for p in PROVINCE_POPULATION}


@dataclass(frozen=True, slots=True)
class Carrier:
    code: str  # institution_id
    enum: pb.Carrier.ValueType
    prefixes: tuple[str, ...]  # mobile number ranges
    share: float  # of SIM sales


CARRIERS: Final = (
    Carrier("CMCC", pb.CARRIER_CHINA_MOBILE, ("134", "135", "136", "137", "138", "139", "147", "150", "151", "152",
              "157", "158", "159", "172", "178", "182", "183", "184", "187", "188", "195", "197", "198"), 0.58),
    Carrier("CUCC", pb.CARRIER_CHINA_UNICOM, ("130", "131", "132", "145", "155", "156", "166", "167", "171", "175",
              "176", "185", "186", "196"), 0.19),
    Carrier("CTCC", pb.CARRIER_CHINA_TELECOM, ("133", "149", "153", "173", "177", "180", "181", "189", "190", "191",
              "193", "199"), 0.21),
    Carrier("CBN", pb.CARRIER_CHINA_BROADNET, ("192",), 0.02),
)  # fmt: skip
CARRIER_CUM: Final = tuple(accumulate(c.share for c in CARRIERS))

# Surnames by frequency (weights roughly proportional to bearers).
SURNAMES: Final = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
SURNAME_CUM: Final = tuple(accumulate(1.0 / (rank + 4) for rank in range(len(SURNAMES))))
COMPOUND_SURNAMES: Final = ("欧阳", "司马", "诸葛", "上官", "慕容")
MALE_CHARS: Final = "伟强磊军洋勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆帅旭宁龙林建国志文海东峰亮成永兵振光庆福"
FEMALE_CHARS: Final = "芳娜敏静丽艳娟霞秀英慧巧美玲婷雪琳晶妍倩颖露瑶怡佳欣悦梦雨萱涵诗琴燕红梅兰凤洁莉月"
MODERN_CHARS: Final = "子梓宇轩涵浩睿一诺欣然思雨泽博文晨奕辰沐锦芮嘉铭昊宸若熙可"
STREETS: Final = (
    "人民路", "解放路", "中山路", "建设路", "和平路", "新华路", "胜利路", "文化路", "青年路", "朝阳路",
    "光明路", "长江路", "黄河路", "东风路", "幸福路", "学府路", "工业路", "滨江路", "迎宾大道", "世纪大道",
    "府前街", "南大街", "北大街", "东大街", "西大街",
)  # fmt: skip
VILLAGE_PREFIXES: Final = "王李张刘陈杨赵周吴徐孙马胡朱郭何高林"
# Payee countries abroad, their currency and about how many CNY one unit is (the amount a person
# means in CNY is sent in that currency; the service converts it back with rules/rates.yaml).
ABROAD: Final = (
    ("HK", "HKD", 0.91), ("SG", "SGD", 5.5), ("US", "USD", 7.1), ("GB", "GBP", 9.0), ("JP", "JPY", 0.047),
    ("AU", "AUD", 4.65),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Divisions:
    """County-level divisions from python-stdnum's dated table, by province."""

    current: Mapping[str, tuple[str, ...]]  # codes in use today
    retired: Mapping[str, tuple[tuple[str, int], ...]]  # (code, last year in use)
    names: Mapping[str, str]  # code -> current (or last) name, provinces and prefectures included


def _load_divisions() -> Divisions:
    current: dict[str, list[str]] = {p: [] for p in PROVINCE_POPULATION}
    retired: dict[str, list[tuple[str, int]]] = {p: [] for p in PROVINCE_POPULATION}
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
    return Divisions(
        current={p: tuple(codes) for p, codes in current.items()},
        retired={p: tuple(codes) for p, codes in retired.items()},
        names=names,
    )


DIVISIONS: Final = _load_divisions()
CURRENT_COUNTIES: Final = frozenset(code for codes in DIVISIONS.current.values() for code in codes)


def carrier_of(phone: str) -> Carrier:
    return next(c for c in CARRIERS if phone[:3] in c.prefixes)


_T = TypeVar("_T")


def pick(rng: random.Random, items: Sequence[_T], cum_weights: Sequence[float]) -> _T:
    """``rng.choices(items, cum_weights=cum_weights)[0]``, without the list."""
    return items[bisect.bisect_right(cum_weights, rng.random() * cum_weights[-1])]
