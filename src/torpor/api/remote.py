"""What torpor's Python clients of the HTTP API share: the error a server's answer
becomes (`ApiError`, with its status and message), and the shape of a client the
resource clients are made over (`HttpClient`: torpor.api.client.Client is one)."""

from __future__ import annotations

from typing import Any, Protocol

import httpx


class ApiError(Exception):
    """The server answered with an error (status and its message); status 0: it could
    not be reached."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


def raise_for(r: httpx.Response) -> None:
    """ApiError for an error answer (its JSON `message`, else its text)."""
    if r.status_code < 400:
        return
    try:
        msg = r.json().get("message") or r.text
    except ValueError:
        msg = r.text
    raise ApiError(r.status_code, str(msg))


class HttpClient(Protocol):
    base_url: str
    http: httpx.Client

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON of a successful answer (None for an empty one); ApiError else."""
