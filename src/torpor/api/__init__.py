"""torpor's HTTP API: `create_app(runtime)` (FastAPI), served by `torpor serve`, and
`Client`, its Python client."""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "Limits", "create_app"]


def __getattr__(name: str) -> Any:
    # FastAPI is imported only by the server side; the client needs httpx alone.
    if name in ("create_app", "Limits"):
        from torpor.api import app

        return getattr(app, name)
    if name == "Client":
        from torpor.api.client import Client

        return Client
    raise AttributeError(f"module 'torpor.api' has no attribute {name!r}")
