"""torpor: durable AI-agent sessions (context log + whole-sandbox snapshot/restore).

    import torpor
    rt = torpor.Runtime()                      # SQLite + local snapshot store by default
    s = rt.create_session(model="script:turns.jsonl")
    s.send("hello")

    with torpor.Sandbox.create(image="base") as sb:   # a sandbox on its own
        print(sb.exec("uname -a").text)

    remote = torpor.Client("http://127.0.0.1:8420").get_session("ses-...")  # over HTTP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what a type checker sees; at run time each is imported on first use
    from torpor.api.client import ApiError, Client, RemoteSession
    from torpor.runtime.core import Runtime
    from torpor.runtime.db import SessionNotFound, SessionRow
    from torpor.runtime.events import Event, EventType
    from torpor.runtime.session import Session
    from torpor.runtime.types import (
        InvalidSession,
        Policy,
        SessionError,
        SessionLike,
        TurnOutcome,
    )
    from torpor.runtime.worker import Worker
    from torpor.sandbox.handle import Checkpoint, Sandbox

_LAZY = {
    "Runtime": "torpor.runtime.core",
    "Session": "torpor.runtime.session",
    "Worker": "torpor.runtime.worker",
    **dict.fromkeys(["Policy", "TurnOutcome", "SessionLike", "SessionError", "InvalidSession"],
                    "torpor.runtime.types"),
    **dict.fromkeys(["SessionRow", "SessionNotFound"], "torpor.runtime.db"),
    **dict.fromkeys(["Event", "EventType"], "torpor.runtime.events"),
    **dict.fromkeys(["Client", "RemoteSession", "ApiError"], "torpor.api.client"),
    **dict.fromkeys(["Sandbox", "Checkpoint"], "torpor.sandbox.handle"),
}

__all__ = [
    "ApiError", "Checkpoint", "Client", "Event", "EventType", "InvalidSession", "Policy",
    "RemoteSession", "Runtime", "Sandbox", "Session", "SessionError", "SessionLike",
    "SessionNotFound", "SessionRow", "TurnOutcome", "Worker", "__version__",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    # Imported on first use: `import torpor` stays cheap for the CLI and the sandbox tools.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torpor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
