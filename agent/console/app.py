"""The review console's routes (Starlette; docs/design.md §5.5).

    GET  /healthz /readyz /metrics    probes and Prometheus, no auth, nothing from any event
    GET  /                            quarantined events, newest first, filtered, paged by key
    GET  /events/{event_id}           one event: input, p-values, neighbours per layer, the verdict form
    POST /events/{event_id}           a verdict: a dknn.review.v1 record to the reviews topic
    GET  /login, POST /login          the token form (with --token-file), sets the session cookie
    POST /logout

Every page is rendered on the server from Jinja2 templates with autoescaping on: nothing from an
event is ever marked safe, charts are numbers placed into SVG, images are data URIs of PNGs
encoded here, and ids in links are percent-encoded. Every response forbids scripts, frames and
foreign resources (`Content-Security-Policy`), so even a missed escape could not run code.

Every POST needs its CSRF token (`auth`), and its body is read up to `MAX_BODY_BYTES` (16 KiB: a
note is at most 2,000 characters): beyond it the answer is 413 before the rest is read. Blocking
work (SQLite, the producer's flush) runs on the thread pool, never on the event loop.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.console.auth import MAX_NAME_CHARS, NONCE_COOKIE, SESSION_COOKIE, Auth
from agent.console.detail import event_view
from agent.console.ingest import Ingest
from agent.console.store import REVIEW_STATES, Cursor, Filters, Store, StoredReview
from agent.engine.bundle import VerifiedBundle
from agent.errors import ConnectorError
from agent.runtime.telemetry import ReviewTelemetry
from agent.runtime.wire.review import MAX_NOTE_CHARS, REVIEW_VERDICTS, parse_review, review_record
from connectors.base import Sink

log = logging.getLogger("dknn.console")

MAX_BODY_BYTES: Final = 16 * 1024
MAX_FIELDS: Final = 16
FLUSH_TIMEOUT_S: Final = 15.0
NO_EVENT: Final = "No quarantined event with this id in the console's store."
FORGED: Final = "The form's CSRF token is missing or wrong: reload the page."
SECURITY_HEADERS: Final = [
    (b"content-security-policy", b"default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]  # fmt: skip


@dataclass
class Console:
    """What the routes work with; `server` builds it, tests build it with in-memory parts."""

    store: Store
    bundle: VerifiedBundle
    ingest: Ingest
    telemetry: ReviewTelemetry
    sink: Sink
    reviews_topic: str
    auth: Auth
    secure_cookies: bool = False  # set where the console is served over HTTPS
    _send_lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, key: bytes, value: bytes) -> None:
        """One review, confirmed by the broker before this returns (ConnectorError otherwise)."""
        with self._send_lock:
            self.sink.send(self.reviews_topic, value, key=key)
            self.sink.flush(FLUSH_TIMEOUT_S)


class TooLargeError(Exception):
    """A request body beyond MAX_BODY_BYTES."""


def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("agent.console", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["urlpart"] = lambda text: quote(str(text), safe="")
    environment.filters["when"] = _when
    environment.filters["kind"] = lambda item: type(item).__name__.lower()
    environment.filters["prob"] = lambda value: "–" if value is None else f"{value:.4f}"
    return environment


def _when(ms: int | None) -> str:
    if ms is None:
        return "–"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def create_app(console: Console) -> ASGIApp:
    templates = _templates()

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        nonce = request.cookies.get(NONCE_COOKIE) or console.auth.new_nonce()
        principal = context.get("principal") or ""
        html = templates.get_template(name).render(
            csrf=console.auth.csrf_token(nonce, principal), login=console.auth.credentials.token is not None, **context
        )
        response = HTMLResponse(html, status_code=status)
        if NONCE_COOKIE not in request.cookies:
            _cookie(response, NONCE_COOKIE, nonce, console.secure_cookies)
        return response

    def message(request: Request, status: int, text: str, principal: str | None = None) -> HTMLResponse:
        return page(request, "message.html", status, title=str(status), text=text, principal=principal)

    def who(request: Request) -> str | None:
        return console.auth.principal(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE))

    def refuse(request: Request) -> Response:
        """401: a basic-auth challenge where users are configured, the login form where only a token is."""
        if console.auth.credentials.users:
            response = message(request, 401, "Log in to review quarantined events.")
            response.headers["www-authenticate"] = 'Basic realm="dknn review console", charset="UTF-8"'
            return response
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return message(request, 401, "Log in to review quarantined events.")

    async def posted(request: Request, principal: str | None) -> dict[str, str] | Response:
        """The POSTed form, or the answer refusing it: 413 past MAX_BODY_BYTES (the rest unread), 403
        without the CSRF token of this browser's nonce and `principal` ("" before logging in)."""
        try:
            form = await _form(request)
        except TooLargeError:
            return message(request, 413, f"The form is larger than {MAX_BODY_BYTES} bytes.", principal)
        if not console.auth.csrf_ok(request.cookies.get(NONCE_COOKIE), principal or "", form.get("csrf")):
            return message(request, 403, FORGED, principal)
        return form

    async def healthz(request: Request) -> Response:
        failed = console.ingest.failed.is_set()
        return Response(b"failed\n" if failed else b"ok\n", 503 if failed else 200, media_type="text/plain")

    async def readyz(request: Request) -> Response:
        ready = console.ingest.ready.is_set()
        return Response(b"ready\n" if ready else b"not ready\n", 200 if ready else 503, media_type="text/plain")

    async def metrics(request: Request) -> Response:
        body, content_type = console.telemetry.exposition()
        return Response(body, media_type=content_type)

    async def listing(request: Request) -> Response:
        principal = who(request)
        if principal is None:
            return refuse(request)
        try:
            filters, after, form = _filters(request.query_params)
        except ValueError as exc:
            return message(request, 400, f"Bad filter: {exc}", principal)
        result = await run_in_threadpool(console.store.page, filters, after)
        next_link = None
        if result.next_cursor is not None:
            next_link = "/?" + urlencode({**{k: v for k, v in form.items() if v}, "after": _cursor(result.next_cursor)})
        return page(
            request,
            "list.html",
            principal=principal,
            rows=result.rows,
            form=form,
            next_link=next_link,
            first_page=after is None,
            summary=console.store.summary,
            labels=range(console.bundle.manifest.model.num_classes),
            states=REVIEW_STATES,
            ready=console.ingest.ready.is_set(),
        )

    async def event(request: Request) -> Response:
        principal = who(request)
        if principal is None:
            return refuse(request)
        if request.method == "POST":
            return await verdict(request, principal)
        return await show_event(request, principal, request.path_params["event_id"])

    async def show_event(request: Request, principal: str, event_id: str, error: str | None = None) -> Response:
        found = await run_in_threadpool(console.store.event, event_id)
        if found is None:
            return message(request, 404, NO_EVENT, principal)
        view = await run_in_threadpool(event_view, found[0], found[1], console.bundle)
        return page(
            request, "event.html", 400 if error else 200, principal=principal, view=view, error=error,
            verdicts=REVIEW_VERDICTS, max_note=MAX_NOTE_CHARS,
        )  # fmt: skip

    async def verdict(request: Request, principal: str) -> Response:
        event_id = request.path_params["event_id"]
        form = await posted(request, principal)
        if isinstance(form, Response):
            return form
        found = await run_in_threadpool(console.store.event, event_id)
        if found is None:
            return message(request, 404, NO_EVENT, principal)
        stored = found[0]
        choice = form.get("verdict", "")
        label_text = form.get("label", "")
        try:
            if choice not in REVIEW_VERDICTS:
                raise ValueError("choose one of the three verdicts")
            label = int(label_text) if choice == "model_wrong" and label_text.strip() else None
            if choice == "model_wrong" and label is None:
                raise ValueError("a verdict of model wrong needs the true label")
            manifest = console.bundle.manifest
            payload = review_record(
                stored.record,
                verdict=choice,  # checked against REVIEW_VERDICTS above
                reviewer=principal,
                model_name=stored.model_name or manifest.model.name,
                model_version=stored.model_version or manifest.model.version,
                label=label,
                note=form.get("note", "").replace("\r\n", "\n"),
            )
        except ValueError as exc:
            return await show_event(request, principal, event_id, error=str(exc))
        try:
            await run_in_threadpool(console.publish, event_id.encode(), payload)
        except ConnectorError as exc:
            log.warning("review of %r not published: %s", event_id[:128], exc)
            return message(
                request, 503, "The review could not be published to the reviews topic; try again.", principal
            )
        await run_in_threadpool(console.store.put_review, StoredReview.of(parse_review(payload)))
        return RedirectResponse("/events/" + quote(event_id, safe=""), status_code=303)

    async def login(request: Request) -> Response:
        if console.auth.credentials.token is None:
            return message(request, 404, "Log-in by token is not configured: this console uses basic auth.")
        if request.method == "GET":
            return page(request, "login.html", principal=None, error=None)
        form = await posted(request, None)
        if isinstance(form, Response):
            return form
        name = form.get("name", "").strip()
        if not console.auth.token_ok(form.get("token", "")) or not 0 < len(name) <= MAX_NAME_CHARS:
            return page(request, "login.html", 401, principal=None, error="Wrong token, or no name given.")
        response = RedirectResponse("/", status_code=303)
        _cookie(response, SESSION_COOKIE, console.auth.session(name), console.secure_cookies)
        return response

    async def logout(request: Request) -> Response:
        principal = who(request)
        form = await posted(request, principal)
        if isinstance(form, Response):
            return form
        if principal is None:  # nobody to log out: refused like a forged form
            return message(request, 403, FORGED)
        response = RedirectResponse("/login" if console.auth.credentials.token else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/", listing),
            Route("/events/{event_id:path}", event, methods=["GET", "POST"]),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["POST"]),
        ]
    )
    return _SecurityHeaders(app)


class _SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response (a plain ASGI wrapper: no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _cookie(response: Response, name: str, value: str, secure: bool) -> None:
    response.set_cookie(name, value, path="/", httponly=True, samesite="strict", secure=secure)


async def _form(request: Request) -> dict[str, str]:
    """A url-encoded form read up to `MAX_BODY_BYTES` (TooLargeError beyond: the rest is never read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise TooLargeError
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise TooLargeError
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return {}
    return dict(pairs)


def _filters(query: Mapping[str, str]) -> tuple[Filters, Cursor | None, dict[str, str]]:
    """The list's filters from its query string (ValueError names a bad one), and the form's values."""
    form = {
        name: query.get(name, "").strip()[:200]
        for name in ("model", "dknn", "cmin", "cmax", "reason", "since", "until", "review")
    }

    def number(name: str, kind: Callable[[str], Any]) -> Any:
        if not form[name]:
            return None
        try:
            return kind(form[name])
        except ValueError:
            raise ValueError(f"{name} {form[name]!r} is not a number") from None

    review = form["review"] or "any"
    if review not in REVIEW_STATES:
        raise ValueError(f"review must be one of {', '.join(REVIEW_STATES)}")
    filters = Filters(
        model_prediction=number("model", int),
        prediction=number("dknn", int),
        credibility_min=number("cmin", float),
        credibility_max=number("cmax", float),
        reason=form["reason"] or None,
        since_ms=_moment(form["since"], "since"),
        until_ms=_moment(form["until"], "until"),
        review=review,  # checked against REVIEW_STATES above
    )
    after = _parse_cursor(query.get("after", "")) if query.get("after") else None
    return filters, after, form


def _moment(text: str, name: str) -> int | None:
    """A `datetime-local` value (or any ISO 8601 date-time), read as UTC where it names no zone."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(cursor))).decode().rstrip("=")


def _parse_cursor(text: str) -> Cursor:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(text[:1024] + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise ValueError("the page link is damaged") from None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and isinstance(value[1], str)):
        raise ValueError("the page link is damaged")
    return value[0], value[1]
