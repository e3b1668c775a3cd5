"""`riskgate rules report`'s arithmetic: fires, shadow fires, shares, outcome and disposition mixes,
and precision per rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service.dispositions import Disposition
from service.riskdata.records import entry_document
from service.tools.rules_report import RuleInfo, latest_dispositions, precision_text, since_id, tally

RULES = (
    RuleInfo("T15_fraud_payee", "block", False, ("transfer",)),
    RuleInfo("T19_trial", "warn", True, ("transfer",)),
    RuleInfo("K05_banks", "warn", False, ("card_opening",)),
    RuleInfo("S12_sims", "warn", False, ("sim_sale",)),
)


def _entry(
    kind: str, outcome: str, rules: str = "", degraded: str = "0", revision: str = "r@1", decision_id: str = ""
) -> dict[str, Any]:
    """A log entry as the stream holds it, read as the report reads it."""
    fields = {"kind": kind, "outcome": outcome, "rules": rules, "degraded": degraded, "revision": revision}
    fields["decision_id"] = decision_id
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
        "dispositions": {},
        "positives": 0,
        "negatives": 0,
        "pending": 0,
        "disposed": 0,
        "precision": None,
    }


def test_precision_counts_each_decisions_latest_disposition_and_leaves_pending_ones_out() -> None:
    labels = latest_dispositions(
        [
            {"decision_id": "d1", "disposition": "appeal_filed"},
            {"decision_id": "d2", "disposition": "confirmed_fraud"},
            {"decision_id": "d3", "disposition": "false_alarm"},
            {"decision_id": "d1", "disposition": "appeal_upheld"},  # the latest of d1: a negative
            {"decision_id": "d4", "disposition": "appeal_filed"},
            {"decision_id": "d5", "disposition": "customer_dissuaded"},
            {"decision_id": "d6", "disposition": "from_a_newer_version"},
        ]
    )
    assert labels["d1"] is Disposition.APPEAL_UPHELD and "d6" not in labels
    report = tally(
        [
            _entry("transfer", "block", "T15_fraud_payee,~T19_trial", decision_id="d1"),
            _entry("transfer", "block", "T15_fraud_payee", decision_id="d2"),
            _entry("transfer", "warn", "~T19_trial", decision_id="d3"),
            _entry("transfer", "block", "T15_fraud_payee", decision_id="d4"),
            _entry("transfer", "warn", "~T19_trial", decision_id="d5"),
            _entry("transfer", "block", "T15_fraud_payee", decision_id="d7"),  # no disposition
        ],
        RULES,
        labels,
    )
    t15, t19 = report.rules["T15_fraud_payee"], report.rules["T19_trial"]
    assert dict(t15.dispositions) == {
        Disposition.APPEAL_UPHELD: 1,
        Disposition.CONFIRMED_FRAUD: 1,
        Disposition.APPEAL_FILED: 1,
    }
    assert (t15.positives, t15.negatives, t15.pending, t15.disposed, t15.precision) == (1, 1, 1, 2, 0.5)
    assert (t19.positives, t19.negatives, t19.disposed) == (1, 2, 3)  # shadow fires count too
    assert precision_text(t19) == "33.3% (n=3)"
    assert precision_text(report.rules["K05_banks"]) == "—"
    assert report.by_disposition[Disposition.APPEAL_FILED] == 1 and sum(report.by_disposition.values()) == 5
    document = report.document()
    assert document["by_disposition"] == {
        "appeal_filed": 1,
        "appeal_upheld": 1,
        "confirmed_fraud": 1,
        "customer_dissuaded": 1,
        "false_alarm": 1,
    }
    rules = {rule["rule_id"]: rule for rule in document["rules"]}
    assert rules["T15_fraud_payee"]["dispositions"] == {"appeal_filed": 1, "appeal_upheld": 1, "confirmed_fraud": 1}
    assert (rules["T15_fraud_payee"]["precision"], rules["K05_banks"]["precision"]) == (0.5, None)


def test_since_takes_an_age_or_a_time() -> None:
    now = datetime.now(UTC)
    assert since_id("7d", now) == str(int((now - timedelta(days=7)).timestamp() * 1000))
    assert since_id("30m", now) == str(int((now - timedelta(minutes=30)).timestamp() * 1000))
    moment = now - timedelta(hours=3)
    assert since_id(moment.isoformat(), now) == str(int(moment.timestamp() * 1000))
