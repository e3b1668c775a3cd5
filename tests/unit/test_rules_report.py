"""`riskgate rules report`'s arithmetic: fires, shadow fires, shares and outcome mixes per rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service.riskdata.records import entry_document
from service.tools.rules_report import RuleInfo, since_id, tally

RULES = (
    RuleInfo("T15_fraud_payee", "block", False, ("transfer",)),
    RuleInfo("T19_trial", "warn", True, ("transfer",)),
    RuleInfo("K05_banks", "warn", False, ("card_opening",)),
    RuleInfo("S12_sims", "warn", False, ("sim_sale",)),
)


def _entry(kind: str, outcome: str, rules: str = "", degraded: str = "0", revision: str = "r@1") -> dict[str, Any]:
    """A log entry as the stream holds it, read as the report reads it."""
    fields = {"kind": kind, "outcome": outcome, "rules": rules, "degraded": degraded, "revision": revision}
    return entry_document("0-1", {k.encode(): v.encode() for k, v in fields.items()})


def test_each_rule_is_counted_enforced_and_in_shadow_with_the_outcomes_it_fired_in() -> None:
    report = tally(
        [
            _entry("transfer", "block", "T15_fraud_payee,~T19_trial"),
            _entry("transfer", "allow", "~T19_trial"),
            _entry("transfer", "allow"),
            _entry("transfer", "allow", degraded="1", revision="r@2"),
            _entry("card_opening", "warn", "K05_banks,K99_retired"),
        ],
        RULES,
    )
    assert (report.decisions, report.degraded) == (5, 1)
    assert report.by_kind == {"transfer": 4, "card_opening": 1}
    assert report.revisions == {"r@1": 4, "r@2": 1}
    t15, t19, k05 = report.rules["T15_fraud_payee"], report.rules["T19_trial"], report.rules["K05_banks"]
    assert (t15.fires, t15.shadow_fires, dict(t15.outcomes)) == (1, 0, {"block": 1})
    assert (t19.fires, t19.shadow_fires, dict(t19.outcomes)) == (0, 2, {"block": 1, "allow": 1})
    assert t15.share(report.by_kind) == 1 / 4 and t19.share(report.by_kind) == 2 / 4
    assert k05.share(report.by_kind) == 1.0
    assert report.rules["S12_sims"].share(report.by_kind) is None  # no SIM sales: no share
    gone = report.rules["K99_retired"]
    assert gone.info is None and gone.fires == 1  # in the log, not in the directory
    order = [t.rule_id for t in report.ordered()]
    assert order == ["T19_trial", "K05_banks", "K99_retired", "T15_fraud_payee", "S12_sims"]
    document = report.document()
    assert document["rules"][-1] == {
        "rule_id": "S12_sims",
        "in_rules_directory": True,
        "outcome": "warn",
        "shadow": False,
        "kinds": ["sim_sale"],
        "fires": 0,
        "shadow_fires": 0,
        "share_of_events": None,
        "outcomes": {},
    }


def test_since_takes_an_age_or_a_time() -> None:
    now = datetime.now(UTC)
    assert since_id("7d", now) == str(int((now - timedelta(days=7)).timestamp() * 1000))
    assert since_id("30m", now) == str(int((now - timedelta(minutes=30)).timestamp() * 1000))
    moment = now - timedelta(hours=3)
    assert since_id(moment.isoformat(), now) == str(int(moment.timestamp() * 1000))
