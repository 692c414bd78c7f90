"""The HTTP API: `create_app(runtime)` gives a FastAPI app serving /v1 (OpenAPI at
/openapi.json, docs at /docs), with worker threads that run the turns it queues.

Errors are JSON objects with a `message` (and `status`); no request is answered with a
stack trace. Every session belongs to a tenant; a token sees its own tenant's sessions
only (others' are 404, as if absent), unless it has the `admin` scope.
"""


import asyncio
import base64
import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match

from torpor.agent.models import PROVIDERS
from torpor.api.dashboard import add_dashboard
from torpor.api.events import Notifier, format_sse, is_wait_point
from torpor.api.metrics import Metrics
from torpor.api.tokens import Principal, TokenStore
from torpor.context import StaleEpoch, UnknownSession, to_anthropic, to_openai
from torpor.runtime.core import InvalidSession, LeaseLost, Policy, Runtime, SessionError
from torpor.runtime.db import STATES, SessionClosedError, SessionNotFound, SessionRow
from torpor.sandbox.engine import SandboxError

log = logging.getLogger("torpor.api")

API_VERSION = "v1"
CANCEL_WAIT = 10.0  # seconds a cancel or close request waits for the turn to stop (then 202)
OUTPUT_LIMIT = 64 * 1024  # bytes of stdout/stderr (exec) or file content returned


@dataclass
class Limits:
    """What one request or one tenant may use; exceeding a limit gives 413 or 429."""

    max_body_bytes: int = 1 << 20  # request body (413)
    max_message_chars: int = 100_000  # one user message (413)
    sessions_per_tenant: int = 1000  # open (not closed) sessions (429)
    turns_per_tenant: int = 8  # sessions with a turn queued or running at once (429)
    max_page: int = 500  # entries or sessions per page
    file_bytes: int = 1 << 20  # sandbox file read


class ApiError(HTTPException):
    """An HTTP error with a message for the client."""


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"message": message, "status": status, **extra}, status_code=status)


# -- error bodies: what /openapi.json says each operation can answer --------------------

class ErrorOut(BaseModel):
    """Every error answer (the body of `_error`): `message` says what is wrong and often
    how to fix it, `status` repeats the HTTP status; some add fields (`errors`: each
    problem of an invalid request)."""

    model_config = ConfigDict(extra="allow")
    message: str = Field(..., min_length=1)
    status: int = Field(..., ge=400, le=599)


_ERROR_WHY: dict[int, str] = {
    400: "Malformed request: the JSON body, Content-Length or a header",
    401: "No token, or an invalid or revoked one (WWW-Authenticate: Bearer)",
    403: "The token lacks the scope this needs",
    404: "No such session (or another tenant's), or nothing of that name in it",
    409: "Not possible in the session's present state",
    413: "The request body, or a message, is over the server's limit",
    415: "The request body is not JSON",
    422: "Invalid request: the message (and `errors`) say what is wrong",
    429: "Over a tenant's limit: close sessions, or retry later (Retry-After)",
    500: "Internal error (the server logs it)",
    503: "Not ready",
}
# Any request can get these whatever its route: from _Guard (413 for a body over the
# limit; 400 for a malformed Content-Length, unless the HTTP server refused it already)
# and from the handler of unexpected exceptions (500).
_ANY_ROUTE = (400, 413, 500)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` declaring these error statuses and _ANY_ROUTE's, each with
    the ErrorOut body (a route's own 422 replaces FastAPI's default one, whose body is
    not ours)."""
    return {s: {"model": ErrorOut, "description": _ERROR_WHY[s]}
            for s in sorted({*statuses, *_ANY_ROUTE})}  # fmt: skip


# close and cancel: the turn has not stopped within CANCEL_WAIT (the body is the session)
_ACCEPTED: dict[str, Any] = {
    "model": dict[str, Any],
    "description": "Asked for: the worker running the turn stops it at its next safe point "
                   "(the session's `cancel` is set until then)"}  # fmt: skip


# -- forms the server checks, as patterns in the schema ---------------------------------

def _any_case(word: str) -> str:
    """`word` as a regex that ignores case: JSON Schema patterns (ECMA-262) have no flags."""
    assert word.isalnum(), word
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


# provider:name as open_model reads it: a provider it knows (in any case), a colon, a name.
# The name is printable ASCII, without a space at either end. The classes are spelled out
# because `.`, `\s` and `\S` differ between the regex engines that read these patterns
# (Python's, pydantic's, and JSON Schema's ECMA-262 in clients).
MODEL_PATTERN = (rf"^(?:{'|'.join(_any_case(p) for p in PROVIDERS)}):"
                 r"[!-~](?:[ -~]*[!-~])?$")  # fmt: skip
_MODEL_FORM = re.compile(MODEL_PATTERN)
# An image name, reference or digest prefix (ImageStore.get): no spaces, no control
# characters; printable ASCII, as image references are.
IMAGE_PATTERN = r"^[!-~]+$"
# A log seq as the events stream's Last-Event-ID header (checked in the handler: 400);
# at most 18 digits, so that every value it allows is a 64-bit integer.
SEQ_PATTERN = r"^[0-9]{1,18}$"
_SEQ_FORM = re.compile(SEQ_PATTERN)
MAX_SEQ = (1 << 63) - 1  # log seqs are 64-bit integers in the databases


def _model_form(spec: str) -> str:
    # the pattern's check with a message that says how to mend it (pydantic's own names
    # only the pattern)
    if not _MODEL_FORM.fullmatch(spec):
        raise ValueError(f"model {spec!r} should look like provider:name, e.g. "
                         f"openai:gpt-4o-mini (providers: {', '.join(PROVIDERS)})")  # fmt: skip
    return spec


# -- request bodies --------------------------------------------------------------------

class _Body(BaseModel):
    # strict: a value of another JSON type than the schema's is refused (lax pydantic
    # takes `false` for an integer 0, "1" for 1), so the schema is exactly what is accepted
    model_config = ConfigDict(extra="forbid", strict=True)


def _integral(v: Any) -> Any:
    # JSON Schema's integer is a number without a fraction: 3.0 is one (strict pydantic
    # refuses it), `true` is not
    return int(v) if isinstance(v, float) and v.is_integer() else v


JsonInt = Annotated[int, BeforeValidator(_integral)]


class PolicyIn(_Body):
    snapshot_every_calls: JsonInt = Field(0, ge=0, le=1_000_000)
    snapshot_every_seconds: float = Field(0.0, ge=0, le=86_400)
    max_attempts: JsonInt = Field(8, ge=1, le=1000)
    backoff_base: float = Field(1.0, ge=0, le=3600)
    backoff_max: float = Field(300.0, ge=0, le=86_400)
    keep_snapshots: JsonInt = Field(0, ge=0, le=1_000_000,
                                    description="Keep only the newest N snapshots (0: all).")


class SessionIn(_Body):
    model: Annotated[str, AfterValidator(_model_form)] = Field(
        ..., min_length=3, max_length=1000, json_schema_extra={"pattern": MODEL_PATTERN},
        description="provider:name, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5 "
                    "or script:PATH (when the server takes scripts); the provider must be "
                    "configured on the server (a key or a base URL)")  # fmt: skip
    image: str = Field("base", min_length=1, max_length=200, pattern=IMAGE_PATTERN,
                       description="An image of the server's (`torpor images`): a name or "
                                   "a digest prefix")  # fmt: skip
    system: str | None = Field(None, max_length=200_000)
    tools: list[Annotated[str, Field(max_length=200)]] | None = Field(None, max_length=200)
    policy: PolicyIn | None = None


class MessageIn(_Body):
    text: str = Field(..., min_length=1, description="The user's message.")


class ForkIn(_Body):
    snapshot: str | None = Field(None, max_length=200,
                                 description="Snapshot id (default: the latest).")


class ExecIn(_Body):
    argv: list[Annotated[str, Field(max_length=100_000)]] = Field(..., min_length=1,
                                                                  max_length=1000)
    timeout: float = Field(30.0, gt=0, le=600)
    workdir: str | None = Field(None, max_length=4096)


class StateName(StrEnum):
    created = "created"
    running = "running"
    waiting = "waiting"
    retrying = "retrying"
    recovering = "recovering"
    failed = "failed"
    closed = "closed"


assert {s.value for s in StateName} == set(STATES)

SessionId = Annotated[str, Field(min_length=1, max_length=200)]


# -- the app ---------------------------------------------------------------------------

class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes")


class _Guard:
    """Pure ASGI middleware: body size (413), JSON content type (415), status counts."""

    def __init__(self, app: Any, limits: Limits, metrics: Metrics) -> None:
        self.app, self.limits, self.metrics = app, limits, metrics

    async def _send_error(self, send: Callable[..., Awaitable[None]], status: int,
                          message: str) -> None:  # fmt: skip
        resp = _error(status, message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(resp.body)).encode())]})
        await send({"type": "http.response.body", "body": resp.body})
        self.metrics.requests.labels(f"{status // 100}xx").inc()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.limits.max_body_bytes
        length = headers.get("content-length")
        n = 0
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await self._send_error(send, 400, "invalid Content-Length")
                return
            if n > limit:
                await self._send_error(send, 413, f"request body of {n} bytes is over the "
                                                  f"limit of {limit} bytes")  # fmt: skip
                return
        has_body = n > 0 or "transfer-encoding" in headers
        if has_body and scope["method"] in ("POST", "PUT", "PATCH") and \
                scope["path"].startswith(f"/{API_VERSION}/"):  # fmt: skip
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json" and not ctype.endswith("+json"):
                await self._send_error(send, 415, f"request bodies are JSON: Content-Type "
                                                  f"must be application/json, not "
                                                  f"{ctype or 'missing'!r}")  # fmt: skip
                return
        received = 0

        async def guarded() -> Any:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return msg

        async def counted(msg: Any) -> None:
            if msg["type"] == "http.response.start":
                self.metrics.requests.labels(f"{msg['status'] // 100}xx").inc()
            await send(msg)

        await self.app(scope, guarded, counted)


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
    tokens = TokenStore(rt.db)
    notifier = Notifier()
    metrics = Metrics(rt)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def on_event(ev: dict[str, Any]) -> None:
        metrics.on_event(ev)
        notifier.notify(ev.get("session", ""))

    wake = threading.Event()  # set by a post: a worker claims the turn at once

    def work(i: int) -> None:
        # Worker.serve's loop, plus a wake-up by posts instead of only a poll interval
        w = rt.worker(owner=f"api-{secrets.token_hex(3)}-{i}")
        while not stop.is_set():
            try:
                done = w.run_once(on_event=on_event)
            except (LeaseLost, StaleEpoch):
                done = None
            except Exception:  # a turn that broke: log it, keep serving the others
                log.exception("worker %s: turn failed", w.owner)
                done = None
                stop.wait(0.5)
            if done is None:
                wake.wait(0.2)
                wake.clear()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop.clear()
        for i in range(workers):
            t = threading.Thread(target=work, args=(i,), name=f"torpor-api-worker-{i}",
                                 daemon=True)  # fmt: skip
            t.start()
            threads.append(t)
        yield
        stop.set()
        wake.set()
        for t in threads:
            await run_in_threadpool(t.join, 60)
        threads.clear()

    app = FastAPI(
        title="torpor", version="1", lifespan=lifespan,
        description="Durable AI-agent sessions over HTTP: sessions, messages, live events "
                    "(server-sent), logs, snapshots, sandbox access.",
    )  # fmt: skip
    app.state.runtime, app.state.tokens, app.state.limits = rt, tokens, lim
    app.state.metrics, app.state.notifier, app.state.worker_threads = metrics, notifier, threads
    app.add_middleware(_Guard, limits=lim, metrics=metrics)

    # -- errors ------------------------------------------------------------------------

    def allowed_methods(scope: dict[str, Any]) -> str:
        """The Allow header for the request's path: the methods of every route of that
        path, and OPTIONS. (Starlette's own 405 names only the first such route's, and a
        path here often has one route per method.)"""
        methods = {"OPTIONS"}
        for route in app.router.routes:
            if route.matches(scope)[0] is not Match.NONE:
                methods |= getattr(route, "methods", None) or set()
        return ", ".join(sorted(methods, key=lambda m: (m == "OPTIONS", m)))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:  # the path exists, not with this method
            allow = allowed_methods(request.scope)
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            resp = _error(405, f"{request.method} is not allowed on {request.url.path} "
                               f"(allowed: {allow})")  # fmt: skip
            resp.headers["Allow"] = allow
            return resp
        headers = getattr(exc, "headers", None)
        resp = _error(exc.status_code, str(exc.detail))
        if headers:
            resp.headers.update(headers)
        return resp

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return _error(400, "malformed JSON in the request body")
        details = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                   for e in errs][:20]  # fmt: skip
        return _error(422, "invalid request: " + "; ".join(details), errors=details)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__})")

    # -- auth --------------------------------------------------------------------------

    def principal(authorization: Annotated[str | None, Header()] = None) -> Principal:
        if not auth:
            return Principal(tenant=None)
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(401, "missing token: send Authorization: Bearer <token>",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        p = tokens.check(authorization[7:].strip())
        if p is None:
            raise ApiError(401, "invalid or revoked token",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        return p

    def principal_or_query(
        authorization: Annotated[str | None, Header()] = None,
        token: Annotated[str | None, Query(description="The token, for clients that cannot "
                                           "send headers (a browser's EventSource)")] = None,
    ) -> Principal:  # fmt: skip
        return principal(authorization or (f"Bearer {token}" if token else None))

    def scope(name: str, via: Callable[..., Principal] = principal
              ) -> Callable[[Principal], Principal]:  # fmt: skip
        def dep(p: Annotated[Principal, Depends(via)]) -> Principal:
            if name not in p.scopes:
                raise ApiError(403, f"this token lacks the {name!r} scope")
            return p

        return dep

    Drive = Annotated[Principal, Depends(scope("drive"))]
    Exec = Annotated[Principal, Depends(scope("exec"))]
    DriveGet = Annotated[Principal, Depends(scope("drive", principal_or_query))]  # ?token=
    # what those can answer: 401 without a valid token, 403 without the scope
    AUTH: tuple[int, ...] = (401, 403) if auth else ()

    def row_of(p: Principal, sid: str) -> SessionRow:
        try:
            row = rt.db.get(sid)
        except SessionNotFound:
            row = None
        if row is None or not (p.all_tenants or row.tenant == p.tenant):
            raise ApiError(404, f"no such session: {sid}")
        return row

    def session_head(sid: str) -> int:
        try:
            return rt.log.head_seq(sid)
        except UnknownSession:
            return 0

    def session_json(row: SessionRow) -> dict[str, Any]:
        d = row.to_json()
        d["head_seq"] = session_head(row.id)
        d["busy"] = bool(row.lease_owner and (row.lease_until or 0) > time.time())
        return d

    # -- pages -------------------------------------------------------------------------

    add_dashboard(app)

    @app.get("/healthz", tags=["ops"], responses=_errors())
    def healthz() -> dict[str, Any]:
        """The process is up."""
        return {"ok": True}

    @app.get("/readyz", tags=["ops"], responses=_errors(503))
    def readyz() -> Response:
        """The database answers and the worker threads are alive."""
        try:
            with rt.db.tx() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        except Exception as e:
            return _error(503, f"database not ready: {type(e).__name__}")
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            return _error(503, f"worker threads stopped: {', '.join(dead)}")
        return JSONResponse({"ok": True, "workers": len(threads)})

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}},
                              "description": "The Prometheus text format"},
                        **_errors(*AUTH)})  # fmt: skip
    def prometheus(request: Request) -> Response:
        """Prometheus metrics (the admin scope when auth is on)."""
        if auth:
            p = principal(request.headers.get("authorization"))
            if "admin" not in p.scopes:
                raise ApiError(403, "this token lacks the 'admin' scope")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- sessions ----------------------------------------------------------------------

    v = f"/{API_VERSION}"

    def check_script(path: str) -> None:
        if scripts is None:
            raise ApiError(422, "script: models are refused by this server: start it "
                                "with `torpor serve --scripts DIR` to allow those in DIR")
        if not Path(path).resolve().is_relative_to(scripts.resolve()):
            raise ApiError(422, f"script {path} is outside the directory this server takes "
                                f"scripts from ({scripts})")  # fmt: skip

    @app.post(f"{v}/sessions", status_code=201, tags=["sessions"],
              responses=_errors(*AUTH, 415, 422, 429))  # fmt: skip
    def create_session(body: SessionIn, p: Drive) -> dict[str, Any]:
        """Create a session (image, model, system prompt, tools, policy)."""
        provider, _, name = body.model.partition(":")
        if provider.strip().lower() == "script":  # the rest of the spec: Runtime.validate
            check_script(name)
        if tokens.open_sessions(p.tenant) >= lim.sessions_per_tenant:
            raise ApiError(429, f"tenant has {lim.sessions_per_tenant} open sessions, the "
                                "limit: close some first")  # fmt: skip
        try:
            s = rt.create_session(
                image=body.image, model=body.model, system=body.system, tools=body.tools,
                policy=Policy(**body.policy.model_dump()) if body.policy else None,
                tenant=p.tenant,
            )  # fmt: skip
        except InvalidSession as e:  # model, image or tool: nothing a turn could mend
            raise ApiError(422, str(e)) from None
        return session_json(s.info())

    @app.get(f"{v}/sessions", tags=["sessions"], responses=_errors(*AUTH, 422))
    def list_sessions(
        p: Drive,
        state: StateName | None = None,
        limit: Annotated[int, Query(ge=1, le=lim.max_page)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Sessions of the token's tenant, oldest first, a page at a time."""
        rows = rt.db.list(state.value if state else None, None if p.all_tenants else p.tenant)
        page = rows[offset:offset + limit]
        nxt = offset + limit if offset + limit < len(rows) else None
        return {"sessions": [r.to_json() for r in page], "total": len(rows),
                "next_offset": nxt}  # fmt: skip

    @app.get(f"{v}/sessions/{{sid}}", tags=["sessions"], responses=_errors(*AUTH, 404, 422))
    def get_session(sid: SessionId, p: Drive) -> dict[str, Any]:
        return session_json(row_of(p, sid))

    def cancel_or_close(sid: str, p: Principal, close: bool, response: Response) -> Any:
        row = row_of(p, sid)
        if row.state != "closed":
            ses = rt.get_session(sid)
            row = ses.cancel(close=close, wait=CANCEL_WAIT)
        notifier.notify(sid)
        if row.cancel is not None and row.state != "closed":
            response.status_code = 202  # its worker acts on it at the turn's next safe point
        return session_json(row)

    @app.post(f"{v}/sessions/{{sid}}/cancel", tags=["sessions"],
              responses={202: _ACCEPTED, **_errors(*AUTH, 404, 415, 422)})  # fmt: skip
    def cancel_session(sid: SessionId, p: Drive, response: Response) -> dict[str, Any]:
        """Stop the running turn at its next safe point: the tool call running then is
        stopped, calls not yet run are skipped, the sandbox is snapshotted and the session
        waits. 200 when done (or there was nothing to cancel), 202 when the worker has not
        reached a safe point within a few seconds (the cancel stays asked for)."""
        return cancel_or_close(sid, p, False, response)

    @app.post(f"{v}/sessions/{{sid}}/close", tags=["sessions"],
              responses={202: _ACCEPTED, **_errors(*AUTH, 404, 415, 422)})  # fmt: skip
    def close_session(sid: SessionId, p: Drive, response: Response) -> dict[str, Any]:
        """Close a session: its log stays, it takes no more messages. A running turn is
        cancelled first; 202 if that has not happened within a few seconds (the session
        is closed at the turn's next safe point)."""
        return cancel_or_close(sid, p, True, response)

    @app.post(f"{v}/sessions/{{sid}}/fork", status_code=201, tags=["sessions"],
              responses=_errors(*AUTH, 404, 409, 415, 422, 429))  # fmt: skip
    def fork_session(sid: SessionId, p: Drive,
                     body: Annotated[ForkIn | None, Body()] = None) -> dict[str, Any]:  # fmt: skip
        """A new session from one of this session's snapshots (default: the latest)."""
        row = row_of(p, sid)
        snap = body.snapshot if body else None
        if snap is not None and snap not in {s["snapshot"] for s in snapshots_of(sid)}:
            raise ApiError(404, f"no such snapshot in session {sid}: {snap}")
        if tokens.open_sessions(row.tenant) >= lim.sessions_per_tenant:
            raise ApiError(429, f"tenant has {lim.sessions_per_tenant} open sessions, the "
                                "limit: close some first")  # fmt: skip
        try:
            child = rt.get_session(sid).fork(snap)
        except SessionError as e:
            raise ApiError(409, str(e)) from None
        return session_json(child.info())

    # -- messages ----------------------------------------------------------------------

    @app.post(f"{v}/sessions/{{sid}}/messages", status_code=202, tags=["messages"],
              responses=_errors(*AUTH, 404, 409, 415, 422, 429))  # fmt: skip
    def post_message(
        sid: SessionId, body: MessageIn, p: Drive,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a user message; returns its turn id at once. A worker runs the turn; follow
        it on /events. Repeating a request with the same Idempotency-Key is a no-op that
        returns the same turn id."""
        row = row_of(p, sid)
        if len(body.text) > lim.max_message_chars:
            raise ApiError(413, f"message of {len(body.text)} characters is over the limit "
                                f"of {lim.max_message_chars}")  # fmt: skip
        if idempotency_key:  # a repeat (from any process) queues nothing: one turn, once
            earlier = rt.db.turn_for_key(sid, idempotency_key)
            if earlier is not None:
                return {"session": sid, "turn": earlier, "duplicate": True}
        if row.state == "closed":
            raise ApiError(409, f"session {sid} is closed")
        busy = row.state in ("running", "recovering", "retrying") or rt.db.unread(sid)
        if not busy and tokens.busy_sessions(row.tenant) >= lim.turns_per_tenant:
            raise ApiError(429, f"tenant already has {lim.turns_per_tenant} turns queued "
                                "or running, the limit: retry later",
                           headers={"Retry-After": "1"})  # fmt: skip
        try:
            turn, duplicate = rt.db.post_once(sid, body.text, key=idempotency_key)
        except SessionClosedError as e:
            raise ApiError(409, str(e)) from None
        if duplicate:
            return {"session": sid, "turn": turn, "duplicate": True}
        wake.set()
        return {"session": sid, "turn": turn, "duplicate": False}

    # -- events ------------------------------------------------------------------------

    @app.get(f"{v}/sessions/{{sid}}/events", tags=["events"],
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-sent events, id = log seq"},
                        **_errors(*AUTH, 404, 422)})  # fmt: skip
    async def events(
        sid: SessionId, request: Request, p: DriveGet,
        after: Annotated[int | None, Query(ge=0, le=MAX_SEQ,
                                           description="Start after this seq.")] = None,
        until: Annotated[Literal["wait"] | None,
                         Query(description="'wait': end at the next wait point")] = None,
        last_event_id: Annotated[str | None, Header(
            max_length=40, json_schema_extra={"pattern": SEQ_PATTERN},
            description="Start after this seq (a reconnecting EventSource sends it)")] = None,
    ) -> StreamingResponse:  # fmt: skip
        """The session's log as server-sent events (one per entry, `id:` = seq). Reconnect
        with Last-Event-ID to get exactly the entries after it."""
        await run_in_threadpool(row_of, p, sid)
        start = after or 0
        if last_event_id is not None:
            if not _SEQ_FORM.fullmatch(last_event_id):  # the header's pattern
                raise ApiError(400, "Last-Event-ID must be a log seq (an integer)")
            start = max(start, int(last_event_id))

        async def gen() -> AsyncIterator[str]:
            item = notifier.subscribe(sid)
            ev = item[1]
            pos = start
            idle = 0.0
            try:
                yield ": torpor events\n\n"
                while True:
                    ev.clear()
                    try:
                        batch = await run_in_threadpool(rt.log.read, sid, pos, 200)
                    except UnknownSession:  # created a moment ago: its first entry is coming
                        batch = []
                    for e in batch:
                        pos = e.seq
                        metrics.sse_events.inc()
                        yield format_sse(e)
                        if until == "wait" and is_wait_point(e):
                            return
                    if len(batch) == 200:
                        continue
                    if batch:
                        idle = 0.0
                        continue
                    try:
                        await asyncio.wait_for(ev.wait(), timeout=poll)
                    except TimeoutError:
                        idle += poll
                        row = await run_in_threadpool(rt.db.get, sid)
                        if row.state == "closed" and pos >= await run_in_threadpool(
                                session_head, sid):  # fmt: skip
                            return
                        if idle >= 15:
                            idle = 0.0
                            yield ": keepalive\n\n"
            finally:
                notifier.unsubscribe(sid, item)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})  # fmt: skip

    # -- log ---------------------------------------------------------------------------

    @app.get(f"{v}/sessions/{{sid}}/log", tags=["log"], responses=_errors(*AUTH, 404, 422))
    def read_log(
        sid: SessionId, p: Drive,
        after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
        limit: Annotated[int, Query(ge=1, le=lim.max_page)] = 100,
    ) -> dict[str, Any]:
        """Log entries with seq > after, at most `limit`; `next_after` pages on."""
        row_of(p, sid)
        entries = rt.log.read(sid, after=after, limit=limit)
        nxt = entries[-1].seq if len(entries) == limit else None
        return {"entries": [e.to_dict() for e in entries], "next_after": nxt}

    @app.get(f"{v}/sessions/{{sid}}/log/export", tags=["log"],
             responses=_errors(*AUTH, 404, 422))  # fmt: skip
    def export_log(
        sid: SessionId, p: Drive, format: Literal["openai", "anthropic"] = "openai"
    ) -> dict[str, Any]:
        """The whole log as OpenAI chat messages or an Anthropic Messages payload."""
        row_of(p, sid)
        entries = list(rt.log.iter(sid))
        if format == "openai":
            return {"format": "openai", "messages": to_openai(entries)}
        return {"format": "anthropic", **to_anthropic(entries)}

    # -- snapshots ---------------------------------------------------------------------

    def snapshots_of(sid: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        by_id: dict[str, dict[str, Any]] = {}
        for e in rt.log.iter(sid):
            c = e.content if e.kind == "marker" and isinstance(e.content, dict) else None
            if c is None:
                continue
            if c.get("marker") == "snapshot_taken":
                s = {"snapshot": c.get("snapshot"), "log_seq": e.seq, "covers_seq": c.get("seq"),
                     "bytes": c.get("bytes"), "ms": c.get("ms"),
                     "mid_turn": bool(c.get("mid_turn")), "at": e.created_at,
                     "restores": []}  # fmt: skip
                out.append(s)
                by_id[str(c.get("snapshot"))] = s
            elif c.get("marker") == "session_restored" and str(c.get("snapshot")) in by_id:
                by_id[str(c.get("snapshot"))]["restores"].append(
                    {"log_seq": e.seq, "ms": c.get("ms"), "at": e.created_at})
        return out

    @app.get(f"{v}/sessions/{{sid}}/snapshots", tags=["snapshots"],
             responses=_errors(*AUTH, 404, 422))  # fmt: skip
    def list_snapshots(sid: SessionId, p: Drive) -> dict[str, Any]:
        """The session's snapshots with size and time, and the restores of each."""
        row_of(p, sid)
        return {"snapshots": snapshots_of(sid)}

    # -- sandbox access (exec scope) ---------------------------------------------------

    def in_sandbox(row: SessionRow, fn: Callable[[str], Any]) -> Any:
        """Run fn(sandbox name) on the session's live sandbox while a turn runs, else on a
        throwaway restore of its latest snapshot (changes there are discarded). fn runs
        once: when it fails in the live sandbox, that is the answer (a command that timed
        out there may have done its work; it is never run a second time elsewhere)."""
        eng = rt.engine
        if row.lease_owner and (row.lease_until or 0) > time.time():
            live = f"s-{row.id}"
            try:
                running = eng.inspect(live).state == "running"
            except SandboxError:
                running = False  # between a restore and the next: look at the snapshot
            if running:
                return fn(live)
        if not row.snapshot:
            raise ApiError(409, f"session {row.id} has no sandbox to look at yet (no "
                                "snapshot: send it a message first)")  # fmt: skip
        name = f"dbg-{row.id}-{secrets.token_hex(3)}"
        try:
            eng.restore(row.snapshot, name=name)
        except SandboxError as e:
            raise ApiError(409, f"cannot restore snapshot {row.snapshot}: {e}") from None
        try:
            return fn(name)
        finally:
            with contextlib.suppress(SandboxError):
                eng.remove(name, force=True)

    @app.post(f"{v}/sessions/{{sid}}/sandbox/exec", tags=["sandbox"],
              responses=_errors(*AUTH, 404, 409, 415, 422))  # fmt: skip
    def sandbox_exec(sid: SessionId, body: ExecIn, p: Exec) -> dict[str, Any]:
        """Run a command in the session's sandbox (for humans debugging; `exec` scope).
        On a waiting session it runs in a throwaway restore of the latest snapshot."""
        row = row_of(p, sid)

        def run(name: str) -> Any:
            return rt.engine.exec(name, body.argv, workdir=body.workdir, timeout=body.timeout)

        try:
            r = in_sandbox(row, run)
        except SandboxError as e:
            raise ApiError(409, f"exec failed: {e}") from None
        return {"exit_code": r.exit_code,
                "stdout": r.stdout[:OUTPUT_LIMIT].decode(errors="replace"),
                "stderr": r.stderr[:OUTPUT_LIMIT].decode(errors="replace"),
                "truncated": max(len(r.stdout), len(r.stderr)) > OUTPUT_LIMIT}  # fmt: skip

    @app.get(f"{v}/sessions/{{sid}}/sandbox/file", tags=["sandbox"],
             responses=_errors(*AUTH, 404, 409, 422))  # fmt: skip
    def sandbox_file(sid: SessionId, p: Exec,
                     path: Annotated[str, Query(
                         min_length=1, max_length=4096, json_schema_extra={"pattern": "^/"},
                         description="An absolute path (checked below: 422)")]
                     ) -> dict[str, Any]:  # fmt: skip
        """Read a file from the session's sandbox (`exec` scope)."""
        row = row_of(p, sid)
        if not path.startswith("/"):
            raise ApiError(422, "path must be absolute")
        try:
            data: bytes = in_sandbox(row, lambda name: rt.engine.read_file(name, path))
        except (SandboxError, OSError) as e:
            raise ApiError(404, f"cannot read {path}: {e}") from None
        cut = data[:lim.file_bytes]
        try:
            text, enc = cut.decode(), "utf-8"
        except UnicodeDecodeError:
            text, enc = base64.b64encode(cut).decode(), "base64"
        return {"path": path, "size": len(data), "truncated": len(data) > lim.file_bytes,
                "encoding": enc, "content": text}  # fmt: skip

    # -- who am I ----------------------------------------------------------------------

    @app.get(f"{v}/whoami", tags=["auth"], responses=_errors(*AUTH[:1]))
    def whoami(request: Request) -> dict[str, Any]:
        # the header is read here, not taken as a parameter: then the document declares no
        # 422 (FastAPI's default for routes with parameters), which this cannot answer
        p = principal(request.headers.get("authorization"))
        return {"tenant": p.tenant, "scopes": sorted(p.scopes), "token": p.token_id}

    return app
