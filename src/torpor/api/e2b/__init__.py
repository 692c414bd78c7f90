"""E2B's protocol, so that the unchanged `e2b` SDK uses torpor's sandboxes:

    E2B_API_URL=http://127.0.0.1:PORT E2B_SANDBOX_URL=http://127.0.0.1:PORT \\
    E2B_API_KEY=<a torpor token with the sandboxes scope>  python my_agent.py

`torpor serve --e2b PORT` serves it on PORT besides the native API (`by_port`): the
control plane (control.py: create, list, get, kill, pause, connect, timeout, snapshots)
and envd, the in-sandbox daemon's API, served on the host and routed by the
`E2b-Sandbox-Id` header (envd.py: /health, /files; rpc.py and process.py: the
process and filesystem Connect-RPC services). common.py holds what they share. The
protocol is public (e2b-dev/E2B spec/openapi.yml, e2b-dev/infra packages/envd/spec);
docs/e2b.md says what is served and what is not.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from torpor.api.deps import ApiState
from torpor.api.e2b import control
from torpor.api.e2b.common import ENVD_VERSION, E2BError
from torpor.api.e2b.envd import RPC_PREFIXES, Envd
from torpor.api.e2b.rpc import Rpc

__all__ = ["ENVD_VERSION", "ByPort", "E2BApp"]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return E2BError(status, f"{request.method} {request.url.path}: {detail}").response()


class E2BApp:
    """The E2B protocol's ASGI app over an API's state (see the module)."""

    def __init__(self, api: ApiState) -> None:
        self.control = Starlette(routes=control.routes(api),
                                 exception_handlers={HTTPException: _http_error})  # fmt: skip
        self.envd = Envd(api, Rpc(api))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # (its lifespan is the main app's)
            return
        path = scope["path"]
        app = self.envd if path.startswith(RPC_PREFIXES) or path in ("/health", "/files") \
            else self.control  # fmt: skip
        await app(scope, receive, send)


class ByPort:
    """One ASGI app of several: requests to a listed local port go to its app, the rest
    (and the lifespan) to `main`. One server, one event loop, one lifespan and one
    signal handling for the native API and the E2B protocol."""

    def __init__(self, main: Any, apps: dict[int, Any]) -> None:
        self.main, self.apps = main, apps

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        server = scope.get("server") or (None, None)
        app = self.apps.get(server[1], self.main) if scope["type"] != "lifespan" else self.main
        await app(scope, receive, send)
