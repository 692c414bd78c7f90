"""A container's output: `logs` (follow, tail, since, until, timestamps) and `attach`
(hijacked, so `docker run` without `-d` prints what the container prints).

The output is the sandbox's console (`Engine.console_path`): its main process's stdout
and stderr together, in the order written, so it is all sent as stdout (stream 1 of
Docker's framing: an 8-byte header, [stream, 0, 0, 0, size as 4 bytes big-endian], then
the bytes; a container created with Tty gets the raw bytes). Docker stamps every line
as it logs it; the console has no times, so dockerd notes when it saw the console grow
(`x-log-stamps`, lines of "OFFSET UNIX-TIME", appended by the watcher every 0.1 s while
the container runs): a line's time is the first stamp at or past its end, within 0.1 s
of when it was written while a daemon watched, else when the daemon next looked.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from torpor.dockerd.server import ANSWERED, DockerError, Request, Response
from torpor.dockerd.stamps import STAMPS, Stamps
from torpor.sandbox.engine import SandboxNotFound

if TYPE_CHECKING:
    from torpor.dockerd.core import Daemon

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def routes(d: Daemon) -> None:
    d.router.add("GET", "/containers/{ref}/logs", lambda r: logs(d, r))
    d.router.add("POST", "/containers/{ref}/attach", lambda r: attach(d, r))


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _since(text: str | None) -> float | None:
    """Docker's since/until: unix seconds (with a fraction); 0 means unset."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DockerError(400, f"invalid time value: {text}") from None
    return value or None


# ------------------------------------------------------------------------------ reading


def follow_console(d: Daemon, sid: str, offset: int, emit: Callable[[bytes, int], None], *,
                   follow: bool, until_run_ends: str | None = None,
                   gone: Callable[[], bool] = lambda: False) -> None:  # fmt: skip
    """Pass the console from `offset` to `emit(data, end_offset)`; with `follow`, until the
    container stops (`until_run_ends`: the `started` of the run seen when the caller
    began, so a container about to start is followed through its next run)."""
    path = d.engine.console_path(sid)
    seen_running = False
    while True:
        try:
            info = d.engine.inspect(sid)
        except SandboxNotFound:
            info = None
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(1 << 16):
                    offset += len(chunk)
                    emit(chunk, offset)
        except FileNotFoundError:
            pass
        if not follow or info is None or gone():
            return
        if info.state == "running":
            seen_running = True
        elif info.state != "created" and (until_run_ends is None or seen_running
                                          or info.started != until_run_ends):  # fmt: skip
            follow = False  # one more read: what it wrote before it stopped
            continue
        time.sleep(0.05)


def logs(d: Daemon, req: Request) -> Response:
    info = d.info(req.params["ref"])
    meta = d.meta(info)
    stdout, stderr = req.flag("stdout"), req.flag("stderr")
    if not (stdout or stderr):
        raise DockerError(400, "you must choose at least one stream")
    tail_arg = req.arg("tail") or "all"
    try:
        tail = None if tail_arg == "all" else max(int(tail_arg), 0)
    except ValueError:
        raise DockerError(400, f"invalid tail value: {tail_arg}") from None
    since, until = _since(req.arg("since")), _since(req.arg("until"))
    stamps = Stamps(d.engine.sandbox_file(info.id, STAMPS), time.time())
    stamped = req.flag("timestamps")
    out = req.stream(200, [("Content-Type", RAW if meta.tty else MULTIPLEXED)])

    def send(line: bytes, end: int) -> None:
        if not stdout:
            return
        t = stamps.at(end)
        if (since is not None and t < since) or (until is not None and t > until):
            return
        data = (rfc3339(t).encode() + b" " + line) if stamped else line
        out.write(data if meta.tty else frame(1, data))

    lines: list[tuple[bytes, int]] = []
    pending = bytearray()

    def collect(chunk: bytes, end: int) -> None:
        pending.extend(chunk)
        start = end - len(pending)
        while (nl := pending.find(b"\n")) >= 0:
            line = bytes(pending[:nl + 1])
            del pending[:nl + 1]
            start += len(line)
            if collecting:
                lines.append((line, start))
            else:
                send(line, start)

    collecting = True
    offset = 0
    follow_console(d, info.id, 0, collect, follow=False)
    offset = sum(len(line) for line, _ in lines) + len(pending)
    for line, end in lines if tail is None else lines[len(lines) - tail:] if tail else []:
        send(line, end)
    if req.flag("follow"):
        collecting = False
        stamps.fallback = time.time()
        follow_console(d, info.id, offset, collect, follow=True, gone=out.client_gone)
    if pending:
        send(bytes(pending), offset)
    return ANSWERED


def attach(d: Daemon, req: Request) -> Response:
    """Hijacked: the container's output from now on (`logs=1`: from its start) until its
    run ends; stdin, if sent, is read and dropped (the main process's stdin is
    /dev/null)."""
    info = d.info(req.params["ref"])
    meta = d.meta(info)
    try:
        start = 0 if req.flag("logs") else d.engine.console_path(info.id).stat().st_size
    except FileNotFoundError:
        start = 0
    if not req.flag("stream"):
        start = 0
    raw = req.hijack(RAW if meta.tty else MULTIPLEXED)
    wanted = req.flag("stdout") or req.flag("stderr")

    def emit(chunk: bytes, _end: int) -> None:
        if wanted:
            raw.write(chunk if meta.tty else frame(1, chunk))

    # Not raw.client_gone: a client that attaches no stdin half-closes its end at once.
    running_since = info.started if info.state != "running" else None
    try:
        follow_console(d, info.id, start, emit, follow=req.flag("stream"),
                       until_run_ends=running_since)  # fmt: skip
    finally:
        raw.close_write()
    return ANSWERED
