"""The sandbox resource (torpor.runtime.sandboxes) on a real runsc: create, pause to zero
memory with the snapshot stored, resume (by call, with auto_resume, or from the store on
a machine without the hot copy), snapshots and forks, tenants, the idle timeout, kill,
a holder that dies, a runtime that closes, and tenants' storage quotas."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.runtime.core import Runtime
from torpor.runtime.sandboxes import (
    AlreadyPaused,
    InvalidSandbox,
    NoSuchSandbox,
    NoSuchSnapshot,
    SandboxKilled,
    SandboxPaused,
    TenantOverQuota,
)
from torpor.sandbox import owners
from torpor.sandbox.engine import SandboxNotFound
from torpor.sandbox.gvisor import GVisorEngine

COUNTER = ("import os, time\nn = 0\nwhile True:\n    n += 1\n"
           "    open('/tmp/n.tmp', 'w').write(str(n))\n    os.replace('/tmp/n.tmp', '/tmp/n')\n"
           "    time.sleep(0.01)\n")


def box_memory(box: str) -> int:
    """Bytes of memory (RSS) held by the host processes of an engine sandbox: runsc's
    sandbox, gofer and supervisor processes name its id on their command line."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if box.encode() not in cmdline:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def counter(rt: Runtime, sid: str) -> int:
    """The in-memory counter's value (waiting for its first write)."""
    deadline = time.monotonic() + 10
    while True:
        with rt.sandboxes.use(sid) as sb:
            if sb.files.exists("/tmp/n") or time.monotonic() > deadline:
                return int(sb.files.read_text("/tmp/n"))
        time.sleep(0.05)


@pytest.fixture()
def rt(runtime: Runtime) -> Iterator[Runtime]:
    yield runtime
    for row in runtime.sandboxes.list():
        if row.state != "killed":
            runtime.sandboxes.kill(row.id)


def test_pause_holds_no_memory_and_resume_keeps_the_processes(
        rt: Runtime, rt_home: Path, rt_engine: GVisorEngine):  # fmt: skip
    sbx = rt.sandboxes.create(image="base", env={"GREETING": "hello"}, metadata={"k": "v"})
    assert (sbx.state, sbx.image, sbx.metadata) == ("running", "base", {"k": "v"})
    with rt.sandboxes.use(sbx.id) as sb:
        sb.spawn(["python3", "-c", COUNTER])
        assert sb.exec("echo $GREETING").text == "hello\n"  # the sandbox's env
        sb.files.write("/work/kept.txt", "on the tmpfs\n")
    before = counter(rt, sbx.id)
    assert before > 0 and box_memory(str(sbx.box)) > 10 << 20  # a live sandbox: ~50 MiB+

    t0 = time.monotonic()
    paused = rt.sandboxes.pause(sbx.id)
    live_for = time.monotonic() - t0  # at most this long it counted on after `before`
    assert (paused.state, paused.box, paused.process) == ("paused", None, None)
    assert box_memory(str(sbx.box)) == 0  # no process left: 0 bytes of memory
    with pytest.raises(SandboxNotFound):
        rt_engine.inspect(str(sbx.box))
    snaps = rt.sandboxes.snapshots(sbx.id)
    assert [(s.id, s.kind) for s in snaps] == [(paused.snapshot, "pause")]
    assert rt_engine.checkpoints.store.exists(paused.snapshot)  # stored before pause returned
    with pytest.raises(AlreadyPaused):
        rt.sandboxes.pause(sbx.id)

    # the hot copy dropped: the resume fetches from the snapshot store, as another
    # machine's would
    shutil.rmtree(rt_home / "checkpoint-cache" / str(paused.snapshot))
    time.sleep(1.0)  # paused: nothing counts (running, it would count ~100 meanwhile)
    after = counter(rt, sbx.id)  # auto_resume: the call resumes it
    row = rt.sandboxes.get(sbx.id)
    assert row.state == "running" and row.box != sbx.box
    # its memory came back (the count went on from where it was, not from 0) and it did
    # not count while paused
    assert before <= after < before + live_for / 0.01 + 30, (before, after, live_for)
    time.sleep(0.2)
    assert counter(rt, sbx.id) > after  # and the process runs
    with rt.sandboxes.use(sbx.id) as sb:
        assert sb.files.read_text("/work/kept.txt") == "on the tmpfs\n"
    assert rt.sandboxes.resume(sbx.id) == (row, False)  # running already

    # a second pause keeps only the latest pause snapshot
    second = rt.sandboxes.pause(sbx.id)
    assert [s.id for s in rt.sandboxes.snapshots(sbx.id)] == [second.snapshot]
    assert not rt_engine.checkpoints.store.exists(paused.snapshot)
    resumed, was_paused = rt.sandboxes.resume(sbx.id)
    assert was_paused and resumed.state == "running"


def test_env_is_given_to_every_command(rt: Runtime):
    sbx = rt.sandboxes.create(env={"GREETING": "hello", "WHO": "you"})
    with rt.sandboxes.use(sbx.id) as sb:
        assert sb.exec("echo $GREETING $WHO", env={"WHO": "me"}).text == "hello me\n"
        p = sb.spawn("echo $GREETING $WHO", env=["WHO=them"])
        p.wait(timeout=10)
        assert p.output()[0] == b"hello them\n"


def test_auto_resume_off_snapshots_forks_and_tenants(rt: Runtime):
    a = rt.sandboxes.create(tenant="acme", auto_resume=False, timeout=None)
    with rt.sandboxes.use(a.id, tenant="acme") as sb:
        sb.files.write("/work/v", "1")
    snap = rt.sandboxes.snapshot(a.id, name="v1", tenant="acme")
    assert (snap.kind, snap.name, snap.sandbox, snap.tenant) == ("snapshot", "v1", a.id, "acme")
    with rt.sandboxes.use(a.id) as sb:
        sb.files.write("/work/v", "2")

    # another tenant sees nothing of it
    with pytest.raises(NoSuchSandbox):
        rt.sandboxes.get(a.id, tenant="other")
    with pytest.raises(NoSuchSandbox), rt.sandboxes.use(a.id, tenant=None):
        pass
    with pytest.raises(NoSuchSnapshot):
        rt.sandboxes.create(snapshot=snap.id, tenant="other")
    assert rt.sandboxes.list(tenant="other") == []
    assert [r.id for r in rt.sandboxes.list(tenant="acme")] == [a.id]

    # a new sandbox from the named snapshot has the file as it was then
    b = rt.sandboxes.create(snapshot=snap.id, tenant="acme")
    assert (b.source, b.image, b.tenant) == (snap.id, "base", "acme")
    with rt.sandboxes.use(b.id) as sb:
        assert sb.files.read_text("/work/v") == "1"
    # a fork of the running one: its files as they are now; both go on independently
    c = rt.sandboxes.fork(a.id, tenant="acme")
    with rt.sandboxes.use(c.id) as sb:
        assert sb.files.read_text("/work/v") == "2"
        sb.files.write("/work/v", "3")
    with rt.sandboxes.use(a.id) as sb:
        assert sb.files.read_text("/work/v") == "2"
    assert (c.auto_resume, c.timeout) == (False, None)  # its settings are a's

    # paused without auto_resume: a call is refused until it is resumed
    rt.sandboxes.pause(a.id)
    with pytest.raises(SandboxPaused, match="resume it first"), rt.sandboxes.use(a.id):
        pass
    assert rt.sandboxes.resume(a.id)[1] is True
    with rt.sandboxes.use(a.id) as sb:
        assert sb.files.read_text("/work/v") == "2"

    with pytest.raises(InvalidSandbox, match="no such image"):
        rt.sandboxes.create(image="no-such-image")
    with pytest.raises(InvalidSandbox, match="on_timeout"):
        rt.sandboxes.create(on_timeout="explode")
    with pytest.raises(InvalidSandbox, match="snapshot name"):
        rt.sandboxes.snapshot(a.id, name="../x")


def test_kill_removes_the_sandbox_and_its_pause_snapshot(rt: Runtime, rt_engine: GVisorEngine):
    sbx = rt.sandboxes.create()
    named = rt.sandboxes.snapshot(sbx.id, name="keep")
    paused = rt.sandboxes.pause(sbx.id)
    killed = rt.sandboxes.kill(sbx.id)
    assert (killed.state, killed.snapshot, killed.box) == ("killed", None, None)
    assert [s.id for s in rt.sandboxes.snapshots(sbx.id)] == [named.id]  # named: kept
    assert not rt_engine.checkpoints.store.exists(paused.snapshot)
    with pytest.raises(SandboxKilled), rt.sandboxes.use(sbx.id):
        pass
    assert rt.sandboxes.kill(sbx.id).state == "killed"  # again: nothing changes
    # a running one: its engine sandbox goes
    live = rt.sandboxes.create()
    rt.sandboxes.kill(live.id)
    with pytest.raises(SandboxNotFound):
        rt_engine.inspect(str(live.box))
    # named snapshots outlive their sandbox: a new one can start from it
    again = rt.sandboxes.create(snapshot=named.id)
    assert again.state == "running"


def test_idle_timeout_pauses_or_kills_but_not_a_busy_one(rt: Runtime):
    pausing = rt.sandboxes.create(timeout=30, on_timeout="pause")
    killing = rt.sandboxes.create(timeout=30, on_timeout="kill")
    busy = rt.sandboxes.create(timeout=30, on_timeout="pause")
    never = rt.sandboxes.create(timeout=None)
    assert rt.sandboxes.sweep() == []  # nobody idle yet
    rt.sandboxes.activity.begin(busy.id)  # a call in flight
    try:
        done = rt.sandboxes.sweep(time.time() + 31)
    finally:
        rt.sandboxes.activity.end(busy.id)
    assert sorted(done) == sorted([(pausing.id, "pause"), (killing.id, "kill")])
    p = rt.sandboxes.get(pausing.id)
    assert p.state == "paused" and p.note is not None and "idle for" in p.note
    k = rt.sandboxes.get(killing.id)
    assert k.state == "killed" and k.note is not None and "idle for" in k.note
    assert rt.sandboxes.get(busy.id).state == "running"
    assert rt.sandboxes.get(never.id).state == "running"
    # the timeout counts from the last call: a new setting starts it again
    rt.sandboxes.configure(busy.id, timeout=3600)
    assert rt.sandboxes.sweep(time.time() + 31) == []
    # the janitor thread does the same by itself
    quick = rt.sandboxes.create(timeout=1, on_timeout="pause")
    rt.sandboxes.janitor.start()
    deadline = time.monotonic() + 15
    while rt.sandboxes.get(quick.id).state != "paused":
        assert time.monotonic() < deadline, "the janitor did not pause it"
        time.sleep(0.1)


def test_a_holder_that_died_leaves_the_sandbox_paused_at_its_last_snapshot(
        rt: Runtime, rt_engine: GVisorEngine):  # fmt: skip
    dead = {"kind": "sandbox", "pid": 999_999, "start_time": 1, "boot": owners.boot_id(),
            "host": owners._host()}
    with_snap = rt.sandboxes.create()
    with rt.sandboxes.use(with_snap.id) as sb:
        sb.files.write("/work/v", "before")
    snap = rt.sandboxes.snapshot(with_snap.id, name="last")
    with rt.sandboxes.use(with_snap.id) as sb:
        sb.files.write("/work/v", "after")  # lost with its holder
    without = rt.sandboxes.create()
    # both engine sandboxes are now a dead process's: what a SIGKILL of their server leaves
    for row in (with_snap, without):
        rt_engine.rename(str(row.box), f"{row.id}-x", owner={**dead, "sandbox": row.id})
    other = Runtime(db=rt.db_url, home=rt.home, engine=rt_engine)  # the next server
    try:
        changed = {r.id: r for r in other.sandboxes.recover()}
    finally:
        other.close()
    assert set(changed) == {with_snap.id, without.id}
    a = rt.sandboxes.get(with_snap.id)
    assert a.state == "paused" and a.snapshot == snap.id
    assert "died" in str(a.note) and f"last snapshot {snap.id}" in str(a.note)
    b = rt.sandboxes.get(without.id)
    assert b.state == "killed" and "no snapshot" in str(b.note)
    for row in (with_snap, without):
        with pytest.raises(SandboxNotFound):
            rt_engine.inspect(str(row.box))  # reaped
    with rt.sandboxes.use(with_snap.id) as sb:  # auto_resume: from its last snapshot
        assert sb.files.read_text("/work/v") == "before"


def test_close_pauses_the_live_sandboxes(rt_home: Path, rt_engine: GVisorEngine,
                                          tmp_path: Path):  # fmt: skip
    url = f"sqlite:///{tmp_path / 'close.db'}"
    rt = Runtime(db=url, home=rt_home, engine=rt_engine)
    sbx = rt.sandboxes.create()
    with rt.sandboxes.use(sbx.id) as sb:
        sb.spawn(["python3", "-c", COUNTER])
    before = counter(rt, sbx.id)
    rt.close()
    assert box_memory(str(sbx.box)) == 0
    again = Runtime(db=url, home=rt_home, engine=rt_engine)
    try:
        row = again.sandboxes.get(sbx.id)
        assert row.state == "paused" and row.note == "paused: its server stopped"
        assert counter(again, sbx.id) >= before  # resumed by the next server
    finally:
        again.sandboxes.kill(sbx.id)
        again.close()


def standbys(engine: GVisorEngine) -> set[str]:
    """The engine ids of the standby sandboxes (a restore into one keeps its id)."""
    return {i.id for i in engine.list(all=True) if i.state == "standby"}


def wait_for_a_standby(engine: GVisorEngine) -> set[str]:
    deadline = time.monotonic() + 60
    while not (ready := standbys(engine)):
        assert time.monotonic() < deadline, "no standby was set up"
        time.sleep(0.1)
    return ready


def test_a_resume_that_took_the_standby_sets_up_another(rt: Runtime, rt_engine: GVisorEngine):
    rt.standby_size = 1
    a, b = rt.sandboxes.create(), rt.sandboxes.create()
    rt.sandboxes.pause(a.id)
    rt.sandboxes.pause(b.id)  # (the one standby is there already: nothing more is set up)
    for sbx in (a, b):
        ready = wait_for_a_standby(rt_engine)
        row, resumed = rt.sandboxes.resume(sbx.id)
        assert resumed and rt_engine.inspect(str(row.box)).id in ready  # into the standby


def test_paused_and_named_snapshots_outlive_the_scheduled_gc(rt: Runtime, rt_home: Path):
    from torpor.runtime import retention
    from torpor.runtime.storage import ScheduledGC

    a = rt.sandboxes.create()
    with rt.sandboxes.use(a.id) as sb:
        sb.files.write("/work/v", "named")
    named = rt.sandboxes.snapshot(a.id, name="v1")
    with rt.sandboxes.use(a.id) as sb:
        sb.files.write("/work/v", "paused")
    paused = rt.sandboxes.pause(a.id)
    store = rt.snapshot_store
    assert store is not None
    # a whole scheduled gc run (closed sessions expire at once), then this machine's sweep
    # of hot copies: neither takes what a sandbox names
    gc = ScheduledGC(rt.db, store, rt.log, "test-gc", closed_days=1e-9)
    out = gc.run_once(force=True)
    assert out is not None and out["error"] is None, out
    storage = rt.engine.checkpoints
    assert storage.drop_deleted(grace=0, keep=lambda s: retention.named(rt.db, s)) == []  # type: ignore[attr-defined]
    for snap in (named.id, str(paused.snapshot)):
        assert store.exists(snap)
        shutil.rmtree(rt_home / "checkpoint-cache" / snap)  # restored from the store below
    assert rt.sandboxes.resume(a.id)[1] is True
    with rt.sandboxes.use(a.id) as sb:
        assert sb.files.read_text("/work/v") == "paused"
    b = rt.sandboxes.create(snapshot=named.id)
    with rt.sandboxes.use(b.id) as sb:
        assert sb.files.read_text("/work/v") == "named"
    # `torpor du --by sandbox`: its named snapshot and its pause (resumed: gone) counted
    import json

    from typer.testing import CliRunner

    from torpor.cli.main import app as cli

    res = CliRunner().invoke(cli, ["du", "--by", "sandbox", "--db", rt.db_url, "--store",
                                   store.url, "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    mine = {r["name"]: r for r in json.loads(res.stdout)["sandboxes"]}
    assert mine[a.id]["snapshots"] >= 1 and mine[a.id]["stored"] > 0, mine


def test_a_tenant_over_its_quota_gets_no_new_sandbox_or_snapshot_but_still_pauses(rt: Runtime):
    """A sandbox's pause and named snapshots count for its tenant (snapshots counted now,
    stored bytes as each upload ends, and in the scheduled gc's count); over a quota its
    new sandboxes, forks and named snapshots are refused with what to delete, never its
    pause (its state would be lost), which says it is over."""
    from torpor.runtime import quotas
    from torpor.runtime.storage import account

    sbx = rt.sandboxes.create(image="base", tenant="q")
    other = rt.sandboxes.create(image="base", tenant="r")
    with rt.sandboxes.use(sbx.id) as sb:
        sb.files.write("/work/v", "1")
    first = rt.sandboxes.snapshot(sbx.id, name="one")
    rt.sandboxes.pause(sbx.id)  # (returns once its snapshot is stored)
    rt.engine.checkpoints.flush()  # type: ignore[attr-defined]  # (and the named one's)
    use = quotas.tenant_use(rt.db, "q")
    assert use.snapshots == 2 and use.added_bytes > 0
    assert quotas.tenant_use(rt.db, "r") == quotas.TenantUse(0, 0, 0, None)

    quotas.set_quota(rt.db, "q", snapshots=1)  # its own limit; r has none
    with pytest.raises(TenantOverQuota) as e:
        rt.sandboxes.snapshot(sbx.id)
    assert e.value.status == 429
    assert "tenant 'q' has 2 snapshots, over its quota of 1" in str(e.value)
    assert "DELETE /v1/sandboxes/{id}/snapshots/{snapshot}" in str(e.value)
    assert rt.sandboxes.row(sbx.id).state == "paused"  # (refused before a resume)
    for refused in (lambda: rt.sandboxes.create(image="base", tenant="q"),
                    lambda: rt.sandboxes.fork(sbx.id, snapshot=first.id)):  # fmt: skip
        with pytest.raises(TenantOverQuota):
            refused()
    rt.sandboxes.snapshot(other.id)  # another tenant's: not over

    rt.sandboxes.resume(sbx.id)
    row = rt.sandboxes.pause(sbx.id)  # never refused
    assert row.state == "paused" and row.note is not None
    assert "tenant 'q' has 3 snapshots, over its quota of 1" in row.note
    assert "paused all the same" in row.note
    with rt.sandboxes.use(sbx.id) as sb:  # (auto_resume) and its state is whole
        assert sb.files.read_text("/work/v") == "1"

    quotas.set_quota(rt.db, "q", snapshots=0, stored_bytes=1)  # now a limit on bytes
    with pytest.raises(TenantOverQuota) as e:
        rt.sandboxes.create(image="base", tenant="q")
    assert e.value.status == 413 and "stored since), over its quota of 1 " in str(e.value)

    store = rt.snapshot_store
    assert store is not None
    got = account(rt.db, store)  # the scheduled gc's count: by sandbox and by tenant
    assert got["sandbox"].groups[sbx.id].snapshots == 2  # named + its latest pause
    assert got["tenant"].groups["q"].snapshots == 2
    assert got["tenant"].groups["r"].snapshots == 1
    assert sbx.id not in got["session"].groups

    rt.sandboxes.remove_snapshot(sbx.id, first.id)  # what the message says to do
    quotas.remove_quota(rt.db, "q")
    assert quotas.over_quota(rt.db, "q", rt.quota) is None
    rt.sandboxes.snapshot(sbx.id)
