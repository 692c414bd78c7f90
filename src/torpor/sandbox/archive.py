"""The host side of torpor-init's archive stream (`init get` / `init put`).

Written by hand rather than using tar because the other end is torpor-init, a small
static C program that must work in images without tar: the format is the simplest one
that carries files, directories, symlinks and modes (see docs/sandbox-init.md).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from torpor.sandbox.engine import SandboxError

_HEAD = struct.Struct(">cIQI")
_CHUNK = 1 << 20


def _safe_rel(path: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise SandboxError(f"archive entry with unsafe path {path!r}")
    return p


def write_archive(src: Path, out: BinaryIO, arcname: str) -> None:
    """Write src (file, symlink or directory tree) to out, with its top entry named arcname."""

    def record(kind: bytes, mode: int, size: int, rel: str) -> None:
        name = rel.encode()
        out.write(_HEAD.pack(kind, mode & 0o7777, size, len(name)))
        out.write(name)

    def one(path: Path, rel: str) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path).encode()
            record(b"l", 0o777, len(target), rel)
            out.write(target)
        elif stat.S_ISDIR(st.st_mode):
            record(b"d", st.st_mode, 0, rel)
            for child in sorted(os.listdir(path)):
                one(path / child, f"{rel}/{child}")
        elif stat.S_ISREG(st.st_mode):
            record(b"f", st.st_mode, st.st_size, rel)
            with open(path, "rb") as f:
                left = st.st_size
                while left:
                    buf = f.read(min(_CHUNK, left))
                    if not buf:
                        raise SandboxError(f"{path} shrank while being copied")
                    out.write(buf)
                    left -= len(buf)
        # sockets, fifos and devices are skipped, as docker cp does for special files

    _safe_rel(arcname)
    one(src, arcname)
    out.write(_HEAD.pack(b"Z", 0, 0, 0))


def write_bytes_archive(data: bytes, out: BinaryIO, arcname: str, mode: int = 0o644) -> None:
    name = str(_safe_rel(arcname)).encode()
    out.write(_HEAD.pack(b"f", mode, len(data), len(name)))
    out.write(name)
    out.write(data)
    out.write(_HEAD.pack(b"Z", 0, 0, 0))


def _read_exact(f: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = f.read(n - len(buf))
        if not part:
            raise SandboxError("archive stream ended early (was the sandbox stopped?)")
        buf += part
    return bytes(buf)


def iter_archive(f: BinaryIO) -> Iterator[tuple[str, str, int, int]]:
    """Yield (kind, relpath, mode, size) for each entry; the caller must consume `size`
    bytes of content from f (via copy_content/_read_exact) before asking for the next."""
    while True:
        kind, mode, size, plen = _HEAD.unpack(_read_exact(f, _HEAD.size))
        if kind == b"Z":
            return
        rel = str(_safe_rel(_read_exact(f, plen).decode()))
        if kind not in (b"f", b"d", b"l"):
            raise SandboxError(f"archive stream has an unknown entry type {kind!r}")
        yield kind.decode(), rel, mode, size


def extract_archive(f: BinaryIO, dest: Path, rename_top: str | None = None) -> list[Path]:
    """Extract a stream under dest. If rename_top is given, the stream's top entry is
    written as dest/rename_top instead of under its own name. Returns the top paths."""
    tops: list[Path] = []
    for kind, rel, mode, size in iter_archive(f):
        parts = PurePosixPath(rel).parts
        if rename_top is not None:
            parts = (rename_top, *parts[1:])
        target = dest.joinpath(*parts)
        if len(parts) == 1:
            tops.append(target)
        if kind == "d":
            target.mkdir(exist_ok=True)
            os.chmod(target, mode)
        elif kind == "l":
            link = _read_exact(f, size).decode()
            if target.is_symlink() or target.exists():
                target.unlink()
            os.symlink(link, target)
        else:
            with open(target, "wb") as out:
                left = size
                while left:
                    buf = f.read(min(_CHUNK, left))
                    if not buf:
                        raise SandboxError("archive stream ended early (was the sandbox stopped?)")
                    out.write(buf)
                    left -= len(buf)
            os.chmod(target, mode)
    return tops


def read_single_file(f: BinaryIO) -> bytes:
    """Read a stream holding exactly one regular file and return its bytes."""
    data: bytes | None = None
    for kind, rel, _mode, size in iter_archive(f):
        if kind != "f" or data is not None:
            raise SandboxError(f"{rel} is not a regular file")
        data = _read_exact(f, size)
    if data is None:
        raise SandboxError("empty archive stream")
    return data
