"""The inspector's ASGI app: pages, fragments for live updates, JSON, actions.

Routes (all need the access token; see `durable_agent.ui._security`):

    GET  /                      the runs: state counts, filters, search, paging
    GET  /fragment/runs         the same list's table, polled to refresh states
    GET  /run?id=ID             one run: header, timeline, markers, usage, diagram, forms
    GET  /fragment/run?id=ID&seq=N   its body when the run moved past seq N, else 204
    GET  /events/run?id=ID&after=N   its stored events as they land (server-sent events)
    GET  /run/diagram.svg?id=ID the run's path (served as an image: it never runs script)
    GET  /api/runs, /api/run?id=ID   the data ``runs list --json`` / ``runs show --json`` print
    POST /run/decide, /run/cancel, /run/resume   (?id=ID) the actions, unless read-only

Run ids go in the query string, never the path: an id may hold any character.
Every page is rendered by Jinja2 with autoescape on: model and tool text is
untrusted, and shows as text. A Content-Security-Policy allows only this
package's own script and style.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import jinja2
import markupsafe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from durable_agent import _inspect as inspect
from durable_agent.agent import Agent
from durable_agent.backend import Backend
from durable_agent.diagram import graphviz_available, run_diagram
from durable_agent.errors import DurableAgentError, RunNotFoundError
from durable_agent.registry import open_backend
from durable_agent.ui._actions import ActionError, Actions
from durable_agent.ui._live import after_seq, run_events
from durable_agent.ui._security import CSRF_FIELD, Access
from durable_agent.ui._views import list_context, parse_filters, run_context

__all__ = ["Inspector", "build_app", "shown_url"]

_HERE: Final = Path(__file__).parent
_log = logging.getLogger("durable_agent")

_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def shown_url(url: str) -> str:
    """A store URL without its password, for the page's header."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Inspector:
    """The store, the access rules and the actions of one inspector app."""

    def __init__(
        self,
        db: str | Backend,
        *,
        agent: Agent | None,
        read_only: bool,
        access: Access,
        user: str | None,
        poll_seconds: float,
        fleet_wait: float,
    ) -> None:
        self._db = db
        self._backend: Backend | None = db if isinstance(db, Backend) else None
        self.store_label = shown_url(db) if isinstance(db, str) else type(db).__name__
        self.read_only = read_only
        self.access = access
        self.poll_seconds = poll_seconds
        self.actions = Actions(
            agent=agent, decided_by=user or access.name or "inspector page", fleet_wait=fleet_wait
        )
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,  # every stored string is untrusted text
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["q"] = lambda value: quote(str(value), safe="")

    @property
    def backend(self) -> Backend:
        """The store, opened on first use (in the server's event loop)."""
        if self._backend is None:
            assert isinstance(self._db, str)
            self._backend = open_backend(self._db)
        return self._backend

    async def close(self) -> None:
        """Stop what the server continues and close a store it opened itself."""
        await self.actions.close()
        if self._backend is not None and isinstance(self._db, str):
            await self._backend.close()
            self._backend = None

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> Response:
        """A page or fragment from the package's templates, with the security headers."""
        html = self.html(request, name, **values)
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    def html(self, request: Request, name: str, **values: Any) -> str:
        """A template rendered for ``request`` (escaped: stored strings are untrusted)."""
        base = str(request.scope.get("root_path", "")).rstrip("/")
        return self.templates.get_template(name).render(
            base=base,
            csrf=self.access.csrf,
            csrf_field=CSRF_FIELD,
            read_only=self.read_only,
            can_continue=self.actions.can_continue,
            store=self.store_label,
            poll_ms=int(self.poll_seconds * 1000),
            **values,
        )


def _inspector(request: Request) -> Inspector:
    found: Inspector = request.app.state.inspector
    return found


def _denied(request: Request, why: str, status: int = 403) -> Response:
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"ok": False, "error": why}, status_code=status, headers=_HEADERS)
    return HTMLResponse(f"<p>refused: {_escape(why)}</p>", status_code=status, headers=_HEADERS)


def _escape(text: str) -> str:
    return str(markupsafe.escape(text))


def _login(request: Request) -> Response | None:
    """None when the request may read; a redirect that sets the cookie; or a refusal."""
    ui = _inspector(request)
    if not ui.access.given(request):
        return _denied(request, "open the URL with ?token=… the inspector printed", 401)
    if "token" in request.query_params:
        # Keep the token out of the address bar, the history and the Referer.
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303, headers=_HEADERS)
        response.set_cookie(
            ui.access.cookie,
            ui.access.token,
            httponly=True,
            samesite="strict",
            path=str(request.scope.get("root_path", "")) or "/",
        )
        return response
    return None


# -- pages and data ----------------------------------------------------------------------------


async def _runs_page(request: Request) -> Response:
    if (refused := _login(request)) is not None:
        return refused
    ui = _inspector(request)
    try:
        context = await list_context(ui.backend, request.query_params)
    except DurableAgentError as exc:
        return ui.render(request, "error.html", 400, message=str(exc))
    return ui.render(request, "runs.html", **context)


async def _runs_fragment(request: Request) -> Response:
    if (refused := _login(request)) is not None:
        return refused
    ui = _inspector(request)
    try:
        context = await list_context(ui.backend, request.query_params)
    except DurableAgentError as exc:
        return ui.render(request, "error.html", 400, message=str(exc))
    return ui.render(request, "_runs_table.html", **context)


async def _load(request: Request) -> inspect.RunView | Response:
    ui = _inspector(request)
    run_id = request.query_params.get("id", "")
    try:
        return inspect.inspect_run(await ui.backend.load_run(run_id))
    except RunNotFoundError:
        return ui.render(request, "error.html", 404, message=f"run {run_id!r} not found")
    except DurableAgentError as exc:
        return ui.render(request, "error.html", 400, message=str(exc))


async def _run_page(request: Request) -> Response:
    if (refused := _login(request)) is not None:
        return refused
    view = await _load(request)
    if isinstance(view, Response):
        return view
    ui = _inspector(request)
    return ui.render(request, "run.html", **run_context(view, svg=graphviz_available()))


async def _run_fragment(request: Request) -> Response:
    if (refused := _login(request)) is not None:
        return refused
    ui = _inspector(request)
    run_id = request.query_params.get("id", "")
    seen = request.query_params.get("seq", "")
    try:
        header = await ui.backend.get_run(run_id)
    except RunNotFoundError:
        return Response(status_code=404, headers=_HEADERS)
    if seen == f"{header.seq}:{header.state.value}":
        return Response(status_code=204, headers=_HEADERS)
    view = await _load(request)
    if isinstance(view, Response):
        return view
    return ui.render(request, "_run_body.html", **run_context(view, svg=graphviz_available()))


async def _run_events(request: Request) -> Response:
    """The run's stored events as server-sent events (`durable_agent.ui._live`)."""
    if (refused := _login(request)) is not None:
        return refused
    ui = _inspector(request)
    run_id = request.query_params.get("id", "")
    try:
        after = after_seq(request.headers.get("last-event-id"), request.query_params.get("after"))
        header = await ui.backend.get_run(run_id)
    except RunNotFoundError:
        return Response(f"run {run_id!r} not found", status_code=404, headers=_HEADERS)
    except DurableAgentError as exc:
        return Response(str(exc), status_code=400, headers=_HEADERS)
    if after > header.seq:
        why = f"run {run_id!r} has {header.seq} events; start after one of them (0 for all)"
        return Response(why, status_code=400, headers=_HEADERS)
    svg = graphviz_available()

    def body(view: inspect.RunView) -> str:
        return ui.html(request, "_run_body.html", **run_context(view, svg=svg))

    stream = run_events(ui.backend, run_id, after, render=body, max_poll=ui.poll_seconds)
    headers = {**_HEADERS, "X-Accel-Buffering": "no"}  # a proxy must not hold the stream back
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _run_diagram(request: Request) -> Response:
    if (refused := _login(request)) is not None:
        return refused
    view = await _load(request)
    if isinstance(view, Response):
        return view
    svg = run_diagram(view.stored, format="svg").data
    policy = "default-src 'none'; style-src 'unsafe-inline'"  # an SVG runs no script
    headers = {**_HEADERS, "Content-Security-Policy": policy}
    return Response(svg, media_type="image/svg+xml", headers=headers)


async def _api_runs(request: Request) -> Response:
    if (refused := _login(request)) is not None:
        return refused
    ui = _inspector(request)
    try:
        filters, limit, cursor = parse_filters(request.query_params)
        listing = await inspect.list_runs(ui.backend, filters, limit=limit, cursor=cursor)
    except DurableAgentError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400, headers=_HEADERS)
    return JSONResponse(listing.data(), headers=_HEADERS)


async def _api_run(request: Request) -> Response:
    if (refused := _login(request)) is not None:
        return refused
    view = await _load(request)
    if isinstance(view, Response):
        return JSONResponse({"error": "not found"}, status_code=view.status_code)
    return JSONResponse(view.data(), headers=_HEADERS)


# -- actions -----------------------------------------------------------------------------------


async def _act(request: Request) -> Response:
    ui = _inspector(request)
    if ui.read_only:
        return _denied(request, "this inspector is read-only")
    form: Mapping[str, Any] = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    why = ui.access.cross_site(request, fields.get(CSRF_FIELD))
    if why is not None:
        _log.warning("inspector refused %s %s: %s", request.method, request.url.path, why)
        return _denied(request, why)
    run_id = request.query_params.get("id", "")
    action = request.url.path.rsplit("/", 1)[-1]
    try:
        match action:
            case "decide":
                message = await ui.actions.decide(ui.backend, run_id, fields)
            case "cancel":
                message = await ui.actions.cancel(ui.backend, run_id, fields.get("reason", ""))
            case "resume":
                message = await ui.actions.resume(ui.backend, run_id)
            case _:  # pragma: no cover - the routes name the three
                return _denied(request, f"no action {action!r}", 404)
    except (ActionError, DurableAgentError) as exc:
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=409)
        return ui.render(request, "error.html", 409, message=str(exc))
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"ok": True, "message": message}, headers=_HEADERS)
    base = str(request.scope.get("root_path", "")).rstrip("/")
    return RedirectResponse(f"{base}/run?id={quote(run_id, safe='')}", status_code=303)


async def _no_icon(request: Request) -> Response:
    return Response(status_code=204)


def build_app(inspector: Inspector) -> Starlette:
    """The Starlette app over ``inspector``; its lifespan closes what the inspector opened."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await inspector.close()

    app = Starlette(
        routes=[
            Route("/", _runs_page),
            Route("/fragment/runs", _runs_fragment),
            Route("/run", _run_page),
            Route("/fragment/run", _run_fragment),
            Route("/events/run", _run_events),
            Route("/run/diagram.svg", _run_diagram),
            Route("/api/runs", _api_runs),
            Route("/api/run", _api_run),
            Route("/run/decide", _act, methods=["POST"]),
            Route("/run/cancel", _act, methods=["POST"]),
            Route("/run/resume", _act, methods=["POST"]),
            Route("/favicon.ico", _no_icon),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.inspector = inspector
    return app
