"""`docker cp`: a path of a container as a tar (GET), its stat (HEAD, and GET's
`X-Docker-Container-Path-Stat` header), a tar extracted into a directory (PUT).

Files move through the sandbox's init (`Sandbox.files.download` / `upload`, Docker's cp
semantics) by way of a host temporary directory, where Python's tarfile packs or
unpacks them (its `tar` filter refuses absolute paths, `..` and links out of the
directory). The container must be running: a stopped sandbox's files live in its
memory, which is gone (Docker reads a stopped container's files from its layer).
"""

from __future__ import annotations

import base64
import io
import json
import posixpath
import shutil
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torpor.dockerd.errors import not_running, translated
from torpor.dockerd.server import ANSWERED, DockerError, Request, Response, empty
from torpor.sandbox.engine import FileEntry, SandboxFileNotFound
from torpor.sandbox.handle import Sandbox

if TYPE_CHECKING:
    from torpor.dockerd.core import Daemon

STAT_HEADER = "X-Docker-Container-Path-Stat"
_GO_MODE = {"dir": 1 << 31, "symlink": 1 << 27, "other": 1 << 26}  # Go's os.FileMode bits


def routes(d: Daemon) -> None:
    d.router.add("HEAD", "/containers/{ref}/archive", lambda r: head(d, r))
    d.router.add("GET", "/containers/{ref}/archive", lambda r: get(d, r))
    d.router.add("PUT", "/containers/{ref}/archive", lambda r: put(d, r))


def _running(d: Daemon, ref: str) -> Sandbox:
    sb = d.sandbox(ref)
    assert sb.last_info is not None
    if sb.last_info.state != "running":
        raise not_running(ref)
    return sb


def _path(req: Request) -> str:
    path = req.arg("path") or ""
    if not path:
        raise DockerError(400, "path is required")
    return path if path.startswith("/") else "/" + path


def _stat(sb: Sandbox, ref: str, path: str) -> FileEntry:
    try:
        return sb.files.stat(posixpath.normpath(path))
    except SandboxFileNotFound:
        raise DockerError(404, f"Could not find the file {path} in container {ref}") from None


def _stat_header(entry: FileEntry, path: str) -> tuple[str, str]:
    doc = {
        "name": posixpath.basename(posixpath.normpath(path)) or "/",
        "size": entry.size,
        "mode": entry.mode | _GO_MODE.get(entry.type, 0),
        "mtime": datetime.fromtimestamp(entry.mtime, UTC).isoformat().replace("+00:00", "Z"),
        "linkTarget": entry.link_target or "",
    }
    return STAT_HEADER, base64.b64encode(json.dumps(doc).encode()).decode()


def head(d: Daemon, req: Request) -> Response:
    ref, path = req.params["ref"], _path(req)
    sb = _running(d, ref)
    with translated(ref):
        entry = _stat(sb, ref, path)
    return Response(200, b"", [_stat_header(entry, path)])


def get(d: Daemon, req: Request) -> Response:
    ref, path = req.params["ref"], _path(req)
    sb = _running(d, ref)
    with translated(ref), tempfile.TemporaryDirectory(prefix="torpor-dockerd-") as tmp:
        entry = _stat(sb, ref, path)
        name = posixpath.basename(posixpath.normpath(path)) or "root"
        local = Path(tmp) / name
        sb.files.download(posixpath.normpath(path), local)
        out = req.stream(200, [("Content-Type", "application/x-tar"),
                               _stat_header(entry, path)])  # fmt: skip
        with tarfile.open(fileobj=_Writer(out), mode="w|") as tar:
            tar.add(local, arcname=name)
    return ANSWERED


class _Writer(io.RawIOBase):
    """A write-only file over a streamed response, for tarfile's stream mode."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.out.write(bytes(data))
        return len(data)


def _extract(body: bytes, dest: Path) -> list[Path]:
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
            tar.extractall(dest, filter="tar")
    except (tarfile.TarError, OSError) as e:
        raise DockerError(400, f"invalid tar archive: {e}") from None
    return sorted(dest.iterdir())


def put(d: Daemon, req: Request) -> Response:
    ref, path = req.params["ref"], _path(req)
    sb = _running(d, ref)
    with translated(ref), tempfile.TemporaryDirectory(prefix="torpor-dockerd-") as tmp:
        entry = _stat(sb, ref, path)
        if entry.type != "dir" and not (entry.type == "symlink" and
                                        sb.files.stat(path, follow=True).type == "dir"):
            raise DockerError(400, f"extraction point is not a directory: {path}")
        for item in _extract(req.body, Path(tmp)):
            if item.is_dir() and not item.is_symlink() and item.name == ".":
                continue
            sb.files.upload(item, path)
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
    return empty(200)
