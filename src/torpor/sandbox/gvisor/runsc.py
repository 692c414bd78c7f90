"""The runsc driver: runs `runsc` for torpor's sandboxes and knows what state they are in.

Each torpor sandbox is a one-container runsc sandbox of the same id, under one runsc
state root (TORPOR_HOME/runsc). runsc forgets a container's exit code once it stops;
only a foreground `runsc run|restore` learns it, so runsc runs in the foreground for the
sandbox's whole life, detached from the caller, under torpor-init's host-side
`supervise` role, which writes its exit code to the sandbox's exit.code and reaps what
runsc leaves behind (see `supervise` in torpor-init.c). `Driver.launch` starts it and
waits until runsc records the container as running; `Driver.reconcile` makes a record
truthful again when the sandbox died from outside; `Driver.after_stop` frees what a
stopped sandbox held.

Asking `runsc state` starts a Go program (~10 ms of CPU), so the state of a sandbox is
read from runsc's state file when its sandbox process is alive, and runsc is asked only
when in doubt (`Driver.state`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torpor.sandbox import network
from torpor.sandbox.engine import SandboxError, SandboxInfo
from torpor.sandbox.gvisor.records import Records

log = logging.getLogger(__name__)

PLATFORMS = ("systrap", "ptrace", "kvm")


def read_pid(path: Path) -> int | None:
    """The pid written in path, or None while the file is missing or not written yet."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def last_line(text: str | bytes) -> str:
    """The line of a tool's stderr that says what went wrong: for a Go panic (runsc
    prints a stack trace) the first line, else the last one."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if any(ln.startswith(("goroutine ", "panic(")) for ln in lines):
        return lines[0].rstrip(":")[:400]
    return lines[-1][:400]


class Driver:
    """runsc for the sandboxes recorded in `records`, with runsc's state under `root`."""

    # Cleanups running after stopping checkpoints (after_stop_later), by sandbox id: one
    # registry per process, so that any engine object booting the sandbox waits for them.
    _cleanups: dict[str, threading.Thread] = {}
    _cleanups_lock = threading.Lock()

    def __init__(self, binary: str, root: Path, platform: str, records: Records,
                 init_dir: Callable[[], Path]) -> None:  # fmt: skip
        self.binary = binary
        self.root = root
        self.platform = platform
        self.records = records
        self.home = records.home
        self._init_dir = init_dir  # the directory of the torpor-init binary (built lazily)
        self._version: str | None = None

    # ---------------------------------------------------------------- running runsc

    @property
    def version(self) -> str:
        if self._version is None:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
            first = (out.stdout.splitlines() or ["unknown"])[0]
            self._version = first.removeprefix("runsc version ").strip()
        return self._version

    def flags(self, info: SandboxInfo) -> list[str]:
        """runsc's global flags for info's sandbox (the same for every call about it)."""
        flags = [
            f"--root={self.root}",
            f"--platform={self.platform}",
            f"--network={'sandbox' if info.spec.network == 'sandbox' else 'none'}",
            "--overlay2=root:memory",
            # init binds its host-channel socket in a host directory (CHANNEL_MOUNT)
            "--host-uds=create",
        ]
        if info.spec.network == "sandbox":
            # TCP connections over the sandbox's interface (anything but loopback) cannot
            # be saved by this gVisor: without this flag one open or TIME_WAIT connection
            # makes the checkpoint fail *and kills the sandbox*. With it, they are reset.
            flags.append("--net-disconnect-ok")
        return flags

    def run(
        self,
        info: SandboxInfo | None,
        *args: str,
        check: bool = True,
        timeout: float | None = 60,
        **kw: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        """`runsc ARGS` with info's flags (only `--root` without info); SandboxError when
        it fails (unless check is False) or times out."""
        flags = self.flags(info) if info else [f"--root={self.root}"]
        kw.setdefault("capture_output", True)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        try:
            proc = subprocess.run([self.binary, *flags, *args], timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            raise SandboxError(f"runsc {args[0]} timed out after {timeout} s") from None
        if check and proc.returncode != 0:
            msg = last_line(proc.stderr or b"") or f"exit status {proc.returncode}"
            raise SandboxError(f"runsc {args[0]} failed: {msg}")
        return proc

    def delete(self, sid: str) -> None:
        """`runsc delete -force`: whatever runsc kept of the container goes."""
        self.run(None, "delete", "-force", sid, check=False, timeout=30)

    def runsc_state(self, sid: str) -> str:
        """'running', 'created', 'stopped', or 'missing', as `runsc state` says."""
        proc = self.run(None, "state", sid, check=False, timeout=20)
        if proc.returncode != 0:
            return "missing"
        try:
            return str(json.loads(proc.stdout)["status"])
        except (ValueError, KeyError):
            return "missing"

    def has_state(self, sid: str) -> bool:
        # A hint only (runsc's file layout), used to skip a needless `runsc delete`.
        return any(self.root.glob(f"{sid}_sandbox:*"))

    def status_hint(self, sid: str) -> str | None:
        """The container status runsc last recorded in its state file, read directly:
        a file read instead of a `runsc state` process. runsc does not update it when a
        sandbox dies from outside, so alone it is only a hint (see `state`). Each torpor
        sandbox is a one-container runsc sandbox of the same id, hence the file's name
        (read directly: `ps` asks this of every sandbox)."""
        try:
            return str(json.loads((self.root / f"{sid}_sandbox:{sid}.state")
                                  .read_bytes()).get("status"))  # fmt: skip
        except (OSError, ValueError, AttributeError):
            return None

    def why_dead(self, info: SandboxInfo) -> str | None:
        """None if info's sandbox process lives (not a zombie, and still runsc's sandbox
        of this bundle: its command line names it, so a reused pid is not taken for it),
        else why not."""
        if not info.pid:
            return "no sandbox pid recorded"
        try:
            proc_stat = Path(f"/proc/{info.pid}/stat").read_text()
            cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes()
        except OSError:
            return f"its sandbox process is gone (pid {info.pid})"
        bundle = f"--bundle={self.records.dir(info.id) / 'bundle'}".encode()
        if bundle not in cmdline.split(b"\0"):
            return f"pid {info.pid} is not its sandbox ({cmdline[:80]!r})"
        state = proc_stat.rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):
            return f"its sandbox process is gone (pid {info.pid}, a zombie)"
        return None

    def alive(self, info: SandboxInfo) -> bool:
        return self.why_dead(info) is None

    def state(self, info: SandboxInfo) -> str:
        """runsc's status of info's container, as `runsc_state`, but without starting a
        runsc process when its state file says running or created and its sandbox
        process is alive; any doubt asks runsc."""
        hint = self.status_hint(info.id)
        if hint in ("running", "created") and self.alive(info):
            return hint
        return self.runsc_state(info.id)

    # ---------------------------------------------------------------- launch

    def launch(self, info: SandboxInfo, args: list[str], *, what: str) -> str:
        """Run `runsc ARGS` for info's container under torpor-init's `supervise` role and
        wait until runsc records it as running (created, for `runsc create`). Returns
        runsc's state then; on failure deletes the container and raises SandboxError."""
        d = self.records.dir(info.id)
        create = args[0] == "create"
        # `runsc create` returns at once; its supervisor stays to reap the sandbox's
        # processes (their parent), and the later `runsc restore` gets its own. The
        # container's console goes to console.log.
        codefile = d / ("standby.code" if create else "exit.code")
        errfile, pidfile = d / "runsc.err", d / "runsc.pid"
        codefile.unlink(missing_ok=True)
        netns = network.runsc_prefix(info.id) if info.spec.network == "sandbox" else []
        t0 = time.monotonic()
        with open(d / "console.log", "ab") as out, open(errfile, "wb") as errlog:
            proc = subprocess.Popen(
                [str(self._init_dir() / "init"), "supervise", str(codefile), "--",
                 *netns, self.binary, *self.flags(info), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=errlog,
                start_new_session=True,
            )  # fmt: skip
        if not create:
            (d / "supervise.pid").write_text(str(proc.pid))
        # Wait until runsc records the container as running (a restore writes the pid file
        # before it has loaded the checkpoint, and may still fail). Polling runsc's state
        # file costs a file read; asking `runsc state` would start a Go process each time.
        want = "created" if create else "running"
        delay = 0.001
        # runsc creates the pid file before it writes the number (Go's os.WriteFile), so
        # only a number read back counts: an empty file once left a standby without a pid.
        while not (read_pid(pidfile) is not None and self.status_hint(info.id) == want):
            if codefile.exists() and not (create and self.status_hint(info.id) == want):
                return self._launch_failed(info, errfile, create=create, what=what)
            if time.monotonic() - t0 > 120:
                self.delete(info.id)
                raise SandboxError(f"sandbox {info.name} did not {what} within 120 s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.004)
        return want

    def _launch_failed(self, info: SandboxInfo, errfile: Path, *, create: bool,
                       what: str) -> str:  # fmt: skip
        """runsc ended before the container ran: a main process that already exited
        (returns runsc's state), or a failure (cleans up and raises SandboxError)."""
        state = self.runsc_state(info.id)
        err = [
            ln for ln in errfile.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.startswith("torpor-init:")
        ]  # fmt: skip
        if not err and not create:
            return state  # it ran, and its main process has already exited
        self.delete(info.id)
        if info.spec.network == "sandbox":
            network.teardown(self.home, info.id)
        reason = err[-1] if err else "runsc failed"
        raise SandboxError(f"cannot {what} sandbox {info.name}: {reason}")

    def wait_ready(self, info: SandboxInfo, deadline: float,
                   ping: Callable[[], subprocess.CompletedProcess[bytes]]) -> None:  # fmt: skip
        """Wait until init answers `ping` (or the main process already finished)."""
        delay = 0.005
        while True:
            proc = ping()
            if proc.returncode == 0:
                return
            if self.runsc_state(info.id) != "running":
                return  # the main process already finished; `ps -a` shows it exited
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"sandbox {info.name} did not become ready: {last_line(proc.stderr)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    # ---------------------------------------------------------------- stop

    def reconcile(self, info: SandboxInfo) -> SandboxInfo:
        """Make the recorded state truthful: a sandbox killed from outside is 'exited'."""
        if info.state != "running":
            return info
        if self.state(info) == "running":
            return info
        info.state = "exited"
        info.pid = None
        if info.exit_code is None:
            code = self.exit_status(info)
            info.exit_code = 137 if code is None else code
        self.after_stop(info)
        self.records.save(info)
        return info

    def exit_status(self, info: SandboxInfo) -> int | None:
        """The main process's exit code, as written by runsc's supervisor (see launch);
        init makes it 128+N for a process killed by signal N."""
        path = self.records.dir(info.id) / "exit.code"
        for _ in range(100):
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        return None

    def stop(self, info: SandboxInfo, timeout: float) -> None:
        """SIGTERM to the sandbox, SIGKILL to everything in it after `timeout`; records
        it as exited with its exit code."""
        network.stop_proxy(self.home, info.id)
        self.run(None, "kill", info.id, "TERM", check=False, timeout=20)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.state(info) == "running":
            time.sleep(0.05)
        if self.state(info) == "running":
            self.run(None, "kill", "--all", info.id, "KILL", check=False, timeout=20)
            for _ in range(100):
                if self.state(info) != "running":
                    break
                time.sleep(0.05)
        info.exit_code = self.exit_status(info)
        info.state = "exited"
        info.pid = None
        self.after_stop(info)
        self.records.save(info)

    def kill_now(self, info: SandboxInfo) -> None:
        """SIGKILL to a running sandbox and wait for its runsc to end. Killing the sandbox
        process ends it, its gofer and the foreground runsc. (A `runsc delete -force` of
        a running sandbox waits 5 s for it to stop; runsc kill, polling runsc state and
        delete took four runsc processes.)"""
        if self.alive(info) and info.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
        else:
            self.run(None, "kill", "--all", info.id, "KILL", check=False, timeout=20)
        if info.from_standby:
            self.end_waiter(info)
        self.wait_exit_code(info.id)

    def after_stop(self, info: SandboxInfo, *, later: bool = False) -> None:
        """Free what a stopped sandbox no longer needs (runsc state, network, proxies).
        `later`: run after the caller let go of the sandbox, which another process may
        have started again meanwhile; then it leaves the new run alone."""
        # Let the foreground runsc of this boot finish first, so that its exit.code can
        # never land after the next boot has started.
        if info.from_standby and info.state == "checkpointed":
            self.end_waiter(info)
        self.wait_exit_code(info.id)
        if later:
            now = self.records.load(info.id)
            if now is None or now.state != info.state or now.started != info.started:
                return  # removed or booted again: its boot deleted what was left
        self.delete(info.id)
        if info.spec.network == "sandbox":
            network.teardown(self.home, info.id)

    def wait_exit_code(self, sid: str, timeout: float = 5.0) -> None:
        """Wait (at most timeout) for the foreground runsc of sandbox sid's boot to end,
        which its supervisor marks by writing exit.code."""
        d = self.records.dir(sid)
        codefile = d / "exit.code"
        deadline = time.monotonic() + timeout
        delay = 0.002
        while not codefile.exists() and d.exists():
            if time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    def end_waiter(self, info: SandboxInfo) -> None:
        """After a checkpoint stopped a sandbox restored into a standby, end the foreground
        `runsc restore` that waits for it. It did not create the sandbox, so runsc polls
        every 100 ms for its end and has no exit code to learn: killing its process group
        (its supervisor and it, nothing else) saves that wait, and exit.code is written
        here instead (137), since neither of them is left to write it."""
        d = self.records.dir(info.id)
        try:
            pid = int((d / "supervise.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if b"supervise" not in cmdline or str(d / "exit.code").encode() not in cmdline:
            return  # not ours any more (it ended and the pid was reused)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        try:
            (d / "exit.code").write_text("137\n")
        except OSError as e:  # removed meanwhile: nobody is left to read it
            log.debug("cannot write exit.code of sandbox %s: %s", info.id, e)

    def after_stop_later(self, info: SandboxInfo) -> None:
        """after_stop off the caller's path: after a checkpoint that stopped the sandbox,
        the snapshot is safe and what is left (waiting for runsc to exit, `runsc delete`,
        30-100 ms here) only frees resources. Whatever boots or discards the sandbox in
        this process waits for it first (settle); the thread is not a daemon, so a CLI
        process finishes it before it exits."""
        t = threading.Thread(
            target=self.after_stop, args=(info,), kwargs={"later": True},
            name=f"torpor-cleanup-{info.id}",
        )  # fmt: skip
        with self._cleanups_lock:
            self._cleanups[info.id] = t
        t.start()

    def settle(self, sid: str) -> None:
        """Wait for the cleanup after_stop_later started for sandbox `sid`, if any."""
        with self._cleanups_lock:
            t = self._cleanups.pop(sid, None)
        if t is not None:
            t.join()
