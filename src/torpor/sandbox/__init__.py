"""Sandbox engines: isolated sandboxes that can be checkpointed and restored whole.

    from torpor.sandbox import Sandbox
    with Sandbox.create(image="base") as sb:   # a handle (handle.py): exec, files, ...
        print(sb.exec("uname -a").text)

    from torpor.sandbox import open_engine, SandboxSpec
    engine = open_engine()                     # GVisorEngine, runsc checked by the self-test
    info = engine.run(SandboxSpec(image="torpor/base"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker sees; at run time each is imported on first use
    from torpor.sandbox.checkpoints import CheckpointStorage, LocalCheckpointStorage
    from torpor.sandbox.engine import (
        CheckpointError,
        CheckpointInfo,
        CommandTimeout,
        Engine,
        ExecResult,
        FileEntry,
        ProcessNotFound,
        ProcessStdinClosed,
        SandboxConflict,
        SandboxError,
        SandboxFileError,
        SandboxFileExists,
        SandboxFileNotFound,
        SandboxInfo,
        SandboxNotFound,
        SandboxNotRunning,
        SandboxSpec,
    )
    from torpor.sandbox.factory import open_engine
    from torpor.sandbox.gvisor import GVisorEngine
    from torpor.sandbox.handle import (
        Checkpoint,
        Process,
        ProcessInfo,
        Sandbox,
        SandboxFiles,
        default_engine,
        set_default_engine,
    )
    from torpor.sandbox.images import ImageStore

_LAZY = {
    "open_engine": "torpor.sandbox.factory",
    "GVisorEngine": "torpor.sandbox.gvisor",
    "CheckpointStorage": "torpor.sandbox.checkpoints",
    "LocalCheckpointStorage": "torpor.sandbox.checkpoints",
    "ImageStore": "torpor.sandbox.images",
    **dict.fromkeys(
        ["Engine", "SandboxSpec", "SandboxInfo", "ExecResult", "FileEntry", "CheckpointInfo",
         "SandboxError", "SandboxNotFound", "SandboxConflict", "SandboxNotRunning",
         "CommandTimeout", "ProcessNotFound", "ProcessStdinClosed", "SandboxFileError",
         "SandboxFileNotFound", "SandboxFileExists", "CheckpointError"],
        "torpor.sandbox.engine",
    ),  # fmt: skip
    **dict.fromkeys(
        ["Sandbox", "SandboxFiles", "Process", "ProcessInfo", "Checkpoint", "default_engine",
         "set_default_engine"],
        "torpor.sandbox.handle",
    ),  # fmt: skip
}

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointStorage",
    "CommandTimeout",
    "Engine",
    "ExecResult",
    "FileEntry",
    "GVisorEngine",
    "ImageStore",
    "LocalCheckpointStorage",
    "Process",
    "ProcessInfo",
    "ProcessNotFound",
    "ProcessStdinClosed",
    "Sandbox",
    "SandboxConflict",
    "SandboxError",
    "SandboxFileError",
    "SandboxFileExists",
    "SandboxFileNotFound",
    "SandboxFiles",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxNotRunning",
    "SandboxSpec",
    "default_engine",
    "open_engine",
    "set_default_engine",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import torpor.sandbox` (and every `from torpor.sandbox import
    # owners`) stays cheap; the engine is loaded only by those who ask for it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torpor.sandbox' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
