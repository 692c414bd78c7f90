"""`/mcp`: torpor's MCP server (torpor.mcp) over streamable HTTP in `torpor serve`, with the
API's tokens and tenants: a request needs a bearer token with the `sandboxes` or `exec`
scope (401/403 as the API answers), and a tool reaches only its tenant's sandboxes
(another tenant's answer "no such ...", as if absent; `admin` tokens reach all).

What a tool's `sandbox` names here:
- a sandbox of the sandbox resource (`sbx-...`, `/v1/sandboxes`; `sandboxes` scope): the
  durable sandbox itself (a paused one is resumed first, if it resumes by itself);
  snapshot, restore and fork are the resource's (restore makes a new sandbox of the
  resource from one of the tenant's snapshots);
- `session:ID` (`exec` scope), a session's sandbox, as `torpor mcp --session` serves it:
  the live one while a turn runs, else a copy restored from its latest snapshot, made at
  the first call and kept, per session, until the server stops (changes there do not
  become the session's); or the id of a sandbox that `restore` or `fork` made from it
  (this process remembers which tenant's it is).

The MCP server is stateless (one JSON answer per POST, protocol sessions not kept).

Needs the `mcp` SDK (`torpor[mcp]`): without it the app has no /mcp route.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route

from torpor.api.deps import ApiState
from torpor.api.schemas import ApiError
from torpor.api.tokens import Principal

try:
    from mcp.server.transport_security import TransportSecuritySettings

    from torpor.mcp import SessionSandbox, Target, build, engine_target
except ImportError:  # pragma: no cover - depends on the install
    TransportSecuritySettings = None  # type: ignore[assignment,misc]

PATH = "/mcp"


class McpEndpoint:
    """The /mcp route (an ASGI app) and the targets its tools reach."""

    def __init__(self, api: ApiState) -> None:
        self.api = api
        self.copies: dict[str, SessionSandbox] = {}  # session id -> its copy
        self.made: dict[str, str | None] = {}  # sandbox made by restore/fork -> tenant
        self.lock = threading.Lock()
        self.server = build(self.resolve)
        # with tokens, any Host may ask (a token is the protection); without (loopback use),
        # the SDK's DNS-rebinding protection: only localhost Host and Origin headers
        security = (TransportSecuritySettings(enable_dns_rebinding_protection=False)
                    if api.auth else None)
        self.server.streamable_http_app(stateless_http=True, json_response=True,
                                        transport_security=security)
        self.manager = self.server.session_manager

    # -- who asks, and what they reach ----------------------------------------------------
    def principal(self, headers: Mapping[str, str] | None) -> Principal:
        if not self.api.auth:
            return Principal(tenant=None)
        auth = (headers or {}).get("authorization", "")
        p = self.api.tokens.check(auth[7:].strip()) if auth.lower().startswith("bearer ") \
            else None  # fmt: skip
        if p is None:
            raise PermissionError("missing or invalid token: send Authorization: Bearer <token>")
        if not p.scopes & {"exec", "sandboxes"}:
            raise PermissionError("this token lacks the 'sandboxes' and 'exec' scopes")
        return p

    @contextlib.contextmanager
    def resolve(self, name: str | None, headers: Mapping[str, str] | None) -> Iterator[Target]:
        p = self.principal(headers)
        if not name:
            raise LookupError("name a sandbox: `session:ID` for a session's sandbox, or the "
                              "id that restore or fork answered")
        if name.startswith("sbx-"):
            with self.resource(name, p) as t:
                yield t
            return
        if "exec" not in p.scopes:
            raise PermissionError("this token lacks the 'exec' scope (a session's sandbox)")
        with self.lock:
            owner = self.made.get(name, False)
        if owner is not False and not name.startswith("session:"):
            if not (p.all_tenants or owner == p.tenant):
                raise LookupError(f"no such sandbox: {name}")
            yield self.remembering(engine_target(self._sandbox(name)), p)
            return
        sid = name.removeprefix("session:")
        try:
            row = self.api.row_of(p, sid)
        except ApiError as e:
            raise LookupError(str(e.detail)) from None
        with self.lock:
            copy = self.copies.setdefault(row.id, SessionSandbox(self.api.runtime, row.id))
        yield self.remembering(copy.target(), p)

    @contextlib.contextmanager
    def resource(self, sid: str, p: Principal) -> Iterator[Target]:
        """A sandbox of the resource (runtime.sandboxes), held for the call."""
        from torpor.runtime.sandboxes import EVERY_TENANT, SandboxResourceError

        if "sandboxes" not in p.scopes:
            raise PermissionError("this token lacks the 'sandboxes' scope")
        rs = self.api.runtime.sandboxes
        tenant = EVERY_TENANT if p.all_tenants else p.tenant

        def snapshot(name: str | None) -> str:
            return rs.snapshot(sid, name=name, tenant=tenant).id

        def restore(snap: str) -> str:
            info = rs.snapshot_info(snap, tenant=tenant)
            row = rs.get(info.sandbox, tenant=tenant)
            return rs.create(row.image, snapshot=snap, tenant=row.tenant).id

        def fork() -> str:
            return rs.fork(sid, tenant=tenant).id

        try:
            with rs.use(sid, tenant=tenant) as sb:
                yield Target(f"sandbox {sid}", sb, snapshot, restore, fork)
        except SandboxResourceError as e:
            raise LookupError(str(e)) from None

    def _sandbox(self, sid: str) -> Any:
        from torpor.sandbox.handle import Sandbox

        return Sandbox.get(sid, engine=self.api.runtime.engine)

    def remembering(self, t: Target, p: Principal) -> Target:
        """`t`, whose restore and fork record the new sandbox as the tenant's."""

        def keep(sid: str) -> str:
            with self.lock:
                self.made[sid] = p.tenant
            return sid

        return replace(t, restore=lambda snap: keep(t.restore(snap)),
                       fork=lambda: keep(t.fork()))

    # -- serving --------------------------------------------------------------------------
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        try:
            self.principal(headers)  # refused before any MCP exchange: 401/403
        except PermissionError as e:
            status = 403 if "scope" in str(e) else 401
            body = json.dumps({"message": str(e), "status": status}).encode()
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), *extra]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The MCP server's part of the app's lifespan; removes the sessions' copies."""
        async with self.manager.run():
            try:
                yield
            finally:
                with self.lock:
                    copies, self.copies = list(self.copies.values()), {}
                for c in copies:
                    c.close()


def add_mcp(app: FastAPI, api: ApiState) -> McpEndpoint | None:
    """Add /mcp to the app (None, and no route, without the mcp SDK)."""
    if TransportSecuritySettings is None:
        return None
    endpoint = McpEndpoint(api)
    app.router.routes.append(Route(PATH, endpoint=endpoint, methods=["GET", "POST", "DELETE"]))
    return endpoint
