"""`serve`: run torpor dockerd on a Unix socket (0660, root's group unless told) and,
optionally, a loopback TCP address, until SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import signal
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from torpor.dockerd.app import build
from torpor.dockerd.server import TCPServer, UnixServer, prepare_socket_path
from torpor.sandbox.engine import Engine
from torpor.sandbox.images import ImageStore

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/torpor/docker.sock"


def group_id(group: str | None) -> int:
    if not group:
        return 0
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {group}") from None


def tcp_address(host: str) -> tuple[str, int]:
    """tcp://127.0.0.1:2375 -> ("127.0.0.1", 2375); loopback only (the API has no
    authentication, as Docker's unencrypted TCP socket)."""
    url = urlsplit(host if "://" in host else f"tcp://{host}")
    if url.scheme != "tcp" or not url.hostname or url.port is None:
        raise ValueError(f"bad --host {host!r}: use tcp://127.0.0.1:PORT")
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"--host {host} is not a loopback address: torpor dockerd has no "
                         "authentication, so it listens on loopback only")
    return url.hostname, url.port


def serve(
    engine: Engine,
    images: ImageStore,
    *,
    socket_path: str | None = DEFAULT_SOCKET,
    host: str | None = None,
    group: str | None = None,
    ready: Callable[[list[str]], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set); `ready` gets the addresses once
    they accept connections."""
    daemon = build(engine, images)
    daemon.resume_watching()
    servers: list[UnixServer | TCPServer] = []
    addresses = []
    if socket_path:
        prepare_socket_path(socket_path)
        servers.append(UnixServer(socket_path, daemon.router, group=group_id(group)))
        addresses.append(f"unix://{socket_path}")
    if host:
        addr = tcp_address(host)
        servers.append(TCPServer(addr, daemon.router))
        addresses.append(f"tcp://{addr[0]}:{servers[-1].server_address[1]}")
    if not servers:
        raise ValueError("nothing to listen on: give --socket or --host")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2},
                                daemon=True) for s in servers]  # fmt: skip
    for t in threads:
        t.start()
    if ready is not None:
        ready(addresses)
    try:
        stop.wait()
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        if socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
