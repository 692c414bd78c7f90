"""Standby sandboxes on a real runsc: a restore loads into one set up ahead of time, and
restores the usual way whenever no standby fits or the one it took is broken."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import pytest

from tests.sandbox.test_sandbox_engine import COUNTER, read_counter
from torpor.sandbox.engine import SandboxConflict, SandboxError, SandboxSpec
from torpor.sandbox.gvisor import GVisorEngine

BASE = SandboxSpec(image="base")


@pytest.fixture()
def no_standbys(engine: GVisorEngine):  # type: ignore[no-untyped-def]
    engine.standby(BASE, 0)
    yield
    engine.standby(BASE, 0)
    engine.standby(SandboxSpec(image="base", memory=256 << 20), 0)


def standbys(engine: GVisorEngine) -> list[str]:
    return sorted(i.name for i in engine.list(all=True) if i.state == "standby")


def test_restore_loads_into_a_standby(engine: GVisorEngine, sandbox: str, no_standbys):
    ready = engine.standby(BASE, 2)
    assert len(ready) == 2 and all(i.state == "standby" for i in ready)
    assert standbys(engine) == sorted(i.name for i in ready)
    assert {i.name for i in engine.list()}.isdisjoint(standbys(engine))  # not in plain ps
    again = engine.standby(BASE, 2)  # already there: nothing new
    assert {i.id for i in again} == {i.id for i in ready}, engine.standby_misses[-3:]
    engine.spawn(sandbox, ["python3", "-c", COUNTER])
    engine.write_file(sandbox, "/root/kept.txt", b"kept")
    token, n = read_counter(engine, sandbox)
    ck = engine.checkpoint(sandbox, "sb")
    name = f"{sandbox}-r"
    info = engine.restore(ck.id, name=name)
    try:
        assert info.from_standby and info.state == "running"
        assert info.id in {i.id for i in ready}  # it is one of them, renamed
        assert engine.read_file(name, "/root/kept.txt") == b"kept"
        token2, n2 = read_counter(engine, name)
        assert token2 == token and n2 >= n  # the same process, memory and all
        assert len(standbys(engine)) == 1
        # A second restore takes the other one; a third finds none and restores anyway.
        second = engine.restore(ck.id, name=f"{sandbox}-r2")
        third = engine.restore(ck.id, name=f"{sandbox}-r3")
        assert second.from_standby and not third.from_standby
        assert engine.read_file(third.name, "/root/kept.txt") == b"kept"
        assert standbys(engine) == []
        engine.checkpoint(name, "again")  # a restored standby checkpoints like any sandbox
        assert engine.restore(f"{name}-again-{info.id[:6]}", name=f"{sandbox}-r4").name
    finally:
        for n_ in (name, f"{sandbox}-r2", f"{sandbox}-r3", f"{sandbox}-r4"):
            if any(i.name == n_ for i in engine.list(all=True)):
                engine.remove(n_, force=True)


def test_standby_count_removes_extra_ones(engine: GVisorEngine, no_standbys):
    engine.standby(BASE, 2)
    kept = engine.standby(BASE, 1)
    assert standbys(engine) == [kept[0].name]
    assert engine.standby(BASE, 0) == [] and standbys(engine) == []
    with pytest.raises(SandboxError, match="standby sandboxes support --network none only"):
        engine.standby(SandboxSpec(image="base", network="sandbox"))


def test_a_checkpoint_of_another_spec_does_not_use_the_standby(
    engine: GVisorEngine, no_standbys
):  # fmt: skip
    ready = engine.standby(BASE, 1)
    spec = SandboxSpec(image="base", memory=256 << 20)
    src = engine.run(spec, name=f"t-{secrets.token_hex(4)}")
    try:
        ck = engine.checkpoint(src.name, "m")
        info = engine.restore(ck.id, name=f"{src.name}-r")
        assert not info.from_standby
        assert standbys(engine) == [ready[0].name]  # left for a checkpoint it fits
        engine.remove(info.name, force=True)
        # A standby made for that spec is used.
        engine.standby(spec, 1)
        info = engine.restore(ck.id, name=f"{src.name}-r")
        assert info.from_standby, f"the standby was not used: {engine.standby_misses[-3:]}"
        engine.remove(info.name, force=True)
    finally:
        engine.remove(src.name, force=True)


def test_a_dead_standby_is_skipped_and_the_restore_still_works(
    engine: GVisorEngine, sandbox: str, no_standbys
):  # fmt: skip
    (dead,) = engine.standby(BASE, 1)
    assert dead.pid
    os.kill(dead.pid, signal.SIGKILL)  # its sandbox process, killed from outside
    deadline = time.monotonic() + 10
    while Path(f"/proc/{dead.pid}").exists():  # until its supervisor has reaped it
        assert time.monotonic() < deadline, "the killed standby was never reaped"
        time.sleep(0.02)
    engine.write_file(sandbox, "/root/f", b"x")
    ck = engine.checkpoint(sandbox, "d")
    info = engine.restore(ck.id, name=f"{sandbox}-r")
    try:
        assert engine.read_file(info.name, "/root/f") == b"x"
        assert not info.from_standby
        assert info.id != dead.id  # never taken: found dead before, not by a failed restore
        assert dead.name not in standbys(engine)
        assert dead.id not in {i.id for i in engine.list(all=True)}  # and discarded
        assert f"standby {dead.id}: its sandbox process is gone" in engine.standby_misses[-1]
    finally:
        engine.remove(info.name, force=True)


def test_a_taken_name_fails_before_a_standby_is_used(
    engine: GVisorEngine, sandbox: str, no_standbys
):  # fmt: skip
    (ready,) = engine.standby(BASE, 1)
    ck = engine.checkpoint(sandbox, "n", leave_running=True)
    with pytest.raises(SandboxConflict, match="already in use"):
        engine.restore(ck.id, name=sandbox)
    assert standbys(engine) == [ready.name]  # still there, still unused
    info = engine.restore(ck.id, name=f"{sandbox}-r")
    assert info.from_standby, f"the standby was not used: {engine.standby_misses[-3:]}"
    engine.remove(info.name, force=True)


def test_standby_from_the_cli(cli, no_standbys):  # type: ignore[no-untyped-def]
    proc = cli("standby", "base", "-n", "1", "-m", "256m")
    assert proc.returncode == 0, proc.stderr
    (name,) = proc.stdout.decode().split()
    assert f"{name}" in cli("ps", "-a").stdout.decode()
    assert name not in cli("ps").stdout.decode()
    assert cli("run", "-d", "--name", "c-sb", "-m", "256m", "base").returncode == 0
    try:
        cli("exec", "c-sb", "sh", "-c", "echo kept > /root/state")
        ck_id = cli("checkpoint", "create", "c-sb", "one").stdout.decode().split("\t")[0]
        proc = cli("restore", ck_id, "--name", "c-sb-r")
        assert proc.returncode == 0, proc.stderr
        assert b"into a standby" in proc.stderr
        assert cli("exec", "c-sb-r", "cat", "/root/state").stdout == b"kept\n"
        assert cli("standby", "base", "-n", "2", "-m", "256m").stdout.decode().count("\n") == 2
        assert cli("standby", "base", "-n", "0", "-m", "256m").stdout == b""
        assert "standby" not in cli("ps", "-a").stdout.decode()
        proc = cli("standby", "base", "-n", "-1")
        assert proc.returncode != 0 and b"0 or more" in proc.stderr
    finally:
        cli("rm", "-f", "c-sb", "c-sb-r")
