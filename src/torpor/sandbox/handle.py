"""`Sandbox`: a handle on one sandbox, the one way torpor's front doors hold a sandbox.

    from torpor.sandbox import Sandbox

    with Sandbox.create(image="base", env={"MODE": "dev"}) as sb:
        res = sb.exec("echo hi; exit 3", on_stdout=print)     # streamed, then the result
        assert res.exit_code == 3 and res.stdout == b"hi\\n"
        sb.files.write("/work/notes.txt", "kept\\n")
        server = sb.spawn(["python3", "-m", "http.server"])  # in the background
        ck = sb.checkpoint()                                  # keeps running
        fork = sb.fork()                                      # a second, independent one
        copy = Sandbox.restore(ck)                            # and a third
    # leaving the block kills the sandbox (not the fork nor the copy: kill() them)

A handle names its sandbox by a reference: `create`, `get` and `restore` bind it to the
sandbox's id (stable across renames); `Sandbox(ref, engine=...)` binds it to whatever
sandbox `ref` names when it is used (a name a later restore may give to another
sandbox), without checking anything. Every call asks the engine, so a handle is never
stale; `info` is the sandbox's record as of the call.

Errors are `SandboxError` subclasses with a message that says what to do:
`SandboxNotFound` (no such sandbox), `SandboxNotRunning` (a command or file operation
on a stopped sandbox), `CommandTimeout` (with the output so far), `ProcessNotFound`,
`SandboxFileNotFound`, `SandboxFileExists`, `SandboxFileError` (with a `reason`),
`CheckpointError`.

Without `engine=`, handles use `default_engine()`: the one given to
`set_default_engine`, else `open_engine()` over TORPOR_HOME (checkpoints kept in
TORPOR_HOME/checkpoints). torpor's CLI and runtime keep checkpoints in the snapshot
store: pass their engine to share them.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from torpor.sandbox.engine import (
    CheckpointInfo,
    CommandTimeout,
    Engine,
    ExecResult,
    FileEntry,
    NetworkMode,
    OutputCallback,
    PortMapping,
    ProcessNotFound,
    SandboxFileNotFound,
    SandboxInfo,
    SandboxNotFound,
    SandboxSpec,
    SandboxState,
    Tmpfs,
    Volume,
    parse_bytes,
)

__all__ = [
    "Checkpoint",
    "Process",
    "ProcessInfo",
    "Sandbox",
    "SandboxFiles",
    "default_engine",
    "set_default_engine",
]

_default: Engine | None = None
_default_lock = threading.Lock()
_ID_RE = re.compile(r"[0-9a-f]{12}")


def default_engine() -> Engine:
    """The engine of handles made without `engine=`: the one `set_default_engine` gave,
    else `open_engine()` (made on first use, its runsc checked by torpor's self-test)."""
    global _default
    with _default_lock:
        if _default is None:
            from torpor.sandbox.factory import open_engine

            _default = open_engine()
        return _default


def set_default_engine(engine: Engine | None) -> None:
    """Make `engine` the default of handles made without one (None: back to
    `open_engine()` on next use)."""
    global _default
    with _default_lock:
        _default = engine


def _argv(cmd: str | Sequence[str]) -> list[str]:
    """A command line: a string runs with /bin/sh -c, a sequence as it is."""
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    return list(cmd)


def _env(env: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if env is None:
        return []
    if isinstance(env, Mapping):
        return [f"{k}={v}" for k, v in env.items()]
    return list(env)


# ------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class ProcessInfo:
    """A process started in a sandbox (by `spawn` or `exec`), as its init records it."""

    id: int  # init's id for it (what `process`, `kill` take)
    pid: int | None  # its pid in the sandbox
    state: str  # "running" or "exited"
    exit_code: int | None  # once exited (128+N: killed by signal N)
    command: str  # its argv, joined by spaces

    @property
    def running(self) -> bool:
        return self.state == "running"


class Process:
    """A process started in a sandbox (see `Sandbox.spawn`): its output is kept by the
    sandbox's init (and survives checkpoints) until the sandbox goes."""

    def __init__(self, sandbox: Sandbox, id: int) -> None:
        self.sandbox = sandbox
        self.id = id

    def __repr__(self) -> str:
        return f"Process({self.id} in {self.sandbox.ref})"

    def info(self) -> ProcessInfo:
        for p in self.sandbox.processes():
            if p.id == self.id:
                return p
        raise ProcessNotFound(
            f"no such process: {self.id} in sandbox {self.sandbox.ref} (ids come from "
            "spawn, or the processes listing)"
        )

    def output(self) -> tuple[bytes, bytes]:
        """Everything it printed so far: (stdout, stderr)."""
        return self.sandbox.engine.process_output(self.sandbox.ref, self.id)

    def stream(self, on_stdout: OutputCallback | None = None,
               on_stderr: OutputCallback | None = None,
               cancel: threading.Event | Sequence[threading.Event] | None = None
               ) -> int | None:  # fmt: skip
        """Pass its output (from the start) to the callbacks as it comes, until it
        exits; returns its exit code. Setting `cancel` stops the streaming (not the
        process: it then returns None if the process still runs)."""
        self.sandbox.engine.process_output(self.sandbox.ref, self.id, follow=True,
                                           on_stdout=on_stdout, on_stderr=on_stderr,
                                           **({"cancel": cancel} if cancel else {}))  # fmt: skip
        return self.info().exit_code

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until it exits; returns its exit code. CommandTimeout if it still runs
        after `timeout` seconds (it keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while (info := self.info()).running:
            if deadline is not None and time.monotonic() >= deadline:
                raise CommandTimeout(f"process {self.id} in sandbox {self.sandbox.ref} still "
                                     f"runs after {timeout} s (it was left running)")  # fmt: skip
            time.sleep(delay if deadline is None else min(delay, deadline - time.monotonic()))
            delay = min(delay * 1.5, 0.2)
        return info.exit_code

    def kill(self, signal: str | int = "KILL") -> None:
        """Send it (its process group) a signal: a name (KILL, TERM, INT, HUP) or a
        number. Nothing happens if it has exited."""
        self.sandbox.engine.kill_process(self.sandbox.ref, self.id, signal)

    def write(self, data: bytes | str) -> None:
        """Write to its stdin (started with `spawn(..., stdin=True)`; a str as UTF-8).
        ProcessStdinClosed if its stdin is not open."""
        payload = data.encode() if isinstance(data, str) else data
        self.sandbox.engine.write_stdin(self.sandbox.ref, self.id, payload)

    def close_stdin(self) -> None:
        """Close its stdin: it reads EOF."""
        self.sandbox.engine.write_stdin(self.sandbox.ref, self.id, b"", close=True)

    def forget(self) -> None:
        """Drop its kept output and its entry in `processes`, once it has exited (its
        output otherwise stays in the sandbox's memory, and every checkpoint, until the
        sandbox goes)."""
        self.sandbox.engine.forget_process(self.sandbox.ref, self.id)


# ---------------------------------------------------------------------------------- files


class SandboxFiles:
    """The files of a sandbox (`Sandbox.files`). Paths are absolute, in the sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def read(self, path: str) -> bytes:
        """A regular file's contents (through a symlink: the file it leads to)."""
        return self.sandbox.engine.read_file(self.sandbox.ref, path)

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def write(self, path: str, data: bytes | str | BinaryIO, *, mode: int = 0o644) -> None:
        """Create or replace a file (a str is written as UTF-8); missing parent
        directories are created."""
        payload = data.encode() if isinstance(data, str) else data
        self.sandbox.engine.write_file(self.sandbox.ref, path, payload, mode)

    def stat(self, path: str, *, follow: bool = False) -> FileEntry:
        """What is at `path` (the link itself for a symlink, unless `follow`: then what
        it leads to, with its real path). SandboxFileNotFound if nothing is."""
        return self.sandbox.engine.stat_file(self.sandbox.ref, path, follow=follow)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except SandboxFileNotFound:
            return False
        return True

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, a symlink or an empty directory; `recursive`: a directory with
        everything in it."""
        self.sandbox.engine.remove_file(self.sandbox.ref, path, recursive=recursive)

    def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755) -> bool:
        """Create a directory (and, with `parents`, its missing parents). False if it was
        there already (with `parents`; without, SandboxFileExists)."""
        return self.sandbox.engine.make_dir(self.sandbox.ref, path, parents=parents,
                                            mode=mode)  # fmt: skip

    def move(self, src: str, dst: str) -> None:
        """Rename `src` to `dst` (replacing a file there; within one filesystem)."""
        self.sandbox.engine.move_file(self.sandbox.ref, src, dst)

    def upload(self, src: str | Path, dest: str) -> None:
        """Copy a host file or directory in (`docker cp` semantics: into `dest` if it is
        a directory, else as `dest`)."""
        self.sandbox.engine.copy_in(self.sandbox.ref, Path(src), dest)

    def download(self, src: str, dest: str | Path) -> None:
        """Copy a file or directory out to the host (`docker cp` semantics)."""
        self.sandbox.engine.copy_out(self.sandbox.ref, src, Path(dest))

    def list(self, path: str, *, depth: int = 1) -> list[FileEntry]:
        """The entries of a directory, sorted by name, down to `depth` levels (deeper
        entries are named by their path relative to `path`). Links are not followed."""
        return self.sandbox.engine.list_files(self.sandbox.ref, path, depth=depth)


# ---------------------------------------------------------------------------- checkpoints


class Checkpoint:
    """A checkpoint of a sandbox: every process, its memory and its files, restorable
    as a new sandbox (`restore`) or into its own (`Sandbox.start(checkpoint=...)`)."""

    def __init__(self, info: CheckpointInfo, engine: Engine) -> None:
        self.info = info
        self.engine = engine

    def __repr__(self) -> str:
        return f"Checkpoint({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def sandbox(self) -> str:
        """The name of the sandbox it was taken from."""
        return self.info.sandbox

    @property
    def size(self) -> int:
        return self.info.size

    def restore(self, *, name: str | None = None,
                owner: dict[str, Any] | None = None) -> Sandbox:  # fmt: skip
        """A new sandbox from this checkpoint (see `Sandbox.restore`)."""
        return Sandbox.restore(self, name=name, owner=owner)

    def remove(self) -> None:
        self.engine.remove_checkpoint(None, self.id)


# -------------------------------------------------------------------------------- sandbox


class Sandbox:
    """A handle on one sandbox of an engine (see the module's docstring)."""

    def __init__(self, ref: str, *, engine: Engine | None = None,
                 info: SandboxInfo | None = None) -> None:  # fmt: skip
        """Bind to the sandbox `ref` names (a name or an id), checking nothing (`get`
        checks): no call about the sandbox is made. Without `engine`, the default one
        (opened on first use: see `default_engine`)."""
        self.engine = engine if engine is not None else default_engine()
        self.ref = ref
        # The record as the call that made (or last started) this handle saw it: create,
        # get, restore, list and start set it; `info` reads it again.
        self.last_info = info

    def __repr__(self) -> str:
        return f"Sandbox({self.ref!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sandbox) and (other.engine, other.ref) == (self.engine,
                                                                            self.ref)  # fmt: skip

    def __hash__(self) -> int:
        return hash(self.ref)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(SandboxNotFound):  # removed inside the block
            self.kill()

    # ------------------------------------------------------------------ making one

    @classmethod
    def create(
        cls,
        image: str = "base",
        *,
        engine: Engine | None = None,
        name: str | None = None,
        cmd: str | Sequence[str] | None = None,
        env: Mapping[str, str] | Sequence[str] | None = None,
        workdir: str = "",
        user: str = "",
        memory: int | str | None = None,
        cpus: float | None = None,
        pids: int | None = 4096,
        network: NetworkMode = "none",
        ports: Sequence[str | PortMapping] = (),
        volumes: Sequence[str | Volume] = (),
        tmpfs: Sequence[str | Tmpfs] = (),
        owner: dict[str, Any] | None = None,
        start: bool = True,
    ) -> Sandbox:
        """Start a sandbox from `image` (a torpor image name: `base` is torpor/base);
        returns once it answers (`start=False`: only record it, state "created", and
        `start()` boots it later, as Docker's `create`). `cmd` is its main process (a
        string runs with /bin/sh -c; default: none, the sandbox idles); `memory` in
        bytes or as `512m`; `network` "none" (loopback only) or "sandbox" (needed by
        `ports`, "HOST:CTR" published on 127.0.0.1); `volumes` "HOST:CTR[:ro]" (not
        part of checkpoints); `tmpfs` "PATH[:size=N,mode=M]"; `owner`: see
        torpor.sandbox.owners."""
        engine = engine if engine is not None else default_engine()
        spec = SandboxSpec(
            image=image,
            cmd=_argv(cmd) if cmd is not None else [],
            env=_env(env),
            workdir=workdir,
            user=user,
            volumes=[v if isinstance(v, Volume) else Volume.parse(v) for v in volumes],
            network=network,
            ports=[p if isinstance(p, PortMapping) else PortMapping.parse(p) for p in ports],
            memory=parse_bytes(memory) if isinstance(memory, str) else memory,
            cpus=cpus,
            pids=pids,
            tmpfs=[t if isinstance(t, Tmpfs) else Tmpfs.parse(t) for t in tmpfs],
        )
        if start:
            info = engine.run(spec, name=name, owner=owner)
        else:
            info = engine.create(spec, name=name, owner=owner)
        return cls(info.id, engine=engine, info=info)

    @classmethod
    def get(cls, ref: str, *, engine: Engine | None = None) -> Sandbox:
        """The sandbox `ref` names (its name, its id, or a unique prefix of its id),
        bound to its id. SandboxNotFound if there is none."""
        engine = engine if engine is not None else default_engine()
        try:
            info = engine.inspect(ref)
        except SandboxNotFound:
            raise SandboxNotFound(
                f"no such sandbox: {ref} (Sandbox.list(all=True) lists this engine's "
                f"sandboxes, in {getattr(engine, 'home', 'its home')})"
            ) from None
        return cls(info.id, engine=engine, info=info)

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint | str,
        *,
        engine: Engine | None = None,
        name: str | None = None,
        owner: dict[str, Any] | None = None,
    ) -> Sandbox:
        """A new, independent sandbox from a checkpoint (a `Checkpoint`, or its id or
        unique name), running where the checkpoint left off."""
        if isinstance(checkpoint, Checkpoint):
            engine = engine if engine is not None else checkpoint.engine
            checkpoint = checkpoint.id
        engine = engine if engine is not None else default_engine()
        info = engine.restore(checkpoint, name=name, owner=owner)
        return cls(info.id, engine=engine, info=info)

    # ------------------------------------------------------------------ what it is

    @property
    def info(self) -> SandboxInfo:
        """Its record (state, spec, pid, ...), as of this call."""
        return self.engine.inspect(self.ref)

    @property
    def id(self) -> str:
        return self.ref if _ID_RE.fullmatch(self.ref) else self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def state(self) -> SandboxState:
        return self.info.state

    @property
    def files(self) -> SandboxFiles:
        return SandboxFiles(self)

    # ------------------------------------------------------------------ commands

    def exec(
        self,
        cmd: str | Sequence[str],
        *,
        env: Mapping[str, str] | Sequence[str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | BinaryIO | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        capture: bool = True,
        cancel: threading.Event | None = None,
    ) -> ExecResult:
        """Run a command to its end (a string runs with /bin/sh -c) and return its exit
        code and output. The callbacks get the output as it comes (with
        `capture=False`, only they do). `stdin`: bytes, a str (UTF-8) or a binary stream
        read until its end. Past `timeout` seconds the command is stopped (TERM, then
        KILL) and CommandTimeout raised, with the output so far. Setting `cancel` stops
        it too (the call then returns)."""
        kw: dict[str, Any] = {}
        if on_stdout is not None or on_stderr is not None or not capture:
            kw = {"on_stdout": on_stdout, "on_stderr": on_stderr, "capture": capture}
        data = stdin.encode() if isinstance(stdin, str) else stdin
        return self.engine.exec(self.ref, _argv(cmd), stdin=data, env=_env(env), workdir=cwd,
                                user=user, timeout=timeout, cancel=cancel, **kw)  # fmt: skip

    def spawn(
        self,
        cmd: str | Sequence[str],
        *,
        env: Mapping[str, str] | Sequence[str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: bool = False,
    ) -> Process:
        """Start a command in the background; it survives checkpoints, and its output is
        kept (`Process.output`, `Process.stream`). With `stdin`, its stdin stays open
        for `Process.write` and `Process.close_stdin` (else it reads /dev/null)."""
        kw: dict[str, Any] = {"stdin": True} if stdin else {}
        pid = self.engine.spawn(self.ref, _argv(cmd), env=_env(env), workdir=cwd, user=user,
                                **kw)  # fmt: skip
        return Process(self, pid)

    def process(self, id: int) -> Process:
        """The process with this id (from `spawn` or `processes`); not checked here."""
        return Process(self, id)

    def processes(self) -> list[ProcessInfo]:
        """The processes started in it (`exec` and `spawn`), running or exited."""
        return [
            ProcessInfo(id=p["id"], pid=p["pid"], state=p["state"], exit_code=p["exit"],
                        command=p["argv"])
            for p in self.engine.processes(self.ref)
        ]  # fmt: skip

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, name: str | None = None, *, leave_running: bool = True) -> Checkpoint:
        """Checkpoint it whole (processes, memory, files) as `name` (default: a
        timestamp). It keeps running unless `leave_running` is False (then it stops, and
        `start(checkpoint=...)` resumes it: a pause)."""
        info = self.engine.checkpoint(self.ref, name, leave_running=leave_running)
        return Checkpoint(info, self.engine)

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint(CheckpointInfo.from_json(m), self.engine)
                for m in self.engine.list_checkpoints(self.ref)]  # fmt: skip

    def remove_checkpoint(self, checkpoint: Checkpoint | str) -> None:
        """Delete one of its checkpoints (a `Checkpoint`, or its id or name)."""
        ref = checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint
        self.engine.remove_checkpoint(self.ref, ref)

    def fork(self, *, name: str | None = None, owner: dict[str, Any] | None = None) -> Sandbox:
        """A new, independent sandbox from a checkpoint of this one, which keeps running
        (the checkpoint is kept: the fork's `info.restored_from`)."""
        return Sandbox.restore(self.checkpoint(leave_running=True), engine=self.engine,
                               name=name, owner=owner)  # fmt: skip

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, checkpoint: Checkpoint | str | None = None) -> Sandbox:
        """Start it again: fresh from its image, or from one of its checkpoints (a
        restore in place: same name and id)."""
        ref = checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint
        self.last_info = self.engine.start(self.ref, checkpoint=ref)
        return self

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM, then SIGKILL after `timeout`); it can be started again."""
        self.engine.stop(self.ref, timeout=timeout)

    def kill(self) -> None:
        """Kill it at once and remove it with everything it held (its checkpoints
        stay)."""
        self.engine.remove(self.ref, force=True)

    def remove(self, *, force: bool = False) -> None:
        """Remove a sandbox that is not running (`force`: kill it first)."""
        self.engine.remove(self.ref, force=force)

    def rename(self, new_name: str) -> None:
        self.engine.rename(self.ref, new_name)

    def wait(self) -> int:
        """Wait until its main process exits; returns its exit code."""
        return self.engine.wait(self.ref)

    def logs(self, *, follow: bool = False, on_output: OutputCallback | None = None) -> bytes:
        """The output of its main process (stdout and stderr together); with `follow`,
        until it stops, passed to `on_output` as it comes (then not returned)."""
        path = self.engine.console_path(self.ref)
        kept: list[bytes] = []
        emit = on_output if on_output is not None else kept.append
        with open(path, "rb") if path.exists() else io.BytesIO() as f:
            while True:
                if chunk := f.read(1 << 16):
                    emit(chunk)
                    continue
                if not follow or self.state != "running":
                    if rest := f.read():
                        emit(rest)
                    return b"".join(kept)
                time.sleep(0.1)

    @classmethod
    def list(cls, *, engine: Engine | None = None, all: bool = False) -> list[Sandbox]:
        """The running sandboxes of the engine (`all`: stopped ones too)."""
        engine = engine if engine is not None else default_engine()
        return [cls(info.id, engine=engine, info=info) for info in engine.list(all=all)]
