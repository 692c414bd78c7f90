"""`FakeEngine`: a test double of the sandbox `Engine` interface, for tests of pure logic.

It is not a sandbox and isolates nothing. Each "sandbox" is a directory on the host that
stands for its root filesystem (sandbox paths such as /tmp/x map to DIR/tmp/x); commands
run as host processes of the test's own user, in that directory (a sandbox path given as
`workdir`), with a plain environment (PATH, HOME and TMPDIR inside the directory); so a
command that names an absolute path reaches the host's, not the sandbox's. Files are
host files under the directory; background processes are host processes whose output is
kept in files; a checkpoint copies the directory (processes and memory are not kept: a
restore has none running), a restore copies it back or into a new sandbox.

What it is for: the logic above the engine (the agent's tool schemas, the registry, the
built-in tools' argument handling, output caps, error messages, the Sandbox handle's
plumbing) tested without root, runsc or the base image. What a real sandbox does
(isolation, users, what survives a checkpoint, init's process records) is tested on the
real runsc, never here.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from torpor.sandbox.engine import (
    CheckpointError,
    CheckpointInfo,
    CommandTimeout,
    Engine,
    ExecResult,
    FileEntry,
    FileType,
    OutputCallback,
    ProcessNotFound,
    SandboxConflict,
    SandboxError,
    SandboxFileError,
    SandboxFileExists,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxSpec,
    check_name,
)
from torpor.sandbox.images import BASE_IMAGE, Image, ImageNotFound, canonical_name

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _signal(sig: str | int) -> int:
    """A signal number from a name (TERM, SIGTERM) or a number, as torpor-init reads it."""
    text = str(sig).upper().removeprefix("SIG")
    if text.isdigit():
        return int(text)
    try:
        return int(signal.Signals[f"SIG{text}"])
    except KeyError:
        raise SandboxError(f"bad signal: {sig} (use a name such as TERM, KILL, INT, HUP, "
                           "or a number)") from None  # fmt: skip


def _status(code: int) -> int:
    """A Popen return code as a shell reports it (128+N: killed by signal N)."""
    return 128 - code if code < 0 else code


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    argv: list[str]
    out: Path
    err: Path


@dataclass
class _Box:
    info: SandboxInfo
    dir: Path  # holds fs/ (the sandbox's root), procs/, console.log
    procs: dict[int, _Proc] = field(default_factory=dict)

    @property
    def fs(self) -> Path:
        return self.dir / "fs"


class FakeImages:
    """What the runtime asks of an image store (`get`, `root`), for the fake engine: the
    base image under its names (an empty tree), plus the names given. Nothing is pulled
    or built."""

    def __init__(self, root: Path, names: Sequence[str] = ()) -> None:
        self.root = root
        self._names = {BASE_IMAGE, *names}

    def get(self, name: str) -> Image:
        full = canonical_name(name)
        if full not in self._names:
            raise ImageNotFound(f"no such image: {name} (try `torpor images`)")
        rootfs = self.root / full.replace("/", "_").replace(":", "_")
        rootfs.mkdir(parents=True, exist_ok=True)
        return Image(name=full, digest="sha256:" + "0" * 64, rootfs=rootfs,
                     env=("PATH=" + PATH,), cmd=(), entrypoint=(), workdir="/", user="",
                     size=0, created=_now())  # fmt: skip


class FakeEngine(Engine):
    """The Engine interface over host directories and host processes (see the module's
    docstring: a test double, not a sandbox)."""

    name = "fake"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root
        self.images = FakeImages(root / "images")
        self._boxes: dict[str, _Box] = {}
        self._checkpoints: dict[str, CheckpointInfo] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ sandboxes

    def _box(self, ref: str) -> _Box:
        for box in self._boxes.values():
            if ref in (box.info.id, box.info.name):
                return box
        raise SandboxNotFound(f"no such sandbox: {ref}")

    def _running(self, ref: str) -> _Box:
        box = self._box(ref)
        if box.info.state != "running":
            raise SandboxNotRunning(f"sandbox {box.info.name} is not running (state: "
                                    f"{box.info.state})")  # fmt: skip
        return box

    def _new(self, spec: SandboxSpec, name: str | None, owner: dict[str, Any] | None) -> _Box:
        with self._lock:
            if name is not None:
                check_name(name)
                if any(b.info.name == name for b in self._boxes.values()):
                    raise SandboxConflict(f"the name {name} is already in use")
            sid = secrets.token_hex(6)
            info = SandboxInfo(id=sid, name=name or f"sb-{sid[:6]}", state="running",
                               spec=spec, image_digest="sha256:fake", created=_now(),
                               started=_now(),
                               owner=owner or {"kind": self.owner_kind})  # fmt: skip
            box = _Box(info, self.root / "sandboxes" / sid)
            self._boxes[sid] = box
        for d in ("tmp", "root"):
            (box.fs / d).mkdir(parents=True, exist_ok=True)
        (box.dir / "procs").mkdir()
        (box.dir / "console.log").touch()
        return box

    def run(self, spec: SandboxSpec, *, name: str | None = None,
            owner: dict[str, Any] | None = None) -> SandboxInfo:  # fmt: skip
        return self._new(spec, name, owner).info

    def inspect(self, sandbox: str) -> SandboxInfo:
        return self._box(sandbox).info

    def list(self, *, all: bool = False) -> list[SandboxInfo]:
        return [b.info for b in self._boxes.values() if all or b.info.state == "running"]

    def rename(self, sandbox: str, new_name: str, *,
               owner: dict[str, Any] | None = None) -> SandboxInfo:  # fmt: skip
        box = self._box(sandbox)
        check_name(new_name)
        box.info.name = new_name
        if owner is not None:
            box.info.owner = owner
        return box.info

    def _stop_procs(self, box: _Box) -> None:
        for p in box.procs.values():
            if p.popen.poll() is None:
                os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait()

    def stop(self, sandbox: str, *, timeout: float = 10.0) -> SandboxInfo:
        box = self._box(sandbox)
        self._stop_procs(box)
        box.info.state, box.info.exit_code = "exited", 137
        return box.info

    def start(self, sandbox: str, *, checkpoint: str | None = None) -> SandboxInfo:
        box = self._box(sandbox)
        if box.info.state == "running":
            raise SandboxConflict(f"sandbox {box.info.name} is already running")
        if checkpoint is not None:
            ck = self._checkpoint(checkpoint)
            shutil.rmtree(box.fs)
            shutil.copytree(self.root / "checkpoints" / ck.id, box.fs, symlinks=True)
            box.info.restored_from = ck.id
        box.info.state, box.info.exit_code, box.info.started = "running", None, _now()
        return box.info

    def remove(self, sandbox: str, *, force: bool = False) -> None:
        box = self._box(sandbox)
        if box.info.state == "running" and not force:
            raise SandboxConflict(f"sandbox {box.info.name} is running: stop it first or use -f")
        self._stop_procs(box)
        shutil.rmtree(box.dir, ignore_errors=True)
        del self._boxes[box.info.id]

    def console_path(self, sandbox: str) -> Path:
        return self._box(sandbox).dir / "console.log"

    def wait(self, sandbox: str) -> int:
        return self._box(sandbox).info.exit_code or 0

    def host_path(self, sandbox: str, path: str) -> Path:
        """Where sandbox path `path` is on the host (for a test to set things up)."""
        return self._host(self._box(sandbox), path)

    # ------------------------------------------------------------------ paths

    def _host(self, box: _Box, path: str) -> Path:
        """The host path of sandbox path `path` (which stays under the sandbox's root)."""
        if not path.startswith("/"):
            raise SandboxError(f"path must be absolute (start with /): {path!r}")
        return box.fs / posixpath.normpath(path).lstrip("/")

    def _resolve(self, box: _Box, path: str) -> str:
        """`path` with every symlink in it followed, the sandbox's root as /."""
        parts = [p for p in posixpath.normpath(path).split("/") if p]
        done = "/"
        for _ in range(40):
            if not parts:
                return done
            nxt = posixpath.join(done, parts.pop(0))
            host = self._host(box, nxt)
            if host.is_symlink():
                target = os.readlink(host)
                base = "/" if target.startswith("/") else done
                parts = [p for p in posixpath.normpath(posixpath.join(base, target))
                         .split("/") if p] + parts  # fmt: skip
                done = "/"
                continue
            done = nxt
        raise SandboxFileError(f"{path}: too many levels of symbolic links", path=path)

    def _entry(self, box: _Box, path: str, name: str, *, follow: bool) -> FileEntry:
        shown = self._resolve(box, path) if follow else posixpath.normpath(path)
        host = self._host(box, shown)
        try:
            st = host.lstat()
        except FileNotFoundError:
            raise SandboxFileNotFound(f"no such file or directory in sandbox "
                                      f"{box.info.name}: {path}", path=path,
                                      reason="not_found") from None  # fmt: skip
        kind: FileType = ("symlink" if stat.S_ISLNK(st.st_mode) else "dir"
                          if stat.S_ISDIR(st.st_mode) else "file"
                          if stat.S_ISREG(st.st_mode) else "other")  # fmt: skip
        return FileEntry(name=name, path=shown, type=kind, size=st.st_size,
                         mode=stat.S_IMODE(st.st_mode), mtime=st.st_mtime, uid=st.st_uid,
                         gid=st.st_gid,
                         link_target=os.readlink(host) if kind == "symlink" else None)  # fmt: skip

    # ------------------------------------------------------------------ files

    def stat_file(self, sandbox: str, path: str, *, follow: bool = False) -> FileEntry:
        box = self._running(sandbox)
        self._host(box, path)
        return self._entry(box, path, posixpath.basename(path) or "/", follow=follow)

    def list_files(self, sandbox: str, path: str, *, depth: int = 1) -> list[FileEntry]:
        if depth < 1:
            raise SandboxError(f"depth must be 1 or more, not {depth}")
        top = self.stat_file(sandbox, path, follow=True)
        if top.type != "dir":
            raise SandboxFileError(f"cannot list {path} in sandbox {sandbox}: not a directory",
                                   path=path, reason="not_a_directory")  # fmt: skip
        box = self._box(sandbox)
        out: list[FileEntry] = []

        def walk(rel: str, level: int) -> None:
            for child in sorted(os.listdir(self._host(box, posixpath.join(top.path, rel)))):
                name = posixpath.join(rel, child) if rel else child
                entry = self._entry(box, posixpath.join(top.path, name), name, follow=False)
                out.append(entry)
                if entry.type == "dir" and level < depth:
                    walk(name, level + 1)

        walk("", 1)
        return sorted(out, key=lambda e: e.name)

    def read_file(self, sandbox: str, path: str) -> bytes:
        entry = self.stat_file(sandbox, path, follow=True)
        if entry.type != "file":
            dir_ = entry.type == "dir"
            what = "a directory" if dir_ else "something else"
            raise SandboxFileError(f"{path} in sandbox {sandbox} is {what}, not a regular "
                                   "file: cannot read it", path=path,
                                   reason="is_a_directory" if dir_ else "other")  # fmt: skip
        return self._host(self._box(sandbox), entry.path).read_bytes()

    def write_file(self, sandbox: str, path: str, data: bytes | BinaryIO,
                   mode: int = 0o644) -> None:  # fmt: skip
        host = self._host(self._running(sandbox), path)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data if isinstance(data, bytes) else data.read())
        host.chmod(mode)

    def remove_file(self, sandbox: str, path: str, *, recursive: bool = False) -> None:
        entry = self.stat_file(sandbox, path)
        host = self._host(self._box(sandbox), path)
        if entry.type != "dir":
            host.unlink()
        elif recursive:
            shutil.rmtree(host)
        elif any(host.iterdir()):
            raise SandboxFileError(f"cannot remove {path}: directory not empty", path=path,
                                   reason="not_empty")  # fmt: skip
        else:
            host.rmdir()

    def make_dir(self, sandbox: str, path: str, *, parents: bool = True,
                 mode: int = 0o755) -> bool:  # fmt: skip
        host = self._host(self._running(sandbox), path)
        if host.is_dir() and parents:
            return False
        try:
            host.mkdir(mode=mode, parents=parents)
        except FileExistsError:
            raise SandboxFileExists(f"cannot make directory {path}: file exists", path=path,
                                    reason="exists") from None  # fmt: skip
        return True

    def move_file(self, sandbox: str, src: str, dst: str) -> None:
        box = self._running(sandbox)
        os.replace(self._host(box, src), self._host(box, dst))

    def copy_in(self, sandbox: str, src: Path, dest: str) -> None:
        host = self._host(self._running(sandbox), dest)
        target = host / src.name if host.is_dir() else host
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True)
        else:
            shutil.copy2(src, target, follow_symlinks=False)

    def copy_out(self, sandbox: str, src: str, dest: Path) -> None:
        host = self._host(self._running(sandbox), src)
        target = dest / host.name if dest.is_dir() else dest
        if host.is_dir():
            shutil.copytree(host, target, symlinks=True)
        else:
            shutil.copy2(host, target, follow_symlinks=False)

    # ------------------------------------------------------------------ processes

    def _popen(self, box: _Box, argv: Sequence[str], env: Sequence[str], workdir: str | None,
               **kw: Any) -> subprocess.Popen[bytes]:  # fmt: skip
        if not argv:
            raise SandboxError("no command given")
        environ = {"PATH": PATH, "HOME": str(box.fs / "root"), "TMPDIR": str(box.fs / "tmp")}
        for e in env:
            if "=" not in e:
                raise SandboxError(f"invalid environment entry {e!r}: expected KEY=VALUE")
            k, _, v = e.partition("=")
            environ[k] = v
        cwd = self._host(box, workdir or "/")
        return subprocess.Popen(list(argv), cwd=cwd, env=environ, start_new_session=True, **kw)

    def exec(
        self,
        sandbox: str,
        argv: Sequence[str],
        *,
        stdin: bytes | BinaryIO | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,  # ignored: everything runs as the test's user
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        capture: bool = True,
    ) -> ExecResult:
        box = self._running(sandbox)
        try:
            proc = self._popen(box, argv, env, workdir, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
                               if stdin is None else subprocess.PIPE)  # fmt: skip
        except FileNotFoundError as e:
            missing = argv[0] if e.filename in (None, argv[0]) else e.filename
            code = 127 if missing == argv[0] else 126
            return ExecResult(code, b"", f"fake: {missing}: {e.strerror}\n".encode())
        chunks: dict[str, list[bytes]] = {"out": [], "err": []}

        def pump(pipe: Any, key: str, callback: OutputCallback | None) -> None:
            while data := pipe.read1(1 << 16):
                if capture:
                    chunks[key].append(data)
                if callback is not None:
                    callback(data)

        threads = [threading.Thread(target=pump, args=(proc.stdout, "out", on_stdout)),
                   threading.Thread(target=pump, args=(proc.stderr, "err", on_stderr))]  # fmt: skip
        for t in threads:
            t.start()
        if proc.stdin is not None:
            try:
                proc.stdin.write(stdin if isinstance(stdin, bytes) else stdin.read())  # type: ignore[union-attr]
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the command did not read it all
        deadline = None if timeout is None else time.monotonic() + timeout
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                os.killpg(proc.pid, signal.SIGTERM)
                break
            if deadline is not None and time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                for t in threads:
                    t.join()
                result = ExecResult(124, b"".join(chunks["out"]), b"".join(chunks["err"]))
                raise CommandTimeout(f"command timed out after {timeout} s in sandbox "
                                     f"{box.info.name}", result)  # fmt: skip
            time.sleep(0.005)
        code = proc.wait()
        for t in threads:
            t.join()
        return ExecResult(_status(code), b"".join(chunks["out"]), b"".join(chunks["err"]))

    def spawn(self, sandbox: str, argv: Sequence[str], *, env: Sequence[str] = (),
              workdir: str | None = None, user: str | None = None) -> int:  # fmt: skip
        box = self._running(sandbox)
        pid = len(box.procs) + 1
        d = box.dir / "procs" / str(pid)
        d.mkdir()
        out, err = d / "stdout", d / "stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = self._popen(box, argv, env, workdir, stdout=fo, stderr=fe,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        box.procs[pid] = _Proc(popen, list(argv), out, err)
        return pid

    def processes(self, sandbox: str) -> list[dict[str, Any]]:
        rows = []
        for pid, p in self._running(sandbox).procs.items():
            code = p.popen.poll()
            rows.append({"id": pid, "pid": p.popen.pid,
                         "state": "running" if code is None else "exited",
                         "exit": None if code is None else _status(code),
                         "argv": " ".join(p.argv)})  # fmt: skip
        return rows

    def _proc(self, sandbox: str, process: int) -> _Proc:
        box = self._running(sandbox)
        if process not in box.procs:
            raise ProcessNotFound(f"no such process: {process} in sandbox {box.info.name} "
                                  "(ids come from spawn, or the processes listing)")  # fmt: skip
        return box.procs[process]

    def kill_process(self, sandbox: str, process: int, signal: str | int = "TERM") -> None:
        p = self._proc(sandbox, process)
        sig = _signal(signal)
        if p.popen.poll() is None:
            os.killpg(p.popen.pid, sig)

    def process_output(self, sandbox: str, process: int, *, follow: bool = False,
                       on_stdout: OutputCallback | None = None,
                       on_stderr: OutputCallback | None = None) -> tuple[bytes, bytes]:  # fmt: skip
        p = self._proc(sandbox, process)
        while follow and p.popen.poll() is None:
            time.sleep(0.01)
        out, err = p.out.read_bytes(), p.err.read_bytes()
        for data, callback in ((out, on_stdout), (err, on_stderr)):
            if callback is not None and data:
                callback(data)
        return out, err

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self, ref: str) -> CheckpointInfo:
        for ck in self._checkpoints.values():
            if ref in (ck.id, ck.name):
                return ck
        raise CheckpointError(f"no such checkpoint: {ref}")

    def checkpoint(self, sandbox: str, checkpoint: str | None = None, *,
                   leave_running: bool = False) -> CheckpointInfo:  # fmt: skip
        box = self._running(sandbox)
        name = checkpoint or f"ck-{len(self._checkpoints) + 1}"
        ck_id = f"{box.info.name}-{name}-{box.info.id[:6]}"
        if ck_id in self._checkpoints:
            raise SandboxConflict(f"sandbox {box.info.name} already has a checkpoint named "
                                  f"{name}")  # fmt: skip
        t0 = time.monotonic()
        shutil.copytree(box.fs, self.root / "checkpoints" / ck_id, symlinks=True)
        size = sum(f.stat().st_size for f in (self.root / "checkpoints" / ck_id).rglob("*")
                   if f.is_file() and not f.is_symlink())  # fmt: skip
        ck = CheckpointInfo(id=ck_id, sandbox=box.info.name, created=_now(), size=size,
                            seconds=time.monotonic() - t0, engine=self.name,
                            engine_version="0", image_digest=box.info.image_digest,
                            spec=box.info.spec, leave_running=leave_running, name=name)  # fmt: skip
        self._checkpoints[ck_id] = ck
        if not leave_running:
            self._stop_procs(box)
            box.info.state = "checkpointed"
        return ck

    def restore(self, checkpoint: str, *, name: str | None = None,
                owner: dict[str, Any] | None = None) -> SandboxInfo:  # fmt: skip
        ck = self._checkpoint(checkpoint)
        box = self._new(ck.spec, name, owner)
        shutil.rmtree(box.fs)
        shutil.copytree(self.root / "checkpoints" / ck.id, box.fs, symlinks=True)
        box.info.restored_from = ck.id
        return box.info

    def remove_checkpoint(self, sandbox: str | None, checkpoint: str) -> None:
        ck = self._checkpoint(checkpoint)
        shutil.rmtree(self.root / "checkpoints" / ck.id)
        del self._checkpoints[ck.id]

    def list_checkpoints(self, sandbox: str | None = None) -> list[dict[str, Any]]:
        name = None if sandbox is None else self._box(sandbox).info.name
        return [ck.to_json() for ck in self._checkpoints.values()
                if name is None or ck.sandbox == name]  # fmt: skip
