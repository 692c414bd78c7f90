"""`build`: a `Daemon` with its routes, gathered from one module per resource."""

from __future__ import annotations

from torpor.dockerd import archive, checkpoints, containers, execs, images, logs, system
from torpor.dockerd.core import Daemon
from torpor.sandbox.engine import Engine
from torpor.sandbox.images import ImageStore


def build(engine: Engine, images_store: ImageStore) -> Daemon:
    daemon = Daemon(engine, images_store)
    for module in (system, containers, logs, execs, archive, checkpoints, images):
        module.routes(daemon)
    return daemon
