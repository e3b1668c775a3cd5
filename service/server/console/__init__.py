"""The monitoring web console: what the decisions of the last hours and days say, on a page.

`app` serves it (aiohttp, on `RISKGATE_CONSOLE_LISTEN`), `auth` says who is calling (the gRPC
API's principals and roles), `views` builds each view's JSON from the monitor's tallies,
`report` the daily report (JSON, CSV, a printable page); `static/` holds the pages, their
stylesheets and the script that draws the charts as SVG (nothing is loaded from elsewhere).
"""
