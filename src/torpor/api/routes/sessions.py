"""The /v1/sessions routes: create, list and get sessions, cancel a turn, close a session,
and fork one from a snapshot; /v1/usage, the stored bytes of a tenant's sessions and
sandboxes and its quotas. Tenants' limits on open sessions (429) and storage quotas (413,
429: runtime/quotas.py) apply here."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response

from torpor.api.deps import Api, ApiState, Drive, Limits, auth_errors
from torpor.api.routes.log import snapshots_of
from torpor.api.schemas import (
    ACCEPTED,
    API_VERSION,
    ApiError,
    ForkIn,
    SessionId,
    SessionIn,
    StateName,
    errors,
)
from torpor.api.tokens import Principal
from torpor.runtime import quotas
from torpor.runtime.storage import recorded_usage
from torpor.runtime.types import InvalidSession, Policy, SessionError

CANCEL_WAIT = 10.0  # seconds a cancel or close request waits for the turn to stop (then 202)


def _check_script(scripts: Path | None, path: str) -> None:
    if scripts is None:
        raise ApiError(422, "script: models are refused by this server: start it "
                            "with `torpor serve --scripts DIR` to allow those in DIR")
    if not Path(path).resolve().is_relative_to(scripts.resolve()):
        raise ApiError(422, f"script {path} is outside the directory this server takes "
                            f"scripts from ({scripts})")  # fmt: skip


def _check_room(api: ApiState, tenant: str | None) -> None:
    lim = api.limits
    if api.tokens.open_sessions(tenant) >= lim.sessions_per_tenant:
        raise ApiError(429, f"tenant has {lim.sessions_per_tenant} open sessions, the "
                            "limit: close some first")  # fmt: skip


def _check_quota(api: ApiState, tenant: str | None) -> None:
    """A tenant over a storage quota (its own, else the server's) makes no new sessions or
    forks: 413 (stored bytes) or 429 (snapshots), naming its largest sessions and
    sandboxes (what to close and delete)."""
    db = api.runtime.db
    over = quotas.over_quota(db, tenant, api.runtime.quota)
    if over is not None:
        raise ApiError(over.status, quotas.refusal(over, "sessions or forks", db, tenant))


def _cancel_or_close(api: ApiState, sid: str, p: Principal, close: bool,
                     response: Response) -> Any:  # fmt: skip
    row = api.row_of(p, sid)
    if row.state != "closed":
        ses = api.runtime.get_session(sid)
        row = ses.cancel(close=close, wait=CANCEL_WAIT)
    api.notifier.notify(sid)
    if row.cancel is not None and row.state != "closed":
        response.status_code = 202  # its worker acts on it at the turn's next safe point
    return api.session_json(row)


def router(auth: bool, limits: Limits) -> APIRouter:
    r = APIRouter(prefix=f"/{API_VERSION}")
    AUTH = auth_errors(auth)

    @r.post("/sessions", status_code=201, tags=["sessions"],
            responses=errors(*AUTH, 413, 415, 422, 429))  # fmt: skip
    def create_session(body: SessionIn, p: Drive, api: Api) -> dict[str, Any]:
        """Create a session (image, model, system prompt, tools, policy)."""
        provider, _, name = body.model.partition(":")
        if provider.strip().lower() == "script":  # the rest of the spec: Runtime.validate
            _check_script(api.scripts, name)
        _check_room(api, p.tenant)
        _check_quota(api, p.tenant)
        try:
            s = api.runtime.create_session(
                image=body.image, model=body.model, system=body.system, tools=body.tools,
                policy=Policy(**body.policy.model_dump()) if body.policy else None,
                tenant=p.tenant,
            )  # fmt: skip
        except InvalidSession as e:  # model, image or tool: nothing a turn could mend
            raise ApiError(422, str(e)) from None
        return api.session_json(s.info())

    @r.get("/sessions", tags=["sessions"], responses=errors(*AUTH, 422))
    def list_sessions(
        p: Drive,
        api: Api,
        state: StateName | None = None,
        limit: Annotated[int, Query(ge=1, le=limits.max_page)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Sessions of the token's tenant, oldest first, a page at a time."""
        tenant = None if p.all_tenants else p.tenant
        rows = api.runtime.db.list(state.value if state else None, tenant)
        page = rows[offset:offset + limit]
        nxt = offset + limit if offset + limit < len(rows) else None
        return {"sessions": [r.to_json() for r in page], "total": len(rows),
                "next_offset": nxt}  # fmt: skip

    @r.get("/sessions/{sid}", tags=["sessions"], responses=errors(*AUTH, 404, 422))
    def get_session(sid: SessionId, p: Drive, api: Api) -> dict[str, Any]:
        """A session; `storage`: its snapshots' stored bytes as the last scheduled gc
        counted them (logical, stored, exclusive, shared; null before the first count)."""
        d = api.session_json(api.row_of(p, sid))
        found = recorded_usage(api.runtime.db, "session", name=sid)
        d["storage"] = found[0] if found else None
        return d

    @r.get("/usage", tags=["sessions"], responses=errors(*AUTH, 422))
    def usage(p: Drive, api: Api,
              limit: Annotated[int, Query(ge=1, le=limits.max_page)] = 50,
              ) -> dict[str, Any]:  # fmt: skip
        """Stored bytes of the token's tenant (every tenant's with the admin scope), and
        of its `limit` largest sessions and sandboxes, as the last scheduled gc counted
        them: logical (what the snapshots restore to), stored (the compressed chunks they
        name), exclusive (what deleting them would free), shared (with others). `quotas`:
        each tenant's limits in effect (its own, else the server's), what it uses now
        (snapshots counted now; stored bytes: the last count plus what its snapshots
        stored since, an upper bound) and what is left."""
        tenant = None if p.all_tenants else (p.tenant or "")
        db = api.runtime.db
        names = [tenant] if tenant is not None else quotas.known_tenants(db)
        return {"tenants": recorded_usage(db, "tenant", name=tenant),
                "sessions": recorded_usage(db, "session", tenant=tenant)[:limit],
                "sandboxes": recorded_usage(db, "sandbox", tenant=tenant)[:limit],
                "quotas": [quotas.quota_json(db, t, api.runtime.quota) for t in names]}

    @r.post("/sessions/{sid}/cancel", tags=["sessions"],
            responses={202: ACCEPTED, **errors(*AUTH, 404, 415, 422)})  # fmt: skip
    def cancel_session(sid: SessionId, p: Drive, response: Response,
                       api: Api) -> dict[str, Any]:  # fmt: skip
        """Stop the running turn at its next safe point: the tool call running then is
        stopped, calls not yet run are skipped, the sandbox is snapshotted and the session
        waits. 200 when done (or there was nothing to cancel), 202 when the worker has not
        reached a safe point within a few seconds (the cancel stays asked for)."""
        return _cancel_or_close(api, sid, p, False, response)

    @r.post("/sessions/{sid}/close", tags=["sessions"],
            responses={202: ACCEPTED, **errors(*AUTH, 404, 415, 422)})  # fmt: skip
    def close_session(sid: SessionId, p: Drive, response: Response,
                      api: Api) -> dict[str, Any]:  # fmt: skip
        """Close a session: its log stays, it takes no more messages. A running turn is
        cancelled first; 202 if that has not happened within a few seconds (the session
        is closed at the turn's next safe point)."""
        return _cancel_or_close(api, sid, p, True, response)

    @r.post("/sessions/{sid}/fork", status_code=201, tags=["sessions"],
            responses=errors(*AUTH, 404, 409, 413, 415, 422, 429))  # fmt: skip
    def fork_session(sid: SessionId, p: Drive, api: Api,
                     body: Annotated[ForkIn | None, Body()] = None) -> dict[str, Any]:  # fmt: skip
        """A new session from one of this session's snapshots (default: the latest)."""
        row = api.row_of(p, sid)
        snap = body.snapshot if body else None
        if snap is not None and snap not in {s["snapshot"] for s in snapshots_of(api, sid)}:
            raise ApiError(404, f"no such snapshot in session {sid}: {snap}")
        _check_room(api, row.tenant)
        _check_quota(api, row.tenant)
        try:
            child = api.runtime.get_session(sid).fork(snap)
        except SessionError as e:
            raise ApiError(409, str(e)) from None
        return api.session_json(child.info())

    return r
