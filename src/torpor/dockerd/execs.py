"""Exec instances: create, start (the connection hijacked: `101 Switching Protocols`,
then the command's output framed, its stdin read from the same socket until the client
half-closes), inspect (the exit code the CLI exits with).

Instances live in the daemon's memory, as in Docker (they are not part of a
container's record); a detached one (`exec -d`) is a background process of the
sandbox's init, whose exit code inspect asks init for. A Tty exec gets its stdout and
stderr as one raw stream, but no terminal: torpor-init starts processes on pipes, so
programs that check for a terminal see none.
"""

from __future__ import annotations

import secrets
import threading
from typing import TYPE_CHECKING, Any

from torpor.dockerd.errors import not_running, translated
from torpor.dockerd.logs import MULTIPLEXED, RAW, frame
from torpor.dockerd.server import ANSWERED, DockerError, Request, Response, json_response
from torpor.dockerd.state import ExecInstance
from torpor.sandbox.engine import SandboxError
from torpor.sandbox.handle import Sandbox

if TYPE_CHECKING:
    from torpor.dockerd.core import Daemon


def routes(d: Daemon) -> None:
    d.router.add("POST", "/containers/{ref}/exec", lambda r: create(d, r))
    d.router.add("POST", "/exec/{id}/start", lambda r: start(d, r))
    d.router.add("GET", "/exec/{id}/json", lambda r: inspect(d, r))
    d.router.add("POST", "/exec/{id}/resize", lambda r: Response(200))


def create(d: Daemon, req: Request) -> Response:
    ref = req.params["ref"]
    body = req.json()
    info = d.info(ref)
    if info.state != "running":
        raise not_running(ref)
    cmd = body.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    if not cmd or not isinstance(cmd, list):
        raise DockerError(400, "No exec command specified")
    item = ExecInstance(
        id=secrets.token_hex(32), container=info.id, argv=[str(a) for a in cmd],
        env=[str(e) for e in body.get("Env") or []], workdir=body.get("WorkingDir") or None,
        user=body.get("User") or None, tty=bool(body.get("Tty")),
        stdin=bool(body.get("AttachStdin")), stdout=bool(body.get("AttachStdout", True)),
        stderr=bool(body.get("AttachStderr", True)),
    )  # fmt: skip
    d.execs.add(item)
    return json_response({"Id": item.id}, 201)


def inspect(d: Daemon, req: Request) -> Response:
    item = d.execs.get(req.params["id"])
    if item.process is not None and item.running:
        sb = Sandbox(item.container, engine=d.engine)
        try:
            p = sb.process(item.process).info()
            if not p.running:
                item.running, item.exit_code = False, p.exit_code
        except SandboxError:  # its container stopped: so did it
            item.running = False
    return json_response(item.to_json())


def _claim(item: ExecInstance) -> None:
    with item.lock:
        if item.started:
            raise DockerError(409, f"Exec instance {item.id} has already been started")
        item.started = True
        item.running = True


def start(d: Daemon, req: Request) -> Response:
    item = d.execs.get(req.params["id"])
    body = req.json(required=False)
    tty = bool(body.get("Tty", item.tty))
    sb = Sandbox(item.container, engine=d.engine)
    if body.get("Detach"):
        _claim(item)
        with translated(item.container):
            try:
                item.process = sb.spawn(item.argv, env=item.env, cwd=item.workdir,
                                        user=item.user).id  # fmt: skip
            except BaseException:
                item.running, item.exit_code = False, 126
                raise
        return json_response({}, 200)
    if sb.state != "running":
        raise not_running(item.container)
    _claim(item)
    if req.wants_upgrade:
        conn: Any = req.hijack(RAW if tty else MULTIPLEXED)
    else:  # a client that does not upgrade gets the frames as a streamed body
        conn = req.stream(200, [("Content-Type", RAW if tty else MULTIPLEXED)])
    _run(sb, item, conn, tty)
    return ANSWERED


def _run(sb: Sandbox, item: ExecInstance, conn: Any, tty: bool) -> None:
    write_lock = threading.Lock()

    def sender(stream: int, wanted: bool):  # type: ignore[no-untyped-def]
        def send(data: bytes) -> None:
            if wanted and data:
                with write_lock:
                    conn.write(data if tty else frame(stream, data))
        return send

    stdin = conn if item.stdin and hasattr(conn, "read") else None
    try:
        result = sb.exec(item.argv, env=item.env, cwd=item.workdir, user=item.user,
                         stdin=stdin, on_stdout=sender(1, item.stdout),
                         on_stderr=sender(2, item.stderr), capture=False)  # fmt: skip
        item.exit_code = result.exit_code
    except SandboxError as e:
        item.exit_code = 126
        sender(2, True)(f"{e}\n".encode())
    except OSError:  # the client went away: the command was stopped with it
        item.exit_code = 137
    finally:
        item.running = False
        if hasattr(conn, "close_write"):
            conn.close_write()
