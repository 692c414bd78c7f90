"""Files in and out of a sandbox, through torpor-init's `put`, `get` and `stat` verbs.

`put DIR` reads an archive (torpor's own stream format, `torpor.sandbox.archive`) on its
stdin and unpacks it under DIR; `get PATH` writes one of PATH; `stat PATH` prints what
PATH is (d, f or o). `copy_in` and `copy_out` give Docker's `cp` semantics on top.
Every call acts on a sandbox record the caller holds locked and checked running.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

from torpor.sandbox import archive
from torpor.sandbox.engine import SandboxConflict, SandboxError, SandboxInfo
from torpor.sandbox.gvisor.client import InitClient
from torpor.sandbox.gvisor.runsc import last_line


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
        except SandboxError:
            pass  # the client's complaint about the cut stream: `why` says more
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
        proc = self.get(info, path)
        assert proc.stdout is not None
        try:
            data = archive.read_single_file(proc.stdout)
        except SandboxError as e:
            self.abandon_get(info, proc, path, e)
        self.finish_get(info, proc, path)
        return data

    def write_file(self, info: SandboxInfo, path: str, data: bytes, mode: int = 0o644) -> None:
        p = PurePosixPath(path)
        self.put(info, str(p.parent), lambda f: archive.write_bytes_archive(data, f, p.name, mode))
