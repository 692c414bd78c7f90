"""The HTTP API: `create_app(runtime)` gives a FastAPI app serving /v1 (OpenAPI at
/openapi.json, docs at /docs), with worker threads that run the turns it queues.

Errors are JSON objects with a `message` (and `status`); no request is answered with a
stack trace. Every session belongs to a tenant; a token sees its own tenant's sessions
only (others' are 404, as if absent), unless it has the `admin` scope.

This module builds the app: its state, middleware, error handlers and worker threads.
`/mcp` is torpor's MCP server over streamable HTTP (torpor.api.mcp_mount), with the same
tokens and tenants.
The routes are in torpor.api.routes (one module per resource), the request and error
shapes in torpor.api.schemas, and what routes share at request time in torpor.api.deps.
"""

import contextlib
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match

from torpor.api.dashboard import add_dashboard
from torpor.api.deps import ApiState, Limits
from torpor.api.events import Notifier
from torpor.api.guard import Guard
from torpor.api.mcp_mount import add_mcp
from torpor.api.metrics import Metrics
from torpor.api.routes import auth as auth_routes
from torpor.api.routes import log as log_routes
from torpor.api.routes import (
    messages,
    ops,
    sandbox,
    sandbox_files,
    sandbox_io,
    sandboxes,
    sessions,
)
from torpor.api.schemas import API_VERSION, ApiError, error_response
from torpor.api.tokens import TokenStore
from torpor.context import StaleEpoch
from torpor.runtime.core import Runtime
from torpor.runtime.types import LeaseLost

try:  # FastAPI >= 0.137.2: included routers stay routers; this walks down into them
    from fastapi.routing import iter_route_contexts as _flat_routes
except ImportError:  # older: include_router copied the routes into the app's list

    def _flat_routes(routes: Sequence[Any]) -> Iterable[Any]:
        return routes

__all__ = ["API_VERSION", "ApiError", "Limits", "create_app"]

log = logging.getLogger("torpor.api")


# -- worker threads --------------------------------------------------------------------

def _work(api: ApiState, i: int) -> None:
    # Worker.serve's loop, plus a wake-up by posts instead of only a poll interval
    w = api.runtime.worker(owner=f"api-{secrets.token_hex(3)}-{i}")
    while not api.stop.is_set():
        try:
            done = w.run_once(on_event=api.on_event)
        except (LeaseLost, StaleEpoch):
            done = None
        except Exception:  # a turn that broke: log it, keep serving the others
            log.exception("worker %s: turn failed", w.owner)
            done = None
            api.stop.wait(0.5)
        if done is None:
            api.wake.wait(0.2)
            api.wake.clear()


@contextlib.asynccontextmanager
async def _workers(api: ApiState) -> AsyncIterator[None]:
    """The app's lifespan: `api.workers` threads run turns, and the sandbox resource's
    janitor pauses or kills idle sandboxes, until it ends."""
    api.stop.clear()
    for i in range(api.workers):
        t = threading.Thread(target=_work, args=(api, i), name=f"torpor-api-worker-{i}",
                             daemon=True)  # fmt: skip
        t.start()
        api.threads.append(t)
    api.runtime.sandboxes.janitor.start()
    yield
    api.runtime.sandboxes.janitor.stop()
    api.stop.set()
    api.wake.set()
    for t in api.threads:
        await run_in_threadpool(t.join, 60)
    api.threads.clear()


# -- errors ------------------------------------------------------------------------

def _allowed_methods(request: Request) -> str:
    """The Allow header for the request's path: the methods of every route of that
    path, and OPTIONS. (Starlette's own 405 names only the first such route's, and a
    path here often has one route per method.)"""
    methods = {"OPTIONS"}
    for route in _flat_routes(request.app.router.routes):
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods, key=lambda m: (m == "OPTIONS", m)))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:  # the path exists, not with this method
        allow = _allowed_methods(request)
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        resp = error_response(405, f"{request.method} is not allowed on {request.url.path} "
                                   f"(allowed: {allow})")  # fmt: skip
        resp.headers["Allow"] = allow
        return resp
    headers = getattr(exc, "headers", None)
    resp = error_response(exc.status_code, str(exc.detail))
    if headers:
        resp.headers.update(headers)
    return resp


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return error_response(400, "malformed JSON in the request body")
    details = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
               for e in errs][:20]  # fmt: skip
    return error_response(422, "invalid request: " + "; ".join(details), errors=details)


async def _crashed(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__})")


# -- the app ---------------------------------------------------------------------------

def create_app(runtime: Runtime, *, auth: bool = True, limits: Limits | None = None,
               workers: int = 1, poll: float = 0.5,
               scripts: Path | None = None) -> FastAPI:  # fmt: skip
    """The API over `runtime`. auth: require tokens (off: one anonymous tenant that sees
    everything, for loopback use). workers: threads running turns in this process (0:
    none; turns then need a `torpor worker`). poll: how often event streams look for
    entries written by other processes. scripts: the directory `script:` models may come
    from (None: they are refused, so that no tenant can make the server open a file)."""
    rt = runtime
    lim = limits or Limits()
    api = ApiState(runtime=rt, tokens=TokenStore(rt.db), limits=lim, metrics=Metrics(rt),
                   notifier=Notifier(), auth=auth, scripts=scripts, poll=poll,
                   workers=workers)  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if mcp is not None:  # the MCP server's session manager runs with the app
                await stack.enter_async_context(mcp.running())
            await stack.enter_async_context(_workers(api))
            yield

    app = FastAPI(
        title="torpor", version="1", lifespan=lifespan,
        description="Durable AI-agent sessions over HTTP: sessions, messages, live events "
                    "(server-sent), logs, snapshots, sandbox access; and sandboxes for "
                    "your own agent loop: commands, files, pause, resume, snapshots.",
    )  # fmt: skip
    app.state.api = api
    app.state.runtime, app.state.tokens, app.state.limits = rt, api.tokens, lim
    app.state.metrics, app.state.notifier = api.metrics, api.notifier
    app.state.worker_threads = api.threads
    app.add_middleware(Guard, limits=lim, metrics=api.metrics)
    app.exception_handler(HTTPException)(_http_error)
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(Exception)(_crashed)

    # the routes, in the order of the OpenAPI document
    add_dashboard(app)
    app.include_router(ops.router(auth))
    app.include_router(sessions.router(auth, lim))
    app.include_router(messages.router(auth))
    app.include_router(log_routes.router(auth, lim))
    app.include_router(sandbox.router(auth))
    app.include_router(sandboxes.router(auth))
    app.include_router(sandbox_io.router(auth))
    app.include_router(sandbox_files.router(auth))
    app.include_router(auth_routes.router(auth))
    mcp = add_mcp(app, api)  # /mcp: the MCP server, when the mcp SDK is installed
    return app
