"""Checkpoint routes (Docker's experimental ones): create (`Exit` false is
`--leave-running`), list, delete. They are torpor's checkpoints, kept in the snapshot
store of the engine dockerd was given (deduplicated, compressed, verified like every
torpor checkpoint); `start?checkpoint=NAME` (containers.py) restores one, into its own
container or, from another container's checkpoint, into a new one: torpor's fork.
`CheckpointDir` (a host directory in Docker) is not used: the store holds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torpor.dockerd.errors import not_running, translated
from torpor.dockerd.server import DockerError, Request, Response, empty, json_response
from torpor.sandbox.checkpoints import CheckpointNotFound
from torpor.sandbox.engine import SandboxError, check_name

if TYPE_CHECKING:
    from torpor.dockerd.core import Daemon


def routes(d: Daemon) -> None:
    d.router.add("POST", "/containers/{ref}/checkpoints", lambda r: create(d, r))
    d.router.add("GET", "/containers/{ref}/checkpoints", lambda r: list_checkpoints(d, r))
    d.router.add("DELETE", "/containers/{ref}/checkpoints/{name}", lambda r: remove(d, r))


def create(d: Daemon, req: Request) -> Response:
    ref = req.params["ref"]
    body = req.json()
    name = body.get("CheckpointID")
    if not isinstance(name, str) or not name:
        raise DockerError(400, "CheckpointID is required")
    try:
        check_name(name)
    except SandboxError as e:
        raise DockerError(400, str(e)) from None
    sb = d.sandbox(ref)
    assert sb.last_info is not None
    if sb.last_info.state != "running":
        raise not_running(ref)
    if any(ck.name == name for ck in sb.checkpoints()):
        raise DockerError(409, f"checkpoint with name {name} already exists for container "
                               f"{ref}")  # fmt: skip
    with translated(ref):
        sb.checkpoint(name, leave_running=not body.get("Exit", True))
    return empty(201)


def list_checkpoints(d: Daemon, req: Request) -> Response:
    sb = d.sandbox(req.params["ref"])
    return json_response([{"Name": ck.name} for ck in sb.checkpoints()])


def remove(d: Daemon, req: Request) -> Response:
    ref, name = req.params["ref"], req.params["name"]
    sb = d.sandbox(ref)
    with translated(ref):
        try:
            sb.remove_checkpoint(name)
        except CheckpointNotFound:
            raise DockerError(404, f"No such checkpoint: {name}") from None
    return empty(204)
