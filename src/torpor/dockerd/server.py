"""The HTTP/1.1 server under torpor dockerd: h11 on blocking sockets, a thread per
connection, with Docker's connection hijack.

Why not the ASGI stack torpor's API uses (FastAPI on uvicorn): Docker's clients upgrade
the connection for `exec start` and `attach` (`Connection: Upgrade`, `Upgrade: tcp`,
answered `101 Switching Protocols`), then both ends speak raw bytes on the same socket,
stdin one way (with a half-close at its end) and framed output the other. ASGI has no
way to hand the raw socket to the application after a 101. aiohttp's server parses only
WebSocket upgrades as such (anything after the headers of another upgrade would be
read as the next request) and its hijack would go through private attributes. h11
(already a dependency of httpx and uvicorn) is a sans-I/O HTTP/1.1 state machine that
supports a switch of protocol by design: after the 101 it stops, and `trailing_data`
gives back whatever the client sent past the request. The engine's calls block (runsc,
file locks, torpor-init's socket), so each connection gets a thread; a Docker client
opens a handful of connections, and a follower (`logs -f`, `attach`, a long `exec`) holds
one thread while it follows.

A handler gets a `Request` and returns a `Response`, or answers on the connection itself
(`Request.stream` for a chunked body sent as it comes, `Request.hijack` for the raw
socket) and returns `ANSWERED`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^/v(\d+\.\d+)(/.*)$")
_MAX_BODY = 64 << 20  # a create body or an archive PUT larger than this is refused


class DockerError(Exception):
    """An error answered as Docker does: the status and `{"message": ...}`, which the
    docker CLI prints as `Error response from daemon: MESSAGE`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode() + b"\n",
                    [("Content-Type", "application/json")])  # fmt: skip


def empty(status: int = 204) -> Response:
    return Response(status)


ANSWERED = Response(0)  # the handler answered on the connection itself


class Stream:
    """A response body sent as it comes (chunked), after the status and headers."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        if data:
            self.conn.send(h11.Data(data=data))

    def client_gone(self) -> bool:
        """Whether the client closed its end (a follower then stops)."""
        return self.conn.peer_closed()


class RawSocket:
    """The connection after `101 Switching Protocols`: bytes both ways. `read` gives the
    client's bytes (those h11 had read past the request first) and b"" once the client
    half-closed its end; `write` sends; `close_write` half-closes ours."""

    def __init__(self, sock: socket.socket, trailing: bytes, closed: bool) -> None:
        self.sock = sock
        self._pending = trailing
        self._eof = closed
        self._wlock = threading.Lock()

    def read(self, n: int = 65536) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        if self._eof:
            return b""
        try:
            data = self.sock.recv(n)
        except OSError:
            data = b""
        if not data:
            self._eof = True
        return data

    def readable(self) -> bool:  # a binary stream for the engine's stdin
        return True

    def write(self, data: bytes) -> None:
        with self._wlock:
            self.sock.sendall(data)

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def client_gone(self) -> bool:
        """Whether the client closed the connection (only when nothing is to be read)."""
        if self._pending or self._eof:
            return self._eof and not self._pending
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if ready and not self.sock.recv(1, socket.MSG_PEEK):
                self._eof = True
        except OSError:
            self._eof = True
        return self._eof


@dataclass
class Request:
    method: str
    path: str  # without the /vN.NN prefix
    api_version: str | None
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    conn: Connection
    params: dict[str, str] = field(default_factory=dict)  # the route's captures

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.arg(name)
        if value is None:
            return default
        return value.lower() not in ("", "0", "false", "no")

    def json(self, *, required: bool = True) -> Any:
        """The body as JSON (a malformed one is Docker's 400)."""
        if not self.body.strip():
            if required:
                raise DockerError(400, "invalid JSON: the request needs a body")
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as e:
            raise DockerError(400, f"invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise DockerError(400, "invalid JSON: expected an object")
        return data

    @property
    def wants_upgrade(self) -> bool:
        return "upgrade" in self.headers.get("connection", "").lower()

    def stream(self, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Stream:
        """Send the status and headers now; the body follows through the Stream. The
        connection is closed after the handler returns."""
        self.conn.send(h11.Response(status_code=status, headers=[*headers,
                                                                 ("Connection", "close")]))
        return Stream(self.conn)

    def hijack(self, content_type: str) -> RawSocket:
        """Answer `101 Switching Protocols` and take over the socket."""
        self.conn.send(h11.InformationalResponse(status_code=101, headers=[
            ("Content-Type", content_type), ("Connection", "Upgrade"), ("Upgrade", "tcp"),
        ]))  # fmt: skip
        self.conn.hijacked = True
        trailing, closed = self.conn.h11.trailing_data
        return RawSocket(self.conn.sock, trailing, closed)


Handler = Callable[[Request], Response]


class Router:
    """Routes by method and a path pattern (`{name}` captures one segment, `{name:.+}`
    several)."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+):([^}]+)\}", r"(?P<\1>\2)", pattern)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        self.routes.append((method, re.compile(f"^{regex}$"), handler))

    def find(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        for m, regex, handler in self.routes:
            if m == method or (m == "GET" and method == "HEAD"):
                match = regex.match(path)
                if match:
                    return handler, {k: unquote(v) for k, v in match.groupdict().items()}
        return None


class Connection:
    """One client connection: requests in turn, until it closes or is hijacked."""

    def __init__(self, sock: socket.socket, router: Router) -> None:
        self.sock = sock
        self.router = router
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=256 << 10)
        self.hijacked = False

    def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.sock.sendall(data)

    def peer_closed(self) -> bool:
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
            return bool(ready) and not self.sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _next(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            self.h11.receive_data(data)

    def _read_request(self) -> Request | None:
        event = self._next()
        if not isinstance(event, h11.Request):
            return None
        body = bytearray()
        while True:
            part = self._next()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > _MAX_BODY:
                    raise DockerError(413, "request body too large")
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return None
        target = event.target.decode("latin-1")
        url = urlsplit(target)
        path, version = url.path, None
        m = _VERSION_RE.match(path)
        if m:
            version, path = m.group(1), m.group(2)
        return Request(
            method=event.method.decode(), path=path.rstrip("/") or "/", api_version=version,
            query=parse_qs(url.query, keep_blank_values=True),
            headers={k.decode().lower(): v.decode("latin-1") for k, v in event.headers},
            body=bytes(body), conn=self,
        )  # fmt: skip

    def serve(self) -> None:
        try:
            while True:
                try:
                    req = self._read_request()
                except DockerError as e:
                    self._answer(None, _error(e))
                    return
                except h11.RemoteProtocolError as e:
                    with contextlib.suppress(h11.LocalProtocolError, OSError):
                        self._answer(None, _error(DockerError(400, f"bad request: {e}")))
                    return
                if req is None:
                    return
                resp = self._dispatch(req)
                if resp is ANSWERED or self.hijacked:
                    if not self.hijacked:
                        with contextlib.suppress(h11.LocalProtocolError):
                            self.send(h11.EndOfMessage())
                    return
                self._answer(req, resp)
                if self.h11.our_state is h11.MUST_CLOSE:
                    return
                try:
                    self.h11.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (OSError, h11.LocalProtocolError):
            pass  # the client went away
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()

    def _dispatch(self, req: Request) -> Response:
        found = self.router.find(req.method, req.path)
        if found is None:
            return _error(DockerError(404, "page not found"))
        handler, req.params = found
        try:
            return handler(req)
        except DockerError as e:
            if self.hijacked or self.h11.our_state is not h11.SEND_RESPONSE:
                log.info("%s %s failed after answering: %s", req.method, req.path, e.message)
                return ANSWERED
            return _error(e)
        except Exception as e:  # answered as Docker's 500 rather than a dropped connection
            log.exception("%s %s failed", req.method, req.path)
            if self.hijacked or self.h11.our_state is not h11.SEND_RESPONSE:
                return ANSWERED
            return _error(DockerError(500, f"{type(e).__name__}: {e}"))

    def _answer(self, req: Request | None, resp: Response) -> None:
        headers = [*resp.headers, ("Server", "torpor-dockerd"),
                   ("Api-Version", API_VERSION), ("Ostype", "linux"),
                   ("Docker-Experimental", "true")]  # fmt: skip
        body = b"" if req is not None and req.method == "HEAD" else resp.body
        if resp.status not in (204, 304):
            headers.append(("Content-Length", str(len(resp.body))))
        self.send(h11.Response(status_code=resp.status, headers=headers))
        if body and resp.status not in (204, 304):
            self.send(h11.Data(data=body))
        self.send(h11.EndOfMessage())


API_VERSION = "1.47"  # the Docker Engine API version torpor dockerd speaks
MIN_API_VERSION = "1.24"


def _error(e: DockerError) -> Response:
    return json_response({"message": e.message}, e.status)


# ------------------------------------------------------------------------------ listeners


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        router: Router = self.server.router  # type: ignore[attr-defined]
        Connection(self.request, router).serve()


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, router: Router, *, group: int = 0) -> None:
        self.router = router
        self._bind_path = path
        self._group = group
        super().__init__(path, _Handler)

    def server_bind(self) -> None:
        """Bind with a umask that leaves no moment the socket is open to all, then give it
        0660 and its group (root's by default, as Docker's docker.sock)."""
        old = os.umask(0o177)
        try:
            super().server_bind()
        finally:
            os.umask(old)
        os.chown(self._bind_path, 0, self._group)
        os.chmod(self._bind_path, 0o660)


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], router: Router) -> None:
        self.router = router
        super().__init__(addr, _Handler)


def prepare_socket_path(path: str) -> None:
    """Make the socket's directory; remove a socket left by a daemon that is gone, refuse
    one that still answers."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use: another daemon listens on it")
