"""The web console: server-rendered pages and a JSON API, every route behind the session."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pydantic
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
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
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.adapters.redis_api import Redis
from agent.adapters.redis_store import Context
from agent.core import redis_keys
from agent.core.errors import AgentError, ValidationFailed
from agent.core.settings import Settings
from agent.operations.restore_source import open_repository
from agent.runtime.steps import pydantic_errors
from agent.web import actions, auth, browse, events, overview

HERE = Path(__file__).resolve().parent
PUBLIC = frozenset({"/login"})  # the only route answered without a session
LOGIN_FAILURE_DELAY = 1.0  # seconds: guessing the password is slow, a typo costs little


@dataclass(frozen=True)
class Console:
    """What every request needs: the node's settings and a Redis connection."""

    settings: Settings
    redis: Redis

    def generation(self) -> str:
        return auth.password_generation(auth.read_hash(self.settings.root))

    def context(self) -> Context:
        """As operations take it: reads of a repository obey this node's local roots."""
        return Context(self.settings, self.redis)


# --- the gate ----------------------------------------------------------------------------
class SessionGate:
    """Refuses every request without a live session (pages: to the login form; API: 401),
    and every state-changing one from another origin or without the session's CSRF token."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        unsafe = request.method not in ("GET", "HEAD")
        if unsafe and not auth.same_origin(
            request.headers.get("origin"),
            request.headers.get("referer"),
            request.headers.get("host"),
            request.url.scheme,
        ):
            await refuse(403, "cross-origin request refused")(scope, receive, send)
            return
        if request.url.path in PUBLIC:
            await self.app(scope, receive, send)
            return
        token = request.cookies.get(auth.COOKIE, "")
        session = await run_in_threadpool(self._session, token)
        if session is None:
            if request.url.path.startswith("/api/"):
                response: Response = refuse(401, "log in first")
            else:
                response = RedirectResponse("/login", status_code=303)
            await response(scope, receive, send)
            return
        if unsafe and not auth.csrf_ok(session, request.headers.get("x-csrf-token")):
            await refuse(403, "missing or wrong CSRF token")(scope, receive, send)
            return
        scope.setdefault("state", {})["session"] = session
        await self.app(scope, receive, send)

    def _session(self, token: str) -> auth.Session | None:
        try:
            return auth.find_session(self.console.redis, token, self.console.generation())
        except AgentError:
            return None


def refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, ValidationFailed):
        return JSONResponse({"error": str(exc), "errors": exc.errors}, status_code=422)
    if isinstance(exc, pydantic.ValidationError):
        return JSONResponse({"error": "invalid input", "errors": pydantic_errors(exc)}, 422)
    return JSONResponse({"error": str(exc)}, status_code=502)


def make_app(console: Console) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["login_css"] = (HERE / "static" / "console.css").read_text()

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = request.scope.get("state", {}).get("session")
        context["csrf"] = session.csrf if session else ""
        return templates.TemplateResponse(request, name, context, status_code=status)

    # --- login ---------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        return page(request, "login.html")

    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        user = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        try:
            stored = await run_in_threadpool(auth.read_hash, console.settings.root)
        except AgentError as exc:
            return page(request, "login.html", 503, error=str(exc))
        if user != auth.ADMIN or not await run_in_threadpool(auth.check_hash, password, stored):
            await asyncio.sleep(LOGIN_FAILURE_DELAY)
            return page(request, "login.html", 401, error="wrong user name or password")
        token, _ = await run_in_threadpool(
            auth.open_session, console.redis, auth.password_generation(stored)
        )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            auth.COOKIE,
            token,
            max_age=auth.SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        await run_in_threadpool(auth.close_session, console.redis, request.cookies[auth.COOKIE])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.COOKIE, path="/")
        return response

    # --- pages ---------------------------------------------------------------------------
    async def dashboard_page(request: Request) -> Response:
        return page(request, "dashboard.html")

    async def destinations_page(request: Request) -> Response:
        try:
            listed = await run_in_threadpool(overview.action_output, console.redis, "list-backups")
            repositories = await run_in_threadpool(
                overview.action_output, console.redis, "list-backup-repositories"
            )
        except AgentError as exc:
            return page(request, "error.html", 502, error=str(exc))
        return page(
            request,
            "destinations.html",
            backups=listed["backups"],
            repositories=repositories["repositories"],
        )

    async def module_page(request: Request) -> Response:
        module_id = request.path_params["module_id"]
        try:
            history = await run_in_threadpool(overview.module_history, console.redis, module_id)
        except AgentError as exc:
            return page(request, "error.html", 502, error=str(exc))
        return page(request, "module.html", history=history)

    async def browse_page(request: Request) -> Response:
        return page(request, "browse.html")

    # --- API -------------------------------------------------------------------------------
    async def api_dashboard(_request: Request) -> Response:
        try:
            return JSONResponse(await run_in_threadpool(overview.dashboard, console.redis))
        except AgentError as exc:
            return error_response(exc)

    async def api_module(request: Request) -> Response:
        module_id = request.path_params["module_id"]
        try:
            history = await run_in_threadpool(overview.module_history, console.redis, module_id)
        except AgentError as exc:
            return error_response(exc)
        return JSONResponse(history)

    async def api_events(_request: Request) -> Response:
        return StreamingResponse(
            events.stream(console.settings.redis_url),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def api_action(request: Request) -> Response:
        """POST /api/actions/<agent>/<action> with the action's data as the body; waits for
        the result unless ?nowait=1 (then 202 and the task id, progress on /api/events)."""
        agent_id, action = redis_keys.split_action(request.path_params["name"])
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else None
        except ValueError:
            return refuse(400, "the body is not JSON")
        try:
            if request.query_params.get("nowait") == "1":
                task_id = await run_in_threadpool(
                    actions.submit, console.redis, agent_id, action, data
                )
                return JSONResponse({"agent": agent_id, "task": task_id}, status_code=202)
            result = await run_in_threadpool(actions.run, console.redis, agent_id, action, data)
        except AgentError as exc:
            return error_response(exc)
        status = 200 if result.exit_code == 0 else 422 if result.exit_code == 10 else 500
        return JSONResponse(actions.result_json(result), status_code=status)

    async def api_ls(request: Request) -> Response:
        try:
            query = browse.ListRequest.model_validate(dict(request.query_params))
            repository = open_repository(console.context(), query.repository, query.path)
            directory = browse.snapshot_dir(query.dir)
            entries, cut = await run_in_threadpool(
                browse.list_directory,
                repository,
                query.snapshot,
                directory,
                console.settings.podman_env(),
            )
        except (AgentError, pydantic.ValidationError) as exc:
            return error_response(exc)
        return JSONResponse(
            {"dir": directory.lstrip("/"), "entries": [e.to_json() for e in entries], "cut": cut}
        )

    async def api_download(request: Request) -> Response:
        try:
            query = browse.DumpRequest.model_validate(dict(request.query_params))
            repository = open_repository(console.context(), query.repository, query.path)
            dump, first, name = await run_in_threadpool(
                browse.start_dump, repository, query, console.settings.podman_env()
            )
        except (AgentError, pydantic.ValidationError) as exc:
            return error_response(exc)
        media = {"raw": "application/octet-stream", "zip": "application/zip"}
        return StreamingResponse(
            iterate_in_threadpool(dump.chunks(first)),
            media_type=media.get(query.format, "application/x-tar"),
            headers={"Content-Disposition": content_disposition(name)},
        )

    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", dashboard_page),
        Route("/destinations", destinations_page),
        Route("/modules/{module_id}", module_page),
        Route("/browse", browse_page),
        Route("/api/dashboard", api_dashboard),
        Route("/api/events", api_events),
        Route("/api/modules/{module_id}/history", api_module),
        Route("/api/actions/{name:path}", api_action, methods=["POST"]),
        Route("/api/snapshots/ls", api_ls),
        Route("/api/snapshots/download", api_download),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SessionGate, console=console)
    return app


def content_disposition(name: str) -> str:
    """attachment; a name from a hostile snapshot reaches the header percent-encoded only."""
    from urllib.parse import quote

    ascii_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:128]
    return f"attachment; filename=\"{ascii_name or 'download'}\"; filename*=UTF-8''{quote(name)}"
