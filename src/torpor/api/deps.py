"""What the API's route modules share at request time: the app's state (`ApiState`, kept
in `app.state.api`, reached through the `Api` dependency), the token check and scope
dependencies (`Drive`, `Exec`, `SandboxUser`, `DriveGet`), and the session a request
names (`row_of`: another tenant's is 404, as if absent)."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request

from torpor.api.events import Notifier
from torpor.api.metrics import Metrics
from torpor.api.schemas import ApiError
from torpor.api.tokens import Principal, TokenStore
from torpor.context import UnknownSession
from torpor.runtime.core import Runtime
from torpor.runtime.db import SessionNotFound, SessionRow


@dataclass
class Limits:
    """What one request or one tenant may use; exceeding a limit gives 413 or 429."""

    max_body_bytes: int = 1 << 20  # request body (413)
    max_message_chars: int = 100_000  # one user message (413)
    sessions_per_tenant: int = 1000  # open (not closed) sessions (429)
    turns_per_tenant: int = 8  # sessions with a turn queued or running at once (429)
    max_page: int = 500  # entries or sessions per page
    file_bytes: int = 1 << 20  # sandbox file read (a session's)
    sandboxes_per_tenant: int = 100  # running sandboxes of the sandbox resource (429)
    upload_bytes: int = 256 << 20  # a file written into a sandbox (413)


@dataclass
class ApiState:
    """One app's runtime, stores and settings (create_app's arguments), and what its
    routes and worker threads share."""

    runtime: Runtime
    tokens: TokenStore
    limits: Limits
    metrics: Metrics
    notifier: Notifier
    auth: bool  # require tokens (off: one anonymous tenant that sees everything)
    scripts: Path | None  # the directory `script:` models may come from (None: refused)
    poll: float  # how often event streams look for entries written by other processes
    workers: int  # threads running turns in this process
    wake: threading.Event = field(default_factory=threading.Event)  # a post: claim it now
    stop: threading.Event = field(default_factory=threading.Event)  # the app is ending
    threads: list[threading.Thread] = field(default_factory=list)  # the worker threads

    def on_event(self, ev: dict[str, Any]) -> None:
        """A worker's event: count it, and wake the session's event streams."""
        self.metrics.on_event(ev)
        self.notifier.notify(ev.get("session", ""))

    def row_of(self, p: Principal, sid: str) -> SessionRow:
        """The session `sid` if `p` may see it; else 404, as if it did not exist."""
        try:
            row = self.runtime.db.get(sid)
        except SessionNotFound:
            row = None
        if row is None or not (p.all_tenants or row.tenant == p.tenant):
            raise ApiError(404, f"no such session: {sid}")
        return row

    def session_head(self, sid: str) -> int:
        try:
            return self.runtime.log.head_seq(sid)
        except UnknownSession:
            return 0

    def session_json(self, row: SessionRow) -> dict[str, Any]:
        d = row.to_json()
        d["head_seq"] = self.session_head(row.id)
        d["busy"] = bool(row.lease_owner and (row.lease_until or 0) > time.time())
        return d


async def api_state(request: Request) -> ApiState:
    # async: a dependency without parameters need not take a thread of the pool
    state: ApiState = request.app.state.api
    return state


Api = Annotated[ApiState, Depends(api_state)]


# -- auth --------------------------------------------------------------------------

def principal(request: Request,
              authorization: Annotated[str | None, Header()] = None) -> Principal:  # fmt: skip
    """Who sends the request, from its bearer token (401 without a valid one)."""
    api: ApiState = request.app.state.api
    if not api.auth:
        return Principal(tenant=None)
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "missing token: send Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    p = api.tokens.check(authorization[7:].strip())
    if p is None:
        raise ApiError(401, "invalid or revoked token",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    return p


def principal_or_query(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(description="The token, for clients that cannot "
                                       "send headers (a browser's EventSource)")] = None,
) -> Principal:  # fmt: skip
    return principal(request, authorization or (f"Bearer {token}" if token else None))


def scope(name: str, via: Callable[..., Principal] = principal
          ) -> Callable[[Principal], Principal]:  # fmt: skip
    def dep(p: Annotated[Principal, Depends(via)]) -> Principal:
        if name not in p.scopes:
            raise ApiError(403, f"this token lacks the {name!r} scope")
        return p

    return dep


Drive = Annotated[Principal, Depends(scope("drive"))]
Exec = Annotated[Principal, Depends(scope("exec"))]
SandboxUser = Annotated[Principal, Depends(scope("sandboxes"))]
DriveGet = Annotated[Principal, Depends(scope("drive", principal_or_query))]  # ?token=


def auth_errors(auth: bool) -> tuple[int, ...]:
    """What Drive, Exec and DriveGet can answer: 401 without a valid token, 403 without
    the scope (nothing when auth is off)."""
    return (401, 403) if auth else ()
