"""The /v1/sandboxes routes of the sandbox resource's lifecycle (`sandboxes` scope): create
(from an image or a snapshot), list, get, change the timeout settings, pause, resume,
snapshots, fork and kill. Another tenant's sandbox or snapshot is 404, as if absent.
Commands, processes and files are in sandbox_io.py."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response

from torpor.api.deps import Api, ApiState, SandboxUser, auth_errors
from torpor.api.sandbox_calls import answering, sandbox_view, snapshot_view, tenant_of
from torpor.api.schemas import (
    API_VERSION,
    ApiError,
    SandboxForkIn,
    SandboxId,
    SandboxIn,
    SandboxListOut,
    SandboxOut,
    SandboxSettingsIn,
    SandboxStateName,
    SnapshotIn,
    SnapshotListOut,
    SnapshotOut,
    errors,
)
from torpor.api.tokens import Principal


def _check_room(api: ApiState, p: Principal) -> None:
    most = api.limits.sandboxes_per_tenant
    if api.runtime.sandboxes.records.running_count(p.tenant) >= most:
        raise ApiError(429, f"tenant has {most} running sandboxes, the limit: pause or kill "
                            "some first")  # fmt: skip


def view(api: ApiState, row: Any, resumed: bool | None = None) -> dict[str, Any]:
    return sandbox_view(row, last_activity=api.runtime.sandboxes.last_activity(row),
                        resumed=resumed)  # fmt: skip


def router(auth: bool) -> APIRouter:
    r = APIRouter(prefix=f"/{API_VERSION}", tags=["sandboxes"])
    AUTH = auth_errors(auth)

    @r.post("/sandboxes", status_code=201, response_model=SandboxOut,
            responses=errors(*AUTH, 404, 409, 415, 422, 429))  # fmt: skip
    def create_sandbox(body: SandboxIn, p: SandboxUser, api: Api) -> dict[str, Any]:
        """Start a sandbox from an image, or from a snapshot of one of the tenant's
        sandboxes (404 if there is no such snapshot). 413 or 429 when the tenant is over
        a storage quota (the message says what to delete)."""
        _check_room(api, p)
        with answering():
            row = api.runtime.sandboxes.create(
                body.image, snapshot=body.snapshot, tenant=p.tenant, timeout=body.timeout,
                on_timeout=body.on_timeout, auto_resume=body.auto_resume,
                metadata=body.metadata, env=body.env)  # fmt: skip
        return view(api, row)

    @r.get("/sandboxes", response_model=SandboxListOut, responses=errors(*AUTH, 422))
    def list_sandboxes(
        p: SandboxUser,
        api: Api,
        state: SandboxStateName | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """The tenant's sandboxes, oldest first, a page at a time (killed ones too unless
        a state is asked for)."""
        rows = api.runtime.sandboxes.list(tenant=tenant_of(p),
                                          state=state.value if state else None)  # fmt: skip
        page = rows[offset:offset + limit]
        return {"sandboxes": [view(api, row) for row in page], "total": len(rows),
                "next_offset": offset + limit if offset + limit < len(rows) else None}

    @r.get("/sandboxes/{sid}", response_model=SandboxOut, responses=errors(*AUTH, 404, 422))
    def get_sandbox(sid: SandboxId, p: SandboxUser, api: Api) -> dict[str, Any]:
        with answering():
            return view(api, api.runtime.sandboxes.get(sid, tenant=tenant_of(p)))

    @r.patch("/sandboxes/{sid}", response_model=SandboxOut,
             responses=errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def configure_sandbox(sid: SandboxId, body: SandboxSettingsIn, p: SandboxUser,
                          api: Api) -> dict[str, Any]:  # fmt: skip
        """Change its idle timeout (null: never), what happens then (pause or kill),
        auto_resume or metadata: the fields given. The idle time starts again."""
        given = {k: getattr(body, k) for k in body.model_fields_set
                 if k == "timeout" or getattr(body, k) is not None}
        with answering():
            row = api.runtime.sandboxes.configure(sid, tenant=tenant_of(p), **given)
        return view(api, row)

    @r.delete("/sandboxes/{sid}", response_model=SandboxOut,
              responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def kill_sandbox(sid: SandboxId, p: SandboxUser, api: Api) -> dict[str, Any]:
        """Kill it: its processes and memory go, and the snapshot a pause left; its named
        snapshots stay. Its record stays (state `killed`)."""
        with answering():
            return view(api, api.runtime.sandboxes.kill(sid, tenant=tenant_of(p)))

    @r.post("/sandboxes/{sid}/pause", response_model=SandboxOut,
            responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def pause_sandbox(sid: SandboxId, p: SandboxUser, api: Api) -> dict[str, Any]:
        """Checkpoint it whole into the snapshot store and stop it: it holds no memory
        while paused. Returns once the snapshot is stored (any machine can resume it).
        409 if it is paused already. Never refused over a storage quota (its state would
        be lost): its `note` says the tenant is over instead."""
        with answering():
            return view(api, api.runtime.sandboxes.pause(sid, tenant=tenant_of(p)))

    @r.post("/sandboxes/{sid}/resume", response_model=SandboxOut,
            responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def resume_sandbox(sid: SandboxId, p: SandboxUser, api: Api) -> dict[str, Any]:
        """Restore it from its pause snapshot, every process where it was (`resumed`:
        false if it was running already)."""
        with answering():
            row, resumed = api.runtime.sandboxes.resume(sid, tenant=tenant_of(p))
        return view(api, row, resumed=resumed)

    @r.post("/sandboxes/{sid}/snapshots", status_code=201, response_model=SnapshotOut,
            responses=errors(*AUTH, 404, 409, 415, 422, 429))  # fmt: skip
    def snapshot_sandbox(sid: SandboxId, p: SandboxUser, api: Api,
                         body: Annotated[SnapshotIn | None, Body()] = None
                         ) -> dict[str, Any]:  # fmt: skip
        """Checkpoint it whole and keep it running: a snapshot new sandboxes can start
        from (POST /v1/sandboxes with `snapshot`, or a fork). 413 or 429 when the tenant
        is over a storage quota (the message says what to delete)."""
        with answering():
            snap = api.runtime.sandboxes.snapshot(sid, name=body.name if body else None,
                                                  tenant=tenant_of(p))  # fmt: skip
        return snapshot_view(snap)

    @r.get("/sandboxes/{sid}/snapshots", response_model=SnapshotListOut,
           responses=errors(*AUTH, 404, 422))  # fmt: skip
    def list_snapshots(sid: SandboxId, p: SandboxUser, api: Api) -> dict[str, Any]:
        with answering():
            snaps = api.runtime.sandboxes.snapshots(sid, tenant=tenant_of(p))
        return {"snapshots": [snapshot_view(s) for s in snaps]}

    @r.delete("/sandboxes/{sid}/snapshots/{snap}", status_code=204, response_class=Response,
              responses=errors(*AUTH, 404, 409, 422))  # fmt: skip
    def delete_snapshot(sid: SandboxId, snap: SandboxId, p: SandboxUser, api: Api) -> Response:
        """Delete one of its snapshots (409 for the one a paused sandbox resumes from)."""
        with answering():
            api.runtime.sandboxes.remove_snapshot(sid, snap, tenant=tenant_of(p))
        return Response(status_code=204)

    @r.post("/sandboxes/{sid}/fork", status_code=201, response_model=SandboxOut,
            responses=errors(*AUTH, 404, 409, 415, 422, 429))  # fmt: skip
    def fork_sandbox(sid: SandboxId, p: SandboxUser, api: Api,
                     body: Annotated[SandboxForkIn | None, Body()] = None
                     ) -> dict[str, Any]:  # fmt: skip
        """A new sandbox with its settings, from one of its snapshots (default: one taken
        now; it runs on)."""
        _check_room(api, p)
        with answering():
            row = api.runtime.sandboxes.fork(sid, snapshot=body.snapshot if body else None,
                                             tenant=tenant_of(p))  # fmt: skip
        return view(api, row)

    return r
