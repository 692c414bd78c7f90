"""The `torpor` command on a real runsc: Docker's verbs, and one clear line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from torpor.sandbox.engine import SandboxError
from torpor.sandbox.factory import open_engine
from torpor.sandbox.gvisor import GVisorEngine


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    err = proc.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def names(cli) -> list[str]:
    proc = cli("ps", "-a", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return [s["name"] for s in json.loads(proc.stdout)]


def test_run_exec_cp_logs_inspect_rm(cli, tmp_path: Path):
    assert cli("run", "-d", "--name", "c-basic", "base").returncode == 0
    try:
        proc = cli("exec", "c-basic", "sh", "-c", "echo out; echo err >&2; exit 5")
        assert proc.returncode == 5
        assert proc.stdout == b"out\n" and proc.stderr == b"err\n"
        proc = cli("exec", "-i", "c-basic", "tr", "a-z", "A-Z", input=b"hello stdin")
        assert proc.returncode == 0 and proc.stdout == b"HELLO STDIN"
        (tmp_path / "in.txt").write_text("from host")
        assert cli("cp", str(tmp_path / "in.txt"), "c-basic:/root/in.txt").returncode == 0
        assert cli("exec", "c-basic", "cat", "/root/in.txt").stdout == b"from host"
        assert cli("cp", "c-basic:/etc/debian_version", str(tmp_path / "v")).returncode == 0
        assert (tmp_path / "v").read_text().startswith("12")
        info = json.loads(cli("inspect", "c-basic").stdout)
        assert info["name"] == "c-basic" and info["state"] == "running"
        assert info["spec"]["network"] == "none"
        rows = json.loads(cli("ps", "--format", "json").stdout)
        assert any(r["name"] == "c-basic" for r in rows)
        one_line_error(cli("rm", "c-basic"), "running", "-f")
    finally:
        assert cli("rm", "-f", "c-basic").returncode == 0
    assert "c-basic" not in names(cli)


def test_foreground_run_streams_output_and_exit_code(cli):
    proc = cli("run", "--rm", "--name", "c-fg", "base", "sh", "-c", "echo hello; exit 4")
    assert proc.returncode == 4
    assert proc.stdout == b"hello\n"
    assert "c-fg" not in names(cli)


def test_logs_of_main_process(cli):
    assert cli("run", "-d", "--name", "c-logs", "base", "sh", "-c",
               "for i in 1 2 3; do echo line $i; sleep 0.2; done").returncode == 0
    try:
        proc = cli("logs", "-f", "c-logs", timeout=60)  # returns when the sandbox exits
        assert proc.stdout == b"line 1\nline 2\nline 3\n"
        assert cli("logs", "c-logs").stdout == b"line 1\nline 2\nline 3\n"
        rows = {r["name"]: r for r in json.loads(cli("ps", "-a", "--format", "json").stdout)}
        assert rows["c-logs"]["state"] == "exited" and rows["c-logs"]["exit_code"] == 0
    finally:
        cli("rm", "-f", "c-logs")


def test_unknown_and_duplicate_names_and_missing_image(cli):
    before = names(cli)
    one_line_error(cli("exec", "c-nope", "true"), "no such sandbox: c-nope")
    one_line_error(cli("stop", "c-nope"), "no such sandbox")
    one_line_error(cli("checkpoint", "create", "c-nope"), "no such sandbox")
    one_line_error(cli("run", "-d", "no-such-image"), "no such image")
    one_line_error(cli("run", "-d", "--name", "bad/name", "base"), "invalid name")
    one_line_error(cli("run", "-d", "--tmpfs", "scratch", "base"), "invalid tmpfs")
    one_line_error(cli("run", "-d", "--tmpfs", "/proc", "base"), "cannot mount over /proc")
    assert names(cli) == before
    assert cli("run", "-d", "--name", "c-dup", "base").returncode == 0
    try:
        one_line_error(cli("run", "-d", "--name", "c-dup", "base"), "already in use")
        assert names(cli).count("c-dup") == 1
    finally:
        cli("rm", "-f", "c-dup")


def test_run_with_a_tmpfs(cli):
    assert cli("run", "-d", "--name", "c-tmpfs", "--tmpfs", "/scratch:size=8m", "base"
               ).returncode == 0  # fmt: skip
    try:
        out = cli("exec", "c-tmpfs", "df", "-k", "/scratch").stdout.decode().splitlines()[-1]
        assert out.split()[1] == "8192", out  # its size limit
        info = json.loads(cli("inspect", "c-tmpfs").stdout)
        assert info["spec"]["tmpfs"] == [{"target": "/scratch", "size": 8 << 20, "mode": None}]
    finally:
        cli("rm", "-f", "c-tmpfs")


def test_checkpoint_restore_and_fork_from_the_cli(cli):
    assert cli("run", "-d", "--name", "c-ck", "base").returncode == 0
    try:
        cli("exec", "c-ck", "sh", "-c", "echo kept > /root/state")
        proc = cli("checkpoint", "create", "c-ck", "first")
        assert proc.returncode == 0, proc.stderr
        ck_id, size, ms = proc.stdout.decode().strip().split("\t")
        assert size.endswith("iB") and ms.endswith("ms")
        one_line_error(cli("checkpoint", "create", "c-ck", "again"), "not running")
        one_line_error(cli("exec", "c-ck", "true"), "not running")
        listed = json.loads(cli("checkpoint", "ls", "c-ck", "--format", "json").stdout)
        assert [m["name"] for m in listed] == ["first"]
        assert cli("start", "--checkpoint", "first", "c-ck").returncode == 0
        assert cli("exec", "c-ck", "cat", "/root/state").stdout == b"kept\n"
        proc = cli("restore", ck_id, "--name", "c-ck-fork")
        assert proc.returncode == 0, proc.stderr
        assert cli("exec", "c-ck-fork", "cat", "/root/state").stdout == b"kept\n"
        one_line_error(cli("checkpoint", "create", "--leave-running", "c-ck", "first"),
                       "already has a checkpoint named first")
        proc = cli("checkpoint", "create", "--leave-running", "c-ck", "second")
        assert proc.returncode == 0, proc.stderr
        assert cli("exec", "c-ck", "cat", "/root/state").stdout == b"kept\n"
        assert cli("checkpoint", "rm", "c-ck", "second").returncode == 0
        listed = json.loads(cli("checkpoint", "ls", "c-ck", "--format", "json").stdout)
        assert [m["name"] for m in listed] == ["first"]
    finally:
        cli("rm", "-f", "c-ck", "c-ck-fork")


def test_damaged_corrupt_and_foreign_checkpoints(cli, torpor_home: Path):
    """The CLI keeps checkpoints in the snapshot store, with a raw hot copy for speed."""
    from torpor.snapshots import open_store

    assert cli("run", "-d", "--name", "c-bad", "base").returncode == 0
    try:
        cli("exec", "c-bad", "sh", "-c", "echo kept > /root/state")
        ckp = cli("checkpoint", "create", "c-bad", "good")
        assert ckp.returncode == 0, ckp.stderr
        ck_id = ckp.stdout.decode().split("\t")[0]
        hot = torpor_home / "checkpoint-cache" / ck_id
        pages = hot / "pages.img"

        # A truncated hot copy is noticed and replaced from the store: nothing is lost.
        pages.write_bytes(pages.read_bytes()[:100])
        assert cli("start", "--checkpoint", ck_id, "c-bad").returncode == 0
        assert cli("exec", "c-bad", "cat", "/root/state").stdout == b"kept\n"
        assert cli("stop", "c-bad").returncode == 0

        # Damage in the store itself: a clear error, and nothing half-made.
        packs = sorted((torpor_home / "snapshots" / "packs").glob("*.pack"))
        assert packs
        for pack in packs:
            data = bytearray(pack.read_bytes())
            for k in range(0, len(data), 997):
                data[k] ^= 0xFF
            pack.write_bytes(bytes(data))
        import shutil

        shutil.rmtree(hot)
        one_line_error(cli("start", "--checkpoint", ck_id, "c-bad"), "corrupt", ck_id)
        assert json.loads(cli("inspect", "c-bad").stdout)["state"] == "exited"
        one_line_error(cli("restore", ck_id, "--name", "c-bad-fork"), "corrupt")
        assert "c-bad-fork" not in names(cli)

        # A well-formed snapshot whose checkpoint comes from elsewhere: runsc refuses it.
        store = open_store(f"file://{torpor_home / 'snapshots'}")
        meta = dict(store.info(ck_id).meta)
        foreign = torpor_home / "foreign"
        foreign.mkdir()
        (foreign / "checkpoint.img").write_bytes(os.urandom(4096))
        (foreign / "pages.img").write_bytes(b"\0" * 4096)
        import hashlib

        meta["files"] = {
            f.name: {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
            for f in foreign.iterdir()
        }
        meta["name"] = "foreign"
        store.put(foreign, meta=meta, engine="gvisor", snapshot_id="c-bad-foreign-1")
        one_line_error(cli("start", "--checkpoint", "c-bad-foreign-1", "c-bad"), "cannot restore")
        assert json.loads(cli("inspect", "c-bad").stdout)["state"] != "running"
        one_line_error(cli("start", "--checkpoint", "no-such-ck", "c-bad"), "no such checkpoint")
        assert cli("start", "c-bad").returncode == 0  # a fresh start still works
    finally:
        cli("rm", "-f", "c-bad")


def test_missing_runsc_is_explained(cli, tmp_path: Path):
    env_path = str(tmp_path)  # a PATH without runsc
    proc = subprocess.run(
        [os.path.join(os.path.dirname(__import__("sys").executable), "torpor"), "ps"],
        capture_output=True,
        env=dict(os.environ, PATH=env_path, TORPOR_HOME=str(tmp_path / "home")),
    )
    one_line_error(proc, "runsc", "not installed", "setup.sh")


def test_same_sandbox_calls_are_serialised_different_ones_are_not(cli):
    for n in ("c-par-a", "c-par-b"):
        assert cli("run", "-d", "--name", n, "base").returncode == 0
    try:
        results: dict[str, subprocess.CompletedProcess] = {}

        def run(key: str, *args: str) -> None:
            results[key] = cli(*args)

        # Each command says when it started and ended (the sandboxes share the host's
        # clock): the two must overlap, whatever the CLI's own start-up costs under load.
        timed = ["sh", "-c", "date +%s.%N; sleep 2; date +%s.%N"]
        threads = [
            threading.Thread(target=run, args=("a", "exec", "c-par-a", *timed)),
            threading.Thread(target=run, args=("b", "exec", "c-par-b", *timed)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["a"].returncode == 0 and results["b"].returncode == 0
        (a0, a1), (b0, b1) = (map(float, results[k].stdout.split()) for k in ("a", "b"))
        assert a0 < b1 and b0 < a1, "exec on different sandboxes ran one after the other"

        # A checkpoint waits for the exec running in the same sandbox, never cuts it off.
        slow = threading.Thread(
            target=run,
            args=("slow", "exec", "c-par-a", "sh", "-c", "touch /tmp/s; sleep 1.5; echo done"),
        )
        slow.start()
        deadline = time.monotonic() + 30
        while cli("exec", "c-par-a", "test", "-e", "/tmp/s").returncode != 0:  # it runs
            assert time.monotonic() < deadline, "the slow exec never started"
        ck = cli("checkpoint", "create", "c-par-a", "mid")
        slow.join()
        assert results["slow"].returncode == 0 and results["slow"].stdout == b"done\n"
        assert ck.returncode == 0, ck.stderr
    finally:
        cli("rm", "-f", "c-par-a", "c-par-b")


def test_runsc_that_fails_the_self_test_is_refused(tmp_path: Path, images):
    real = subprocess.run(["which", "runsc"], capture_output=True, text=True).stdout.strip()
    fake = tmp_path / "bin" / "runsc"
    fake.parent.mkdir()
    # A runsc whose checkpoints are broken, like a miscompiled build.
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = checkpoint ] && { echo "panic: broken build" >&2; '
        "exit 2; }; done\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    # Constructing an engine runs nothing; open_engine, the CLI's and the runtime's way to
    # an engine, runs the self-test.
    GVisorEngine(tmp_path / "home", images=images, runsc=str(fake))
    assert not (tmp_path / "home" / "doctor.json").exists()
    with pytest.raises(SandboxError, match="fails torpor's self-test"):
        open_engine(tmp_path / "home", images=images, runsc=str(fake))
    # The verdict is remembered: the next engine refuses at once, with the same reason.
    t0 = time.monotonic()
    with pytest.raises(SandboxError, match="fails torpor's self-test"):
        open_engine(tmp_path / "home", images=images, runsc=str(fake))
    assert time.monotonic() - t0 < 1
    # ... and so does the torpor command, with that runsc first on its PATH.
    env = dict(os.environ, TORPOR_HOME=str(tmp_path / "home"),
               PATH=f"{fake.parent}:{os.environ['PATH']}")  # fmt: skip
    proc = subprocess.run([str(Path(sys.executable).with_name("torpor")), "ps"],
                          capture_output=True, env=env, timeout=60)  # fmt: skip
    assert proc.returncode != 0
    assert "fails torpor's self-test" in " ".join(proc.stderr.decode().split()), proc.stderr
