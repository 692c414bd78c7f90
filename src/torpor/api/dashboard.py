"""The dashboard at `/`: two server-rendered pages (the sessions, one session) and a
little vanilla JavaScript that reads the /v1 API with the token kept in sessionStorage.
Everything is served from the package; nothing is fetched from elsewhere."""

from __future__ import annotations

import html
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

FILES = resources.files("torpor.api") / "dashboard"
TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def _page(title: str, body: str, **data: str) -> HTMLResponse:
    attrs = "".join(f' data-{k}="{html.escape(v)}"' for k, v in data.items())
    return HTMLResponse(
        (FILES / "page.html").read_text()
        .replace("{{title}}", html.escape(title)).replace("{{attrs}}", attrs)
        .replace("{{body}}", (FILES / body).read_text()),
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


def add_dashboard(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def sessions_page() -> HTMLResponse:
        return _page("torpor · sessions", "sessions.html", page="sessions")

    @app.get("/ui/sessions/{sid}", include_in_schema=False)
    def session_page(sid: str) -> HTMLResponse:
        return _page(f"torpor · {sid}", "session.html", page="session", sid=sid)

    @app.get("/ui/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        ext = name[name.rfind("."):] if "." in name else ""
        f = FILES / name
        if ext not in TYPES or "/" in name or not f.is_file():
            return Response(status_code=404)
        return Response(f.read_bytes(), media_type=TYPES[ext],
                        headers={"Cache-Control": "no-cache"})  # fmt: skip
