"""The gVisor engine on a real runsc: what survives a checkpoint, exec, files, forks."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import pytest

from tests.programs import COUNTER
from tests.sandbox.test_sandbox_leftovers import dead_writer_tag, make
from torpor.sandbox.engine import (
    CheckpointError,
    SandboxConflict,
    SandboxError,
    SandboxFileNotFound,
    SandboxNotFound,
    SandboxSpec,
    Tmpfs,
)
from torpor.sandbox.gvisor import GVisorEngine


def read_counter(engine: GVisorEngine, name: str) -> tuple[str, int]:
    for _ in range(200):
        try:
            token, n = engine.read_file(name, "/tmp/c").decode().split()
            return token, int(n)
        except (SandboxError, ValueError):
            time.sleep(0.02)
    raise AssertionError("counter never appeared")


def counter_passes(engine: GVisorEngine, name: str, n: int) -> int:
    """Wait until the counter in `name` counts past n (its process runs); its count then."""
    deadline = time.monotonic() + 10
    while (now := read_counter(engine, name)[1]) <= n:
        assert time.monotonic() < deadline, f"the counter in {name} stopped at {now}"
        time.sleep(0.02)
    return now


def test_process_memory_survives_checkpoint_and_restore(engine: GVisorEngine, sandbox: str):
    engine.spawn(sandbox, ["python3", "-c", COUNTER])
    token, before = read_counter(engine, sandbox)
    ck = engine.checkpoint(sandbox, "c1")
    assert engine.inspect(sandbox).state == "checkpointed"
    assert ck.size > 0 and ck.seconds > 0
    with pytest.raises(SandboxConflict, match="not running"):
        engine.exec(sandbox, ["true"])
    time.sleep(0.5)  # time passes while it sleeps; the process must not notice a restart
    engine.start(sandbox, checkpoint=ck.id)
    token2, after = read_counter(engine, sandbox)
    assert token2 == token, "a new process was started instead of the old one continuing"
    assert after >= before
    counter_passes(engine, sandbox, after)  # the restored process runs on
    procs = engine.processes(sandbox)
    assert any("python3" in p["argv"] and p["state"] == "running" for p in procs)


def test_overlay_files_survive_and_image_is_untouched(
    engine: GVisorEngine, sandbox: str, images
):
    engine.write_file(sandbox, "/etc/torpor-test.conf", b"hello\n")
    engine.exec(sandbox, ["sh", "-c", "mkdir -p /work && seq 1 1000 > /work/seq.txt"])
    ck = engine.checkpoint(sandbox, "files")
    engine.start(sandbox, checkpoint=ck.id)
    assert engine.read_file(sandbox, "/etc/torpor-test.conf") == b"hello\n"
    seq = engine.read_file(sandbox, "/work/seq.txt").decode().split()
    assert seq[0] == "1" and seq[-1] == "1000"
    rootfs = images.get("base").rootfs
    assert not (rootfs / "etc" / "torpor-test.conf").exists()
    assert not (rootfs / "work").exists()


def test_exec_exit_codes_stdin_env_workdir(engine: GVisorEngine, sandbox: str):
    assert engine.exec(sandbox, ["true"]).exit_code == 0
    assert engine.exec(sandbox, ["sh", "-c", "exit 7"]).exit_code == 7
    assert engine.exec(sandbox, ["sh", "-c", "kill -9 $$"]).exit_code == 137
    res = engine.exec(sandbox, ["no-such-program"])
    assert res.exit_code == 127 and b"no-such-program" in res.stderr
    res = engine.exec(sandbox, ["cat"], stdin=b"through stdin\n" * 1000)
    assert res.stdout == b"through stdin\n" * 1000
    res = engine.exec(sandbox, ["sh", "-c", 'echo "$FOO $(pwd)"; echo err >&2'],
                      env=["FOO=bar"], workdir="/tmp")
    assert res.stdout == b"bar /tmp\n" and res.stderr == b"err\n"
    res = engine.exec(sandbox, ["id", "-u"], user="nobody")
    assert res.stdout.strip() == b"65534"
    t0 = time.monotonic()
    with pytest.raises(SandboxError, match="timed out"):
        engine.exec(sandbox, ["sleep", "30"], timeout=0.5)
    assert time.monotonic() - t0 < 10, "the timeout did not stop the command"
    assert not any("sleep 30" in p["argv"] and p["state"] == "running"
                   for p in engine.processes(sandbox))  # fmt: skip
    # A command that ignores SIGTERM is killed 5 s later.
    t0 = time.monotonic()
    with pytest.raises(SandboxError, match="timed out"):
        engine.exec(sandbox, ["sh", "-c", "trap '' TERM; sleep 60"], timeout=0.5)
    assert time.monotonic() - t0 < 15


def test_copy_in_and_out_both_ways(engine: GVisorEngine, sandbox: str, tmp_path: Path):
    src = tmp_path / "proj"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "link").symlink_to("a.txt")
    engine.copy_in(sandbox, src, "/root")  # existing dir: copied inside it
    res = engine.exec(sandbox, ["sh", "-c", "cat /root/proj/a.txt; /root/proj/run.sh; "
                                            "readlink /root/proj/link"])
    assert res.stdout == b"alphahi\na.txt\n"
    engine.copy_in(sandbox, src / "a.txt", "/tmp/renamed.txt")  # new path: renamed
    assert engine.read_file(sandbox, "/tmp/renamed.txt") == b"alpha"
    out = tmp_path / "back"
    engine.copy_out(sandbox, "/root/proj", out)
    assert (out / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 100
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "link").is_symlink()
    with pytest.raises(SandboxFileNotFound, match=f"no such file or directory in sandbox "
                       f"{sandbox}: /no/such/file"):  # fmt: skip
        engine.copy_out(sandbox, "/no/such/file", tmp_path / "x")
    with pytest.raises(SandboxError, match="no such directory"):
        engine.copy_in(sandbox, src / "a.txt", "/no/such/dir/x")


def test_fork_gives_two_independent_sandboxes(engine: GVisorEngine, sandbox: str):
    engine.spawn(sandbox, ["python3", "-c", COUNTER])
    engine.write_file(sandbox, "/root/shared.txt", b"before fork")
    read_counter(engine, sandbox)  # it runs: its token is made
    ck = engine.checkpoint(sandbox, "forkpoint", leave_running=True)
    assert engine.inspect(sandbox).state == "running"
    fork = engine.restore(ck.id, name=f"{sandbox}-fork")
    try:
        token_a, _ = read_counter(engine, sandbox)
        token_b, _ = read_counter(engine, fork.name)
        assert token_a == token_b  # the same process, now running twice
        engine.write_file(fork.name, "/root/only-fork.txt", b"x")
        engine.write_file(sandbox, "/root/shared.txt", b"changed in original")
        assert engine.exec(sandbox, ["test", "-e", "/root/only-fork.txt"]).exit_code == 1
        assert engine.read_file(fork.name, "/root/shared.txt") == b"before fork"
        engine.stop(sandbox)
        _, n1 = read_counter(engine, fork.name)
        counter_passes(engine, fork.name, n1)  # the fork lives on its own
    finally:
        engine.remove(fork.name, force=True)


def test_main_process_output_logs_and_exit_code(engine: GVisorEngine):
    info = engine.run(
        SandboxSpec(image="base", cmd=["sh", "-c", "echo out-line; echo err-line >&2; exit 3"]),
        name="t-main-exit",
    )
    try:
        assert engine.wait(info.name) == 3
        state = engine.inspect(info.name)
        assert state.state == "exited" and state.exit_code == 3
        log = engine.console_path(info.name).read_bytes()
        assert b"out-line" in log and b"err-line" in log
    finally:
        engine.remove(info.name, force=True)


def test_killed_from_outside_shows_exited(engine: GVisorEngine, sandbox: str):
    import os
    import signal

    pid = engine.inspect(sandbox).pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and engine.inspect(sandbox).state == "running":
        time.sleep(0.1)
    info = engine.inspect(sandbox)
    assert info.state == "exited"
    assert all(i.name != sandbox for i in engine.list())
    assert any(i.name == sandbox for i in engine.list(all=True))
    with pytest.raises(SandboxConflict, match="it is not running .state: exited"):
        engine.checkpoint(sandbox)
    engine.start(sandbox)  # a fresh start from the image works again
    assert engine.exec(sandbox, ["true"]).exit_code == 0


def test_run_options_volumes_user_env_workdir_memory(engine: GVisorEngine, tmp_path: Path):
    from torpor.sandbox.engine import Volume

    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "in.txt").write_text("from the host")
    (tmp_path / "rw").mkdir()
    spec = SandboxSpec(
        image="base",
        cmd=["sleep", "1000"],
        env=["GREETING=hi"],
        workdir="/tmp",
        user="nobody",
        volumes=[
            Volume(str(tmp_path / "ro"), "/mnt/ro", readonly=True),
            Volume(str(tmp_path / "rw"), "/mnt/rw"),
        ],
        memory=256 << 20,
    )
    engine.run(spec, name="t-opts")
    try:
        res = engine.exec("t-opts", ["sh", "-c", 'echo "$GREETING $(pwd) $(id -un)"'])
        assert res.stdout == b"hi /tmp nobody\n"
        # The main process runs as the sandbox's user; init stays root.
        res = engine.exec("t-opts", ["ps", "-o", "user=", "-p", "2"], user="root")
        assert res.stdout.strip() == b"nobody"
        assert engine.read_file("t-opts", "/mnt/ro/in.txt") == b"from the host"
        res = engine.exec("t-opts", ["sh", "-c", "echo x > /mnt/ro/x"], user="root")
        assert res.exit_code != 0 and b"Read-only" in res.stderr
        assert engine.exec("t-opts", ["sh", "-c", "echo w > /mnt/rw/w"], user="root").exit_code == 0
        assert (tmp_path / "rw" / "w").read_text() == "w\n"
        meminfo = engine.exec("t-opts", ["cat", "/proc/meminfo"]).text
        total_kb = int(meminfo.split("MemTotal:")[1].split()[0])
        assert total_kb == 256 * 1024
    finally:
        engine.remove("t-opts", force=True)


def test_finished_execs_leave_nothing_in_sandbox_memory(engine: GVisorEngine, sandbox: str):
    before = engine.exec(sandbox, ["sh", "-c", "ls /run/torpor/procs | wc -l"]).text.strip()
    for _ in range(3):
        res = engine.exec(sandbox, ["head", "-c", "3000000", "/dev/zero"])
        assert len(res.stdout) == 3_000_000
    size_kb = engine.exec(sandbox, ["du", "-sk", "/run/torpor/procs"]).text.split()[0]
    assert int(size_kb) < 100, f"exec output kept in the sandbox: {size_kb} KiB"
    after = engine.exec(sandbox, ["sh", "-c", "ls /run/torpor/procs | wc -l"]).text.strip()
    assert after == before
    # A background process keeps its output files.
    pid = engine.spawn(sandbox, ["sh", "-c", "echo kept; sleep 100"])
    deadline = time.monotonic() + 10
    while engine.read_file(sandbox, f"/run/torpor/procs/{pid}/stdout") != b"kept\n":
        assert time.monotonic() < deadline, "the background process's output is not kept"
        time.sleep(0.02)


def test_reading_a_directory_as_a_file_fails_fast(engine: GVisorEngine, sandbox: str):
    engine.exec(sandbox, ["sh", "-c", "mkdir -p /tmp/big && head -c 2000000 /dev/urandom "
                                      "> /tmp/big/f"])  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(SandboxError, match="not a regular file"):
        engine.read_file(sandbox, "/tmp/big")
    assert time.monotonic() - t0 < 10
    assert engine.exec(sandbox, ["true"]).exit_code == 0


def test_execs_do_not_grow_the_checkpoint(engine: GVisorEngine, sandbox: str):
    # Every exec starts a process under torpor-init (and file operations run init's
    # client in the sandbox); a static glibc build left ~80 KB of sandbox memory behind
    # per run on this gVisor (hence musl).
    before = engine.checkpoint(sandbox, "before", leave_running=True).size
    for _ in range(40):
        engine.exec(sandbox, ["true"])
    after = engine.checkpoint(sandbox, "after", leave_running=True).size
    assert after - before < 512 * 1024, f"checkpoint grew {after - before} bytes over 40 execs"


def kernel_state_bytes(engine: GVisorEngine, sandbox: str, name: str) -> int:
    ck = engine.checkpoint(sandbox, name, leave_running=True)
    path, temporary = engine.checkpoints.open_dir(ck.id)
    size = (path / "checkpoint.img").stat().st_size
    if temporary:
        shutil.rmtree(path, ignore_errors=True)
    return size


def test_execs_leave_nothing_in_the_kernel_state(engine: GVisorEngine, sandbox: str):
    # This gVisor's overlay keeps a whiteout for every name deleted from it (see the
    # tmpfs test below for the contrast), and torpor-init removes a directory per
    # finished exec: on the overlay each exec left ~1 KiB of kernel state that every later
    # checkpoint saved and every restore decoded; on init's tmpfs nothing is left.
    before = kernel_state_bytes(engine, sandbox, "before")
    for _ in range(150):
        engine.exec(sandbox, ["true"])
    grew = kernel_state_bytes(engine, sandbox, "after") - before
    assert grew < 150 * 200, f"150 execs grew the kernel state {grew} bytes"
    mounts = engine.exec(sandbox, ["cat", "/proc/mounts"]).text
    assert any(ln.split()[1:3] == ["/run/torpor", "tmpfs"] for ln in mounts.splitlines())


def test_host_channel_closed_by_a_checkpoint_and_reopened(engine: GVisorEngine):
    """Sandboxes talk to init over the host channel, which a checkpoint closes and a
    restore (or a checkpoint that keeps running) reopens."""
    info = engine.run(SandboxSpec(image="base"))
    try:
        ctl = engine.home / "sandboxes" / info.id / "ctl"
        assert (ctl / "init.sock").exists()
        engine.exec(info.name, ["sh", "-c", "echo kept > /tmp/kept"])
        engine.checkpoint(info.name, "lr", leave_running=True)
        res = engine.exec(info.name, ["cat", "/run/torpor/generation"])
        assert res.stdout == b"0\n", "a checkpoint that kept running is not a restore"
        ck = engine.checkpoint(info.name, "c")
        assert not (ctl / "init.sock").exists()
        fork = engine.restore(ck.id)
        res = engine.exec(fork.name, ["cat", "/tmp/kept", "/run/torpor/generation"])
        assert res.stdout == b"kept\n1\n"
        engine.remove(fork.name, force=True)
    finally:
        engine.remove(info.name, force=True)


def test_checkpoints_of_older_builds_are_refused_with_what_to_do(engine: GVisorEngine):
    # Older development builds made sandboxes without the host channel, or with init's
    # state on the overlay; their checkpoints say so (or say nothing of either).
    info = engine.run(SandboxSpec(image="base"))
    try:
        ck = engine.checkpoint(info.name, "c")  # stops it: start(checkpoint=) may restore
        meta_path = engine.checkpoints.root / ck.id / "meta.json"
        meta = json.loads(meta_path.read_text())
        assert (meta["channel"], meta["init_tmpfs"]) == (True, True)
        for old, why in [({"channel": False}, "without the host channel"),
                         ({"init_tmpfs": False}, "with its init's state on the root overlay"),
                         ({"channel": None, "init_tmpfs": None}, "without the host channel")]:
            meta_path.write_text(json.dumps({k: v for k, v in {**meta, **old}.items()
                                             if v is not None}))  # fmt: skip
            for attempt in (lambda: engine.restore(ck.id),
                            lambda: engine.start(info.name, checkpoint=ck.id)):
                with pytest.raises(CheckpointError, match=f"older development build of "
                                   f"torpor \\(a sandbox {why}.*torpor checkpoint rm"):
                    attempt()
        assert engine.inspect(info.name).state == "checkpointed"  # refused before anything
        assert [i.name for i in engine.list(all=True) if i.restored_from == ck.id] == []
    finally:
        engine.remove(info.name, force=True)


def test_sandbox_records_of_older_builds_are_refused_and_can_be_removed(
    engine: GVisorEngine, cli
):
    info = engine.run(SandboxSpec(image="base"), name="t-old-build")
    record = engine.records.dir(info.id) / "sandbox.json"
    for old in ({"channel": False}, {"init_tmpfs": False}, {"owner": None}):
        data = json.loads(record.read_text())
        record.write_text(json.dumps({**data, **old}))
        for ref in ("t-old-build", info.id):
            with pytest.raises(SandboxError, match="t-old-build .* was made by an older "
                               "development build of torpor .*torpor rm -f"):
                engine.inspect(ref)
        with pytest.raises(SandboxError, match="older development build"):
            engine.exec("t-old-build", ["true"])
        assert info.id not in [i.id for i in engine.list(all=True)]  # left out, not a crash
        record.write_text(json.dumps(data))
    record.write_text(json.dumps({**data, "channel": False}))
    res = cli("exec", "t-old-build", "true")
    assert res.returncode != 0 and b"Traceback" not in res.stderr
    assert b"older development build of torpor" in res.stderr
    res = cli("ps", "-a")
    assert res.returncode == 0 and b"t-old-build" not in res.stdout
    with pytest.raises(SandboxError, match="older development build"):
        engine.remove("t-old-build")  # not without force
    assert cli("rm", "-f", "t-old-build").returncode == 0
    assert not engine.records.dir(info.id).exists()
    assert not list(engine.runsc_root.glob(f"{info.id}*")), "runsc still has its state"
    assert not (engine.records.names_dir / "t-old-build").exists()
    deadline = time.monotonic() + 5
    while info.pid and Path(f"/proc/{info.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert info.pid and not Path(f"/proc/{info.pid}").exists(), "its sandbox still runs"


def test_checkpoint_caller_dying_after_prepare_does_not_strand_the_sandbox(
    engine: GVisorEngine, sandbox: str
):
    # A caller that asked init to prepare and died before checkpointing leaves init with
    # no host socket; the next call notices, tells init to listen again, and goes on.
    info = engine.inspect(sandbox)
    engine.client.run(info, ["prepare"], timeout=30)
    t0 = time.monotonic()
    assert engine.exec(sandbox, ["echo", "back"]).stdout == b"back\n"
    assert time.monotonic() - t0 < 15


def test_sandboxes_are_found_without_reading_every_record(engine: GVisorEngine, sandbox: str,
                                                          monkeypatch: pytest.MonkeyPatch):
    # By name or id, a sandbox is found through its own record (and the names index), so
    # an exec costs the same with 5 or 500 sandboxes on the machine.
    info = engine.inspect(sandbox)

    def every_record() -> None:
        raise AssertionError("read every sandbox record")

    monkeypatch.setattr(engine.records, "all", every_record)
    assert engine.inspect(sandbox).id == info.id
    assert engine.inspect(info.id).name == sandbox
    assert engine.exec(sandbox, ["true"]).exit_code == 0
    monkeypatch.undo()
    renamed = f"{sandbox}-x"
    engine.rename(sandbox, renamed)
    monkeypatch.setattr(engine.records, "all", every_record)
    assert engine.exec(renamed, ["true"]).exit_code == 0
    monkeypatch.undo()
    with pytest.raises(SandboxNotFound):
        engine.inspect(sandbox)  # the old name is gone from the index too
    engine.rename(renamed, sandbox)


def test_exec_in_a_sandbox_killed_from_outside_says_so_at_once(engine: GVisorEngine,
                                                               sandbox: str):
    import os
    import signal

    os.kill(engine.inspect(sandbox).pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(SandboxConflict, match="not running"):
        engine.exec(sandbox, ["true"])  # its record still says running: exec finds out
    assert time.monotonic() - t0 < 5, "it waited for an init that cannot answer"


def test_tmpfs_is_part_of_the_checkpoint_and_deletes_leave_nothing(engine: GVisorEngine):
    # Files in a --tmpfs mount survive checkpoint/restore like the overlay's; unlike the
    # overlay, a name deleted or renamed away there leaves no whiteout behind, so churn
    # (git's temporary objects, compiler temp files) does not grow the kernel state.
    churn = ("import os\nos.makedirs('{d}', exist_ok=True)\nfor i in range(600):\n"
             "    p = f'{d}/tmp_{{i}}'\n    open(p, 'w').write('x')\n"
             "    os.replace(p, '{d}/kept')\n")  # fmt: skip
    spec = SandboxSpec(image="base", tmpfs=[Tmpfs.parse("/work:size=64m,mode=1777")])
    info = engine.run(spec)
    try:
        mounts = engine.exec(info.name, ["cat", "/proc/mounts"]).text
        line = next(ln for ln in mounts.splitlines() if ln.split()[1] == "/work")
        assert line.split()[2] == "tmpfs", line
        assert engine.exec(info.name, ["stat", "-c", "%a", "/work"]).text.strip() == "1777"
        grew = {}
        for d in ("/work/churn", "/var/churn"):  # the tmpfs, then the root overlay
            before = kernel_state_bytes(engine, info.name, f"b{len(grew)}")
            assert engine.exec(info.name, ["python3", "-c", churn.format(d=d)]).exit_code == 0
            grew[d] = kernel_state_bytes(engine, info.name, f"a{len(grew)}") - before
        assert grew["/work/churn"] < 600 * 100, grew
        assert grew["/var/churn"] > 600 * 300, grew  # the overlay's whiteouts, for contrast
        engine.write_file(info.name, "/work/notes.txt", b"kept across restore\n")
        ck = engine.checkpoint(info.name, "stop")
        engine.start(info.name, checkpoint=ck.id)
        assert engine.read_file(info.name, "/work/notes.txt") == b"kept across restore\n"
        assert engine.inspect(info.name).spec.tmpfs == spec.tmpfs
        fork = engine.restore(ck.id)
        try:
            assert engine.read_file(fork.name, "/work/churn/kept") == b"x"
        finally:
            engine.remove(fork.name, force=True)
    finally:
        engine.remove(info.name, force=True)


def test_tmpfs_bad_input(engine: GVisorEngine):
    for text, msg in [("work", "absolute path"), ("/", "absolute path"),
                      ("/work:size=lots", "invalid size"), ("/work:mode=999", "invalid tmpfs"),
                      ("/work:uid=0", "invalid tmpfs option")]:  # fmt: skip
        with pytest.raises(SandboxError, match=msg):
            Tmpfs.parse(text)
    for spec, msg in [
        (SandboxSpec(image="base", tmpfs=[Tmpfs("/proc")]), "cannot mount over /proc"),
        (SandboxSpec(image="base", tmpfs=[Tmpfs("/run/torpor")]), "torpor uses it"),
        (SandboxSpec(image="base", tmpfs=[Tmpfs("/a"), Tmpfs("/a")]), "mounted twice"),
        (SandboxSpec(image="base", tmpfs=[Tmpfs.parse("/x/../proc/")]), "over /proc"),
    ]:
        with pytest.raises(SandboxError, match=msg):
            engine.run(spec)
    assert not [i for i in engine.list(all=True) if i.spec.tmpfs]  # nothing half-made


def test_image_has_files(engine: GVisorEngine):
    assert engine.image_has_files("base", "/etc")
    assert engine.image_has_files("base", "/etc/passwd")  # a file
    assert not engine.image_has_files("base", "/work")
    assert not engine.image_has_files("base", "/no/such/dir")
    assert not engine.image_has_files("base", "/../../work")  # stays inside the image
    assert engine.image_has_files("base", "/bin/sh")  # a link in the image is not followed


def test_rm_force_kills_and_forgets_at_once(engine: GVisorEngine):
    import os

    info = engine.run(SandboxSpec(image="base"))
    engine.spawn(info.name, ["sleep", "1000"])
    pid = engine.inspect(info.name).pid
    assert pid and os.path.exists(f"/proc/{pid}")
    t0 = time.monotonic()
    engine.remove(info.name, force=True)
    took = time.monotonic() - t0
    assert all(i.id != info.id for i in engine.list(all=True))
    assert not list(engine.runsc_root.glob(f"{info.id}*")), "runsc still has its state"
    assert not (engine.sandboxes_dir / info.id).exists()
    # no process of it is left: sandbox, gofer, runsc (they name its bundle)
    def left() -> list[str]:
        out = []
        for d in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if d.name.isdigit() and info.id.encode() in (d / "cmdline").read_bytes():
                    out.append(d.name)
        return out

    deadline = time.monotonic() + 2
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left()
    assert took < 2, took


def test_base_image_git_packs_loose_objects_early(engine: GVisorEngine, sandbox: str):
    # Every file a sandbox keeps costs restore time, so torpor/base sets gc.auto=256: a
    # commit that leaves ~600 loose objects packs them (in the foreground), where git's
    # default (6,700) leaves them all as files. The blobs are the same in both repos (the
    # contents are 1..600), and three of them fall in objects/17, git's sample directory.
    conf = engine.images.get("base").rootfs / "etc/gitconfig"
    assert conf.exists() and "auto = 256" in conf.read_text(), (
        "the base image predates torpor-base/2: `torpor image build-base --force`")
    script = """set -e
    for repo in tuned default; do
      mkdir /tmp/$repo && cd /tmp/$repo && git init -q
      git config user.email agent@example.com && git config user.name agent
      if [ $repo = default ]; then git config gc.auto 6700; fi
      for i in $(seq 600); do echo $i > f$i; done
      git add -A && git commit -qm one
      echo "$repo $(git count-objects -v | tr '\\n' ' ')"
    done"""
    res = engine.exec(sandbox, ["sh", "-c", script], timeout=120)
    assert res.exit_code == 0, res.stderr
    out = res.stdout.decode()
    stats = {}
    for line in out.splitlines():
        repo, *rest = line.split()
        stats[repo] = {k.rstrip(":"): int(v) for k, v in zip(rest[::2], rest[1::2], strict=True)}
    assert stats["tuned"]["count"] < 10 and stats["tuned"]["packs"] >= 1, out
    assert stats["default"]["count"] >= 600 and stats["default"]["packs"] == 0, out


def test_doctor_says_when_the_base_image_predates_the_recipe(
    engine: GVisorEngine, torpor_home: Path, tmp_path: Path
):
    import json

    from torpor.sandbox.doctor import run_checks
    from torpor.sandbox.images import ImageStore

    base = engine.images.get("base")
    checks = {c.name: c for c in run_checks(lambda: engine)}
    assert checks["base image"].ok and "older recipe" not in checks["base image"].detail
    # The same tree, described as an image built before the recipe was recorded.
    old = tmp_path / "images" / base.rootfs.parent.name
    old.mkdir(parents=True)
    (old / "rootfs").symlink_to(base.rootfs)
    meta = json.loads((base.rootfs.parent / "image.json").read_text())
    meta.pop("recipe", None)
    (old / "image.json").write_text(json.dumps(meta))
    stale = GVisorEngine(torpor_home, images=ImageStore(tmp_path / "images"))
    checks = {c.name: c for c in run_checks(lambda: stale)}
    detail = checks["base image"].detail
    assert checks["base image"].ok and "older recipe (torpor-base/1)" in detail, detail
    assert "build-base --force" in detail


def test_a_sandboxs_leftover_temporary_files_are_swept_when_it_boots(engine: GVisorEngine):
    # A process killed while it wrote the sandbox's record (write_atomic's .tmp-*) or a
    # host-channel token left them in the sandbox's directories; its next boot removes
    # them, and not a temporary file that may still be in use.
    info = engine.run(SandboxSpec(image="base"))
    try:
        engine.stop(info.name)
        d = engine.records.dir(info.id)
        old = make(d / ".tmp-x1y2", age=120)
        token = make(d / "ctl" / f".token-{dead_writer_tag()}1")
        fresh = make(d / ".tmp-z3w4", age=1)
        engine.start(info.name)
        assert not old.exists() and not token.exists() and fresh.exists()
        assert engine.exec(info.name, ["true"]).exit_code == 0
    finally:
        engine.remove(info.name, force=True)
