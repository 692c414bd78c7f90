"""Sandbox engines: isolated sandboxes that can be checkpointed and restored whole.

    from torpor.sandbox import open_engine, SandboxSpec
    engine = open_engine()                     # GVisorEngine, runsc checked by the self-test
    info = engine.run(SandboxSpec(image="torpor/base"))
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "open_engine": "torpor.sandbox.factory",
    "GVisorEngine": "torpor.sandbox.gvisor",
    "Engine": "torpor.sandbox.engine",
    "SandboxSpec": "torpor.sandbox.engine",
    "SandboxInfo": "torpor.sandbox.engine",
    "SandboxError": "torpor.sandbox.engine",
    "CheckpointStorage": "torpor.sandbox.checkpoints",
    "LocalCheckpointStorage": "torpor.sandbox.checkpoints",
    "ImageStore": "torpor.sandbox.images",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Imported on first use: `import torpor.sandbox` (and every `from torpor.sandbox import
    # owners`) stays cheap; the engine is loaded only by those who ask for it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torpor.sandbox' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
