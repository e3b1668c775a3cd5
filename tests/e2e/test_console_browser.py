"""The monitoring console in a real headless Chromium, against the real `riskgate serve` fed with
`riskgate synth` traffic through `riskgate screen`.

Each view renders with data; the warnings' filters narrow the list; a disposition recorded from
the page is in the dispositions log (`riskgate dispositions export`) and in the Rules view; a
caller without credentials gets the login page, one without the permission a refusal; and no ID,
phone or account number, nor a clerk id, of the synthetic stream appears in any page or API
response. Nothing is loaded from beyond the console, and the browser logs no error (a
Content-Security-Policy violation would be one).

Screenshots of each view go to $RISKGATE_TEST_ARTIFACTS (default var/test-artifacts/console/);
with RISKGATE_UPDATE_SCREENSHOTS=1 also to docs/console/, the README's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Response, Route
from playwright.sync_api import Error as PlaywrightError

from service.server.access.tokens import new_token
from tests.conftest import REPO
from tests.e2e.conftest import RISKGATE, RunningServer, start_server

POLICY = """\
roles:
  monitoring: [console, dispositions.write]
  reader: [decisions.read]
  outlet: [screen, dispositions.write]
  feeder: [screen]
principals:
  - {name: anti-fraud-centre, token: t-centre, roles: [monitoring]}
  - {name: analyst, token: t-reader, roles: [reader]}
  - {name: branch-counters, token: t-outlet, roles: [outlet]}
  - {name: synth-feeder, token: t-feeder, roles: [feeder]}
"""
EVENTS = 2500
VIEWPORT = {"width": 1280, "height": 800}
VIEWS = ("now", "rules", "warnings", "where", "report")
# Keys of the synthetic requests whose values identify a person or an account (and the clerks').
_IDENTIFYING = re.compile(r"(^|_)(id_number|phone|account|clerk_id)$")


def _artifacts() -> Path:
    path = Path(os.environ.get("RISKGATE_TEST_ARTIFACTS") or REPO / "var" / "test-artifacts" / "console")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _identifiers(node: Any, key: str = "", found: set[str] | None = None) -> set[str]:
    found = set() if found is None else found
    if isinstance(node, dict):
        for name, value in node.items():
            _identifiers(value, name, found)
    elif isinstance(node, list):
        for value in node:
            _identifiers(value, key, found)
    elif isinstance(node, str) and _IDENTIFYING.search(key) and len(node) >= 6:
        found.add(node)
    return found


@dataclass
class Console:
    server: RunningServer
    tmp: Path
    tokens: dict[str, str]
    identifiers: set[str]
    url: str
    seen: list[tuple[str, str]] = field(default_factory=list)  # (url, body) of every page and API answer

    def tool_env(self) -> dict[str, str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RISKGATE_")}
        environment.update(RISKGATE_DATA_DIR=str(self.server.data_dir), RISKGATE_RULES_DIR=str(REPO / "rules"))
        return environment

    def leaks(self) -> list[str]:
        return sorted({f"{url}: {value}" for url, body in self.seen for value in self.identifiers if value in body})


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    tokens, lines = {}, []
    for name in ("t-centre", "t-reader", "t-outlet", "t-feeder"):
        tokens[name], line = new_token(name)
        lines.append(line)
    (tmp / "tokens").write_text("\n".join(lines) + "\n")
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "feeder.token").write_text(tokens["t-feeder"] + "\n")
    server = start_server(
        tmp,
        RISKGATE_POLICY_FILE=str(tmp / "policy.yaml"),
        RISKGATE_TOKENS_FILE=str(tmp / "tokens"),
        RISKGATE_REDIS_BUDGET_MS="500",  # a busy shared machine must not make the traffic degraded
    )
    try:
        stream = tmp / "synth.jsonl"
        synth = subprocess.run(
            [str(RISKGATE), "synth", "--seed", "11", "--events", str(EVENTS), "--days", "0.2", "--fraud-scale", "30",
             "--out", str(stream)],
            capture_output=True, text=True, timeout=120, check=False, cwd=tmp,
        )  # fmt: skip
        assert synth.returncode == 0, synth.stderr
        with stream.open("rb") as requests:
            screen = subprocess.run(
                [str(RISKGATE), "screen", "--target", server.address, "--token-file", str(tmp / "feeder.token")],
                stdin=requests, capture_output=True, timeout=240, check=False, cwd=tmp,
            )  # fmt: skip
        assert screen.returncode == 0, screen.stderr.decode(errors="replace")
        identifiers: set[str] = set()
        for line in stream.read_text().splitlines():
            _identifiers(json.loads(line), found=identifiers)
        assert len(identifiers) > EVENTS  # the stream's ID, phone and account numbers and clerk ids
        yield Console(server, tmp, tokens, identifiers, f"http://{server.console_address}")
    finally:
        assert server.terminate() == 0, server.log()[-3000:]


@dataclass
class Watched:
    context: BrowserContext
    page: Page
    errors: list[str]
    foreign: list[str]
    answers: list[Response] = field(default_factory=list)  # bodies read by `keep`, outside the event handler

    def keep(self, console: Console) -> None:
        """The bodies of the API answers of the page since the last call, for the leak check (the
        documents themselves are checked as rendered, with `page.content()`)."""
        for response in self.answers:
            with contextlib.suppress(PlaywrightError):  # a redirect has no body
                console.seen.append((response.url, response.text()))
        self.answers.clear()


def _open(browser: Browser, console: Console, **options: Any) -> Watched:
    """A fresh browser context on the console: requests elsewhere are refused and recorded, every
    answer's body kept for the leak check, errors collected."""
    context = browser.new_context(viewport=VIEWPORT, **options)  # type: ignore[arg-type]
    page = context.new_page()
    watched = Watched(context, page, [], [])

    def route(route: Route) -> None:
        if route.request.url.startswith(console.url + "/"):
            route.continue_()
        else:
            watched.foreign.append(route.request.url)
            route.abort()

    def answered(response: Response) -> None:
        if response.url.startswith(console.url + "/api/"):
            watched.answers.append(response)

    def logged(message: ConsoleMessage) -> None:
        # A refused fetch (401/403 on purpose) is logged as a resource error; CSP and script errors are not that.
        if message.type == "error" and "Failed to load resource" not in message.text:
            watched.errors.append(message.text)

    page.route("**/*", route)
    page.on("response", answered)
    page.on("console", logged)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))
    return watched


def _login(browser: Browser, console: Console, token: str) -> Watched:
    watched = _open(browser, console)
    page = watched.page
    response = page.goto(console.url + "/")
    assert response is not None and response.status == 401
    page.fill("#token", token)
    page.click("#login-button")
    page.wait_for_url(console.url + "/")
    _wait_view(page, "now")
    return watched


def _wait_view(page: Page, view: str) -> None:
    page.wait_for_selector(f'body[data-ready="{view}"]', timeout=30_000)


def _show(watched: Watched, console: Console, view: str) -> None:
    watched.page.click(f'#nav a[data-view="{view}"]')
    _wait_view(watched.page, view)
    watched.keep(console)


def _screenshot(page: Page, name: str) -> None:
    page.screenshot(path=str(_artifacts() / f"{name}.png"))
    if os.environ.get("RISKGATE_UPDATE_SCREENSHOTS") == "1":
        docs = REPO / "docs" / "console"
        docs.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(docs / f"{name}.png"))


def _count(text: str) -> int:
    return int(text.replace(",", "").strip() or 0)


def test_an_unauthorised_caller_is_refused(browser: Browser, console: Console) -> None:
    anonymous = _open(browser, console)
    page = anonymous.page
    response = page.goto(console.url + "/")
    assert response is not None and response.status == 401
    assert page.locator("#login-form").is_visible()
    api = page.request.get(console.url + "/api/now")
    assert api.status == 401 and api.json()["error"] == "unauthenticated"
    page.fill("#token", "rgt_not-a-token")
    page.click("#login-button")
    page.wait_for_selector("#login-message:not(:empty)")
    assert "Refused" in page.inner_text("#login-message")
    assert page.context.cookies() == []
    anonymous.context.close()

    outlet = _open(browser, console, extra_http_headers={"Authorization": f"Bearer {console.tokens['t-outlet']}"})
    response = outlet.page.goto(console.url + "/")
    assert response is not None and response.status == 403
    assert outlet.page.locator("#forbidden").is_visible()
    for path in ("/api/now", "/api/flagged", "/api/report", "/api/where", "/api/me"):
        refused = outlet.page.request.get(console.url + path)
        assert refused.status == 403, path
    outlet.context.close()

    reader = _open(browser, console, extra_http_headers={"Authorization": f"Bearer {console.tokens['t-reader']}"})
    assert reader.page.request.get(console.url + "/api/now").status == 200  # decisions.read may view
    posted = reader.page.request.post(
        console.url + "/api/dispositions",
        data=json.dumps({"decision_id": "5b0e9c1e-0000-4000-8000-000000000000", "disposition": "false_alarm"}),
        headers={"Content-Type": "application/json", "X-Riskgate-Console": "1"},
    )
    assert posted.status == 403 and "dispositions.write" in posted.json()["message"]
    # A cross-site POST (no console header) is refused whoever sends it.
    centre = {"Authorization": f"Bearer {console.tokens['t-centre']}", "Content-Type": "application/json"}
    forged = reader.page.request.post(console.url + "/api/dispositions", data="{}", headers=centre)
    assert forged.status == 403 and forged.json()["error"] == "cross_site"
    reader.context.close()

    with urllib.request.urlopen(f"http://{console.server.metrics_address}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    denied = re.findall(r'riskgate_access_denied_total\{code="(\w+)",principal="([\w-]+)"\} (\d+)', metrics)
    assert ("UNAUTHENTICATED", "anonymous") in {(c, p) for c, p, _ in denied}
    assert ("PERMISSION_DENIED", "branch-counters") in {(c, p) for c, p, _ in denied}


def test_each_view_renders_with_data_and_a_disposition_goes_round(browser: Browser, console: Console) -> None:
    watched = _login(browser, console, console.tokens["t-centre"])
    page = watched.page
    assert page.inner_text("#principal") == "anti-fraud-centre"
    cookie = next(c for c in watched.context.cookies() if c["name"] == "rg_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert console.tokens["t-centre"] not in cookie["value"]

    # Now: the traffic just screened, per minute, with health and the ruleset revision.
    decisions = _count(page.locator("#now-tiles .tile").nth(1).locator(".tile-value").inner_text())
    assert decisions >= EVENTS
    assert page.locator("#now-chart rect.bar").count() > 0
    assert page.locator("#now-kind-chart rect.bar").count() > 0
    assert page.locator('#now-health li[data-component="redis"].ok').count() == 1
    assert page.locator("#now-tiles").inner_text().count("default-") == 1  # the shipped ruleset's revision
    page.select_option("#now-hours", "1")
    _wait_view(page, "now")
    assert page.locator("#now-chart rect.bar").count() > 0
    _screenshot(page, "now")

    # Rules: fires and share per rule.
    _show(watched, console, "rules")
    fired = [r for r in page.locator("#rules-table tbody tr").all() if _count(r.locator("td").nth(2).inner_text()) > 0]
    assert fired, "no rule fired on the synthetic traffic"
    assert page.locator("#rules-table svg.spark").count() > 0
    _screenshot(page, "rules")

    # Warnings: the latest WARN and BLOCK decisions, their reasons, and the filters.
    _show(watched, console, "warnings")
    cards = page.locator("#flagged-list article.flagged")
    assert cards.count() > 0
    first = cards.first
    assert first.locator("ul.reasons li").count() > 0
    _screenshot(page, "warnings")
    rule = first.locator("ul.reasons li code").first.inner_text()
    page.fill("#f-rule", rule)
    page.click("#f-apply")
    _wait_view(page, "warnings")
    assert cards.count() > 0
    for card in cards.all():
        assert rule in card.locator("ul.reasons").inner_text()
    page.click("#f-clear")
    page.wait_for_function("document.getElementById('f-rule').value === ''")
    _wait_view(page, "warnings")
    region = cards.first.locator(".where code").nth(2).inner_text()[:2]
    page.fill("#f-region", region)
    page.click("#f-apply")
    _wait_view(page, "warnings")
    assert cards.count() > 0
    assert all(c.locator(".where code").nth(2).inner_text().startswith(region) for c in cards.all())
    institution = cards.first.locator(".where code").first.inner_text()
    page.fill("#f-institution", institution)
    page.click("#f-apply")
    _wait_view(page, "warnings")
    assert all(c.locator(".where code").first.inner_text() == institution for c in cards.all())

    # Record a disposition from the page, on a decision without one.
    page.click("#f-clear")
    _wait_view(page, "warnings")
    page.select_option("#f-disposition", "none")
    page.click("#f-apply")
    _wait_view(page, "warnings")
    target = cards.first
    decision_id = target.get_attribute("data-decision")
    assert decision_id
    disposed_rule = target.locator("ul.reasons li code").first.inner_text()
    target.locator("select.record-disposition").select_option("confirmed_fraud")
    target.locator("input.record-note").fill("case A-17, called back")
    target.locator("button.record-button").click()
    target.locator(".record-message.ok").wait_for()
    assert "recorded" in target.locator(".record-message").inner_text()
    assert "确认诈骗" in target.locator(".current").inner_text()
    page.select_option("#f-disposition", "confirmed_fraud")
    page.click("#f-apply")
    _wait_view(page, "warnings")
    assert [c.get_attribute("data-decision") for c in cards.all()] == [decision_id]

    exported = subprocess.run(
        [str(RISKGATE), "dispositions", "export", "--since", "1d"],
        env=console.tool_env(), capture_output=True, text=True, timeout=60, check=False, cwd=console.tmp,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(r["decision_id"], r["disposition"], r["reported_by"]) for r in records] == [
        (decision_id, "confirmed_fraud", "anti-fraud-centre")
    ]

    _show(watched, console, "rules")
    row = page.locator(f'#rules-table tr[data-rule="{disposed_rule}"]')
    assert "确认诈骗" in row.inner_text()
    assert "100.0% (n=1)" in row.locator(".precision").inner_text()

    # Where: provinces and regions of the warnings, and the opening bursts.
    _show(watched, console, "where")
    assert page.locator("#where-provinces tbody tr[data-province]").count() > 0
    assert page.locator("#where-cities tbody tr[data-region]").count() > 0
    assert page.locator("#where-provinces-chart rect.bar").count() > 0
    assert "median" in page.inner_text("#bursts-clerks-rule")
    _screenshot(page, "where")

    # The daily report, its CSV and its printable page.
    _show(watched, console, "report")
    assert _count(page.locator("#report-tiles .tile").nth(1).locator(".tile-value").inner_text()) >= EVENTS
    assert "1" in page.locator("#report-dispositions").inner_text()
    _screenshot(page, "report")
    day = page.input_value("#report-day")
    csv_text = page.request.get(console.url + f"/report/{day}.csv").text()
    lines = csv_text.splitlines()
    assert lines[0] == "day,section,key,name,metric,value"
    assert f"{day},disposition,confirmed_fraud,确认诈骗 confirmed fraud,count,1" in lines
    assert any(line.startswith(f"{day},total,all,") and ",total," in line for line in lines)
    console.seen.append(("report.csv", csv_text))
    with page.expect_popup() as popup:
        page.click("#report-print")
    printable = popup.value
    printable.wait_for_load_state()
    assert printable.title().startswith("Daily report 日报")
    assert printable.locator("table").count() >= 5
    assert printable.evaluate("document.scripts.length") == 0
    console.seen.append(("report.html", printable.content()))

    for view in VIEWS:
        _show(watched, console, view)
        console.seen.append((f"page #{view}", page.content()))
    watched.context.close()
    assert watched.foreign == [], "the console asked for something beyond itself"
    assert watched.errors == []


def test_no_clear_identifier_reaches_any_page_or_answer(browser: Browser, console: Console) -> None:
    headers = {"Authorization": f"Bearer {console.tokens['t-centre']}"}
    watched = _open(browser, console, extra_http_headers=headers)
    for path in ("/api/now?hours=48", "/api/rules?hours=48&days=30", "/api/flagged?limit=200", "/api/where",
                 "/api/report", "/api/me"):  # fmt: skip
        answer = watched.page.request.get(console.url + path)
        assert answer.status == 200, path
        console.seen.append((path, answer.text()))
    flagged = watched.page.request.get(console.url + "/api/flagged").json()
    for item in flagged["items"][:5]:
        one = watched.page.request.get(console.url + f"/api/decisions/{item['decision_id']}")
        assert one.status == 200 and one.json()["decision_id"] == item["decision_id"]
        console.seen.append((one.url, one.text()))
    watched.context.close()
    assert len(console.seen) > 15
    assert console.leaks() == []
