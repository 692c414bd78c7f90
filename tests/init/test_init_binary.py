"""Tests of the torpor-init C binary, run directly on the host (not in a sandbox).

The binary is compiled with gcc into a temporary directory; `torpor-init init`
runs as an ordinary process with TORPOR_INIT_DIR pointing at a temporary
directory, and every client role is exercised against it for real.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src/torpor/sandbox/init/torpor-init.c"

# Built the way torpor ships it: musl when available (see torpor/sandbox/initbin.py).
CC = shutil.which("musl-gcc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="needs musl-gcc or gcc")


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bin") / "torpor-init"
    cmd = [str(CC), "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SRC)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_line(stream, timeout: float = 5.0) -> bytes:
    """One line from a pipe, failing instead of hanging."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output in time"
    return stream.readline()


class Init:
    """A `torpor-init init` process plus helpers to run its clients."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = str(binary)
        self.root = root
        self.dir = root / "run"
        self.restore_dir = root / "restore.d"
        self.env = {
            **os.environ,
            "TORPOR_INIT_DIR": str(self.dir),
            "TORPOR_RESTORE_DIR": str(self.restore_dir),
            "INHERITED": "from-init",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *main: str, ping: bool = True, host: Path | None = None) -> Init:
        opts = ["-H", str(host)] if host else []
        argv = [self.binary, "init", *opts, *(["--", *main] if main else [])]
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if ping:
            res = self.run("ping")
            assert res.returncode == 0, res.stderr
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.binary, *args], env=self.env, input=input, capture_output=True, timeout=timeout
        )

    def popen(self, *args: str, **kw) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([self.binary, *args], env=self.env, **kw)

    def ps(self) -> dict[str, dict[str, str]]:
        res = self.run("ps")
        assert res.returncode == 0, res.stderr
        rows = {}
        for line in res.stdout.decode().splitlines():
            pid_id, pid, state, code, cmd = line.split(" ", 4)
            rows[pid_id] = {"pid": pid, "state": state, "exit": code, "cmd": cmd}
        return rows

    def find(self, needle: str) -> str:
        ids = [i for i, row in self.ps().items() if needle in row["cmd"]]
        assert len(ids) == 1, self.ps()
        return ids[0]

    def procfile(self, pid_id: str, name: str) -> Path:
        return self.dir / "procs" / pid_id / name

    def exit_code(self, pid_id: str, timeout: float = 10.0) -> int:
        path = self.procfile(pid_id, "exit")
        wait_for(path.exists, timeout, f"exit file of {pid_id}")
        return int(path.read_text())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def root() -> Iterator[Path]:
    # Short path: Unix socket paths are limited to 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="ti-", dir="/tmp"))
    path.chmod(0o755)  # reachable by the unprivileged user of test_env_cwd_user
    yield path
    for p in path.rglob("*"):  # undo read-only modes so cleanup works as non-root
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def init(binary: Path, root: Path) -> Iterator[Init]:
    it = Init(binary, root).start()
    yield it
    it.stop()


def zombie_children(pid: int) -> list[int]:
    return children(pid, zombies_only=True)


def children(pid: int, *, zombies_only: bool = False) -> list[int]:
    """The processes whose parent is pid (only the zombies among them, if told)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = data.rsplit(")", 1)[1].split()
        if (fields[0] == "Z" or not zombies_only) and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def parent_of(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(data.rsplit(")", 1)[1].split()[1])


# ---------------------------------------------------------------- exec


def test_exec_output_and_exit_codes(init: Init, root: Path) -> None:
    res = init.run("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, b"out\n", b"err\n")
    assert init.run("exec", "--", "true").returncode == 0
    assert init.run("exec", "--", "sh", "-c", "kill -KILL $$").returncode == 128 + 9
    assert init.run("exec", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15

    res = init.run("exec", "--", "no-such-command-xyz", "arg")
    assert res.returncode == 127
    assert res.stderr == b"torpor-init: exec no-such-command-xyz: No such file or directory\n"

    noexec = root / "noexec"
    noexec.write_text("#!/bin/sh\necho hi\n")
    noexec.chmod(0o644)
    res = init.run("exec", "--", str(noexec))  # no x bit at all: even root gets EACCES
    assert res.returncode == 126
    assert res.stderr == f"torpor-init: exec {noexec}: Permission denied\n".encode()

    # A foreground exec whose client got its output and status leaves nothing behind:
    # neither a row in ps nor files that would sit in the sandbox's memory.
    rows = init.ps()
    assert not any("echo out" in row["cmd"] or "no-such-command" in row["cmd"]
                   for row in rows.values())  # fmt: skip
    assert not any((init.dir / "procs").iterdir())


def test_child_gets_default_signal_state(init: Init) -> None:
    # init ignores SIGPIPE and blocks SIGTERM/SIGCHLD; children must not inherit that
    res = init.run("exec", "--", "sh", "-c", "yes | head -n 2", timeout=10)
    assert (res.returncode, res.stdout) == (0, b"y\ny\n")
    res = init.run("exec", "--", "grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status")
    masks = dict(line.split(":\t") for line in res.stdout.decode().splitlines())
    assert int(masks["SigBlk"], 16) == 0 and int(masks["SigIgn"], 16) == 0


def test_exec_streams_before_exit(init: Init) -> None:
    client = init.popen("exec", "--", "sh", "-c", "echo first; sleep 30; echo never")
    assert read_line(client.stdout) == b"first\n"
    pid_id = init.find("echo first")
    assert init.ps()[pid_id]["state"] == "running"
    assert init.run("kill", pid_id).returncode == 0
    assert client.wait(10) == 143
    assert b"never" not in client.stdout.read()


def test_exec_large_output(init: Init) -> None:
    res = init.run("exec", "--", "head", "-c", "5000000", "/dev/urandom")
    assert res.returncode == 0
    assert len(res.stdout) == 5_000_000
    # Its client received everything, so init kept nothing of it.
    assert not any("head -c 5000000" in row["cmd"] for row in init.ps().values())


def test_stdin_passthrough(init: Init) -> None:
    data = os.urandom(300_000) + b"\0tail\n"
    res = init.run("exec", "-i", "--", "cat", input=data)
    assert res.returncode == 0 and res.stdout == data
    # bigger than any pipe or buffer: counted on the other side
    big = b"x" * 3_000_000
    res = init.run("exec", "-i", "--", "wc", "-c", input=big)
    assert res.stdout.strip() == b"3000000"
    # without -i the child's stdin is /dev/null
    res = init.run("exec", "--", "cat", input=b"ignored")
    assert res.returncode == 0 and res.stdout == b""


def test_env_cwd_user(init: Init, root: Path) -> None:
    work = root / "work"
    work.mkdir()
    work.chmod(0o777)
    uid, gid = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    script = 'pwd; echo "$FOO"; echo "$INHERITED"; echo "$TORPOR_INIT_DIR"; id -u; id -g'
    res = init.run(
        "exec",
        *("-w", str(work), "-e", "FOO=bar baz", "-e", "INHERITED=overridden"),
        *("-u", f"{uid}:{gid}", "--", "sh", "-c", script),
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert lines == [str(work), "bar baz", "overridden", str(init.dir), str(uid), str(gid)]
    res = init.run("exec", "--", "sh", "-c", 'echo "$INHERITED"')
    assert res.stdout == b"from-init\n"

    res = init.run("exec", "-w", str(root / "missing"), "--", "true")
    assert res.returncode == 126
    assert b"torpor-init: chdir " in res.stderr and b"No such file or directory" in res.stderr


def test_path_lookup_uses_child_path(init: Init, root: Path) -> None:
    bindir = root / "bin"
    bindir.mkdir()
    tool = bindir / "mytool"
    tool.write_text("#!/bin/sh\necho tool $1\n")
    tool.chmod(0o755)
    res = init.run("exec", "-e", f"PATH={bindir}:/usr/bin:/bin", "--", "mytool", "ok")
    assert (res.returncode, res.stdout) == (0, b"tool ok\n")
    assert init.run("exec", "--", "mytool").returncode == 127


def test_client_signal_is_forwarded(init: Init) -> None:
    client = init.popen("exec", "--", "sleep", "60")
    pid_id = wait_for(lambda: [i for i, r in init.ps().items() if r["cmd"] == "sleep 60"])[0]
    assert init.ps()[pid_id]["state"] == "running"
    client.send_signal(signal.SIGTERM)
    assert client.wait(10) == 143
    wait_for(lambda: pid_id not in init.ps(), what="the finished exec to be forgotten")


def test_exec_timeout_is_enforced_inside(init: Init) -> None:
    t0 = time.monotonic()
    res = init.run("exec", "-t", "0.3", "--", "sleep", "30")
    assert res.returncode == 124 and b"timed out after 0.3 s" in res.stderr
    assert time.monotonic() - t0 < 5
    # A process that ignores SIGTERM gets SIGKILL 5 s later.
    t0 = time.monotonic()
    res = init.run("exec", "-t", "0.2", "--", "sh", "-c", "trap '' TERM; sleep 30", timeout=20)
    assert res.returncode == 124
    assert 4 < time.monotonic() - t0 < 10
    assert not any("sleep 30" in row["cmd"] and row["state"] == "running"
                   for row in init.ps().values())  # fmt: skip


def test_supervise_records_exit_code_and_reaps(root: Path, binary: Path) -> None:
    exit_file = root / "exit.code"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(binary), "supervise", str(exit_file), "--", "sh", "-c",
         "(sleep 0.5 &) ; exit 7"],
        capture_output=True, timeout=10,
    )  # fmt: skip
    assert proc.returncode == 7
    assert exit_file.read_text() == "7\n"
    # The orphaned sleep became supervise's child (subreaper) and was reaped before it
    # exited, rather than being left to the host's PID 1.
    assert time.monotonic() - t0 >= 0.45


# ------------------------------------------------- detach, ps, logs, kill


def test_detach_ps_logs_follow_kill(init: Init) -> None:
    res = init.run("exec", "-d", "--", "sh", "-c", "echo hello; echo oops >&2; sleep 60")
    assert res.returncode == 0
    pid_id = res.stdout.decode().strip()
    assert pid_id.isdigit()

    wait_for(lambda: init.run("logs", pid_id).stdout == b"hello\n", what="logs")
    logs = init.run("logs", pid_id)
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, b"hello\n", b"oops\n")
    row = init.ps()[pid_id]
    assert row["state"] == "running" and row["exit"] == "-"
    os.kill(int(row["pid"]), 0)  # really alive

    follower = init.popen("logs", "-f", pid_id)
    time.sleep(0.3)
    assert follower.poll() is None, "logs -f must follow a running process"
    assert init.run("kill", pid_id).returncode == 0
    out, err = follower.communicate(timeout=10)
    assert (follower.returncode, out, err) == (0, b"hello\n", b"oops\n")
    assert init.ps()[pid_id] | {"cmd": ""} == {
        "pid": row["pid"],
        "state": "exited",
        "exit": "143",
        "cmd": "",
    }
    assert init.procfile(pid_id, "exit").read_text() == "143\n"

    # signals by name and number; kill of an unknown process fails
    a = init.run("exec", "-d", "--", "sleep", "61").stdout.decode().strip()
    b = init.run("exec", "-d", "--", "sleep", "62").stdout.decode().strip()
    assert init.run("kill", a, "KILL").returncode == 0
    assert init.run("kill", b, "2").returncode == 0
    assert init.exit_code(a) == 137 and init.exit_code(b) == 130
    trap = "trap 'echo got-usr1; exit 5' USR1; echo ready; while :; do sleep 0.05; done"
    c = init.run("exec", "-d", "--", "sh", "-c", trap).stdout.decode().strip()
    wait_for(lambda: init.run("logs", c).stdout == b"ready\n", what="the trap to be set")
    assert init.run("kill", c, "SIGUSR1").returncode == 0
    assert init.exit_code(c) == 5
    assert init.run("logs", c).stdout == b"ready\ngot-usr1\n"
    res = init.run("kill", "999")
    assert res.returncode == 1 and b"no such process" in res.stderr
    assert init.run("kill", a).returncode == 0  # already exited: a no-op
    res = init.run("logs", "999")
    assert res.returncode == 1 and res.stderr == b"torpor-init: no such process: 999\n"


def test_logs_follow_sees_output_as_it_comes(init: Init) -> None:
    script = "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo end >&2"
    pid_id = init.run("exec", "-d", "--", "sh", "-c", script).stdout.decode().strip()
    follower = init.popen("logs", "-f", pid_id)
    assert read_line(follower.stdout) == b"line 1\n"
    out, err = follower.communicate(timeout=10)
    assert out == b"line 2\nline 3\n" and err == b"end\n"
    assert init.exit_code(pid_id) == 0


def test_input_writes_a_detached_processes_stdin(init: Init) -> None:
    """A background process started with stdin (`exec -d -i`) keeps its stdin open; any
    later client writes to it (`input ID`: its stdin until EOF, stdin left open) or
    closes it (`input -c ID`)."""
    pid_id = init.run("exec", "-d", "-i", "--", "sh", "-c",
                      "while read l; do echo got:$l; done; echo eof").stdout.decode().strip()
    assert init.run("input", pid_id, input=b"one\n").returncode == 0
    wait_for(lambda: init.run("logs", pid_id).stdout == b"got:one\n", what="first line")
    assert init.ps()[pid_id]["state"] == "running"  # its stdin stayed open
    assert init.run("input", pid_id, input=b"two\n" * 3).returncode == 0
    assert init.run("input", "-c", pid_id, input=b"last\n").returncode == 0
    assert init.exit_code(pid_id) == 0
    assert init.run("logs", pid_id).stdout == b"got:one\n" + b"got:two\n" * 3 + \
        b"got:last\neof\n"
    # closed now, or never opened, or no such process: refused, saying which
    res = init.run("input", pid_id, input=b"more")
    assert res.returncode == 3 and b"stdin of process" in res.stderr
    plain = init.run("exec", "-d", "--", "sleep", "30").stdout.decode().strip()
    res = init.run("input", plain, input=b"x")
    assert res.returncode == 3 and b"not open" in res.stderr
    res = init.run("input", "999", input=b"x")
    assert res.returncode == 1 and b"no such process" in res.stderr
    assert init.run("kill", plain, "KILL").returncode == 0
    # a big write is passed on whole (backpressure, no loss)
    big = init.run("exec", "-d", "-i", "--", "sh", "-c", "wc -c").stdout.decode().strip()
    assert init.run("input", "-c", big, input=b"x" * (3 << 20)).returncode == 0
    assert init.exit_code(big) == 0
    assert init.run("logs", big).stdout.strip() == str(3 << 20).encode()


def test_forget_drops_an_exited_processes_files(init: Init) -> None:
    pid_id = init.run("exec", "-d", "--", "sh", "-c", "echo out; sleep 0.3").stdout.decode().strip()
    res = init.run("forget", pid_id)
    assert res.returncode == 3 and b"still running" in res.stderr
    assert init.exit_code(pid_id) == 0
    assert init.run("forget", pid_id).returncode == 0
    assert pid_id not in init.ps() and not init.procfile(pid_id, "stdout").parent.exists()
    assert init.run("logs", pid_id).returncode == 1
    res = init.run("forget", pid_id)
    assert res.returncode == 1 and b"no such process" in res.stderr


def test_logs_follow_ends_when_another_client_forgets_the_process(init: Init) -> None:
    # Two followers of one process (an E2B Start stream and a Connect stream): the first to
    # see it exit forgets it. The other, had it not yet seen the exit file, followed a
    # removed directory forever; it now ends, with all of the output.
    pid_id = init.run("exec", "-d", "--", "sh", "-c", "echo out; echo err >&2; sleep 60"
                      ).stdout.decode().strip()  # fmt: skip
    follower = init.popen("logs", "-f", pid_id)
    assert read_line(follower.stdout) == b"out\n"
    stderr = init.procfile(pid_id, "stderr")  # (on a loaded machine sh may not be there yet)
    wait_for(lambda: stderr.read_bytes() == b"err\n", 10, "the process's stderr")
    follower.send_signal(signal.SIGSTOP)  # it has not seen the exit when the files go
    try:
        assert init.run("kill", pid_id).returncode == 0
        assert init.exit_code(pid_id) == 143
        assert init.run("forget", pid_id).returncode == 0
    finally:
        follower.send_signal(signal.SIGCONT)
    out, err = follower.communicate(timeout=10)
    assert (follower.returncode, out, err) == (0, b"", b"err\n")


def test_child_outlives_killed_client(init: Init) -> None:
    script = (
        'echo start; i=0; while [ $i -lt 20 ]; do echo "tick $i"; i=$((i+1)); sleep 0.05; done;'
        " echo finished"
    )
    client = init.popen("exec", "--", "sh", "-c", script)
    assert read_line(client.stdout) == b"start\n"
    client.kill()
    client.wait()
    pid_id = init.find("echo finished")
    assert init.ps()[pid_id]["state"] == "running"
    assert init.exit_code(pid_id) == 0
    out = init.procfile(pid_id, "stdout").read_text().splitlines()
    assert out == ["start", *[f"tick {i}" for i in range(20)], "finished"]

    # an attached stdin is closed when its client goes away: the child sees EOF
    client = init.popen("exec", "-i", "--", "sh", "-c", "cat; echo eof-seen", stdin=subprocess.PIPE)
    client.stdin.write(b"abc\n")
    client.stdin.flush()
    assert read_line(client.stdout) == b"abc\n"
    client.kill()
    client.wait()
    pid_id = init.find("eof-seen")
    assert init.exit_code(pid_id) == 0
    assert init.procfile(pid_id, "stdout").read_bytes() == b"abc\neof-seen\n"


def test_zombies_are_reaped(init: Init) -> None:
    for _ in range(5):
        assert init.run("exec", "--", "sh", "-c", "sleep 0.1 & exec true").returncode == 0
        assert init.run("exec", "-d", "--", "sh", "-c", "(sleep 0.2 &); exit 0").returncode == 0
    # an orphan is reparented to init (a subreaper outside a sandbox) while it runs
    res = init.run("exec", "--", "sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!")
    orphan = int(res.stdout)
    assert parent_of(orphan) == init.pid
    wait_for(lambda: parent_of(orphan) is None, what="orphan to exit and be reaped")
    # every child ends within 0.2 s (the orphans' sleeps): one init did not reap stays
    wait_for(lambda: children(init.pid) == [], timeout=5, what="every child to be reaped")
    assert zombie_children(init.pid) == []
    assert all(r["state"] == "exited" for r in init.ps().values())


# ------------------------------------------------------------- get / put

HEADER = struct.Struct(">cIQI")


def record(kind: bytes, mode: int, path: str, data: bytes = b"") -> bytes:
    raw = path.encode()
    return HEADER.pack(kind, mode, len(data), len(raw)) + raw + data


END = record(b"Z", 0, "")


def parse_archive(data: bytes) -> list[tuple[str, int, str, bytes]]:
    out, pos = [], 0
    while True:
        kind, mode, size, plen = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        path = data[pos : pos + plen].decode()
        pos += plen
        out.append((kind.decode(), mode, path, data[pos : pos + size]))
        pos += size
        if kind == b"Z":
            assert pos == len(data)
            return out


def snapshot(top: Path) -> dict[str, tuple]:
    """Type, mode and content of everything under top (symlinks not followed)."""
    result = {}
    for p in [top, *sorted(top.rglob("*"))]:
        st = p.lstat()
        rel = str(p.relative_to(top))
        if stat.S_ISLNK(st.st_mode):
            result[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            result[rel] = ("d", stat.S_IMODE(st.st_mode))
        else:
            result[rel] = ("f", stat.S_IMODE(st.st_mode), p.read_bytes())
    return result


def get_put(binary: Path, src: Path, dst: Path) -> tuple[int, int]:
    get = subprocess.Popen([str(binary), "get", str(src)], stdout=subprocess.PIPE)
    put = subprocess.Popen([str(binary), "put", str(dst)], stdin=get.stdout)
    get.stdout.close()
    return get.wait(60), put.wait(60)


def test_get_put_round_trip(binary: Path, root: Path) -> None:
    src = root / "tree"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "sub" / "deep" / "file.txt").write_text("hello\n")
    (src / "binary.dat").write_bytes(bytes(range(256)) * 1000)
    (src / "big.dat").write_bytes(os.urandom(20 * 1024 * 1024))
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "secret").write_text("s")
    (src / "secret").chmod(0o600)
    (src / "empty").mkdir()
    (src / "readonly").mkdir()
    (src / "readonly" / "inside").write_text("ro")
    (src / "readonly").chmod(0o555)
    (src / "private").mkdir(mode=0o700)
    (src / "link").symlink_to("sub/deep/file.txt")
    (src / "dangling").symlink_to("does/not/exist")
    (src / "abs").symlink_to("/etc/hostname")

    dst = root / "out"
    assert get_put(binary, src, dst) == (0, 0)
    assert snapshot(dst / "tree") == snapshot(src)
    assert (dst / "tree" / "link").read_text() == "hello\n"

    # stream shape: top entry named after PATH, directories before contents, Z last
    small = root / "small"
    (small / "d").mkdir(parents=True)
    (small / "d" / "f").write_bytes(b"\x00\x01")
    (small / "l").symlink_to("d/f")
    data = subprocess.run([str(binary), "get", str(small)], capture_output=True, check=True).stdout
    recs = parse_archive(data)
    assert [(k, p, d) for k, _, p, d in recs] == [
        ("d", "small", b""),
        ("d", "small/d", b""),
        ("f", "small/d/f", b"\x00\x01"),
        ("l", "small/l", b"d/f"),
        ("Z", "", b""),
    ]
    assert recs[2][1] == 0o644

    # single file and single symlink
    data = subprocess.run(
        [str(binary), "get", str(small / "d" / "f")], capture_output=True, check=True
    ).stdout
    assert [(k, p) for k, _, p, _ in parse_archive(data)] == [("f", "f"), ("Z", "")]
    assert get_put(binary, small / "l", root / "one") == (0, 0)
    assert os.readlink(root / "one" / "l") == "d/f"

    res = subprocess.run([str(binary), "get", str(root / "missing")], capture_output=True)
    assert res.returncode == 1 and res.stdout == b""


def entries(out: bytes) -> list[tuple[str, ...]]:
    """The records `stat -l` and `ls` print: (TYPE MODE UID GID SIZE MTIME, PATH, TARGET)."""
    fields = out.split(b"\0")
    assert fields[-1] == b"" and len(fields) % 3 == 1, out
    return [tuple(f.decode() for f in fields[i:i + 3]) for i in range(0, len(fields) - 1, 3)]


def test_stat_ls_mkdir_rm_mv(binary: Path, root: Path) -> None:
    def run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(binary), *map(str, args)], capture_output=True)

    top = root / "files"
    (top / "d" / "e").mkdir(parents=True)
    (top / "f").write_bytes(b"12345")
    (top / "f").chmod(0o640)
    os.utime(top / "f", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    (top / "l").symlink_to("f")
    (top / "name with\nnewline").write_text("")

    res = run("stat", "-l", top / "f")
    assert res.returncode == 0
    [(head, path, target)] = entries(res.stdout)
    uid, gid = os.getuid(), os.getgid()
    assert head == f"f 640 {uid} {gid} 5 1700000000.123456789" and path == str(top / "f")
    assert target == ""
    [(head, path, target)] = entries(run("stat", "-l", top / "l").stdout)
    assert head.startswith("l 777 ") and (path, target) == (str(top / "l"), "f")
    [(head, path, target)] = entries(run("stat", "-l", "-L", top / "l").stdout)
    assert head.startswith("f 640 ") and (path, target) == (str(top / "f"), "")
    assert run("stat", top / "l").stdout == b"f\n"  # the short form is unchanged

    res = run("ls", top)
    assert res.returncode == 0
    assert [(h[0], p, t) for h, p, t in entries(res.stdout)] == [
        ("d", "d", ""), ("f", "f", ""), ("l", "l", "f"), ("f", "name with\nnewline", "")]
    deep = [(h[0], p) for h, p, _ in entries(run("ls", "-d", "3", top).stdout)]
    assert deep[:2] == [("d", "d"), ("d", "d/e")] and len(deep) == 5

    # failures: the exit status says what it was, the message names the path
    for args, code, text in [
        (("stat", "-l", top / "missing"), 3, "No such file or directory"),
        (("ls", top / "f"), 4, "Not a directory"),
        (("mkdir", top / "d"), 5, "File exists"),
        (("mkdir", "-p", top / "f"), 5, "File exists"),
        (("rm", top / "d"), 6, "not empty"),
        (("mv", top / "missing", top / "x"), 3, "No such file or directory"),
        (("rm", "-r", "/"), 1, "refusing to remove /"),
        (("ls", "-d", "0", top), 2, "usage"),
    ]:
        res = run(*args)
        assert res.returncode == code and text.encode() in res.stderr, (args, res)

    assert run("mkdir", "-p", "-m", "700", top / "x" / "y" / "z").stdout == b"1\n"
    assert run("mkdir", "-p", top / "x" / "y" / "z").stdout == b"0\n"
    assert stat.S_IMODE((top / "x" / "y" / "z").stat().st_mode) == 0o700
    assert stat.S_IMODE((top / "x" / "y").stat().st_mode) == 0o755
    assert run("mv", top / "f", top / "x" / "g").returncode == 0
    assert (top / "x" / "g").read_bytes() == b"12345" and not (top / "f").exists()
    (top / "x" / "y" / "link").symlink_to(top / "d")  # rm -r removes links, never follows
    assert run("rm", "-r", top / "x").returncode == 0
    assert not (top / "x").exists() and (top / "d" / "e").is_dir()
    assert run("rm", top / "l").returncode == 0 and not (top / "l").is_symlink()


@pytest.mark.parametrize(
    "archive",
    [
        record(b"f", 0o644, "../x", b"evil") + END,
        record(b"f", 0o644, "a/../../x", b"evil") + END,
        record(b"d", 0o755, "a") + record(b"f", 0o644, "a/../../x", b"evil") + END,
    ],
)
def test_put_refuses_dotdot(binary: Path, root: Path, archive: bytes) -> None:
    dst = root / "dst"
    res = subprocess.run([str(binary), "put", str(dst)], input=archive, capture_output=True)
    assert res.returncode != 0
    assert b".." in res.stderr
    assert not (root / "x").exists()


def test_put_refuses_absolute_and_symlink_escape(binary: Path, root: Path) -> None:
    outside = root / "outside"
    outside.mkdir()
    target = outside / "abs"
    archive = record(b"f", 0o644, str(target), b"evil") + END
    res = subprocess.run([str(binary), "put", str(root / "d1")], input=archive, capture_output=True)
    assert res.returncode != 0 and not target.exists()

    archive = record(b"l", 0o777, "a", str(outside).encode())
    archive += record(b"f", 0o644, "a/pwned", b"evil") + END
    res = subprocess.run([str(binary), "put", str(root / "d2")], input=archive, capture_output=True)
    assert res.returncode != 0 and not (outside / "pwned").exists()

    res = subprocess.run(
        [str(binary), "put", str(root / "d3")],
        input=record(b"f", 0o644, "x", b"ab"),
        capture_output=True,
    )
    assert res.returncode != 0 and b"truncated" in res.stderr


# --------------------------------------------------------------- restored


def test_restored_runs_hooks_in_order(init: Init, root: Path) -> None:
    order = root / "order"
    hooks = init.restore_dir
    hooks.mkdir()
    for name, body in [
        ("20-second", f'echo "second $TORPOR_GENERATION" >> {order}; echo hook-output'),
        ("10-first", f'sleep 0.3; echo "first $TORPOR_GENERATION" >> {order}'),
        ("30-fails", "echo failing >&2; exit 3"),
        ("40-not-executable", f"echo must-not-run >> {order}"),
    ]:
        (hooks / name).write_text(f"#!/bin/sh\n{body}\n")
        (hooks / name).chmod(0o644 if "not-exec" in name else 0o755)

    generation = init.dir / "generation"
    assert generation.read_text() == "0\n"
    res = init.run("restored")
    assert res.returncode == 0, res.stderr
    assert generation.read_text() == "1\n"
    assert order.read_text().splitlines() == ["first 1", "second 1"]
    log = (init.dir / "restore-hooks.log").read_text()
    assert "hook-output" in log and "failing" in log and "status 3" in log
    assert "must-not-run" not in log

    assert init.run("restored").returncode == 0
    assert generation.read_text() == "2\n"
    assert order.read_text().splitlines() == ["first 1", "second 1", "first 2", "second 2"]


def test_restored_without_hook_dir(init: Init) -> None:
    assert init.run("restored").returncode == 0
    assert (init.dir / "generation").read_text() == "1\n"


# ---------------------------------------------------- main process, SIGTERM


def test_main_exit_status_becomes_init_status(binary: Path, root: Path) -> None:
    it = Init(binary, root).start(
        "sh", "-c", "echo main-out; echo main-err >&2; exit 7", ping=False
    )
    out, err = it.proc.communicate(timeout=10)
    assert it.proc.returncode == 7
    assert it.procfile("1", "stdout").read_bytes() == b"main-out\n"
    assert it.procfile("1", "exit").read_text() == "7\n"
    # Both streams are also copied to init's own stdout (the sandbox console); init's
    # stderr is kept for its own diagnostics.
    assert sorted(out.splitlines()) == [b"main-err", b"main-out"]
    assert b"main-err" not in err


def test_main_exit_stops_other_processes(binary: Path, root: Path) -> None:
    it = Init(binary, root).start("sh", "-c", "sleep 1; exit 4")
    try:
        other = it.run("exec", "-d", "--", "sleep", "60").stdout.decode().strip()
        pid = int(it.ps()[other]["pid"])
        assert it.proc.wait(10) == 4
        assert parent_of(pid) is None
        assert it.procfile(other, "exit").read_text() == "143\n"
    finally:
        it.stop()


def test_main_exit_escalates_to_sigkill(binary: Path, root: Path) -> None:
    it = Init(binary, root).start("sh", "-c", "sleep 1; exit 0")
    try:
        stubborn = "trap '' TERM; sleep 60"
        other = it.run("exec", "-d", "--", "sh", "-c", stubborn).stdout.decode().strip()
        start = time.monotonic()
        assert it.proc.wait(15) == 0
        elapsed = time.monotonic() - start
        assert 2.0 < elapsed < 10, elapsed  # the main exits after ~1 s, then ~3 s grace
        assert it.procfile(other, "exit").read_text() == "137\n"
    finally:
        it.stop()


def test_sigterm_without_main(init: Init) -> None:
    ids = [init.run("exec", "-d", "--", "sleep", "60").stdout.decode().strip() for _ in range(2)]
    init.proc.send_signal(signal.SIGTERM)
    assert init.proc.wait(10) == 0
    assert [init.procfile(i, "exit").read_text() for i in ids] == ["143\n", "143\n"]


def test_sigterm_with_main(binary: Path, root: Path) -> None:
    it = Init(binary, root).start("sleep", "60")
    try:
        assert it.ps()["1"]["cmd"] == "sleep 60"
        it.proc.send_signal(signal.SIGTERM)
        assert it.proc.wait(10) == 143
    finally:
        it.stop()


def test_client_errors(binary: Path, root: Path) -> None:
    env = {**os.environ, "TORPOR_INIT_DIR": str(root / "nothing-here")}
    res = subprocess.run([str(binary), "exec", "--", "true"], env=env, capture_output=True)
    assert res.returncode == 125 and b"cannot connect" in res.stderr
    res = subprocess.run([str(binary), "bogus"], env=env, capture_output=True)
    assert res.returncode == 2 and b"usage" in res.stderr


# ------------------------------------------------------------- host channel


def write_token(host: Path, text: str) -> None:
    """As the engine does: by rename, so init never reads half a token."""
    tmp = host / ".token.tmp"
    tmp.write_text(text)
    os.replace(tmp, host / "token")


def test_host_channel_prepare_then_restored_or_resumed(binary: Path, root: Path) -> None:
    """The host talks to init through DIR/init.sock; `prepare` closes it for a checkpoint,
    and a new token in DIR/token brings it back: "restored ..." after the restore hooks
    have run (and the generation was bumped), "resumed ..." without either."""
    host = root / "host"
    host.mkdir()
    sock = host / "init.sock"
    it = Init(binary, root).start(host=host, ping=False)
    try:

        def remote(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [str(binary), "--connect", str(sock), *args],
                env=it.env, capture_output=True, timeout=30,
            )  # fmt: skip

        assert remote("ping").returncode == 0
        res = remote("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
        assert (res.returncode, res.stdout, res.stderr) == (3, b"out\n", b"err\n")
        assert it.run("ping").returncode == 0  # the in-sandbox socket still works

        write_token(host, "restored first\n")
        assert remote("prepare").returncode == 0
        assert not sock.exists(), "init must drop its host socket before a checkpoint"
        assert it.run("ping").returncode == 0  # ... but not its own

        # A restore hook that takes a while: no host call may overtake it.
        it.restore_dir.mkdir()
        hook = it.restore_dir / "10-slow"
        hook.write_text(f"#!/bin/sh\nsleep 0.4\necho ran > {root / 'hook-ran'}\n")
        hook.chmod(0o755)
        waiting = subprocess.Popen(
            [str(binary), "--connect", str(sock), "exec", "--", "cat",
             str(it.dir / "generation"), str(root / "hook-ran")],
            env=it.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.3)
        assert waiting.poll() is None, "a client got through while init was prepared"
        # A token still being written (no whole line yet) changes nothing.
        (host / "token").write_text("restored sec")
        time.sleep(0.6)  # longer than the hook: had init taken it, the client would be done
        assert waiting.poll() is None, "init acted on a token it had not fully read"
        write_token(host, "restored second\n")
        out, err = waiting.communicate(timeout=15)
        assert waiting.returncode == 0, err
        assert out == b"1\nran\n"

        assert remote("prepare").returncode == 0
        write_token(host, "resumed third\n")
        res = remote("exec", "--", "cat", str(it.dir / "generation"))
        assert res.stdout == b"1\n", "a checkpoint that kept running is not a restore"
    finally:
        it.stop()


def test_host_client_gives_up_when_the_sandbox_is_gone(binary: Path, root: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    t0 = time.monotonic()
    res = subprocess.run(
        [str(binary), "--connect", str(root / "init.sock"), "--alive", str(gone.pid), "ping"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 125 and b"not running" in res.stderr
    assert time.monotonic() - t0 < 2, "it waited for a socket that cannot come"
