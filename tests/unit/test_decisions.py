from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from service.domain import (
    Closure,
    Decision,
    EventKind,
    Outcome,
    Outlet,
    Person,
    Reason,
    ScreenRequest,
    Sex,
)
from service.riskdata.records import LAYOUTS, decode_decision, encode_decision, entry_document, log_entry

AT = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
ID = "11010519900307123X"

DECISION = Decision(
    request_id="r-1",
    decision_id="5b0c7a4e-3f7b-4d5e-9a52-7c9e1d2b8f10",
    outcome=Outcome.WARN,
    reasons=(
        Reason(
            "K05_many_banks", Outcome.WARN, "本证件30天内已在4家银行开户", "4 banks in 30 days", (("banks_30d", "4"),)
        ),
        Reason("S12_shadow", Outcome.BLOCK, "影子", "shadow", (), True, 7),
    ),
    ruleset_revision="2026-11@abc",
    degraded=False,
    decided_at=AT,
    evaluation_time=timedelta(microseconds=412),
    kind=EventKind.CARD_OPENING,
)


def test_stored_decision_comes_back_identical_but_replayed() -> None:
    again = decode_decision(encode_decision(DECISION))
    assert again.replayed
    assert again.outcome is Outcome.WARN
    assert again.reasons == DECISION.reasons
    assert again.decided_at == AT
    assert again.evaluation_time == DECISION.evaluation_time
    assert again.kind is EventKind.CARD_OPENING
    assert "本证件" in encode_decision(DECISION).decode()


def test_log_entry_has_no_clear_identifier() -> None:
    holder = Person(ID, "张三", "13812345678", "", AT.date(), 36, Sex.MALE, "110105", "11", True, True)
    request = ScreenRequest(
        "r-1", Outlet("BANK_A", "O1", "C1", "310115", "31"), AT, Closure(holder, "", "", None, None)
    )
    entry = log_entry(
        request,
        DECISION,
        subject_hash="HASHED",
        counters={"banks_30d": 4},
        list_hits={("fraud_accounts", "transfer.payee_account"): False, ("punished_persons", "person.id_number"): True},
    )
    assert entry["rules"] == "K05_many_banks,~S12_shadow"
    assert entry["list_hits"] == "punished_persons:person.id_number"
    assert entry["subject"] == "HASHED"
    assert json.loads(entry["counters"]) == {"banks_30d": 4}
    assert ID not in json.dumps(entry)
    document = entry_document("1-0", {k.encode(): v.encode() for k, v in entry.items()})
    assert document["rules"] == ["K05_many_banks", "~S12_shadow"]
    assert document["demoted"] == []
    assert document["counters"] == {"banks_30d": 4}
    assert document["degraded"] is False


def test_the_stored_decision_is_compact_json_byte_for_byte() -> None:
    assert (
        encode_decision(DECISION)
        == (
            '{"r":"r-1","d":"5b0c7a4e-3f7b-4d5e-9a52-7c9e1d2b8f10","o":2,"v":"2026-11@abc","g":false,'
            '"t":1795399200.0,"e":0.000412,"k":"card_opening","x":[["K05_many_banks",2,"本证件30天内已在4家银行开户",'
            '"4 banks in 30 days",[["banks_30d","4"]],false,0],["S12_shadow",3,"影子","shadow",[],true,7]]}'
        ).encode()
    )


def test_log_entry_fields_byte_for_byte() -> None:
    holder = Person(ID, "张三", "13812345678", "", AT.date(), 36, Sex.MALE, "110105", "11", True, True)
    request = ScreenRequest(
        "r-1", Outlet("BANK_A", "O1", "C1", "310115", "31"), AT, Closure(holder, "", "", None, None)
    )
    counters = {"z_last": 1, "banks_30d": 4, "flow_24h": 12.5, "a_first": 0}
    entry = log_entry(
        request, DECISION, subject_hash="HASHED", counters=counters, list_hits={("b", "x.y"): True, ("a", "x.y"): True}
    )
    assert entry == {
        "decision_id": "5b0c7a4e-3f7b-4d5e-9a52-7c9e1d2b8f10",
        "request_id": "r-1",
        "decided_at": "2026-11-23T02:00:00.000000+00:00",
        "occurred_at": "2026-11-23T02:00:00.000000+00:00",
        "kind": "closure",
        "institution_id": "BANK_A",
        "outlet_id": "O1",
        "region_code": "310115",
        "outcome": "warn",
        "rules": "K05_many_banks,~S12_shadow",
        "demoted": "",  # the rules demoted by their breakers at the decision, comma-separated
        "revision": "2026-11@abc",
        "degraded": "0",
        "late": "0",  # degraded over budget: its counter update was sent and probably counted
        # sorted by name, whatever order the counters were read in
        "counters": '{"a_first":0,"banks_30d":4,"flow_24h":12.5,"z_last":1}',
        "list_hits": "a:x.y,b:x.y",
        "subject": "HASHED",
        "clerk": "",  # the clerk's short keyed-hash reference, for the console (none given here)
        # the reasons as the clerk saw them (a decision in which a rule fired)
        "reasons": '[["K05_many_banks","warn","本证件30天内已在4家银行开户","4 banks in 30 days",'
        '[["banks_30d","4"]],false],["S12_shadow","block","影子","shadow",[],true]]',
        # for replays: the facts and identifier hashes in the order of the kind's layout (none given here)
        "layout": LAYOUTS[EventKind.CLOSURE].tag,
        "facts": json.dumps([None] * len(LAYOUTS[EventKind.CLOSURE].facts), separators=(",", ":")),
        "ids": json.dumps([None] * len(LAYOUTS[EventKind.CLOSURE].ids), separators=(",", ":")),
    }
    assert list(entry) == list(log_entry(request, DECISION, subject_hash="H", counters={}, list_hits={}))
    assert json.dumps(dict(sorted(counters.items())), separators=(",", ":")) == entry["counters"]
