"""Operations routes outside /v1: /healthz (the process is up), /readyz (the database
answers, the worker threads live) and /metrics (Prometheus, admin scope with auth)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from torpor.api.deps import Api, auth_errors, principal
from torpor.api.schemas import ApiError, error_response, errors


def router(auth: bool) -> APIRouter:
    r = APIRouter()

    @r.get("/healthz", tags=["ops"], responses=errors())
    def healthz() -> dict[str, Any]:
        """The process is up."""
        return {"ok": True}

    @r.get("/readyz", tags=["ops"], responses=errors(503))
    def readyz(api: Api) -> Response:
        """The database answers and the worker threads are alive."""
        try:
            api.runtime.db.ping()
        except Exception as e:
            return error_response(503, f"database not ready: {type(e).__name__}")
        dead = [t.name for t in api.threads if not t.is_alive()]
        if dead:
            return error_response(503, f"worker threads stopped: {', '.join(dead)}")
        return JSONResponse({"ok": True, "workers": len(api.threads)})

    @r.get("/metrics", tags=["ops"], response_class=Response,
           responses={200: {"content": {"text/plain": {}},
                            "description": "The Prometheus text format"},
                      **errors(*auth_errors(auth))})  # fmt: skip
    def prometheus(request: Request, api: Api) -> Response:
        """Prometheus metrics (the admin scope when auth is on)."""
        if api.auth:
            p = principal(request, request.headers.get("authorization"))
            if "admin" not in p.scopes:
                raise ApiError(403, "this token lacks the 'admin' scope")
        return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return r
