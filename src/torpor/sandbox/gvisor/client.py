"""The torpor-init client: how the host asks a sandbox's init to run commands.

Every process torpor starts in a sandbox is a child of torpor-init (PID 1), because on
the pinned runsc build processes started by `runsc exec` do not survive
checkpoint/restore. The host talks to init through the host channel: init listens on a
Unix socket in a per-sandbox host directory bind-mounted at /.torpor-ctl
(`--host-uds=create`), and the host runs the same static binary as a client
(`init --connect SOCKET VERB ...`), a ~1 ms process instead of a `runsc exec` (~50 ms of
Go start-up). gVisor cannot checkpoint a socket bound on a host file, so a checkpoint
first asks init to `prepare` (close it), and the host writes a token file that tells
init when it was restored (or kept running) so it listens again. docs/sandbox-init.md
has the protocol.

`InitClient` acts on a sandbox record the caller holds locked (see the engine); file
transfer is in `files.py`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from torpor.files import writer_tag
from torpor.sandbox.engine import (
    CommandTimeout,
    ExecResult,
    OutputCallback,
    ProcessNotFound,
    ProcessStdinClosed,
    SandboxConflict,
    SandboxError,
    SandboxInfo,
    SandboxNotRunning,
)
from torpor.sandbox.gvisor import streams
from torpor.sandbox.gvisor.records import Records
from torpor.sandbox.gvisor.runsc import Driver, last_line


def not_running(info: SandboxInfo, why: str = "") -> SandboxNotRunning:
    return SandboxNotRunning(
        f"sandbox {info.name} is not running ({why or f'state: {info.state}'}): start it "
        "again, or restore one of its checkpoints"
    )


def client_args(
    argv: Sequence[str],
    *,
    interactive: bool,
    detach: bool,
    env: Sequence[str],
    workdir: str | None,
    user_ids: tuple[int, int] | None,
    timeout: float | None = None,
) -> list[str]:
    """The arguments of init's `exec` verb."""
    if not argv:
        raise SandboxError("no command given")
    args = ["exec"]
    if timeout is not None:
        args += ["-t", f"{timeout:g}"]
    if detach:
        args.append("-d")
    if interactive:
        args.append("-i")
    if workdir:
        args += ["-w", workdir]
    for e in env:
        if "=" not in e:
            raise SandboxError(f"invalid environment entry {e!r}: expected KEY=VALUE")
        args += ["-e", e]
    if user_ids is not None:
        args += ["-u", f"{user_ids[0]}:{user_ids[1]}"]
    return [*args, "--", *argv]


class InitClient:
    """torpor-init's client side for the sandboxes of one engine."""

    def __init__(self, records: Records, driver: Driver,
                 init_dir: Callable[[], Path]) -> None:  # fmt: skip
        self.records = records
        self.driver = driver
        self._init_dir = init_dir

    # ---------------------------------------------------------------- the channel

    def channel_dir(self, info: SandboxInfo) -> Path:
        return self.records.dir(info.id) / "ctl"

    def channel_token(self, info: SandboxInfo, kind: str) -> None:
        """Tell a prepared init (see `prepare`) that it was restored or kept running.
        Written by rename, so a link planted in the directory by the sandbox is replaced,
        never followed."""
        d = self.channel_dir(info)
        d.mkdir(mode=0o700, exist_ok=True)
        tmp = d / f".token-{writer_tag()}{threading.get_ident()}"
        tmp.write_text(f"{kind} {secrets.token_hex(8)}\n")
        os.replace(tmp, d / "token")

    def command(self, info: SandboxInfo, args: Sequence[str]) -> list[str]:
        """The command line that runs torpor-init's client side for info's sandbox: on
        the host, through the host channel (init notices a restore by itself, through
        the channel's token file)."""
        sock = self.channel_dir(info) / "init.sock"
        alive = ["--alive", str(info.pid)] if info.pid else []
        return [str(self._init_dir() / "init"), "--connect", str(sock), *alive, *args]

    def ping(self, info: SandboxInfo) -> subprocess.CompletedProcess[bytes]:
        """init's `ping`, without the retries and checks of `run` (see Driver.wait_ready)."""
        return subprocess.run(self.command(info, ["ping"]), capture_output=True, timeout=20)

    def run(
        self,
        info: SandboxInfo,
        args: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        retry: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run torpor-init's client side, its output collected."""
        kw: dict[str, Any] = {"input": input} if input is not None else {}
        try:
            proc = subprocess.run(
                self.command(info, args),
                capture_output=True,
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
                **kw,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"{args[0]} in sandbox {info.name} timed out") from None
        if retry and self.unstuck(info, proc.returncode, proc.stderr):
            return self.run(info, args, input=input, timeout=timeout, check=check, retry=False)
        if check and proc.returncode != 0:
            self.raise_if_gone(info)
            msg = last_line(proc.stderr) or f"exit status {proc.returncode}"
            raise SandboxError(f"{args[0]} in sandbox {info.name} failed: {msg}")
        return proc

    def unstuck(self, info: SandboxInfo, code: int, err: bytes) -> bool:
        """After a client could not reach init through the host channel: if the sandbox
        runs, init was left prepared by a checkpoint that never happened (its caller died
        in between). Tell it to listen again; True means: try once more."""
        if not (code == 125 and b"cannot connect to init" in err):
            return False
        if self.driver.runsc_state(info.id) != "running":
            return False
        self.channel_token(info, "resumed")
        return True

    @staticmethod
    def maybe_gone(code: int, err: bytes) -> bool:
        """After a failed command: could the sandbox itself have died? Not when init's
        client reported the command's own failure; yes when it exited 125 (it could not
        reach init, or lost it) or when runsc (not init) complained."""
        return code != 0 and (code == 125 or not err.startswith(b"torpor-init"))

    def raise_if_gone(self, info: SandboxInfo) -> None:
        if self.driver.runsc_state(info.id) != "running":
            self.driver.reconcile(info)
            raise not_running(info, "it exited")

    # ---------------------------------------------------------------- processes

    def exec(
        self,
        info: SandboxInfo,
        argv: Sequence[str],
        *,
        stdin: bytes | BinaryIO | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user_ids: tuple[int, int] | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        capture: bool = True,
    ) -> ExecResult:
        """Run a command to completion, its output passed on and kept (see Engine.exec)."""
        args = client_args(argv, interactive=stdin is not None, detach=False, env=env,
                           workdir=workdir, user_ids=user_ids, timeout=timeout)  # fmt: skip
        for _attempt in range(2):
            proc = subprocess.Popen(
                self.command(info, args),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            # The timeout is enforced by init's client (`exec -t`: SIGTERM, then SIGKILL
            # 5 s later, exit 124). The host only gives up if the client itself stops
            # answering, well after that.
            try:
                got = streams.run(
                    proc, stdin=stdin, timeout=None if timeout is None else timeout + 30,
                    cancel=cancel, on_stdout=on_stdout, on_stderr=on_stderr, capture=capture,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                _abandon(proc)
                raise SandboxError(
                    f"command in sandbox {info.name} did not stop after its {timeout} s "
                    "timeout; the client was abandoned"
                ) from None
            if not self.unstuck(info, proc.returncode, got.head):
                break
        if got.held and on_stderr is not None:
            on_stderr(got.held)
        result = ExecResult(proc.returncode, got.stdout, got.stderr)
        if timeout is not None and proc.returncode == 124 and b"timed out after" in got.tail:
            raise CommandTimeout(
                f"command timed out after {timeout} s in sandbox {info.name} (it was stopped: "
                "give it a longer timeout, or start it in the background with spawn)",
                result,
            )
        if self.maybe_gone(proc.returncode, got.head):
            self.raise_if_gone(info)
        return result

    def spawn(
        self,
        info: SandboxInfo,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user_ids: tuple[int, int] | None = None,
        stdin: bool = False,
    ) -> int:
        """Start a background process (a child of init, so it survives checkpoints);
        returns its init process id (see `processes`). With `stdin`, init keeps its stdin
        open for `write_stdin`."""
        args = client_args(argv, interactive=stdin, detach=True, env=env, workdir=workdir,
                           user_ids=user_ids)  # fmt: skip
        proc = self.run(info, args, timeout=60)
        try:
            return int(proc.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SandboxError(
                f"starting {argv[0]} in {info.name} failed: {last_line(proc.stderr)}"
            ) from None

    def processes(self, info: SandboxInfo) -> list[dict[str, Any]]:
        """Processes started through init: id, pid, state, exit code, argv."""
        out = self.run(info, ["ps"], timeout=30).stdout.decode(errors="replace")
        rows = []
        for line in out.splitlines():
            parts = line.split(None, 4)
            if len(parts) < 4 or not parts[0].isdigit():
                continue
            rows.append(
                {
                    "id": int(parts[0]),
                    "pid": int(parts[1]) if parts[1].isdigit() else None,
                    "state": parts[2],
                    "exit": None if parts[3] == "-" else int(parts[3]),
                    "argv": parts[4] if len(parts) > 4 else "",
                }
            )
        return rows


    def kill_process(self, info: SandboxInfo, process: int, sig: str | int = "TERM") -> None:
        """Signal a process started through init (its process group); nothing happens if
        it has exited."""
        proc = self.run(info, ["kill", str(process), str(sig)], timeout=30, check=False)
        if proc.returncode == 0:
            return
        msg = last_line(proc.stderr).removeprefix("torpor-init:").strip()
        if proc.returncode == 1 and msg.startswith("no such process"):
            raise ProcessNotFound(_no_such_process(info, process))
        if proc.returncode == 2 and msg.startswith("bad signal"):
            raise SandboxError(f"{msg} (use a name such as TERM, KILL, INT, HUP, or a number)")
        self.raise_if_gone(info)
        raise SandboxError(f"kill in sandbox {info.name} failed: {msg or proc.returncode}")

    def write_stdin(self, info: SandboxInfo, process: int, data: bytes, *,
                    close: bool = False) -> None:  # fmt: skip
        """Write to a background process's stdin (init's `input`); `close`: then close it."""
        args = ["input", *(["-c"] if close else []), str(process)]
        proc = self.run(info, args, input=data, timeout=60, check=False)
        self._verb_error(info, process, proc, "input", ProcessStdinClosed)

    def forget_process(self, info: SandboxInfo, process: int) -> None:
        """Drop an exited process's output files and its `ps` line (init's `forget`)."""
        proc = self.run(info, ["forget", str(process)], timeout=30, check=False)
        self._verb_error(info, process, proc, "forget", SandboxConflict)

    def _verb_error(self, info: SandboxInfo, process: int,
                    proc: subprocess.CompletedProcess[bytes], verb: str,
                    refused: type[SandboxError]) -> None:  # fmt: skip
        """After init's `input` or `forget`: exit 1 is an unknown process, 3 a refusal in
        the process's state (its message says which)."""
        if proc.returncode == 0:
            return
        msg = last_line(proc.stderr).removeprefix("torpor-init:").strip()
        if proc.returncode == 1 and msg.startswith("no such process"):
            raise ProcessNotFound(_no_such_process(info, process))
        if proc.returncode == 3:
            raise refused(f"process {process} in sandbox {info.name}: {msg}")
        self.raise_if_gone(info)
        raise SandboxError(f"{verb} in sandbox {info.name} failed: {msg or proc.returncode}")

    def process_output(
        self,
        info: SandboxInfo,
        process: int,
        *,
        follow: bool = False,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        cancel: threading.Event | Sequence[threading.Event] | None = None,
    ) -> tuple[bytes, bytes]:
        """A process's output kept by init, (stdout, stderr); with `follow`, until the
        process exits (or `cancel` is set: the follower stops, the process goes on),
        passed to the callbacks as it comes."""
        args = ["logs", *(["-f"] if follow else []), str(process)]
        for _attempt in range(2):
            proc = subprocess.Popen(self.command(info, args), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
            got = streams.run(proc, on_stdout=on_stdout, on_stderr=on_stderr, cancel=cancel)
            if not self.unstuck(info, proc.returncode, got.head):
                break
        if proc.returncode == 1 and got.stderr.startswith(b"torpor-init: no such process"):
            raise ProcessNotFound(_no_such_process(info, process))
        stops = [cancel] if isinstance(cancel, threading.Event) else list(cancel or [])
        if any(e.is_set() for e in stops):  # stopped following: not a failure
            return got.stdout, got.stderr
        if got.held and on_stderr is not None:
            on_stderr(got.held)
        if proc.returncode != 0:
            self.raise_if_gone(info)
            raise SandboxError(
                f"output of process {process} in sandbox {info.name}: {last_line(got.stderr)}"
            )
        return got.stdout, got.stderr


def _no_such_process(info: SandboxInfo, process: int) -> str:
    return (f"no such process: {process} in sandbox {info.name} (ids come from spawn, or "
            "the processes listing)")  # fmt: skip


def _abandon(proc: subprocess.Popen[bytes]) -> None:
    """Kill a client that stopped answering (its output threads then end)."""
    proc.kill()
    proc.wait()
