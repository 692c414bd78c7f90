"""`open_engine`: the one way torpor opens its sandbox engine, for the CLI and the runtime.

Constructing a `GVisorEngine` runs nothing; `open_engine` builds one and, unless told
otherwise, puts its runsc through the doctor's gate (`require_working_runsc`: torpor's
self-test sandbox, once per runsc binary, its verdict cached in TORPOR_HOME/doctor.json),
so a runsc that is missing or broken is refused up front with a clear reason instead of
failing in the middle of a session. It also sweeps what crashed processes left in the
engine's state (`GVisorEngine.sweep`).
"""

from __future__ import annotations

from pathlib import Path

from torpor.sandbox.checkpoints import CheckpointStorage
from torpor.sandbox.doctor import require_working_runsc
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore

__all__ = ["open_engine"]


def open_engine(
    home: Path | None = None,
    *,
    images: ImageStore | None = None,
    checkpoints: CheckpointStorage | None = None,
    check: bool = True,
    platform: str | None = None,
    runsc: str | None = None,
) -> GVisorEngine:
    """The gVisor engine over home (default TORPOR_HOME), its runsc checked by torpor's
    self-test (`check=False` skips it: `torpor doctor` runs the gate itself, to time it).
    Raises SandboxError when runsc is missing or fails the self-test."""
    engine = GVisorEngine(
        home,
        platform=platform,
        images=images,
        checkpoints=checkpoints,
        runsc=runsc,
    )
    engine.sweep()
    if check:
        require_working_runsc(engine)
    return engine
