"""The backtest's HTML report in a real headless Chromium: it opens from a file with the network cut,
loads nothing, logs no error, and its charts and change matrix render.

Debian's Chromium (`/usr/bin/chromium`, installed by `make setup`) driven by Playwright; Playwright's
own browser downloads are never used. A missing Chromium fails the test: it is part of `make test`.
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Route

from service.backtest.html import render
from tests.unit.test_backtest_html import sample_report


def test_the_report_renders_offline(browser: Browser, tmp_path: Path) -> None:
    report_file = tmp_path / "backtest.html"
    report_file.write_text(render(sample_report()), encoding="utf-8")
    url = report_file.as_uri()

    context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    page = context.new_page()
    requested: list[str] = []
    errors: list[str] = []

    def route(route: Route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            requested.append(route.request.url)
            route.abort()

    def console(message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            errors.append(f"{message.type}: {message.text}")

    page.route("**/*", route)
    page.on("console", console)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
    page.goto(url, wait_until="load")

    assert page.title().startswith("Backtest 回测")
    for chart in ("#chart-outcomes", "#chart-hours"):
        box = page.locator(chart).bounding_box()
        assert box is not None, chart
        assert box["width"] > 100, (chart, box)
        assert box["height"] > 100, (chart, box)
        assert page.locator(f"{chart} rect.bar").count() > 0
        bar = page.locator(f"{chart} rect.bar").first.bounding_box()
        assert bar is not None
        assert bar["width"] > 0, (chart, bar)
        assert bar["height"] > 0, (chart, bar)
    assert page.locator("#chart-hours text", has_text="23").count() == 1

    assert page.locator('#change-matrix td[data-from="allow"][data-to="warn"]').inner_text() == "2,900"
    assert page.locator('#change-matrix td[data-from="block"][data-to="block"]').inner_text() == "4,567"
    # The hostile rule id is text on the page, not an element.
    assert page.locator("#rules code", has_text="<script>alert(1)</script>").count() == 1
    assert page.evaluate("document.scripts.length") == 0
    assert page.locator("img").count() == 0
    assert page.locator("#gate").inner_text().startswith("Gate passed")

    page.screenshot(path=str(tmp_path / "backtest.png"), full_page=True)
    # A risk officer prints it: the print layout renders too.
    page.emulate_media(media="print")
    assert (page.locator("#chart-hours").bounding_box() or {"width": 0.0})["width"] > 100
    assert page.pdf(path=str(tmp_path / "backtest.pdf"))[:5] == b"%PDF-"

    context.close()
    assert requested == [], "the report asked for something beyond its own file"
    assert errors == []
