"""E2B's control plane (JSON, `X-API-KEY`) over the sandbox resource: create (a template
is a torpor image, or a snapshot id: a sandbox from that snapshot), list, get, kill,
pause, connect (resume: 200 when it was running, 201 when resumed), timeout, snapshots.

E2B's lifecycle maps onto the resource's: `timeout` is the idle timeout (torpor counts
it from the last call, not from the create; default 300 s), `autoPause` (the SDK's
`lifecycle={"on_timeout": "pause"}`) is on_timeout pause (else kill), `autoResume`
(`"auto_resume": True`) is auto_resume. A killed sandbox is not found, as on E2B. A
tenant over a storage quota gets 413 (stored bytes) or 429 (snapshots) for a create or a
snapshot (E2B answers 429 when a team is over its limits); a pause is never refused.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from torpor.api.deps import ApiState
from torpor.api.e2b.common import (
    E2BError,
    api_key,
    detail_json,
    principal,
    sandbox_json,
    tenant_of,
)
from torpor.api.tokens import Principal
from torpor.runtime.sandboxes import (
    DEFAULT_TIMEOUT,
    AlreadyPaused,
    HeldElsewhere,
    InvalidSandbox,
    LifecycleFailed,
    NoSuchImage,
    NoSuchSandbox,
    NoSuchSnapshot,
    SandboxKilled,
    SandboxRow,
    SandboxStateError,
    TenantOverQuota,
)

log = logging.getLogger("torpor.e2b")
Handler = Callable[[Request], Awaitable[Response]]
MAX_TIMEOUT = 30 * 86_400


def _mapped(e: Exception) -> E2BError:
    if isinstance(e, E2BError):
        return e
    if isinstance(e, (NoSuchSandbox, NoSuchSnapshot, NoSuchImage, SandboxKilled)):
        return E2BError(404, str(e))
    if isinstance(e, InvalidSandbox):
        return E2BError(400, str(e))
    if isinstance(e, TenantOverQuota):  # the SDK: 429 a RateLimitException, 413 a
        return E2BError(e.status, str(e))  # SandboxException, each with the message
    if isinstance(e, (AlreadyPaused, HeldElsewhere, SandboxStateError)):
        return E2BError(409, str(e))
    if isinstance(e, LifecycleFailed):
        return E2BError(500, str(e))
    log.exception("E2B control plane: unexpected error")
    return E2BError(500, f"internal error ({type(e).__name__})")


def route(api: ApiState, fn: Callable[[Request, Principal], Any]) -> Handler:
    """An endpoint: the caller checked, fn run in a thread, errors in E2B's shape."""

    async def endpoint(request: Request) -> Response:
        try:
            p = principal(api, api_key(request), "X-API-KEY")
            body: dict[str, Any] = {}
            if request.method == "POST":
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw.strip() else {}
                except ValueError:
                    raise E2BError(400, "malformed JSON in the request body") from None
                if not isinstance(body, dict):
                    raise E2BError(400, "the request body is a JSON object")
            request.state.body = body
            out = await run_in_threadpool(fn, request, p)
        except Exception as e:  # noqa: BLE001 - each kind has its answer (_mapped)
            return _mapped(e).response()
        return out if isinstance(out, Response) else JSONResponse(out)

    return endpoint


def _timeout(body: dict[str, Any]) -> float | None:
    t = body.get("timeout")
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= MAX_TIMEOUT:
        raise E2BError(400, f"timeout: seconds between 1 and {MAX_TIMEOUT}")
    return float(t)


def _live_row(api: ApiState, p: Principal, sid: str) -> SandboxRow:
    row = api.runtime.sandboxes.get(sid, tenant=tenant_of(p))
    if row.state == "killed":
        raise E2BError(404, f"sandbox {sid} not found (it was killed)")
    return row


def _create(api: ApiState, request: Request, p: Principal) -> Response:
    body = request.state.body
    template = body.get("templateID") or "base"
    if not isinstance(template, str):
        raise E2BError(400, "templateID: a torpor image, or a snapshot id")
    auto_resume = body.get("autoResume")
    resume = bool(auto_resume.get("enabled")) if isinstance(auto_resume, dict) else False
    env = body.get("envVars") or {}
    metadata = body.get("metadata") or {}
    if not isinstance(env, dict) or not isinstance(metadata, dict):
        raise E2BError(400, "envVars and metadata are objects of strings")
    svc, most = api.runtime.sandboxes, api.limits.sandboxes_per_tenant
    if svc.records.running_count(p.tenant) >= most:
        raise E2BError(429, f"tenant has {most} running sandboxes, the limit")
    try:
        snapshot = svc.snapshot_info(template, tenant=tenant_of(p)).id
    except NoSuchSnapshot:
        snapshot = None
    timeout = _timeout(body)
    row = svc.create(template if snapshot is None else "base", snapshot=snapshot,
                     tenant=p.tenant, timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                     on_timeout="pause" if body.get("autoPause") else "kill",
                     auto_resume=resume,
                     metadata={str(k): str(v) for k, v in metadata.items()},
                     env={str(k): str(v) for k, v in env.items()})  # fmt: skip
    return JSONResponse(sandbox_json(row, api_key(request)), status_code=201)


def _listing(api: ApiState, request: Request, p: Principal) -> Response:
    q = request.query_params
    states = {s for s in q.get("state", "running,paused").split(",") if s}
    wanted = dict(parse_qsl(unquote(q["metadata"]))) if q.get("metadata") else {}
    rows = [r for r in api.runtime.sandboxes.list(tenant=tenant_of(p))
            if r.state in states - {"killed"}
            and all(r.metadata.get(k) == v for k, v in wanted.items())]  # fmt: skip
    if q.get("template"):
        rows = [r for r in rows if r.image == q["template"]]
    if q.get("order") == "desc":
        rows.reverse()
    try:
        limit = max(1, min(int(q.get("limit", 100)), 1000))
        start = int(q.get("nextToken") or 0)
    except ValueError:
        raise E2BError(400, "limit and nextToken are numbers") from None
    page = rows[start:start + limit]
    out = JSONResponse([detail_json(r, api.runtime.sandboxes.last_activity(r)) for r in page])
    if start + limit < len(rows):
        out.headers["X-Next-Token"] = str(start + limit)
    return out


def _get(api: ApiState, request: Request, p: Principal) -> Any:
    row = _live_row(api, p, request.path_params["sid"])
    out = detail_json(row, api.runtime.sandboxes.last_activity(row))
    if (key := api_key(request)) is not None and api.auth:
        out["envdAccessToken"] = key
    return out


def _kill(api: ApiState, request: Request, p: Principal) -> Response:
    row = _live_row(api, p, request.path_params["sid"])
    api.runtime.sandboxes.kill(row.id, tenant=tenant_of(p))
    return Response(status_code=204)


def _pause(api: ApiState, request: Request, p: Principal) -> Response:
    row = _live_row(api, p, request.path_params["sid"])
    api.runtime.sandboxes.pause(row.id, tenant=tenant_of(p))
    return Response(status_code=204)


def _connect(api: ApiState, request: Request, p: Principal) -> Response:
    row = _live_row(api, p, request.path_params["sid"])
    timeout = _timeout(request.state.body)
    row, resumed = api.runtime.sandboxes.resume(row.id, tenant=tenant_of(p))
    if timeout is not None:
        row = api.runtime.sandboxes.configure(row.id, tenant=tenant_of(p), timeout=timeout)
    else:
        api.runtime.sandboxes.activity.touch(row.id)
    return JSONResponse(sandbox_json(row, api_key(request)),
                        status_code=201 if resumed else 200)  # fmt: skip


def _timeout_of(api: ApiState, request: Request, p: Principal) -> Response:
    row = _live_row(api, p, request.path_params["sid"])
    t = _timeout(request.state.body)
    if t is None:
        raise E2BError(400, "timeout: seconds between 1 and 2592000")
    api.runtime.sandboxes.configure(row.id, tenant=tenant_of(p), timeout=t)
    return Response(status_code=204)


def _snapshot(api: ApiState, request: Request, p: Principal) -> Response:
    row = _live_row(api, p, request.path_params["sid"])
    name = request.state.body.get("name")
    if name is not None and not isinstance(name, str):
        raise E2BError(400, "name: a string")
    snap = api.runtime.sandboxes.snapshot(row.id, name=name or None, tenant=tenant_of(p))
    return JSONResponse({"snapshotID": snap.id, "names": [snap.name]}, status_code=201)


def routes(api: ApiState) -> list[Route]:
    def r(path: str, fn: Callable[[ApiState, Request, Principal], Any], method: str) -> Route:
        return Route(path, route(api, functools.partial(fn, api)), methods=[method])

    return [
        r("/v2/sandboxes", _create, "POST"),
        r("/sandboxes", _create, "POST"),
        r("/v2/sandboxes", _listing, "GET"),
        r("/sandboxes", _listing, "GET"),
        r("/sandboxes/{sid}", _get, "GET"),
        r("/sandboxes/{sid}", _kill, "DELETE"),
        r("/sandboxes/{sid}/pause", _pause, "POST"),
        r("/v2/sandboxes/{sid}/connect", _connect, "POST"),
        r("/sandboxes/{sid}/connect", _connect, "POST"),
        r("/sandboxes/{sid}/resume", _connect, "POST"),
        r("/sandboxes/{sid}/timeout", _timeout_of, "POST"),
        r("/sandboxes/{sid}/snapshots", _snapshot, "POST"),
    ]
