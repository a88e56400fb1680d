"""The storage gateway's authorizing proxy: HTTP basic with an agent's own credentials,
the rules of agent/core/gateway_rules.py, then the request streamed to the destination's
restic server (agent/gateway/backends.py). restic's REST protocol itself is rclone's.

Paths: `/<destination>/<image>/<uuid>/…` (restic REST, see gateway_rules) and
`/_gateway/health` (no credentials), `/_gateway/restic-password/<destination>` (any
agent: restic's password only, which NS8 also lets every agent read; the destination's
other secrets never leave the node).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.adapters.destinations import load_destination
from agent.adapters.redis_store import REDIS_ERRORS, Redis
from agent.core import redis_keys
from agent.core.errors import DestinationNotFound
from agent.core.gateway_rules import (
    WEBDAV_PREFIX,
    Grants,
    PathRefused,
    Role,
    StoragePath,
    WebdavPath,
    parse_storage_path,
    parse_webdav_path,
    refusal,
    webdav_refusal,
)
from agent.core.image_names import image_name
from agent.gateway.backends import Backends, Unavailable, Upstream
from agent.gateway.warm import DestinationWatcher, refresh_all
from agent.runtime import restore_grants

_Target = TypeVar("_Target", StoragePath, WebdavPath)  # what a request path names

log = logging.getLogger("agent.gateway")
REALM = 'Basic realm="backup-agent storage gateway"'
# Hop-by-hop headers (RFC 9110 §7.6.1) and the client's credentials stay at the proxy.
_DROPPED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "authorization",
        "host",
    }
)


@dataclass(frozen=True)
class Agent:
    user: str
    role: Role
    module_id: str = ""


class Gateway:
    """The proxy's state: node-credentialed Redis, the upstreams, one HTTP client."""

    def __init__(
        self, redis: Redis, backends: Backends, node_id: int, webdav: Backends | None = None
    ) -> None:
        self.redis = redis
        self.backends = backends
        self.webdav = webdav  # `rclone serve webdav` children: metadata beside repositories
        self.node_id = node_id
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))

    def authenticate(self, header: str) -> Agent | None:
        """The agent whose own password header carries, per cluster/acls; None otherwise."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        try:
            agent = redis_keys.AgentId.parse(user)
        except redis_keys.NotAnAgentId:
            return None
        if agent.kind not in ("module", "node"):
            return None
        recorded = self.redis.hget(redis_keys.CLUSTER_ACLS, user)
        expected = _recorded_hash(recorded)
        given = hashlib.sha256(password.encode()).hexdigest()
        if not expected or not hmac.compare_digest(expected, given):
            return None
        if agent.kind == "node":
            return Agent(user, Role.NODE)
        return Agent(user, Role.MODULE, agent.module_id)

    def grants(self, agent: Agent) -> Grants:
        """The module's own repository path and the restore source granted to it, if any."""
        if agent.role is Role.NODE:
            return Grants("")
        module_uuid = self.redis.hget(redis_keys.MODULE_UUID, agent.module_id)
        # The image add-module recorded with the module's user: never the module's own
        # environment, which it can write. A user made before images were recorded falls
        # back to that environment (its uuid, from the cluster, still confines it).
        recorded = (_json_object(self.redis.hget(redis_keys.CLUSTER_ACLS, agent.user)) or {}).get(
            "image"
        )
        image = recorded if isinstance(recorded, str) and recorded else ""
        if not image:
            image_url = self.redis.hget(redis_keys.module_environment(agent.module_id), "IMAGE_URL")
            image = image_name(image_url) if image_url else ""
        own = f"{image}/{module_uuid}" if module_uuid and image else ""
        # A grant whose restore died is not honoured, even before the sweep removes it.
        grant = restore_grants.live_grant(self.redis, agent.module_id)
        return Grants(own, [grant.source] if grant else [])


def _recorded_hash(text: str | None) -> str:
    record = _json_object(text)
    value = record.get("password_sha256") if record else None
    return value if isinstance(value, str) else ""


def _json_object(text: str | None) -> dict[str, object] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# What rclone's WebDAV server answers; which of them an agent may send: webdav_refusal.
WEBDAV_METHODS = (
    *("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH"),
    *("MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK"),
)
REASON_HEADER = "X-Gateway-Reason"  # the reason again, for answers without a body (HEAD)


def _denied(status: int, reason: str) -> Response:
    headers = {"WWW-Authenticate": REALM} if status == 401 else {}
    # One line of printable ASCII in the header; the body keeps the reason as it is.
    headers[REASON_HEADER] = "".join(c if " " <= c <= "~" else "?" for c in reason)[:500]
    return PlainTextResponse(reason + "\n", status_code=status, headers=headers)


async def _authenticated(gateway: Gateway, request: Request) -> Agent | Response:
    try:
        agent = await asyncio.to_thread(
            gateway.authenticate, request.headers.get("authorization", "")
        )
    except REDIS_ERRORS as exc:
        return _denied(503, f"the gateway cannot read its credentials: {exc}")
    return agent if agent is not None else _denied(401, "an agent's own credentials are needed")


def make_app(gateway: Gateway) -> Starlette:
    async def health(request: Request) -> Response:
        return PlainTextResponse(f"node {gateway.node_id}\n")

    async def restic_password(request: Request) -> Response:
        agent = await _authenticated(gateway, request)
        if isinstance(agent, Response):
            return agent
        destination_id = request.path_params["destination"]
        try:
            destination = await asyncio.to_thread(load_destination, gateway.redis, destination_id)
        except DestinationNotFound:
            return _denied(404, f"no destination {destination_id}")
        return PlainTextResponse(destination.password, headers={"Cache-Control": "no-store"})

    async def _checked(
        request: Request,
        parse: Callable[[str], _Target],
        refused: Callable[[Role, Grants, str, _Target], str],
        backends: Backends,
        what: str,
    ) -> Response:
        """Authenticate, parse the path, authorize with the agent's grants, then forward."""
        agent = await _authenticated(gateway, request)
        if isinstance(agent, Response):
            return agent
        raw = request.scope.get("raw_path") or request.url.path.encode()
        try:
            target = parse(raw.decode("ascii", errors="replace"))
        except PathRefused as exc:
            return _denied(403, f"refused: {exc}")
        try:
            grants = await asyncio.to_thread(gateway.grants, agent)
        except REDIS_ERRORS as exc:
            return _denied(503, f"the gateway cannot read its grants: {exc}")
        reason = refused(agent.role, grants, request.method, target)
        if reason:
            log.warning("%s %s%s %s refused: %s", agent.user, what, request.method, target, reason)
            return _denied(403, f"refused: {reason}")
        return await _forward(gateway, request, target.destination, target.backend_path(), backends)

    async def storage(request: Request) -> Response:
        return await _checked(request, parse_storage_path, refusal, gateway.backends, "")

    async def webdav(request: Request) -> Response:
        if gateway.webdav is None:
            return _denied(404, "this gateway serves no WebDAV")
        return await _checked(request, parse_webdav_path, webdav_refusal, gateway.webdav, "WebDAV ")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Every destination's child ready before a module asks, and again on each change.
        watcher = DestinationWatcher(gateway.redis, gateway.backends, asyncio.get_running_loop())
        watcher.start()
        warming = asyncio.create_task(refresh_all(gateway.backends, gateway.redis))
        # Here, not after uvicorn returns: it re-raises the stopping signal once it is done.
        try:
            yield
        finally:
            watcher.stop()
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warming
            gateway.backends.close()
            if gateway.webdav is not None:
                gateway.webdav.close()
            await gateway.client.aclose()

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/_gateway/health", health, methods=["GET", "HEAD"]),
            Route("/_gateway/restic-password/{destination}", restic_password, methods=["GET"]),
            Route(
                f"{WEBDAV_PREFIX}{{path:path}}",
                webdav,
                methods=list(WEBDAV_METHODS),
            ),
            Route(
                "/{path:path}",
                storage,
                methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PROPFIND"],
            ),
        ],
    )


async def _upstream(
    backends: Backends, destination: str, stale: Upstream | None = None
) -> Upstream | Response:
    """destination's upstream (a fresh child in place of stale's), or the refusal."""
    try:
        if stale is None:
            return await backends.upstream(destination)
        return await backends.replace(destination, stale)
    except DestinationNotFound:
        return _denied(404, f"no destination {destination}")
    except Unavailable as exc:
        return _denied(503, f"destination {destination}: {exc}")
    except REDIS_ERRORS as exc:
        return _denied(503, f"the gateway cannot read destination {destination}: {exc}")
    except OSError as exc:  # the node's own disk (logs, pid files) full or failing
        return _denied(503, f"destination {destination}: the gateway's node: {exc}")


async def _forward(
    gateway: Gateway, request: Request, destination: str, path: str, backends: Backends
) -> Response:
    upstream = await _upstream(backends, destination)
    if isinstance(upstream, Response):
        return upstream
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROPPED]
    target = path + (f"?{request.url.query}" if request.url.query else "")
    # restic's POST and PUT, WebDAV's PUT, PROPFIND, PROPPATCH and LOCK carry a body.
    body = request.stream() if request.method not in ("GET", "HEAD", "DELETE", "OPTIONS") else None
    try:
        try:
            answer = await _send(gateway, request.method, upstream, target, headers, body)
        except httpx.ConnectError:
            # Nothing was sent (the body is still unread): the child is replaced and the
            # request tried once more.
            upstream = await _upstream(backends, destination, upstream)
            if isinstance(upstream, Response):
                return upstream
            answer = await _send(gateway, request.method, upstream, target, headers, body)
    except httpx.HTTPError as exc:
        return _denied(502, f"destination {destination}: storage server failed: {_why(exc)}")
    kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED}
    return StreamingResponse(
        _raw(answer),
        status_code=answer.status_code,
        headers=kept,
        background=BackgroundTask(answer.aclose),
    )


async def _send(
    gateway: Gateway,
    method: str,
    upstream: Upstream,
    target: str,
    headers: list[tuple[str, str]],
    body: AsyncIterator[bytes] | None,
) -> httpx.Response:
    outgoing = gateway.client.build_request(
        method, upstream.base_url + target, headers=headers, content=body
    )
    return await gateway.client.send(outgoing, stream=True, auth=upstream.auth)


def _why(exc: BaseException) -> str:
    """exc's message, with the cause at the bottom of its chain when that says more
    ("All connection attempts failed" hides which errno)."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text, cause = str(exc), str(root)
    return f"{text} ({cause})" if root is not exc and cause and cause not in text else text


async def _raw(answer: httpx.Response) -> AsyncIterator[bytes]:
    pending: list[bytes] = []
    size = 0
    async for chunk in answer.aiter_raw():
        pending.append(chunk)
        size += len(chunk)
        if size >= 1 << 20:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)
