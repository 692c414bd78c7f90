"""Files in and out of a sandbox, and file operations in it, through torpor-init's verbs.

`put DIR` reads an archive (torpor's own stream format, `torpor.sandbox.archive`) on its
stdin and unpacks it under DIR; `get PATH` writes one of PATH; `stat PATH` prints what
PATH is (d, f or o). `copy_in` and `copy_out` give Docker's `cp` semantics on top.
`stat -l`, `ls`, `mkdir`, `rm` and `mv` describe and change files in place; their exit
status says what went wrong (see `_FAILURES`). Every call acts on a sandbox record the
caller holds locked and checked running.
"""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

from torpor.sandbox import archive
from torpor.sandbox.engine import (
    FileEntry,
    FileErrorReason,
    FileType,
    SandboxConflict,
    SandboxError,
    SandboxFileError,
    SandboxFileExists,
    SandboxFileNotFound,
    SandboxInfo,
)
from torpor.sandbox.gvisor.client import InitClient
from torpor.sandbox.gvisor.runsc import last_line

# torpor-init's exit status for a failed file operation -> what the error says
_FAILURES: dict[int, tuple[FileErrorReason, str]] = {
    3: ("not_found", "no such file or directory"),
    4: ("not_a_directory", "not a directory"),
    5: ("exists", "file exists"),
    6: ("not_empty", "directory not empty"),
    7: ("is_a_directory", "is a directory"),
    8: ("permission_denied", "permission denied"),
}
_VERBS = {"stat": "stat", "ls": "list", "rm": "remove", "mkdir": "make directory",
          "mv": "move"}  # fmt: skip
_TYPES: dict[str, FileType] = {"f": "file", "d": "dir", "l": "symlink", "o": "other"}


def parse_entries(out: bytes, top: str) -> list[FileEntry]:
    """The records `stat -l` and `ls` print (`TYPE MODE UID GID SIZE MTIME NUL PATH NUL
    TARGET NUL`); a relative PATH is under `top`."""
    fields = out.split(b"\0")
    entries = []
    for i in range(0, len(fields) - 2, 3):
        kind, mode, uid, gid, size, mtime = fields[i].decode().split(" ")
        shown = fields[i + 1].decode(errors="surrogateescape")
        target = fields[i + 2].decode(errors="surrogateescape")
        path = posixpath.join(top, shown)
        entries.append(FileEntry(
            name=shown if "/" in shown and not shown.startswith("/") else posixpath.basename(path),
            path=path, type=_TYPES.get(kind, "other"), size=int(size), mode=int(mode, 8),
            mtime=float(mtime), uid=int(uid), gid=int(gid),
            link_target=target if kind == "l" else None,
        ))  # fmt: skip
    return entries


def _absolute(path: str) -> str:
    if not path.startswith("/"):
        raise SandboxError(f"path must be absolute (start with /): {path!r}")
    return path


class Files:
    """File transfer for the sandboxes of one engine."""

    def __init__(self, client: InitClient) -> None:
        self.client = client

    def put(self, info: SandboxInfo, parent: str, writer: Any) -> None:
        """Unpack what `writer(stream)` writes (an archive) under `parent`."""
        cmd = self.client.command(info, ["put", parent])
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stderr is not None
        try:
            writer(proc.stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the client ended early: its stderr and exit status say why
        err = proc.stderr.read()
        if proc.wait() != 0:
            self.client.raise_if_gone(info)
            raise SandboxError(f"copy into {info.name}:{parent} failed: {last_line(err)}")

    def kind(self, info: SandboxInfo, path: str) -> str | None:
        """'d' (a directory), 'f' (a regular file), 'o' (anything else), following
        links; None if nothing is there."""
        proc = self.client.run(info, ["stat", path], check=False, timeout=30)
        if proc.returncode != 0:
            return None
        return proc.stdout.decode().strip()[:1] or None

    def get(self, info: SandboxInfo, path: str) -> subprocess.Popen[bytes]:
        """A client writing the archive of `path` on its stdout (see `finish_get`)."""
        cmd = self.client.command(info, ["get", path])
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def finish_get(self, info: SandboxInfo, proc: subprocess.Popen[bytes], path: str) -> None:
        assert proc.stderr is not None and proc.stdout is not None
        # Stop reading first: if we gave up half way (not a regular file, a bad entry), the
        # client must not stay blocked on a full pipe while we wait for it.
        proc.stdout.close()
        err = proc.stderr.read()
        if proc.wait() != 0:
            self.client.raise_if_gone(info)
            raise SandboxError(f"{info.name}:{path}: {last_line(err) or 'cannot read'}")

    def abandon_get(
        self, info: SandboxInfo, proc: subprocess.Popen[bytes], path: str, why: SandboxError
    ) -> None:
        """We stopped reading a `get` stream half way: end the client, then report why
        (or that the sandbox is gone, if that is what cut the stream short)."""
        try:
            self.finish_get(info, proc, path)
        except SandboxConflict:
            raise
        except SandboxError as e:
            if "No such file or directory" in str(e):  # nothing there: that is why
                raise SandboxFileNotFound(
                    f"no such file or directory in sandbox {info.name}: {path}",
                    path=path, reason="not_found",
                ) from None
            # else the client's complaint about the cut stream: `why` says more
        raise SandboxError(f"{info.name}:{path}: {why}") from None

    def copy_in(self, info: SandboxInfo, src: Path, dest: str) -> None:
        """Copy a host file or directory into the sandbox, with `docker cp` semantics."""
        kind = self.kind(info, dest)
        if kind == "d":
            parent, arcname = dest, src.name or "root"
        else:
            p = PurePosixPath(dest)
            parent, arcname = str(p.parent), p.name
            if kind is None and self.kind(info, parent) != "d":
                raise SandboxError(f"{parent}: no such directory in sandbox {info.name}")
        self.put(info, parent, lambda f: archive.write_archive(src, f, arcname))

    def copy_out(self, info: SandboxInfo, src: str, dest: Path) -> None:
        """Copy a sandbox file or directory to the host, with `docker cp` semantics."""
        if dest.is_dir():
            parent, rename = dest, None
        else:
            if not dest.parent.is_dir():
                raise SandboxError(f"{dest.parent}: no such directory")
            parent, rename = dest.parent, dest.name
        proc = self.get(info, src)
        assert proc.stdout is not None
        try:
            archive.extract_archive(proc.stdout, parent, rename_top=rename)
        except SandboxError as e:
            self.abandon_get(info, proc, src, e)
        self.finish_get(info, proc, src)

    def read_file(self, info: SandboxInfo, path: str) -> bytes:
        """A regular file's contents (through a symlink, the file it leads to)."""
        proc = self.get(info, path)
        assert proc.stdout is not None
        try:
            data = archive.read_single_file(proc.stdout)
        except SandboxError as e:
            if "is not a regular file" not in str(e):
                self.abandon_get(info, proc, path, e)
            return self.read_file(info, self._file_behind(info, proc, path).path)
        self.finish_get(info, proc, path)
        return data

    def _file_behind(self, info: SandboxInfo, proc: subprocess.Popen[bytes],
                     path: str) -> FileEntry:  # fmt: skip
        """`read_file` met something else than a regular file at `path`: the entry of the
        regular file a symlink there leads to, else an error that says what it is."""
        try:
            self.finish_get(info, proc, path)
        except SandboxConflict:
            raise
        except SandboxError:
            pass  # the stream was cut short on purpose
        entry = self.stat(info, path, follow=True)
        if entry.type == "file":
            return entry
        what = "a directory" if entry.type == "dir" else "something else"
        raise SandboxFileError(
            f"{path} in sandbox {info.name} is {what}, not a regular file: cannot read it",
            path=path, reason="is_a_directory" if entry.type == "dir" else "other",
        ) from None

    # ---------------------------------------------------------------- in place

    def _op(self, info: SandboxInfo, args: list[str], path: str) -> bytes:
        """Run a file verb; its failure as the SandboxFileError its exit status names."""
        proc = self.client.run(info, args, timeout=60, check=False)
        if proc.returncode == 0:
            return proc.stdout
        what = _VERBS.get(args[0], args[0])
        if proc.returncode in _FAILURES:
            reason, text = _FAILURES[proc.returncode]
            where = last_line(proc.stderr).removeprefix("torpor-init:").strip()
            where = where.split(": ")[1] if where.count(": ") >= 2 else path
            cls = {"not_found": SandboxFileNotFound, "exists": SandboxFileExists}.get(
                reason, SandboxFileError)  # fmt: skip
            hint = "; remove it with recursive=True" if reason == "not_empty" else ""
            raise cls(f"cannot {what} {path} in sandbox {info.name}: "
                      f"{'' if where == path else where + ': '}{text}{hint}",
                      path=where, reason=reason)  # fmt: skip
        self.client.raise_if_gone(info)
        msg = last_line(proc.stderr).removeprefix("torpor-init:").strip()
        raise SandboxFileError(f"cannot {what} {path} in sandbox {info.name}: {msg}", path=path)

    def stat(self, info: SandboxInfo, path: str, *, follow: bool = False) -> FileEntry:
        out = self._op(info, ["stat", "-l", *(["-L"] if follow else []), _absolute(path)], path)
        [entry] = parse_entries(out, "/")
        return entry

    def list(self, info: SandboxInfo, path: str, *, depth: int = 1) -> list[FileEntry]:
        if depth < 1:
            raise SandboxError(f"depth must be 1 or more, not {depth}")
        out = self._op(info, ["ls", "-d", str(depth), _absolute(path)], path)
        return parse_entries(out, path)

    def remove(self, info: SandboxInfo, path: str, *, recursive: bool = False) -> None:
        self._op(info, ["rm", *(["-r"] if recursive else []), _absolute(path)], path)

    def mkdir(self, info: SandboxInfo, path: str, *, parents: bool = True,
              mode: int = 0o755) -> bool:  # fmt: skip
        args = ["mkdir", *(["-p"] if parents else []), "-m", f"{mode:o}", _absolute(path)]
        return self._op(info, args, path).strip() == b"1"

    def move(self, info: SandboxInfo, src: str, dst: str) -> None:
        self._op(info, ["mv", _absolute(src), _absolute(dst)], src)

    def write_file(self, info: SandboxInfo, path: str, data: bytes, mode: int = 0o644) -> None:
        p = PurePosixPath(path)
        self.put(info, str(p.parent), lambda f: archive.write_bytes_archive(data, f, p.name, mode))
