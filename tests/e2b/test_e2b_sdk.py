"""The unchanged E2B SDK (e2b 2.63) against a real `torpor serve --e2b`: create, commands
with output streamed and the exit code (and a failing one), a background command and its
kill, stdin, files, pause and a process's memory through `Sandbox.connect`, the idle
timeout with auto-resume, snapshots, kill; then the same through `AsyncSandbox`; and a
tenant over its storage quota."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    RateLimitException,
    Sandbox,
    SandboxNotFoundException,
)

from tests.e2b.conftest import TORPOR, E2BServer
from torpor.api.tokens import TokenStore
from torpor.runtime.db import RuntimeDB

COUNTER = ("python3 -c 'import os, time\nn = 0\nwhile True:\n    n += 1\n"
           "    open(\"/tmp/n.t\", \"w\").write(str(n))\n    os.replace(\"/tmp/n.t\", \"/tmp/n\")\n"
           "    time.sleep(0.01)'")


@pytest.fixture()
def sbx() -> Iterator[Sandbox]:
    sb = Sandbox.create()
    yield sb
    sb.kill()


def counter(sb: Sandbox) -> int:
    deadline = time.monotonic() + 10
    while not sb.files.exists("/tmp/n"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return int(sb.files.read("/tmp/n"))


def test_create_and_commands_stream_their_output_then_the_exit_code(sbx: Sandbox):
    assert sbx.sandbox_id.startswith("sbx-") and sbx.is_running()
    got: list[tuple[float, str]] = []
    t0 = time.monotonic()
    r = sbx.commands.run("echo first; sleep 1; echo second; echo oops >&2",
                         on_stdout=lambda s: got.append((time.monotonic() - t0, s)))
    assert (r.exit_code, r.stdout, r.stderr) == (0, "first\nsecond\n", "oops\n")
    assert got[0] == (got[0][0], "first\n") and got[0][0] < 0.9  # as it came, not at the end
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo partial; echo why >&2; exit 3")
    assert (e.value.exit_code, e.value.stdout, e.value.stderr) == (3, "partial\n", "why\n")
    r = sbx.commands.run("pwd; echo $GREETING", cwd="/tmp", envs={"GREETING": "hi"})
    assert r.stdout == "/tmp\nhi\n"
    assert sbx.commands.run("pwd").stdout == "/root\n"  # the user's home by default


def test_a_background_command_its_stdin_and_its_kill(sbx: Sandbox):
    h = sbx.commands.run("sleep 300", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.list()[0].cmd == "/bin/bash"
    assert h.kill() is True
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert e.value.exit_code == -1  # killed by a signal, as envd says it
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is False  # gone
    # stdin, from later calls
    reader = sbx.commands.run("while read l; do echo got:$l; done; echo eof", background=True,
                              stdin=True)
    sbx.commands.send_stdin(reader.pid, "one\n")
    sbx.commands.send_stdin(reader.pid, "two\n")
    sbx.commands.close_stdin(reader.pid)
    assert reader.wait().stdout == "got:one\ngot:two\neof\n"
    # a background command's output through a second connection, from now on
    talker = sbx.commands.run("for i in 1 2 3 4 5 6; do echo $i; sleep 0.3; done",
                              background=True)
    time.sleep(0.5)
    again = sbx.commands.connect(talker.pid)
    rest = again.wait().stdout
    assert rest and "6\n" in rest and not rest.startswith("1\n")


def followers(sb: Sandbox, pid_id: int | None = None) -> list[tuple[int, int]]:
    """torpor's `logs -f` followers in the sandbox (of the process `pid_id`, init's id for
    it): (their pid, the id they follow), oldest first."""
    ps = sb.commands.run("ps -eo pid=,args=").stdout
    found = [(int(w[0]), int(w[-1])) for w in (line.split() for line in ps.splitlines())
             if w[1:4] == ["/.torpor/init", "logs", "-f"]]  # fmt: skip
    return [f for f in found if pid_id in (None, f[1])]


def test_a_connection_that_sees_the_end_after_the_start_stream_still_ends(sbx: Sandbox):
    # Under load, the Start stream of a background command could see it end, and forget
    # it, before a Connect stream's follower had seen the end: that one then waited for
    # it forever. Here the Connect stream's follower is held (stopped) until the Start
    # stream has ended and the server has had time to forget the process.
    h = sbx.commands.run("echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two",
                         background=True)
    deadline = time.monotonic() + 10
    before: set[int] = set()
    while not (before & (now := {i for _, i in followers(sbx)})):  # the Start stream's
        assert time.monotonic() < deadline  # (each `ps` command has a follower of its own)
        before = now
        time.sleep(0.05)
    pid_id = min(before & now)
    again = sbx.commands.connect(h.pid, timeout=20)
    while len(found := followers(sbx, pid_id)) != 2:  # and the Connect stream's
        assert time.monotonic() < deadline
        time.sleep(0.05)
    held = found[-1][0]
    sbx.commands.run(f"kill -STOP {held}")
    try:
        sbx.files.write("/tmp/go", "")
        assert h.wait().stdout == "one\ntwo\n"
        time.sleep(1)  # (the Start stream's end was sent before its process was let go)
    finally:
        sbx.commands.run(f"kill -CONT {held}")
    assert again.wait().stdout == "two\n"
    time.sleep(0.5)
    assert not sbx.files.exists(f"/run/torpor/procs/{pid_id}")  # forgotten by the last


def test_files(sbx: Sandbox):
    sbx.files.write("/work/a.txt", "alpha")
    assert sbx.files.read("/work/a.txt") == "alpha"
    info = sbx.files.write("notes/b.bin", b"\x00\x01\xff")  # relative: from the home
    assert info.path == "/root/notes/b.bin"
    assert sbx.files.read("/root/notes/b.bin", format="bytes") == b"\x00\x01\xff"
    import io

    sbx.files.write("/work/stream.bin", io.BytesIO(b"x" * 100_000))  # octet-stream
    assert len(sbx.files.read("/work/stream.bin", format="bytes")) == 100_000
    sbx.files.write_files([{"path": "/work/m1", "data": "1"}, {"path": "/work/m2", "data": "2"}])
    entries = {e.name: e for e in sbx.files.list("/work")}
    assert set(entries) == {"a.txt", "m1", "m2", "stream.bin"}
    assert entries["a.txt"].size == 5 and entries["a.txt"].type.value == "file"
    assert sbx.files.exists("/work/m1") and not sbx.files.exists("/work/nope")
    assert sbx.files.make_dir("/work/d") is True and sbx.files.make_dir("/work/d") is False
    sbx.files.rename("/work/m1", "/work/d/m1")
    assert [e.name for e in sbx.files.list("/work/d")] == ["m1"]
    assert sbx.files.get_info("/work/d").type.value == "dir"
    sbx.files.remove("/work/d")
    assert not sbx.files.exists("/work/d")
    from e2b import FileNotFoundException

    with pytest.raises(FileNotFoundException):
        sbx.files.read("/work/nope")


def test_pause_then_connect_keeps_a_process_and_its_memory():
    sb = Sandbox.create()
    try:
        sb.commands.run(COUNTER, background=True)
        before = counter(sb)
        assert sb.pause() is True
        assert sb.get_info().state.value == "paused" and not sb.is_running()
        assert sb.pause() is False  # paused already
        time.sleep(1)
        again = Sandbox.connect(sb.sandbox_id)  # resume
        after = counter(again)
        assert before <= after < before + 60  # it went on from its memory, not from 0
        time.sleep(0.3)
        assert counter(again) > after  # and runs
        assert again.get_info().state.value == "running"
    finally:
        sb.kill()


def test_idle_timeout_pauses_and_a_call_resumes_it():
    sb = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sb.files.write("/work/kept", "yes")
        deadline = time.monotonic() + 30
        while sb.get_info().state.value != "paused":
            assert time.monotonic() < deadline, "not paused after its timeout"
            time.sleep(0.3)
        assert sb.commands.run("cat /work/kept").stdout == "yes"  # resumed by the call
        assert sb.get_info().state.value == "running"
        sb.set_timeout(3600)
        info = sb.get_info()
        assert info.end_at.timestamp() > time.time() + 3000
    finally:
        sb.kill()
    # on_timeout kill (the default): it goes
    gone = Sandbox.create(timeout=1)
    deadline = time.monotonic() + 30
    while True:
        try:
            gone.get_info()
        except SandboxNotFoundException:
            break
        assert time.monotonic() < deadline, "not killed after its timeout"
        time.sleep(0.3)


def test_snapshot_then_a_sandbox_from_it(sbx: Sandbox):
    sbx.files.write("/work/v", "1")
    snap = sbx.create_snapshot()
    sbx.files.write("/work/v", "2")
    copy = Sandbox.create(template=snap.snapshot_id)
    try:
        assert copy.files.read("/work/v") == "1"
        assert sbx.files.read("/work/v") == "2"
    finally:
        copy.kill()


def test_list_and_kill():
    a = Sandbox.create(metadata={"who": "list-test"})
    listed = {i.sandbox_id: i for i in Sandbox.list(query=None).next_items()}
    assert a.sandbox_id in listed and listed[a.sandbox_id].metadata == {"who": "list-test"}
    assert a.kill() is True
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(a.sandbox_id)
    assert Sandbox.kill(a.sandbox_id) is False


def test_the_same_through_async_sandbox():
    async def main() -> None:
        sb = await AsyncSandbox.create()
        try:
            seen: list[str] = []
            r = await sb.commands.run("echo a; sleep 0.5; echo b", on_stdout=seen.append)
            assert r.stdout == "a\nb\n" and seen[0] == "a\n"
            with pytest.raises(CommandExitException):
                await sb.commands.run("exit 4")
            await sb.files.write("/work/x", "async")
            assert await sb.files.read("/work/x") == "async"
            assert [e.name for e in await sb.files.list("/work")] == ["x"]
            h = await sb.commands.run("sleep 300", background=True)
            assert await h.kill() is True
            await sb.commands.run(COUNTER, background=True)
            await asyncio.sleep(0.5)
            before = int(await sb.files.read("/tmp/n"))
            assert await sb.pause() is True
            again = await AsyncSandbox.connect(sb.sandbox_id)
            after = int(await again.files.read("/tmp/n"))
            assert before <= after < before + 60
        finally:
            await sb.kill()

    asyncio.run(main())


def test_a_tenant_over_its_storage_quota(e2b_server: E2BServer):
    """An operator gives a tenant its own quota (`torpor quota set`, while the server
    runs); over it, the SDK's create and create_snapshot raise RateLimitException with
    what to delete, and its pause still works."""
    db = f"sqlite:///{e2b_server.log.parent / 'torpor.db'}"
    rdb = RuntimeDB(db)
    key = TokenStore(rdb).create("tenant-quota", ["sandboxes"])[0]
    rdb.close()
    sb = Sandbox.create(api_key=key)
    try:
        sb.files.write("/work/v", "1")
        sb.create_snapshot()
        assert sb.pause() is True
        out = subprocess.run([*TORPOR, "quota", "set", "tenant-quota", "--snapshots", "1",
                              "--db", db], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        with pytest.raises(RateLimitException) as e:
            Sandbox.create(api_key=key)
        assert "tenant 'tenant-quota' has 2 snapshots, over its quota of 1" in str(e.value)
        again = Sandbox.connect(sb.sandbox_id, api_key=key)
        with pytest.raises(RateLimitException) as e:
            again.create_snapshot()
        assert "delete snapshots you no longer need" in str(e.value)
        assert again.files.read("/work/v") == "1"
        assert again.pause() is True  # never refused
    finally:
        Sandbox.kill(sb.sandbox_id, api_key=key)
