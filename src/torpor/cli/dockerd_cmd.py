"""`torpor dockerd`: the Docker Engine API over this machine's torpor sandboxes (see
torpor.dockerd and docs/docker.md). The sandboxes are those of TORPOR_HOME, their
checkpoints in the snapshot store (TORPOR_SNAPSHOTS), as for torpor's own CLI."""

from __future__ import annotations

import sys

import typer

from torpor.cli import lifecycle


def dockerd(
    socket: str = typer.Option(
        "/run/torpor/docker.sock", "--socket",
        help="Unix socket to listen on (0660; '' for none).",
    ),
    host: str = typer.Option(
        "", "--host", help="Also listen on a loopback TCP address, e.g. tcp://127.0.0.1:2375."
    ),
    group: str = typer.Option(
        "", "--group", help="Group that may use the socket (default: root's only)."
    ),
    log_level: str = typer.Option("info", "--log-level", envvar="TORPOR_LOG_LEVEL"),
) -> None:
    """Serve the Docker Engine API: DOCKER_HOST=unix://SOCKET docker run -d torpor/base."""
    from torpor.dockerd import serve
    from torpor.home import torpor_home
    from torpor.runtime.checkpoints import SnapshotCheckpointStorage
    from torpor.sandbox.factory import open_engine
    from torpor.sandbox.images import ImageStore
    from torpor.snapshots import open_store

    lifecycle.setup_logging(log_level)
    home = torpor_home()  # the engine of torpor's CLI: checkpoints in the snapshot store
    eng = open_engine(home, checkpoints=SnapshotCheckpointStorage(open_store(), home))

    def ready(addresses: list[str]) -> None:
        sys.stderr.write(f"torpor dockerd listening on {', '.join(addresses)}\n")
        sys.stderr.flush()

    try:
        serve(eng, ImageStore(), socket_path=socket or None, host=host or None,
              group=group or None, ready=ready)  # fmt: skip
    except (ValueError, OSError) as e:
        raise typer.BadParameter(str(e)) from None
