"""The API's ASGI middleware, `Guard`: it refuses a request body over the limit (413) and
a /v1 body that is not JSON (415) before any route reads it, and counts the answers by
status class for /metrics. A file written into a sandbox (PUT /v1/sandboxes/{id}/files)
is the one body that is not JSON: any content type, up to `Limits.upload_bytes`."""

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

from torpor.api.deps import Limits
from torpor.api.metrics import Metrics
from torpor.api.schemas import API_VERSION, error_response


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes")


def _is_upload(path: str) -> bool:
    """PUT /v1/sandboxes/{id}/files: a file's bytes, not JSON."""
    parts = path.split("/")
    return len(parts) == 5 and parts[1:3] == [API_VERSION, "sandboxes"] and \
        parts[4] == "files" and bool(parts[3])  # fmt: skip


class Guard:
    """Pure ASGI middleware: body size (413), JSON content type (415), status counts."""

    def __init__(self, app: Any, limits: Limits, metrics: Metrics) -> None:
        self.app, self.limits, self.metrics = app, limits, metrics

    async def _send_error(self, send: Callable[..., Awaitable[None]], status: int,
                          message: str) -> None:  # fmt: skip
        resp = error_response(status, message)
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
        upload = scope["method"] == "PUT" and _is_upload(scope["path"])
        limit = self.limits.upload_bytes if upload else self.limits.max_body_bytes
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
        if has_body and scope["method"] in ("POST", "PUT", "PATCH") and not upload and \
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
