"""The console's HTTP server: an aiohttp application beside the gRPC server, on its own address
(`RISKGATE_CONSOLE_LISTEN`), started and stopped by `service.server.app.Server`.

Pages are static files of this package (HTML, CSS and a small script that draws its charts as
SVG: nothing from a CDN); data comes from JSON endpoints, one per view, which read the tallies
and flagged decisions through `service.riskdata.monitoring.Monitor` (a few round trips each,
whatever the size of the log) and the server's status through a callable. Every response
carries a strict Content-Security-Policy (`default-src 'self'`: no inline script), refuses
framing, and API responses are never cached. Redis trouble is HTTP 503 with a message the page
shows as a banner.

Who may see what: `service.server.console.auth`. A refusal is counted and, for the disposition
POST, audited, like a refused gRPC call.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from service.clock import Clock
from service.dispositions import clean_note, parse_decision_id, parse_disposition
from service.domain import local_time
from service.errors import (
    ConfigError,
    InvalidValue,
    PermissionDenied,
    StoreUnavailable,
    Unauthenticated,
    UnknownDecision,
)
from service.riskdata.dispositions import DispositionStore
from service.riskdata.monitoring import Monitor
from service.server.access.audit import AuditEntry, AuditTrail
from service.server.access.guard import Principal
from service.server.access.tls import TlsFiles
from service.server.console import report as daily
from service.server.console import views
from service.server.console.auth import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    WRITE_PERMISSION,
    ConsoleAccess,
    bearer_of,
    certificate_names,
    cross_site_problem,
    may_write,
    require_view,
    require_write,
)
from service.settings import parse_address

log = logging.getLogger("riskgate.console")

STATIC: Final = Path(__file__).parent / "static"
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
MAX_HOURS: Final = 48
FLAGGED_LIMIT: Final = 200
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dumps(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _json(document: Any, status: int = 200) -> web.Response:
    return web.json_response(document, status=status, dumps=_dumps)


def _error(status: int, code: str, message: str, **more: Any) -> web.Response:
    return _json({"error": code, "message": message, **more}, status=status)


class _Refused(Exception):
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise _Refused(_error(400, "invalid_argument", f"{name}: expected a whole number from {low} to {high}"))
    return int(text)


def _text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value or None


class Console:
    """The console's application, its handlers, and its listening site."""

    def __init__(
        self,
        *,
        monitor: Monitor,
        dispositions: DispositionStore,
        audit: AuditTrail,
        access: ConsoleAccess,
        status: Callable[[], views.ConsoleStatus],
        clock: Clock,
        disposition_days: float,
    ) -> None:
        self.monitor = monitor
        self.dispositions = dispositions
        self.audit = audit
        self.access = access
        self.status = status
        self.clock = clock
        self.disposition_days = disposition_days
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.https = False

    # --- the application -------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=64 * 1024)
        routes = app.router
        routes.add_get("/", self.index)
        routes.add_get("/login", self.login_page)
        routes.add_post("/login", self.login)
        routes.add_post("/logout", self.logout)
        routes.add_get("/api/me", self.me)
        routes.add_get("/api/now", self.now)
        routes.add_get("/api/rules", self.rules)
        routes.add_get("/api/flagged", self.flagged)
        routes.add_get("/api/decisions/{decision_id}", self.decision)
        routes.add_post("/api/dispositions", self.report_disposition)
        routes.add_get("/api/where", self.where)
        routes.add_get("/api/report", self.report)
        routes.add_get(r"/report/{day:\d{4}-\d{2}-\d{2}}.csv", self.report_csv)
        routes.add_get(r"/report/{day:\d{4}-\d{2}-\d{2}}.html", self.report_html)
        routes.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except _Refused as refused:
            response = refused.response
        except web.HTTPException as error:
            response = error
        headers = response.headers
        headers["Content-Security-Policy"] = CSP
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cache-Control"] = "no-cache" if request.path.startswith("/static/") else "no-store"
        if self.https:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    # --- who is calling ----------------------------------------------------------------------

    def _peer(self, request: web.Request) -> tuple[dict[str, Any] | None, str | None]:
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        return peercert, request.remote

    async def _principal(self, request: web.Request, *, write: bool = False, page: bool = False) -> Principal:
        """The caller, if it may view (and with `write`, record dispositions); else the refusal,
        counted (and audited for a write), as a login page, a 403 page or a JSON error."""
        if write:
            problem = cross_site_problem(
                method=request.method, headers=request.headers, origin=f"{request.scheme}://{request.host}"
            )
            if problem is not None:
                raise _Refused(_error(403, "cross_site", problem))
        peercert, remote = self._peer(request)
        try:
            principal = self.access.identify(
                bearer=bearer_of(request.headers),
                cookie=request.cookies.get(SESSION_COOKIE),
                peercert=peercert,
                remote=remote,
                now=self.clock.now().timestamp(),
            )
            require_view(principal) if not write else require_write(principal)
        except (Unauthenticated, PermissionDenied) as denied:
            identity = f"cert:{peercert_name}" if (peercert_name := _first_name(peercert)) else "peer:http"
            await self.access.guard.refused(
                denied,
                permission=WRITE_PERMISSION if write else "console",
                identity=identity,
                detail=f"console {request.method} {request.path}: {denied}",
            )
            raise _Refused(self._refusal(denied, page=page)) from None
        return principal

    def _refusal(self, denied: Unauthenticated | PermissionDenied, *, page: bool) -> web.StreamResponse:
        status = 401 if isinstance(denied, Unauthenticated) else 403
        if page:
            name = "login.html" if status == 401 else "forbidden.html"
            response: web.StreamResponse = web.Response(
                status=status,
                text=(STATIC / name).read_text(encoding="utf-8"),
                content_type="text/html",
                charset="utf-8",
            )
        else:
            response = _error(status, "unauthenticated" if status == 401 else "permission_denied", str(denied))
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="riskgate console"'
        return response

    # --- pages and sessions ----------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request, page=True)
        return web.FileResponse(STATIC / "index.html")

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "login.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        problem = cross_site_problem(
            method="POST", headers=request.headers, origin=f"{request.scheme}://{request.host}"
        )
        if problem is not None:
            return _error(403, "cross_site", problem)
        try:
            body = await request.json()
            token = str(body.get("token", "")) if isinstance(body, dict) else ""
        except (ValueError, UnicodeDecodeError):
            token = ""
        try:
            principal, cookie = self.access.login(token, self.clock.now().timestamp())
        except (Unauthenticated, PermissionDenied) as denied:
            await self.access.guard.refused(
                denied, permission="console", identity="peer:http", detail=f"console login: {denied}"
            )
            return self._refusal(denied, page=False)
        response = _json({"principal": principal.name, "expires_in": SESSION_SECONDS})
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            secure=self.https,
            samesite="Strict",
        )
        log.info("console login", extra={"fields": {"principal": principal.name, "identity": principal.identity}})
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        problem = cross_site_problem(
            method="POST", headers=request.headers, origin=f"{request.scheme}://{request.host}"
        )
        if problem is not None:
            return _error(403, "cross_site", problem)
        response = _json({"logged_out": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.StreamResponse:
        principal = await self._principal(request)
        return _json(
            {
                "principal": principal.name,
                "identity": principal.identity,
                "may_record_dispositions": may_write(principal),
                "session": request.cookies.get(SESSION_COOKIE) is not None and bearer_of(request.headers) is None,
                "dispositions": views.dispositions_catalogue(),
                "today": local_time(self.clock.now()).date().isoformat(),
            }
        )

    # --- the views -------------------------------------------------------------------------

    async def _read(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except StoreUnavailable as error:
            raise _Refused(_error(503, "redis_unavailable", f"Redis unavailable 风险数据库不可用: {error}")) from None

    async def now(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request)
        hours = _int(request, "hours", 3, 1, MAX_HOURS)
        minutes = await self._read(self.monitor.minutes(timedelta(hours=hours)))
        return _json(views.now_view(minutes, self.status(), generated_at=self.clock.now()))

    async def rules(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request)
        hours = _int(request, "hours", 24, 1, MAX_HOURS)
        days = _int(request, "days", 7, 1, max(1, int(self.disposition_days)))
        today = local_time(self.clock.now()).date()
        minutes = await self._read(self.monitor.minutes(timedelta(hours=hours)))
        tallies = [await self._read(self.monitor.day(today - timedelta(days=back))) for back in range(days)]
        return _json(views.rules_view(minutes, tallies, self.status(), generated_at=self.clock.now()))

    async def flagged(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request)
        limit = _int(request, "limit", 50, 1, FLAGGED_LIMIT)
        filters = {name: _text(request, name) for name in ("institution", "outlet", "region", "rule", "disposition")}
        try:
            page = await self._read(
                self.monitor.flagged(
                    limit=limit,
                    before=_text(request, "before"),
                    institution=filters["institution"],
                    outlet=filters["outlet"],
                    region=filters["region"],
                    rule=filters["rule"],
                    disposition=filters["disposition"],
                )
            )
        except ValueError as error:
            return _error(400, "invalid_argument", str(error))
        return _json(
            {
                "generated_at": local_time(self.clock.now()).isoformat(timespec="seconds"),
                "filters": {k: v for k, v in filters.items() if v is not None},
                "items": [views.flagged_document(item) for item in page.items],
                "scanned": page.scanned,
                "next_before": page.next_before,
            }
        )

    async def decision(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request)
        try:
            decision_id = parse_decision_id(request.match_info["decision_id"])
        except InvalidValue as error:
            return _error(400, "invalid_argument", f"{error.field}: {error.problem}")
        found = await self._read(self.monitor.decision(decision_id))
        if found is None:
            return _error(404, "not_found", "no flagged decision with this decision_id is kept")
        return _json(views.flagged_document(found))

    async def report_disposition(self, request: web.Request) -> web.StreamResponse:
        """Record a disposition: the checks of Dispositions/Report, the reporter being the caller,
        and an audit entry of every attempt."""
        principal = await self._principal(request, write=True)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            await self._audit(principal, result="INVALID_ARGUMENT: body: expected a JSON object")
            return _error(400, "invalid_argument", "expected a JSON object {decision_id, disposition, note}")
        problems: list[dict[str, str]] = []
        checked: dict[str, Any] = {}
        for name, check in (
            ("decision_id", parse_decision_id),
            ("disposition", parse_disposition),
            ("note", clean_note),
        ):
            try:
                checked[name] = check(str(body.get(name, "") or ""))
            except InvalidValue as error:
                problems.append({"field": error.field, "problem": error.problem})
        if problems:
            # Nothing of what was sent goes to the trail: a malformed id or a refused note could hold anything.
            await self._audit(
                principal, result="INVALID_ARGUMENT: " + "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
            )
            return _error(
                400, "invalid_argument", "; ".join(f"{p['field']}: {p['problem']}" for p in problems), problems=problems
            )
        detail = f"decision_id={checked['decision_id']}; disposition={checked['disposition'].value}; via=console"
        try:
            record = await self.dispositions.report(
                checked["decision_id"],
                checked["disposition"],
                checked["note"],
                reported_by=principal.name,
                identity=principal.identity,
            )
        except UnknownDecision as error:
            await self._audit(principal, note=checked["note"], detail=detail, result="NOT_FOUND")
            return _error(404, "not_found", str(error))
        except StoreUnavailable as error:
            await self._audit(principal, note=checked["note"], detail=detail, result="UNAVAILABLE")
            return _error(503, "redis_unavailable", f"Redis unavailable 风险数据库不可用: {error}")
        await self._audit(
            principal,
            note=record.note,
            detail=detail + f"; request_id={record.request_id}",
            result="ok: already recorded" if record.already_recorded else "ok",
        )
        return _json(
            {
                "decision_id": record.decision_id,
                "disposition": views.disposition_document(record.disposition.value),
                "note": record.note,
                "reported_by": record.reported_by,
                "reported_at": local_time(record.reported_at).isoformat(timespec="seconds"),
                "already_recorded": record.already_recorded,
            }
        )

    async def _audit(self, principal: Principal, **fields: str) -> None:
        await self.audit.record(
            AuditEntry(principal=principal.name, identity=principal.identity, action="dispositions.report", **fields)
        )

    def _day(self, text: str | None) -> date:
        today = local_time(self.clock.now()).date()
        if not text:
            return today
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise _Refused(_error(400, "invalid_argument", "day: expected YYYY-MM-DD (China time)")) from None

    async def where(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request)
        day = self._day(request.query.get("day"))
        tallies = await self._read(self.monitor.day(day))
        hours = await self._read(self.monitor.hours(24))
        return _json(views.where_view(day, tallies, hours, generated_at=self.clock.now()))

    async def _daily(self, day: date) -> daily.DailyReport:
        tallies = await self._read(self.monitor.day(day))
        return daily.daily_report(day, tallies, generated_at=self.clock.now())

    async def report(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request)
        return _json(daily.report_document(await self._daily(self._day(request.query.get("day")))))

    async def report_csv(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request, page=True)
        day = self._day(request.match_info["day"])
        response = web.Response(text=daily.report_csv(await self._daily(day)), content_type="text/csv", charset="utf-8")
        response.headers["Content-Disposition"] = f'attachment; filename="riskgate-daily-{day.isoformat()}.csv"'
        return response

    async def report_html(self, request: web.Request) -> web.StreamResponse:
        await self._principal(request, page=True)
        day = self._day(request.match_info["day"])
        try:
            report = await self._daily(day)
        except _Refused:
            text = (STATIC / "unavailable.html").read_text(encoding="utf-8")
            return web.Response(status=503, text=text, content_type="text/html", charset="utf-8")
        return web.Response(text=daily.report_html(report), content_type="text/html", charset="utf-8")

    # --- serving ---------------------------------------------------------------------------

    async def start(self, address: str, tls: TlsFiles | None) -> None:
        """Listen on `address` (HTTPS with `tls`; a client CA makes client certificates optional and
        checked); ConfigError when it cannot."""
        host, port = parse_address(address, "RISKGATE_CONSOLE_LISTEN")
        context: ssl.SSLContext | None = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(tls.cert, tls.key)
                if tls.client_ca is not None:
                    context.load_verify_locations(cafile=tls.client_ca)
                    context.verify_mode = ssl.CERT_OPTIONAL
            except (ssl.SSLError, OSError) as error:
                raise ConfigError(f"RISKGATE_CONSOLE_LISTEN: TLS files: {error}") from None
        self.https = context is not None
        runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=context, shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise ConfigError(f"RISKGATE_CONSOLE_LISTEN={address}: cannot listen there ({error})") from None
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        log.info("console serving", extra={"fields": {"listen": address, "https": self.https}})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _first_name(peercert: dict[str, Any] | None) -> str:
    names = certificate_names(peercert)
    return names[0] if names else ""
