"""The sandbox resource over HTTP (`torpor.Client(...).sandboxes`): a `RemoteSandbox` has
the method names of `torpor.sandbox.Sandbox` where they overlap, and returns the same
types (ExecResult, ProcessInfo, FileEntry; CommandTimeout past a timeout), plus what the
resource adds (pause, resume, snapshots, the timeout settings).

    c = torpor.Client("http://127.0.0.1:8420", token="tpk_...")
    sb = c.sandboxes.create(image="base", timeout=300, on_timeout="pause")
    sb.exec("echo hi", on_stdout=print)      # streamed, then the result
    sb.files.write("/work/x", "kept")
    sb.pause()                               # 0 bytes of memory while paused
    sb.exec("cat /work/x")                   # resumed first (auto_resume)
    sb.kill()
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from torpor.api.remote import ApiError, HttpClient, raise_for
from torpor.runtime.sandboxes.records import SandboxRow, SnapshotRow
from torpor.sandbox.engine import CommandTimeout, ExecResult, FileEntry, OutputCallback
from torpor.sandbox.handle import ProcessInfo

_ROW_FIELDS = set(SandboxRow.__dataclass_fields__)


def sandbox_row(view: dict[str, Any]) -> SandboxRow:
    """The row of the API's view of a sandbox (which leaves out its env and holder)."""
    return SandboxRow(**{k: v for k, v in view.items() if k in _ROW_FIELDS})


def _snapshot(view: dict[str, Any]) -> SnapshotRow:
    return SnapshotRow(tenant=None, **view)


def _process(view: dict[str, Any]) -> ProcessInfo:
    return ProcessInfo(id=view["id"], pid=view["pid"], state=view["state"],
                       exit_code=view["exit_code"], command=view["command"])  # fmt: skip


def _env(env: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if env is None:
        return {}
    if isinstance(env, Mapping):
        return dict(env)
    return dict(e.split("=", 1) for e in env)


class Sandboxes:
    """`Client.sandboxes`: create, get and list sandboxes."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def create(self, image: str = "base", *, snapshot: str | None = None,
               timeout: float | None = 300.0, on_timeout: str = "pause",
               auto_resume: bool = True, metadata: Mapping[str, str] | None = None,
               env: Mapping[str, str] | None = None) -> RemoteSandbox:  # fmt: skip
        body: dict[str, Any] = {"image": image, "timeout": timeout, "on_timeout": on_timeout,
                                "auto_resume": auto_resume, "metadata": dict(metadata or {}),
                                "env": dict(env or {})}  # fmt: skip
        if snapshot is not None:
            body["snapshot"] = snapshot
        view = self.client.request("POST", "/v1/sandboxes", json=body)
        return RemoteSandbox(self.client, view["id"], view)

    def get(self, sid: str) -> RemoteSandbox:
        view = self.client.request("GET", f"/v1/sandboxes/{sid}")
        return RemoteSandbox(self.client, sid, view)

    def list(self, state: str | None = None) -> list[RemoteSandbox]:
        out: list[RemoteSandbox] = []
        offset: int | None = 0
        while offset is not None:
            params: dict[str, Any] = {"offset": offset, "limit": 500}
            if state:
                params["state"] = state
            page = self.client.request("GET", "/v1/sandboxes", params=params)
            out += [RemoteSandbox(self.client, v["id"], v) for v in page["sandboxes"]]
            offset = page["next_offset"]
        return out


class RemoteSandbox:
    """A sandbox of a torpor server (see the module)."""

    def __init__(self, client: HttpClient, sid: str, view: dict[str, Any] | None = None) -> None:
        self.client = client
        self.id = self.ref = sid
        self.last_info = sandbox_row(view) if view is not None else None

    def __repr__(self) -> str:
        return f"RemoteSandbox({self.id!r})"

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _path(self, rest: str = "") -> str:
        return f"/v1/sandboxes/{self.id}{rest}"

    def _call(self, method: str, rest: str = "", **kw: Any) -> Any:
        return self.client.request(method, self._path(rest), **kw)

    @property
    def info(self) -> SandboxRow:
        self.last_info = sandbox_row(self._call("GET"))
        return self.last_info

    @property
    def state(self) -> str:
        return self.info.state

    @property
    def files(self) -> RemoteFiles:
        return RemoteFiles(self)

    # -- commands -------------------------------------------------------------------------

    def exec(self, cmd: str | Sequence[str], *,
             env: Mapping[str, str] | Sequence[str] | None = None, cwd: str | None = None,
             user: str | None = None, timeout: float = 60.0, stdin: bytes | str | None = None,
             on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None,
             capture: bool = True) -> ExecResult:  # fmt: skip
        """Run a command to its end (a string runs with /bin/sh -c), its output passed to
        the callbacks as it comes; CommandTimeout past `timeout` seconds (with the output
        so far)."""
        body: dict[str, Any] = {"cmd": cmd if isinstance(cmd, str) else list(cmd),
                                "env": _env(env), "timeout": timeout, "encoding": "base64"}
        if cwd:
            body["cwd"] = cwd
        if user:
            body["user"] = user
        if stdin is not None:
            body["stdin"] = stdin if isinstance(stdin, str) else stdin.decode()
        out: list[bytes] = []
        err: list[bytes] = []
        end = self._stream("POST", "/exec", {"json": body, "timeout": httpx.Timeout(
            30, read=timeout + 60)}, out, err, on_stdout, on_stderr, capture)  # fmt: skip
        result = ExecResult(int(end.get("exit_code", 1)), b"".join(out), b"".join(err))
        if end["type"] == "timeout":
            raise CommandTimeout(end.get("message", "command timed out"), result)
        return result

    def _stream(self, method: str, rest: str, kw: dict[str, Any], out: list[bytes],
                err: list[bytes], on_stdout: OutputCallback | None,
                on_stderr: OutputCallback | None, capture: bool) -> dict[str, Any]:  # fmt: skip
        """Read an NDJSON output stream (base64 data); returns its last line."""
        try:
            with self.client.http.stream(method, self._path(rest), **kw) as r:
                if r.status_code >= 400:
                    r.read()
                    raise_for(r)
                for line in r.iter_lines():
                    if not line:
                        continue
                    ev = json.loads(line)
                    if ev["type"] in ("stdout", "stderr"):
                        data = base64.b64decode(ev["data"])
                        keep, cb = (out, on_stdout) if ev["type"] == "stdout" else (err, on_stderr)
                        if capture:
                            keep.append(data)
                        if cb is not None:
                            cb(data)
                    elif ev["type"] == "error":
                        raise ApiError(int(ev.get("status", 500)), ev.get("message", ""))
                    else:
                        return dict(ev)
        except httpx.TransportError as e:
            raise ApiError(0, f"cannot reach {self.client.base_url}: {e}") from None
        raise ApiError(0, "the output stream ended without its last line")

    def spawn(self, cmd: str | Sequence[str], *,
              env: Mapping[str, str] | Sequence[str] | None = None, cwd: str | None = None,
              user: str | None = None, stdin: bool = False) -> RemoteProcess:  # fmt: skip
        """Start a command in the background (its output kept; `stdin`: kept open)."""
        body: dict[str, Any] = {"cmd": cmd if isinstance(cmd, str) else list(cmd),
                                "env": _env(env), "stdin": stdin}
        if cwd:
            body["cwd"] = cwd
        if user:
            body["user"] = user
        return RemoteProcess(self, int(self._call("POST", "/processes", json=body)["id"]))

    def process(self, id: int) -> RemoteProcess:
        return RemoteProcess(self, id)

    def processes(self) -> list[ProcessInfo]:
        return [_process(v) for v in self._call("GET", "/processes")["processes"]]

    # -- lifecycle ------------------------------------------------------------------------

    def pause(self) -> SandboxRow:
        """Checkpoint it into the server's snapshot store and stop it (0 bytes of memory
        while paused); returns once the snapshot is stored."""
        self.last_info = sandbox_row(self._call("POST", "/pause"))
        return self.last_info

    def resume(self) -> bool:
        """Resume it; False if it was running."""
        view = self._call("POST", "/resume")
        self.last_info = sandbox_row(view)
        return bool(view.get("resumed"))

    def checkpoint(self, name: str | None = None) -> SnapshotRow:
        """A snapshot of it (it keeps running), as `Sandbox.checkpoint`."""
        return _snapshot(self._call("POST", "/snapshots", json={"name": name} if name else {}))

    snapshot = checkpoint

    def checkpoints(self) -> list[SnapshotRow]:
        return [_snapshot(v) for v in self._call("GET", "/snapshots")["snapshots"]]

    def remove_checkpoint(self, snapshot: str) -> None:
        self._call("DELETE", f"/snapshots/{snapshot}")

    def fork(self, *, snapshot: str | None = None) -> RemoteSandbox:
        """A new sandbox from one of its snapshots (default: one taken now)."""
        view = self._call("POST", "/fork", json={"snapshot": snapshot} if snapshot else {})
        return RemoteSandbox(self.client, view["id"], view)

    def set_timeout(self, timeout: float | None, *, on_timeout: str | None = None,
                    auto_resume: bool | None = None) -> SandboxRow:  # fmt: skip
        body: dict[str, Any] = {"timeout": timeout}
        if on_timeout is not None:
            body["on_timeout"] = on_timeout
        if auto_resume is not None:
            body["auto_resume"] = auto_resume
        self.last_info = sandbox_row(self._call("PATCH", json=body))
        return self.last_info

    def kill(self) -> None:
        """Kill it (its named snapshots stay)."""
        self.last_info = sandbox_row(self._call("DELETE"))


class RemoteProcess:
    """A process started in a remote sandbox, as `torpor.sandbox.Process`."""

    def __init__(self, sandbox: RemoteSandbox, id: int) -> None:
        self.sandbox, self.id = sandbox, id

    def __repr__(self) -> str:
        return f"RemoteProcess({self.id} in {self.sandbox.id})"

    def info(self) -> ProcessInfo:
        return _process(self.sandbox._call("GET", f"/processes/{self.id}"))

    def output(self) -> tuple[bytes, bytes]:
        d = self.sandbox._call("GET", f"/processes/{self.id}/output",
                               params={"encoding": "base64"})  # fmt: skip
        return base64.b64decode(d["stdout"]), base64.b64decode(d["stderr"])

    def stream(self, on_stdout: OutputCallback | None = None,
               on_stderr: OutputCallback | None = None) -> int | None:  # fmt: skip
        end = self.sandbox._stream("GET", f"/processes/{self.id}/output/stream", {
            "params": {"encoding": "base64"}, "timeout": httpx.Timeout(30, read=None)},
            [], [], on_stdout, on_stderr, False)  # fmt: skip
        return end.get("exit_code")

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (info := self.info()).running:
            if deadline is not None and time.monotonic() >= deadline:
                raise CommandTimeout(f"process {self.id} in sandbox {self.sandbox.id} still "
                                     f"runs after {timeout} s (it was left running)")  # fmt: skip
            time.sleep(0.05)
        return info.exit_code

    def kill(self, signal: str | int = "KILL") -> None:
        self.sandbox._call("POST", f"/processes/{self.id}/kill", json={"signal": str(signal)})

    def write(self, data: bytes | str) -> None:
        payload = data.encode() if isinstance(data, str) else data
        self.sandbox._call("POST", f"/processes/{self.id}/stdin", json={
            "data": base64.b64encode(payload).decode(), "encoding": "base64"})

    def close_stdin(self) -> None:
        self.sandbox._call("POST", f"/processes/{self.id}/stdin", json={"close": True})


def _entry(view: dict[str, Any]) -> FileEntry:
    return FileEntry(**view)


class RemoteFiles:
    """The files of a remote sandbox, as `torpor.sandbox.SandboxFiles`."""

    def __init__(self, sandbox: RemoteSandbox) -> None:
        self.sandbox = sandbox

    def read(self, path: str) -> bytes:
        try:
            r = self.sandbox.client.http.get(self.sandbox._path("/files"), params={"path": path})
        except httpx.TransportError as e:
            raise ApiError(0, f"cannot reach {self.sandbox.client.base_url}: {e}") from None
        raise_for(r)
        return r.content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def write(self, path: str, data: bytes | str, *, mode: int = 0o644) -> FileEntry:
        payload = data.encode() if isinstance(data, str) else data
        return _entry(self.sandbox._call("PUT", "/files", params={"path": path, "mode": mode},
                                         content=payload,
                                         headers={"Content-Type": "application/octet-stream"}))

    def stat(self, path: str, *, follow: bool = False) -> FileEntry:
        return _entry(self.sandbox._call("GET", "/files/stat",
                                         params={"path": path, "follow": follow}))  # fmt: skip

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def list(self, path: str, *, depth: int = 1) -> list[FileEntry]:
        d = self.sandbox._call("GET", "/files/list", params={"path": path, "depth": depth})
        return [_entry(v) for v in d["entries"]]

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self.sandbox._call("DELETE", "/files", params={"path": path, "recursive": recursive})

    def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755) -> bool:
        return bool(self.sandbox._call("POST", "/files/mkdir", json={
            "path": path, "parents": parents, "mode": mode})["created"])

    def move(self, src: str, dst: str) -> None:
        self.sandbox._call("POST", "/files/move", json={"src": src, "dst": dst})
