"""The console's pure parts, and its HTTP application against a fake monitor (no Redis, no server).

Sessions are signed and expire; the console identifies callers with the gRPC guard's one mapping;
state-changing requests must look same-site; each view's document adds up the tallies it is given;
the daily report's CSV and printable page; and the application's refusals, security headers,
Redis-unavailable answers and disposition checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.clock import Clock
from service.dispositions import Disposition, DispositionRecord
from service.domain import CHINA_TZ
from service.errors import PermissionDenied, StoreUnavailable, Unauthenticated, UnknownDecision
from service.redis.keys import KeyHasher
from service.riskdata.monitoring import Flagged, FlaggedPage, Minute, ShownReason
from service.server.access.audit import AuditEntry
from service.server.access.guard import Guard
from service.server.access.tokens import new_token
from service.server.console import report as daily
from service.server.console import views
from service.server.console.app import CSP, Console
from service.server.console.auth import (
    SESSION_SECONDS,
    ConsoleAccess,
    Sessions,
    cross_site_problem,
    session_key,
)

NOW = datetime.now(UTC).replace(second=30, microsecond=0)
TODAY = NOW.astimezone(CHINA_TZ).date()
DECISION = "5b0e9c1e-1111-4000-8000-000000000001"
POLICY = """\
roles:
  monitoring: [console, dispositions.write]
  outlet: [screen]
principals:
  - {name: centre, token: t-centre, roles: [monitoring]}
  - {name: counters, token: t-outlet, roles: [outlet]}
"""


class FixedClock(Clock):
    def now(self) -> datetime:
        return NOW

    def monotonic(self) -> float:
        return 0.0


def _status(demoted: tuple[str, ...] = ()) -> views.ConsoleStatus:
    return views.ConsoleStatus(
        revision="default-1@abc",
        serving=True,
        components={"redis": True, "rules": True, "breakers": not demoted},
        demoted=demoted,
        rules=(
            views.RuleInfo("K05_many_banks", "warn", False, ("card_opening",)),
            views.RuleInfo("T19_block", "block", False, ("transfer",), breaker=True),
        ),
        reloads={"loaded": 1, "unchanged": 0, "rejected": 0},
    )


def _minutes(count: int, counts: Mapping[str, int]) -> list[Minute]:
    start = NOW.replace(second=0) - timedelta(minutes=count - 1)
    return [Minute(start + timedelta(minutes=i), dict(counts)) for i in range(count)]


# --- sessions and identity ---------------------------------------------------------------------


def test_a_session_is_signed_and_expires() -> None:
    sessions = Sessions(b"k" * 22)
    cookie = sessions.issue("t-centre", b"d" * 32, 1000.0)
    session = sessions.check(cookie, 1001.0)
    assert session is not None and session.token_name == "t-centre"
    assert sessions.check(cookie, 1000.0 + SESSION_SECONDS) is None  # expired
    assert Sessions(b"x" * 22).check(cookie, 1001.0) is None  # another key
    body, _, mac = cookie.partition(".")
    assert sessions.check(body[:-2] + "AA." + mac, 1001.0) is None  # tampered
    assert sessions.check("garbage", 1001.0) is None
    assert "t-centre" not in cookie  # the name is encoded, the token is not there at all


def test_the_session_key_comes_from_the_hash_secret() -> None:
    assert session_key(KeyHasher(b"a" * 32)) == session_key(KeyHasher(b"a" * 32))
    assert session_key(KeyHasher(b"a" * 32)) != session_key(KeyHasher(b"b" * 32))


@pytest.fixture
def access(tmp_path: Path) -> tuple[ConsoleAccess, dict[str, str], Path]:
    tokens: dict[str, str] = {}
    lines = []
    for name in ("t-centre", "t-outlet"):
        tokens[name], line = new_token(name)
        lines.append(line)
    (tmp_path / "tokens").write_text("\n".join(lines) + "\n")
    (tmp_path / "policy.yaml").write_text(POLICY)
    guard = Guard(policy_file=tmp_path / "policy.yaml", tokens_file=tmp_path / "tokens")
    return ConsoleAccess(guard, Sessions(b"s" * 22)), tokens, tmp_path


def _identify(access: ConsoleAccess, **given: Any) -> Any:
    options: dict[str, Any] = {"bearer": None, "cookie": None, "peercert": None, "remote": "10.0.0.7", "now": 1000.0}
    return access.identify(**(options | given))


def test_a_token_a_session_and_a_certificate_name_principals(
    access: tuple[ConsoleAccess, dict[str, str], Path],
) -> None:
    console, tokens, _ = access
    assert _identify(console, bearer=tokens["t-centre"]).name == "centre"
    principal, cookie = console.login(tokens["t-centre"], 1000.0)
    assert principal.name == "centre"
    assert _identify(console, cookie=cookie).identity == "token:t-centre"
    with pytest.raises(Unauthenticated):
        _identify(console, bearer="rgt_wrong")
    with pytest.raises(Unauthenticated):
        _identify(console)  # nothing, from afar, and the policy has no local principal
    with pytest.raises(Unauthenticated):
        _identify(console, remote="127.0.0.1")
    with pytest.raises(PermissionDenied):
        console.login(tokens["t-outlet"], 1000.0)  # a principal without `console` gets no session
    cert = {"subject": ((("commonName", "nobody.example"),),), "subjectAltName": (("DNS", "nobody.example"),)}
    with pytest.raises(PermissionDenied, match="matches no principal"):
        _identify(console, peercert=cert)


async def test_a_replaced_token_ends_its_sessions(access: tuple[ConsoleAccess, dict[str, str], Path]) -> None:
    console, tokens, directory = access
    _, cookie = console.login(tokens["t-centre"], 1000.0)
    fresh = [new_token("t-centre")[1], new_token("t-outlet")[1]]
    (directory / "tokens").write_text("\n".join(fresh) + "\n")
    await console.guard.reload()
    with pytest.raises(Unauthenticated, match="replaced or revoked"):
        _identify(console, cookie=cookie)


def test_without_a_policy_a_loopback_caller_may_do_everything() -> None:
    console = ConsoleAccess(Guard(policy_file=None, tokens_file=None), Sessions(b"s" * 22))
    principal = _identify(console, remote="::1")
    assert {"console", "decisions.read", "dispositions.write"} <= principal.permissions
    with pytest.raises(PermissionDenied):
        _identify(console, remote="192.0.2.1")


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({}, "header is required"),
        ({"X-Riskgate-Console": "1", "Origin": "https://evil.example"}, "Origin"),
        ({"X-Riskgate-Console": "1", "Sec-Fetch-Site": "cross-site"}, "another site"),
        ({"X-Riskgate-Console": "1", "Origin": "http://console:8090", "Sec-Fetch-Site": "same-origin"}, None),
    ],
)
def test_a_post_must_come_from_the_console(headers: dict[str, str], problem: str | None) -> None:
    found = cross_site_problem(method="POST", headers=headers, origin="http://console:8090")
    assert (found is None) if problem is None else (found is not None and problem in found)
    assert cross_site_problem(method="GET", headers={}, origin="http://console:8090") is None


# --- the views ---------------------------------------------------------------------------------


def test_the_now_view_adds_up_minutes_and_buckets_long_spans() -> None:
    counts = {
        "n:transfer:allow": 9,
        "n:transfer:warn": 1,
        "n:card_opening:block": 2,
        "g:transfer": 3,
        "v:default-1@abc": 12,
    }
    short = views.now_view(_minutes(60, counts), _status(), generated_at=NOW)
    assert short["bucket_minutes"] == 1 and len(short["series"]) == 60
    assert short["totals"]["total"] == 12 * 60
    assert short["totals"]["degraded_share"] == pytest.approx(3 / 12)
    assert short["series"][-1]["flagged_by_kind"] == {"card_opening": 2, "sim_sale": 0, "transfer": 1, "closure": 0}
    assert short["revisions"] == {"default-1@abc": 720}
    long = views.now_view(_minutes(48 * 60, counts), _status(), generated_at=NOW)
    assert long["bucket_minutes"] == 12 and len(long["series"]) == 240
    assert sum(p["total"] for p in long["series"]) == 12 * 48 * 60


def test_the_rules_view_puts_demoted_rules_first_with_their_precision() -> None:
    minutes = _minutes(10, {"n:transfer:allow": 10, "n:card_opening:warn": 1, "r:T19_block": 1, "r:K05_many_banks": 1})
    days = [{"dr:T19_block:confirmed_fraud": 3, "dr:T19_block:false_alarm": 1, "dr:T19_block:appeal_filed": 2}]
    doc = views.rules_view(minutes, days, _status(demoted=("T19_block",)), generated_at=NOW)
    first = doc["rules"][0]
    assert first["rule_id"] == "T19_block" and first["demoted"]
    assert (first["positives"], first["negatives"], first["pending"]) == (3, 1, 2)
    assert first["precision"] == pytest.approx(0.75)
    assert first["share"] == pytest.approx(10 / 100)  # of the transfers only
    k05 = next(r for r in doc["rules"] if r["rule_id"] == "K05_many_banks")
    assert k05["share"] == pytest.approx(1.0) and k05["precision"] is None


def test_an_opening_burst_is_unusual_against_the_median() -> None:
    quiet = [Minute(NOW, {f"c:clerk{i:05d}": 2 for i in range(20)}) for _ in range(22)]
    hours = [*quiet, Minute(NOW, {"c:clerk00001": 3}), Minute(NOW, {"c:clerk00000": 12, "c:clerk00001": 9})]
    bursts = views.bursts(hours, "c", views.CLERK_BURST_FLOOR)
    assert bursts["baseline"] == 2.0
    assert [(r["ref"], r["unusual"]) for r in bursts["rows"][:2]] == [("clerk00000", True), ("clerk00001", False)]


def test_regions_are_named_from_the_division_table() -> None:
    assert views.region_name("440305") == "广东省 南山区"  # the current name, not the 1983 one
    assert views.region_name("xx") == ""
    assert views.province_names("44") == ("广东", "Guangdong")


# --- the daily report --------------------------------------------------------------------------

TALLIES = {
    "n:card_opening:allow": 90,
    "n:card_opening:warn": 8,
    "n:card_opening:block": 2,
    "g:card_opening": 1,
    "r:=HYPERLINK(1)": 5,
    "r:K05_many_banks": 8,
    "d:confirmed_fraud": 2,
    "dr:K05_many_banks:confirmed_fraud": 2,
    "p:44:warn": 8,
    "p:44:allow": 90,
    "c:440305:block": 2,
    "i:ICBC:warn": 8,
    "h:09:warn": 8,
}


def test_the_daily_report_as_csv() -> None:
    report = daily.daily_report(TODAY, TALLIES, generated_at=NOW)
    text = daily.report_csv(report)
    lines = text.splitlines()
    day = TODAY.isoformat()
    assert lines[0] == ",".join(daily.CSV_COLUMNS)
    assert f"{day},total,all,all decisions 全部,total,100" in lines
    assert f"{day},volume,card_opening,开户 card opening,warn,8" in lines
    assert f"{day},disposition,confirmed_fraud,确认诈骗 confirmed fraud,count,2" in lines
    assert f"{day},rule,K05_many_banks,K05_many_banks,precision,1.0000" in lines
    assert f"{day},province,44,广东 Guangdong,warn,8" in lines
    assert f"{day},region,440305,广东省 南山区,block,2" in lines
    assert f"{day},hour,09,09:00,warn,8" in lines
    assert all(",=" not in line for line in lines)  # a cell a spreadsheet would run is quoted away


def test_the_printable_report_escapes_what_others_wrote() -> None:
    hostile = dict(TALLIES, **{"r:<script>alert(1)</script>": 1})
    page = daily.report_html(daily.daily_report(TODAY, hostile, generated_at=NOW))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert f"Daily report 日报 · {TODAY.isoformat()}" in page


# --- the application ---------------------------------------------------------------------------


@dataclass
class FakeMonitor:
    down: bool = False
    flagged_calls: list[dict[str, Any]] = field(default_factory=list)

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("console: redis did not answer within 1 s")

    async def minutes(self, span: timedelta) -> list[Minute]:
        self._check()
        return _minutes(int(span / timedelta(minutes=1)), {"n:transfer:allow": 1})

    async def hours(self, span_hours: int) -> list[Minute]:
        self._check()
        return [Minute(NOW, {}) for _ in range(span_hours)]

    async def day(self, day: date) -> Mapping[str, int]:
        self._check()
        return TALLIES

    async def flagged(self, **filters: Any) -> FlaggedPage:
        self._check()
        self.flagged_calls.append(filters)
        if filters.get("region") == "x":
            raise ValueError("region: expected 1 to 6 digits of a region code")
        reason = ShownReason(
            "K05_many_banks", "warn", "本证件30天内已在4家银行开户", "4 banks in 30 days", (("banks", "4"),), False
        )
        item = Flagged(
            "1-0", DECISION, "req-1", NOW, "card_opening", "ICBC", "ICBC-0001", "440305", "warn",
            ("K05_many_banks",), "ab12cd34ef", (reason,), None,
        )  # fmt: skip
        return FlaggedPage([item], 1, None)

    async def decision(self, decision_id: str) -> Flagged | None:
        return None


@dataclass
class FakeDispositions:
    reports: list[tuple[str, Disposition, str, str]] = field(default_factory=list)

    async def report(
        self, decision_id: str, disposition: Disposition, note: str, *, reported_by: str, identity: str
    ) -> DispositionRecord:
        if decision_id != DECISION:
            raise UnknownDecision("no decision with this decision_id can take a disposition")
        self.reports.append((decision_id, disposition, note, reported_by))
        return DispositionRecord(decision_id, disposition, note, reported_by, identity, NOW, request_id="req-1")


@dataclass
class FakeAudit:
    entries: list[AuditEntry] = field(default_factory=list)

    async def record(self, entry: AuditEntry) -> bool:
        self.entries.append(entry)
        return True


@dataclass
class App:
    client: TestClient[Any, Any]
    monitor: FakeMonitor
    dispositions: FakeDispositions
    audit: FakeAudit
    denied: list[tuple[str, str]]


async def _app(policy: Path | None, tokens: Path | None) -> AsyncIterator[App]:
    denied: list[tuple[str, str]] = []
    guard = Guard(policy_file=policy, tokens_file=tokens, on_denied=lambda p, c: denied.append((p, c)))
    audit = FakeAudit()
    guard.audit = cast(Any, audit)
    monitor, dispositions = FakeMonitor(), FakeDispositions()
    console = Console(
        monitor=cast(Any, monitor),
        dispositions=cast(Any, dispositions),
        audit=cast(Any, audit),
        access=ConsoleAccess(guard, Sessions(b"s" * 22)),
        status=_status,
        clock=FixedClock(),
        disposition_days=90,
    )
    async with TestClient(TestServer(console.application())) as client:
        yield App(client, monitor, dispositions, audit, denied)


@pytest.fixture
async def local_app() -> AsyncIterator[App]:
    async for app in _app(None, None):
        yield app


@pytest.fixture
async def policy_app(access: tuple[ConsoleAccess, dict[str, str], Path]) -> AsyncIterator[App]:
    _, _, directory = access
    async for app in _app(directory / "policy.yaml", directory / "tokens"):
        yield app


WRITE = {"X-Riskgate-Console": "1", "Content-Type": "application/json"}


async def test_every_answer_carries_the_security_headers(local_app: App) -> None:
    for path in ("/", "/api/now", "/static/console.js", "/login"):
        response = await local_app.client.get(path)
        assert response.status == 200, path
        assert response.headers["Content-Security-Policy"] == CSP
        assert response.headers["X-Frame-Options"] == "DENY"
    assert (await local_app.client.get("/api/now")).headers["Cache-Control"] == "no-store"


async def test_no_credentials_get_the_login_page_and_no_permission_a_refusal(
    policy_app: App, access: tuple[ConsoleAccess, dict[str, str], Path]
) -> None:
    _, tokens, _ = access
    page = await policy_app.client.get("/")
    assert page.status == 401 and 'id="login-form"' in await page.text()
    assert (await policy_app.client.get("/api/flagged")).status == 401
    outlet = {"Authorization": f"Bearer {tokens['t-outlet']}"}
    assert (await policy_app.client.get("/", headers=outlet)).status == 403
    refused = await policy_app.client.post("/api/dispositions", json={}, headers={**WRITE, **outlet})
    assert refused.status == 403
    assert ("anonymous", "UNAUTHENTICATED") in policy_app.denied and (
        "counters",
        "PERMISSION_DENIED",
    ) in policy_app.denied
    assert [e.action for e in policy_app.audit.entries] == ["denied"]  # the refused write only
    login = await policy_app.client.post("/login", json={"token": tokens["t-centre"]}, headers=WRITE)
    assert login.status == 200
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert (await policy_app.client.get("/api/me")).status == 200  # the session cookie, kept by the client


async def test_redis_trouble_is_a_503_the_page_shows(local_app: App) -> None:
    local_app.monitor.down = True
    for path in ("/api/now", "/api/rules", "/api/flagged", "/api/where", "/api/report"):
        response = await local_app.client.get(path)
        assert response.status == 503, path
        assert (await response.json())["error"] == "redis_unavailable"
    assert (await local_app.client.get(f"/report/{TODAY.isoformat()}.html")).status == 503


async def test_the_warnings_are_filtered_and_bad_filters_refused(local_app: App) -> None:
    response = await local_app.client.get("/api/flagged", params={"rule": "K05_many_banks", "region": "44"})
    document = await response.json()
    assert document["items"][0]["region_name"] == "广东省 南山区"
    assert local_app.monitor.flagged_calls[-1]["rule"] == "K05_many_banks"
    assert (await local_app.client.get("/api/flagged", params={"region": "x"})).status == 400
    assert (await local_app.client.get("/api/now", params={"hours": "99"})).status == 400
    assert (await local_app.client.get("/api/report", params={"day": "yesterday"})).status == 400


async def test_a_disposition_is_checked_recorded_and_audited(local_app: App) -> None:
    bad = await local_app.client.post(
        "/api/dispositions",
        json={"decision_id": "nope", "disposition": "maybe", "note": "call 13812345678"},
        headers=WRITE,
    )
    assert bad.status == 400
    assert [p["field"] for p in (await bad.json())["problems"]] == ["decision_id", "disposition", "note"]
    assert "13812345678" not in str(local_app.audit.entries)
    unknown = await local_app.client.post(
        "/api/dispositions", json={"decision_id": "5b0e9c1e-0000-4000-8000-000000000000", "disposition": "false_alarm"},
        headers=WRITE,
    )  # fmt: skip
    assert unknown.status == 404
    ok = await local_app.client.post(
        "/api/dispositions",
        json={"decision_id": DECISION, "disposition": "confirmed_fraud", "note": "case 17"},
        headers=WRITE,
    )
    assert ok.status == 200 and (await ok.json())["disposition"]["zh"] == "确认诈骗"
    assert local_app.dispositions.reports == [(DECISION, Disposition.CONFIRMED_FRAUD, "case 17", "local")]
    assert [e.result for e in local_app.audit.entries][-1] == "ok"
    assert (await local_app.client.post("/api/dispositions", json={}, headers={})).status == 403  # no console header


async def test_the_report_downloads_as_csv(local_app: App) -> None:
    response = await local_app.client.get(f"/report/{TODAY.isoformat()}.csv")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert f"riskgate-daily-{TODAY.isoformat()}.csv" in response.headers["Content-Disposition"]
    assert (await response.text()).startswith("day,section,key,name,metric,value\n")
