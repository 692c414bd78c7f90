"""torpor: durable AI-agent sessions (context log + whole-sandbox snapshot/restore).

    import torpor
    rt = torpor.Runtime()                      # SQLite + local snapshot store by default
    s = rt.create_session(model="script:turns.jsonl")
    s.send("hello")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Runtime": "torpor.runtime.core",
    "Session": "torpor.runtime.session",
    "Policy": "torpor.runtime.types",
    "Worker": "torpor.runtime.worker",
    "Client": "torpor.api.client",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: `import torpor` stays cheap for the CLI and the sandbox tools.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torpor' has no attribute {name!r}")
