"""The `Sandbox` handle on a real runsc: commands with streamed output, background
processes, files, checkpoints, forks, and the errors a user gets for bad input."""

from __future__ import annotations

import hashlib
import io
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.programs import COUNTER
from torpor.sandbox import (
    Checkpoint,
    CommandTimeout,
    ProcessNotFound,
    ProcessStdinClosed,
    Sandbox,
    SandboxConflict,
    SandboxError,
    SandboxFileError,
    SandboxFileExists,
    SandboxFileNotFound,
    SandboxNotFound,
    SandboxNotRunning,
    set_default_engine,
)
from torpor.sandbox.gvisor import GVisorEngine


@pytest.fixture()
def sb(engine: GVisorEngine) -> Iterator[Sandbox]:
    with Sandbox.create(image="base", engine=engine) as box:
        yield box


def counter(sb: Sandbox) -> tuple[str, int]:
    """The counter's (token, count): the token tells one process from another."""
    deadline = time.monotonic() + 10
    while True:
        try:
            token, n = sb.files.read_text("/tmp/c").split()
            return token, int(n)
        except (SandboxError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def counts_on(sb: Sandbox, n: int) -> None:
    """Wait until the counter in sb counts past n (its process runs)."""
    deadline = time.monotonic() + 10
    while counter(sb)[1] <= n:
        assert time.monotonic() < deadline, f"the counter in {sb.ref} stopped"
        time.sleep(0.02)


def runsc_ids(engine: GVisorEngine) -> str:
    """What `runsc list` shows under the engine's root."""
    return subprocess.run(["runsc", f"--root={engine.runsc_root}", "list"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def test_exec_streams_output_as_it_comes_and_returns_the_exit_code(sb: Sandbox):
    seen: list[tuple[float, str, bytes]] = []
    t0 = time.monotonic()
    res = sb.exec(
        "echo first; sleep 0.5; echo problem >&2; sleep 0.3; echo last; exit 3",
        on_stdout=lambda b: seen.append((time.monotonic() - t0, "out", b)),
        on_stderr=lambda b: seen.append((time.monotonic() - t0, "err", b)),
    )
    total = time.monotonic() - t0
    assert res.exit_code == 3
    assert (res.stdout, res.stderr) == (b"first\nlast\n", b"problem\n")
    assert [(s, b) for _, s, b in seen] == [("out", b"first\n"), ("err", b"problem\n"),
                                            ("out", b"last\n")]  # fmt: skip
    # (two pipes: lines apart in time keep their order; ones written together may not)
    assert seen[0][0] < total - 0.4, "the first line came only at the end"

    # argv as a list, env as a mapping, a working directory, another user
    res = sb.exec(["sh", "-c", 'echo "$A-$B" && pwd && id -u'], env={"A": "x", "B": "y"},
                  cwd="/tmp", user="nobody")  # fmt: skip
    assert res.stdout.decode().split() == ["x-y", "/tmp", "65534"]
    assert sb.exec("false").exit_code == 1
    assert sb.exec(["no-such-program"]).exit_code == 127

    # without capture the output goes to the callbacks only
    out: list[bytes] = []
    res = sb.exec("seq 1 3", on_stdout=out.append, capture=False)
    assert res.stdout == b"" and b"".join(out) == b"1\n2\n3\n"


def test_exec_timeout_stops_the_command_and_keeps_its_output(sb: Sandbox):
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match="timed out after 0.5 s") as err:
        sb.exec("echo started; sleep 30", timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert err.value.result is not None and err.value.result.stdout == b"started\n"
    assert "sleep 30" not in sb.exec("ps -eo args").text  # it was stopped
    assert sb.exec("echo fine", timeout=5).stdout == b"fine\n"


def test_exec_stdin_as_bytes_text_or_a_stream(sb: Sandbox):
    assert sb.exec("cat", stdin=b"bytes\n").stdout == b"bytes\n"
    assert sb.exec("tr a-z A-Z", stdin="text").stdout == b"TEXT"
    big = bytes(range(256)) * 40_000  # 10 MB, more than any pipe holds
    res = sb.exec("sha256sum", stdin=io.BytesIO(big))
    assert res.stdout.split()[0].decode() == hashlib.sha256(big).hexdigest()
    assert sb.exec("wc -c", stdin=b"").stdout.strip() == b"0"


def test_cancel_stops_a_running_command(sb: Sandbox):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    res = sb.exec("sleep 30", cancel=cancel)
    assert time.monotonic() - t0 < 10 and res.exit_code == 128 + 15


def test_a_failing_output_callback_stops_the_command(sb: Sandbox):
    def refuse(chunk: bytes) -> None:
        raise RuntimeError("the client went away")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="went away"):
        sb.exec("echo one; sleep 30", on_stdout=refuse)
    assert time.monotonic() - t0 < 10
    assert "sleep 30" not in sb.exec("ps -eo args").text


def test_background_process_output_stream_and_kill(sb: Sandbox):
    p = sb.spawn("echo started; echo oops >&2; while true; do sleep 0.1; done")
    assert p.info().running and p.info().command.startswith("/bin/sh -c echo started")
    deadline = time.monotonic() + 10
    while p.output() != (b"started\n", b"oops\n"):
        assert time.monotonic() < deadline, p.output()
        time.sleep(0.05)
    assert any(i.id == p.id and i.running for i in sb.processes())
    with pytest.raises(CommandTimeout, match="still runs after 0.2 s"):
        p.wait(timeout=0.2)
    p.kill("TERM")
    assert p.wait(timeout=10) == 128 + 15
    assert not p.info().running

    # a process that ends by itself: its output streamed, then its exit code
    q = sb.spawn(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done; exit 4"])
    got: list[bytes] = []
    assert q.stream(on_stdout=got.append) == 4
    assert b"".join(got) == b"1\n2\n3\n" and len(got) >= 2  # as it came
    q.kill()  # an exited process: nothing happens

    with pytest.raises(ProcessNotFound, match="no such process: 99999"):
        sb.process(99999).kill()
    with pytest.raises(ProcessNotFound):
        sb.process(99999).output()
    with pytest.raises(SandboxError, match="bad signal: NOPE"):
        sb.process(p.id).kill("NOPE")


def test_background_process_stdin_and_forget(sb: Sandbox):
    """A background process started with stdin reads what is written to it, from any
    later call (and after a checkpoint that kept it running), until it is closed; once
    it exited, `forget` drops its kept output."""
    p = sb.spawn("while read l; do echo got:$l; done; echo eof", stdin=True)
    p.write("one\n")
    deadline = time.monotonic() + 10
    while p.output()[0] != b"got:one\n":
        assert time.monotonic() < deadline, p.output()
        time.sleep(0.02)
    sb.checkpoint(leave_running=True)
    p.write(b"two\n")
    p.close_stdin()
    assert p.wait(timeout=10) == 0
    assert p.output() == (b"got:one\ngot:two\neof\n", b"")
    with pytest.raises(ProcessStdinClosed, match="not open"):
        p.write("more\n")
    with pytest.raises(ProcessStdinClosed):
        sb.spawn("sleep 30").write("x")  # started without stdin
    p.forget()
    assert p.id not in [i.id for i in sb.processes()]
    with pytest.raises(ProcessNotFound):
        p.output()
    running = sb.spawn("sleep 30")
    with pytest.raises(SandboxConflict, match="still running"):
        running.forget()
    # following its output stops when asked; the process goes on
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    assert running.stream(cancel=cancel) is None
    assert time.monotonic() - t0 < 8 and running.info().running


def test_files_read_write_list_stat_remove_mkdir_move(sb: Sandbox, tmp_path: Path):
    f = sb.files
    f.write("/work/src/app.py", "print('hi')\n")  # parents are created
    f.write("/work/data.bin", bytes(range(256)), mode=0o600)
    assert f.read("/work/src/app.py") == b"print('hi')\n"
    assert f.read_text("/work/src/app.py") == "print('hi')\n"
    sb.exec("ln -s src/app.py /work/link && mkdir /work/empty")

    entries = f.list("/work")
    assert [(e.name, e.type) for e in entries] == [
        ("data.bin", "file"), ("empty", "dir"), ("link", "symlink"), ("src", "dir")]
    data = entries[0]
    assert (data.path, data.size, data.mode, data.uid) == ("/work/data.bin", 256, 0o600, 0)
    assert abs(data.mtime - time.time()) < 120
    assert entries[2].link_target == "src/app.py"
    deep = f.list("/work", depth=2)
    assert ("src/app.py", "/work/src/app.py") in [(e.name, e.path) for e in deep]

    link = f.stat("/work/link")
    assert link.type == "symlink" and link.link_target == "src/app.py"
    target = f.stat("/work/link", follow=True)
    assert (target.type, target.path, target.size) == ("file", "/work/src/app.py", 12)
    assert f.read("/work/link") == b"print('hi')\n"  # reading follows the link
    assert f.exists("/work/src") and not f.exists("/work/nope")

    assert f.mkdir("/work/a/b/c") is True
    assert f.mkdir("/work/a/b/c") is False
    assert f.stat("/work/a/b/c").mode == 0o755
    f.move("/work/src/app.py", "/work/a/app.py")
    assert not f.exists("/work/src/app.py") and f.read("/work/a/app.py") == b"print('hi')\n"
    f.remove("/work/data.bin")
    f.remove("/work/empty")
    f.remove("/work/a", recursive=True)
    assert [e.name for e in f.list("/work")] == ["link", "src"]

    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "x.txt").write_text("from the host")
    f.upload(tmp_path / "up", "/work")
    assert f.read("/work/up/x.txt") == b"from the host"
    f.download("/work/up", tmp_path / "down")
    assert (tmp_path / "down" / "x.txt").read_text() == "from the host"


def test_file_errors_say_what_is_wrong(sb: Sandbox):
    f = sb.files
    f.write("/work/file", b"x")
    with pytest.raises(SandboxFileNotFound, match="no such file or directory") as err:
        f.read("/work/missing")
    assert err.value.reason == "not_found" and "/work/missing" in str(err.value)
    with pytest.raises(SandboxFileError, match="is a directory, not a regular file") as err:
        f.read("/work")
    assert err.value.reason == "is_a_directory"
    with pytest.raises(SandboxFileNotFound):
        f.stat("/work/missing")
    with pytest.raises(SandboxFileNotFound):
        f.list("/work/missing")
    with pytest.raises(SandboxFileError, match="not a directory") as err:
        f.list("/work/file")
    assert err.value.reason == "not_a_directory"
    with pytest.raises(SandboxFileExists, match="file exists"):
        f.mkdir("/work/file")
    with pytest.raises(SandboxFileExists):
        f.mkdir("/work", parents=False)
    f.mkdir("/work/full/sub")
    with pytest.raises(SandboxFileError, match="directory not empty; remove it with recursive"):
        f.remove("/work/full")
    with pytest.raises(SandboxFileNotFound):
        f.remove("/work/missing")
    with pytest.raises(SandboxFileNotFound):
        f.move("/work/missing", "/work/other")
    with pytest.raises(SandboxError, match="path must be absolute"):
        f.list("work")


def test_checkpoint_and_restore_keep_a_process_in_memory(sb: Sandbox):
    sb.spawn(["python3", "-c", COUNTER])
    token, before = counter(sb)
    sb.files.write("/root/note", "written before")
    ck = sb.checkpoint("kept")
    assert isinstance(ck, Checkpoint) and ck.name == "kept" and ck.size > 0
    assert sb.state == "running"  # leave_running is the default
    assert ck in sb.checkpoints()

    # checkpoints without a name, one right after the other, get names of their own
    quick = [sb.checkpoint(), sb.checkpoint()]
    assert quick[0].name != quick[1].name
    for c in quick:
        c.remove()

    copy = Sandbox.restore(ck)
    try:
        assert copy.id != sb.id and copy.engine is sb.engine
        assert copy.info.restored_from == ck.id
        token2, after = counter(copy)
        assert token2 == token, "a new process was started instead of the old one continuing"
        assert after >= before
        counts_on(copy, after)  # the restored process runs on
        assert copy.files.read("/root/note") == b"written before"
    finally:
        copy.kill()

    # a pause: a checkpoint that stops it, resumed in place (same id)
    paused = sb.checkpoint(leave_running=False)
    assert sb.state == "checkpointed"
    with pytest.raises(SandboxNotRunning, match="is not running .*start it again"):
        sb.exec("true")
    sb.start(checkpoint=paused)
    assert sb.state == "running" and counter(sb)[0] == token
    ck.remove()
    assert ck not in sb.checkpoints()


def test_fork_runs_on_independently(sb: Sandbox):
    sb.spawn(["python3", "-c", COUNTER])
    token, _ = counter(sb)
    sb.files.write("/root/shared", "before the fork")
    fork = sb.fork(name=f"{sb.name}-fork")
    try:
        assert fork.name == f"{sb.name}-fork" and sb.state == "running"
        assert counter(fork)[0] == token  # the same process, now running twice
        fork.files.write("/root/shared", "changed in the fork")
        sb.files.write("/root/only-original", "x")
        assert sb.files.read("/root/shared") == b"before the fork"
        assert not fork.files.exists("/root/only-original")
        sb.stop()
        _, n = counter(fork)
        counts_on(fork, n)  # the fork lives on its own
    finally:
        fork.kill()


def test_kill_leaves_nothing_running(engine: GVisorEngine):
    sb = Sandbox.create(image="base", engine=engine)
    sid = sb.id
    sb.spawn("sleep 1000")
    assert sid in runsc_ids(engine)
    sb.kill()
    assert sid not in runsc_ids(engine)
    assert not (engine.sandboxes_dir / sid).exists()
    with pytest.raises(SandboxNotFound, match=f"no such sandbox: {sid}"):
        Sandbox.get(sid, engine=engine)
    with pytest.raises(SandboxNotFound):
        sb.exec("true")

    with Sandbox.create(image="base", engine=engine) as box:  # the context manager kills
        inner = box.id
        assert any(s.id == inner for s in Sandbox.list(engine=engine))
    assert inner not in runsc_ids(engine)


def test_main_process_logs_wait_and_restart(engine: GVisorEngine):
    with Sandbox.create(image="base", engine=engine, cmd="echo out; echo err >&2; exit 5",
                        name="t-handle-main") as sb:  # fmt: skip
        assert sb.wait() == 5
        assert sb.state == "exited"
        log = sb.logs()
        assert b"out\n" in log and b"err\n" in log
        with pytest.raises(SandboxNotRunning, match="t-handle-main is not running"):
            sb.files.read("/etc/hostname")
        same = Sandbox.get("t-handle-main", engine=engine)
        assert same == sb and same.name == "t-handle-main"
        got: list[bytes] = []
        sb.start()
        sb.logs(follow=True, on_output=got.append)  # until it exits again
        assert b"".join(got).count(b"out\n") == 2


def test_create_without_starting_then_start(engine: GVisorEngine):
    """Docker's create: recorded, not running, until start; its own files go with it."""
    sb = Sandbox.create(image="base", engine=engine, cmd="echo hello", start=False,
                        name="t-handle-created")  # fmt: skip
    try:
        assert sb.state == "created" and sb.info.started is None
        assert sb.id not in runsc_ids(engine)
        with pytest.raises(SandboxNotRunning):
            sb.exec("true")
        note = engine.sandbox_file(sb.id, "x-note.json")
        note.write_text("{}")
        with pytest.raises(SandboxError, match="invalid sandbox file name"):
            engine.sandbox_file(sb.id, "sandbox.json")
        sb.start()
        assert sb.wait() == 0
        assert sb.logs() == b"hello\n"
    finally:
        sb.remove(force=True)
    assert not note.exists()


def test_bad_references(engine: GVisorEngine):
    with pytest.raises(SandboxNotFound, match="no such sandbox: t-nope .*Sandbox.list"):
        Sandbox.get("t-nope", engine=engine)
    ghost = Sandbox("t-nope", engine=engine)  # not checked until used
    with pytest.raises(SandboxNotFound, match="no such sandbox: t-nope"):
        ghost.exec("true")
    with pytest.raises(SandboxError, match="no such checkpoint"):
        Sandbox.restore("t-no-such-checkpoint", engine=engine)
    with pytest.raises(SandboxError, match="no such image"):
        Sandbox.create(image="t-no-such-image", engine=engine)


def test_the_example_in_the_docs_runs(engine: GVisorEngine):
    page = (Path(__file__).resolve().parents[2] / "docs" / "sandboxes.md").read_text()
    example = page.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    before = {s.id for s in Sandbox.list(engine=engine, all=True)}
    set_default_engine(engine)  # the example uses the default engine
    try:
        exec(compile(example, "docs/sandboxes.md", "exec"), {})
    finally:
        set_default_engine(None)
    assert {s.id for s in Sandbox.list(engine=engine, all=True)} == before  # all killed
