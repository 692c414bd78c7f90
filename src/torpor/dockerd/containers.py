"""Container routes: create, start (fresh or from a checkpoint), stop, kill, restart,
wait, remove, list (with filters), inspect, rename; resize is accepted and ignored
(torpor-init gives processes no terminal).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal as signals
import time
from typing import TYPE_CHECKING, Any

from torpor.dockerd import config as docker_config
from torpor.dockerd import shapes
from torpor.dockerd.errors import name_in_use, no_such_container, not_running, translated
from torpor.dockerd.images import resolve
from torpor.dockerd.server import ANSWERED, DockerError, Request, Response, empty, json_response
from torpor.dockerd.state import ContainerMeta
from torpor.sandbox.checkpoints import CheckpointNotFound
from torpor.sandbox.engine import ProcessNotFound, SandboxInfo, SandboxNotFound
from torpor.sandbox.images import ImageError

if TYPE_CHECKING:
    from torpor.dockerd.core import Daemon

_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
MAIN_PROCESS = 1  # torpor-init's id for a sandbox's main process


def routes(d: Daemon) -> None:
    add = d.router.add
    add("POST", "/containers/create", lambda r: create(d, r))
    add("GET", "/containers/json", lambda r: list_containers(d, r))
    add("GET", "/containers/{ref}/json", lambda r: inspect(d, r))
    add("POST", "/containers/{ref}/start", lambda r: start(d, r))
    add("POST", "/containers/{ref}/stop", lambda r: stop(d, r))
    add("POST", "/containers/{ref}/restart", lambda r: restart(d, r))
    add("POST", "/containers/{ref}/kill", lambda r: kill(d, r))
    add("POST", "/containers/{ref}/wait", lambda r: wait(d, r))
    add("DELETE", "/containers/{ref}", lambda r: remove(d, r))
    add("POST", "/containers/{ref}/rename", lambda r: rename(d, r))
    add("POST", "/containers/{ref}/resize", lambda r: Response(200))


def create(d: Daemon, req: Request) -> Response:
    body = req.json()
    name = (req.arg("name") or "").lstrip("/") or None
    if name is not None and not _NAME_RE.match(name):
        raise DockerError(400, f"Invalid container name ({name}), only "
                               "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")  # fmt: skip
    if not isinstance(body.get("Image"), str) or not body["Image"]:
        raise DockerError(400, "config.Image: an image is required")
    image = resolve(d.images, body["Image"])
    spec, warnings = docker_config.to_spec(body, image)
    if name is not None:
        with contextlib.suppress(SandboxNotFound):
            other = d.engine.inspect(name)
            if other.name == name:
                raise name_in_use(name, other.id)
    with translated(name or ""):
        info = d.engine.create(spec, name=name)
    config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
    config["Image"] = body["Image"]
    config.setdefault("Cmd", None)
    d.save_meta(info.id, ContainerMeta(config=config, host_config=body.get("HostConfig") or {}))
    return json_response({"Id": info.id, "Warnings": warnings}, 201)


# ---------------------------------------------------------------------------- listing


def _filters(req: Request) -> dict[str, list[str]]:
    """Docker's `filters`: {"key": ["v", ...]} or, from Go clients, {"key": {"v": true}}."""
    raw = req.arg("filters")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise DockerError(400, f"invalid filter: {raw}") from None
    if not isinstance(data, dict):
        raise DockerError(400, f"invalid filter: {raw}")
    out: dict[str, list[str]] = {}
    for key, values in data.items():
        if isinstance(values, dict):
            out[key] = [v for v, on in values.items() if on]
        elif isinstance(values, list):
            out[key] = [str(v) for v in values]
        else:
            out[key] = [str(values)]
    return out


def _label_match(labels: dict[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def matches(info: SandboxInfo, meta: ContainerMeta, filters: dict[str, list[str]]) -> bool:
    entry = None
    for key, values in filters.items():
        if not values:
            continue
        if key == "status":
            ok = shapes.docker_state(info) in values
        elif key == "name":
            ok = any(re.search(v.lstrip("/"), info.name) for v in values)
        elif key == "id":
            ok = any(info.id.startswith(v) for v in values)
        elif key == "label":
            ok = all(_label_match(meta.labels, v) for v in values)
        elif key == "exited":
            ok = shapes.docker_state(info) == "exited" and str(info.exit_code or 0) in values
        elif key == "ancestor":
            entry = entry or shapes.list_entry(info, meta)
            ok = any(v in (entry["Image"], info.spec.image, info.image_digest) for v in values)
        else:
            raise DockerError(400, f"invalid filter '{key}'")
        if not ok:
            return False
    return True


def list_containers(d: Daemon, req: Request) -> Response:
    filters = _filters(req)
    show_all = req.flag("all") or "status" in filters
    out = []
    for info in d.engine.list(all=show_all):
        if info.state == "standby":
            continue
        meta = d.meta(info)
        if matches(info, meta, filters):
            out.append(shapes.list_entry(info, meta))
    out.sort(key=lambda e: e["Created"], reverse=True)
    limit = int(req.arg("limit") or -1)
    return json_response(out[:limit] if limit > 0 else out)


def inspect(d: Daemon, req: Request) -> Response:
    info = d.info(req.params["ref"])
    return json_response(shapes.inspect(info, d.meta(info)))


# ---------------------------------------------------------------------------- lifecycle


def _find_checkpoint(d: Daemon, info: SandboxInfo, name: str, source: str | None) -> str:
    """The id of checkpoint `name`: the container's own, else (a container that starts
    from another's checkpoint: torpor's fork) the one of that name of the container
    `source` (`--checkpoint-dir` names it), else of any container if only one has it."""
    own = [m for m in d.engine.list_checkpoints(info.id) if name in (m.get("name"), m["id"])]
    if own:
        return str(own[0]["id"])
    if source:
        with translated(source):
            others = d.engine.list_checkpoints(source.lstrip("/"))
    else:
        others = d.engine.list_checkpoints()
    found = [m for m in others if name in (m.get("name"), m["id"])]
    if len(found) == 1:
        return str(found[0]["id"])
    if len(found) > 1:
        raise DockerError(409, f"checkpoint {name} is ambiguous: several containers have one "
                               "of that name (name the one to start from with "
                               "--checkpoint-dir CONTAINER)")  # fmt: skip
    raise DockerError(404, f"No such checkpoint: {name}")


def start(d: Daemon, req: Request) -> Response:
    ref = req.params["ref"]
    info = d.info(ref)
    if info.state == "running":
        return empty(304)
    checkpoint = req.arg("checkpoint")
    meta = d.meta(info)
    with translated(ref):
        if checkpoint:
            ck = _find_checkpoint(d, info, checkpoint, req.arg("checkpoint-dir"))
            try:
                d.engine.start(info.id, checkpoint=ck)
            except CheckpointNotFound:
                raise DockerError(404, f"No such checkpoint: {checkpoint}") from None
        else:
            d.engine.start(info.id)
    meta.checkpoint_started = checkpoint or None
    d.save_meta(info.id, meta)
    d.watch(info.id)
    return empty(204)


def stop(d: Daemon, req: Request) -> Response:
    ref = req.params["ref"]
    info = d.info(ref)
    if info.state != "running":
        return empty(304)
    timeout = float(req.arg("t") or req.arg("timeout") or 10)
    with translated(ref):
        d.engine.stop(info.id, timeout=max(timeout, 0))
    return empty(204)


def restart(d: Daemon, req: Request) -> Response:
    ref = req.params["ref"]
    info = d.info(ref)
    timeout = float(req.arg("t") or req.arg("timeout") or 10)
    with translated(ref):
        if info.state == "running":
            d.engine.stop(info.id, timeout=max(timeout, 0))
        d.engine.start(info.id)
    d.watch(info.id)
    return empty(204)


def _signal(name: str) -> int:
    name = name.strip().upper() or "KILL"
    if name.isdigit():
        return int(name)
    try:
        return int(signals.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        raise DockerError(400, f"Invalid signal: {name}") from None


def _has_main(d: Daemon, info: SandboxInfo) -> bool:
    """Whether the sandbox runs a main process (its spec's command, else its image's)."""
    if info.spec.cmd:
        return True
    try:
        return bool(d.images.get(info.spec.image).cmd)
    except ImageError:
        return False


def kill(d: Daemon, req: Request) -> Response:
    """A signal to the main process (SIGKILL by default: the container stops with 137); a
    container without one (it idles under torpor-init) stops on KILL, TERM or INT."""
    ref = req.params["ref"]
    info = d.info(ref)
    if info.state != "running":
        raise not_running(ref)
    sig = _signal(req.arg("signal") or "KILL")
    with translated(ref):
        try:
            if not _has_main(d, info):  # init's process 1 is then the first exec's
                raise ProcessNotFound("no main process")
            d.engine.kill_process(info.id, MAIN_PROCESS, sig)
        except ProcessNotFound:
            if sig in (signals.SIGKILL, signals.SIGTERM, signals.SIGINT):
                d.engine.stop(info.id, timeout=0 if sig == signals.SIGKILL else 10)
        if sig == signals.SIGKILL:  # stopped when the call returns, as with Docker
            deadline = time.monotonic() + 10
            while d.engine.inspect(info.id).state == "running" and time.monotonic() < deadline:
                time.sleep(0.02)
    return empty(204)


def remove(d: Daemon, req: Request) -> Response:
    ref = req.params["ref"]
    info = d.info(ref)
    if info.state == "running" and not req.flag("force"):
        raise DockerError(409, f"cannot remove container \"/{info.name}\": container is "
                               "running: stop the container before removing or force remove")
    with translated(ref):
        d.engine.remove(info.id, force=True)
    return empty(204)


def rename(d: Daemon, req: Request) -> Response:
    ref = req.params["ref"]
    new = (req.arg("name") or "").lstrip("/")
    if not _NAME_RE.match(new):
        raise DockerError(400, f"Invalid container name ({new}), only "
                               "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")  # fmt: skip
    info = d.info(ref)
    with contextlib.suppress(SandboxNotFound):
        other = d.engine.inspect(new)
        if other.name == new and other.id != info.id:
            raise name_in_use(new, other.id)
    with translated(ref):
        d.engine.rename(info.id, new)
    return empty(204)


# ---------------------------------------------------------------------------- wait


def _wait_for(d: Daemon, sid: str, condition: str) -> dict[str, Any]:
    """Block until the condition holds: `not-running` (now, if it is not running),
    `next-exit` (the end of the run that is going or about to start), `removed`."""
    first = d.engine.inspect(sid)
    seen_running = first.state == "running"
    code = first.exit_code or 0
    while True:
        try:
            info = d.engine.inspect(sid)
        except SandboxNotFound:
            return {"StatusCode": code, "Error": None}
        if info.state == "running":
            seen_running = True
        else:
            code = info.exit_code or 0
            ran = seen_running or info.started != first.started
            if condition == "not-running" or (condition == "next-exit" and ran):
                return {"StatusCode": code, "Error": None}
        time.sleep(0.05)


def wait(d: Daemon, req: Request) -> Response:
    """The status and headers at once (`docker run` waits for them before it starts the
    container), the result when the condition holds."""
    ref = req.params["ref"]
    info = d.info(ref)
    condition = req.arg("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise DockerError(400, f"invalid condition: {condition}")
    out = req.stream(200, [("Content-Type", "application/json")])
    try:
        result = _wait_for(d, info.id, condition)
    except SandboxNotFound:
        raise no_such_container(ref) from None
    out.write(json.dumps(result).encode() + b"\n")
    return ANSWERED
