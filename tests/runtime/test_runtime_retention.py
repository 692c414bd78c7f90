"""Retention at the wait point (runtime/retention.py): the schedule applied to a session's
list, and what keeps a snapshot whatever the schedule says (a fork, a pin, another
machine's upload, a registered pin source). The first tests need only a SQLite file; the
last ones run real sessions on gVisor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torpor.runtime import retention
from torpor.runtime.core import Runtime
from torpor.runtime.db import RuntimeDB, SessionRow
from torpor.runtime.types import InvalidSession, Policy
from torpor.sandbox.checkpoints import CheckpointNotFound
from torpor.snapshots.retention import Retention


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[RuntimeDB]:
    d = RuntimeDB(f"sqlite:///{tmp_path / 'torpor.db'}")
    yield d
    d.close()


def _row(sid: str, snapshot: str | None, snapshots: list[str]) -> SessionRow:
    return SessionRow(id=sid, state="waiting", image="base", model="script:x", system=None,
                      tools=None, policy={}, snapshot=snapshot, snapshot_seq=1,
                      snapshots=snapshots)  # fmt: skip


def test_policy_and_server_default_choose_the_schedule() -> None:
    assert retention.retention_for(Policy(), "") == Retention(3, 24, 7)
    assert retention.retention_for(Policy(), "all").keep_all
    assert retention.retention_for(Policy(retention="last=2"), "all") == Retention(2, 0, 0)
    assert retention.retention_for(Policy(keep_snapshots=1, retention="all"), "") == \
        Retention(1, 0, 0)


def test_choose_keeps_list_order_and_counts_unrecorded_ones_as_oldest() -> None:
    snaps = ["old", "a", "b", "c", "d"]
    times = {"a": 100.0, "b": 101.0, "c": 102.0, "d": 103.0}  # "old": no record
    kept, drop = retention.choose(snaps, times, Retention(last=3, hourly=0, daily=0))
    assert kept == ["b", "c", "d"] and drop == ["old", "a"]
    kept, drop = retention.choose([f"s{i}" for i in range(40)], {}, Retention(keep_all=True))
    assert kept == [f"s{i}" for i in range(24, 40)] and drop == []  # listed, none deleted


def test_another_live_process_still_uploading_holds_it(db: RuntimeDB) -> None:
    db.record_snapshot("snap", "ses-1", "machine-b", "machine-b:1:aa")
    db.beat("machine-b:1:aa", "machine-b", "host-b", slots=1, running=0)
    hold = retention.held(db, "snap", "ses-1", process="machine-a:2:bb",
                          stored=lambda s: False)  # fmt: skip
    assert hold is not None and hold.transient and "uploading" in hold.why
    # once stored, or taken by this very process (its delete waits for its own upload),
    # or when that process is gone (its upload will never come), it may go
    assert retention.held(db, "snap", "ses-1", process="machine-a:2:bb",
                          stored=lambda s: True) is None  # fmt: skip
    assert retention.held(db, "snap", "ses-1", process="machine-b:1:aa",
                          stored=lambda s: False) is None  # fmt: skip
    db.beat("machine-b:1:aa", "machine-b", "host-b", slots=1, running=0, at=time.time() - 60)
    assert retention.held(db, "snap", "ses-1", process="machine-a:2:bb",
                          stored=lambda s: False) is None  # fmt: skip


def test_a_pin_holds_it_until_unpinned_or_expired(db: RuntimeDB) -> None:
    retention.pin(db, "snap", "machine-b:fetch")
    hold = retention.held(db, "snap", "ses-1", process="p", stored=None)
    assert hold is not None and hold.transient and "machine-b:fetch" in hold.why
    retention.unpin(db, "snap", "machine-b:fetch")
    assert retention.held(db, "snap", "ses-1", process="p", stored=None) is None
    retention.pin(db, "snap", "machine-b:fetch", ttl=-1)  # expired
    assert retention.held(db, "snap", "ses-1", process="p", stored=None) is None


def test_a_forks_origin_is_held_for_good(db: RuntimeDB) -> None:
    db.create(_row("ses-1", "s2", ["s1", "s2"]))
    db.create(_row("ses-2", "s1", ["s1"]))  # a fork of ses-1 at s1
    hold = retention.held(db, "s1", "ses-1", process="p", stored=None)
    assert hold is not None and not hold.transient
    assert retention.held(db, "s2", "ses-2", process="p", stored=None) is not None
    assert retention.held(db, "s0", "ses-1", process="p", stored=None) is None


def test_a_registered_pin_source_holds_it(db: RuntimeDB, monkeypatch: pytest.MonkeyPatch) -> None:
    def paused_sandboxes(_db: Any, snapshot: str, _session: str) -> retention.Hold | None:
        return retention.Hold("a paused sandbox") if snapshot == "paused" else None

    monkeypatch.setattr(retention, "PIN_SOURCES", [*retention.PIN_SOURCES, paused_sandboxes])
    hold = retention.held(db, "paused", "ses-1", process="p", stored=None)
    assert hold is not None and hold.why == "a paused sandbox"
    assert retention.held(db, "other", "ses-1", process="p", stored=None) is None


def test_forgetting_a_snapshot_drops_its_records(db: RuntimeDB) -> None:
    db.record_snapshot("snap", "ses-1", "m", "m:1")
    db.record_copy("snap", "m2")
    retention.pin(db, "snap", "m2:1")
    retention.forget(db, "snap")
    assert db.snapshot_holder("snap") is None and db.snapshot_copies("snap") == []
    assert retention.held(db, "snap", "ses-1", process="p", stored=None) is None


def test_what_a_crash_kept_from_being_deleted_goes_at_the_next_gc(
        db: RuntimeDB, tmp_path: Path) -> None:  # fmt: skip
    from torpor.snapshots import open_store

    store = open_store(f"file://{tmp_path / 'store'}", use_key_env=False)
    f = tmp_path / "pages"
    ids = {}
    for name in ("s1", "s2", "s3", "k1", "k2"):
        f.write_bytes(name.encode() * 5000)
        ids[name] = store.put(f).id
    for name in ("s1", "s2", "s3"):
        db.record_snapshot(ids[name], "ses-1", "m", "m:1")
    for name in ("k1", "k2"):
        db.record_snapshot(ids[name], "ses-keep", "m", "m:1")
    # ses-1 let go of s1 and s2 at a wait point and the machine died before the deletes;
    # a fork still starts from s1; ses-keep keeps everything and lists only k2
    db.create(_row("ses-1", ids["s3"], [ids["s3"]]))
    db.create(_row("ses-fork", ids["s1"], [ids["s1"]]))
    keep = _row("ses-keep", ids["k2"], [ids["k2"]])
    keep.policy = {"retention": "all"}
    db.create(keep)
    assert retention.finish_deletes(db, store, "", "m:2") == []  # too recent: may be mid-way
    assert retention.finish_deletes(db, store, "", "m:2", grace=-1) == [ids["s2"]]
    assert sorted(store.ids()) == sorted(ids[n] for n in ("s1", "s3", "k1", "k2"))
    assert db.snapshot_holder(ids["s2"]) is None
    assert retention.finish_deletes(db, store, "", "m:2", grace=-1) == []
    # under a server default of keep-everything, a session without a schedule of its own
    # deletes nothing either
    db.record_snapshot(ids["s3"] + "x", "ses-1", "m", "m:1")  # (not in the store)
    assert retention.finish_deletes(db, store, "all", "m:2", grace=-1) == []
    store.close()


def test_a_closed_sessions_snapshots_go_after_so_many_days_its_log_stays(
        db: RuntimeDB, tmp_path: Path) -> None:  # fmt: skip
    from torpor.snapshots import open_store

    store = open_store(f"file://{tmp_path / 'store'}", use_key_env=False)
    f = tmp_path / "pages"
    ids = {}
    for name in ("old", "a", "b", "open"):
        f.write_bytes(name.encode() * 5000)
        ids[name] = store.put(f).id
    db.create(_row("ses-closed", ids["b"], [ids["a"], ids["b"]]))
    for name in ("old", "a", "b"):  # "old": an older one, not listed (keep-everything)
        db.record_snapshot(ids[name], "ses-closed", "m", "m:1")
    db.create(_row("ses-fork", ids["a"], [ids["a"]]))  # a fork from "a"
    db.create(_row("ses-open", ids["open"], [ids["open"]]))
    db.record_snapshot(ids["open"], "ses-open", "m", "m:1")
    db.update("ses-closed", state="closed")
    now = time.time()
    assert retention.expire_closed(db, store, 7, "p", now=now + 6 * 86400) == []  # not yet
    assert retention.expire_closed(db, store, 0, "p", now=now + 99 * 86400) == []  # never
    retention.pin(db, ids["b"], "machine-b:fetch")  # being fetched: the session waits
    assert retention.expire_closed(db, store, 7, "p", now=now + 8 * 86400) == []
    assert ids["b"] in store.ids() and ids["old"] not in store.ids()
    retention.unpin(db, ids["b"], "machine-b:fetch")
    assert retention.expire_closed(db, store, 7, "p", now=now + 8 * 86400) == ["ses-closed"]
    assert sorted(store.ids()) == sorted([ids["a"], ids["open"]])  # the fork's origin stays
    row = db.get("ses-closed")
    assert (row.state, row.snapshot, row.snapshots) == ("closed", None, [])
    assert db.snapshot_holder(ids["b"]) is None and db.snapshot_holder(ids["open"])
    store.close()


# -- real sessions ----------------------------------------------------------------------------

def shell(cmd: str) -> dict[str, Any]:
    return {"name": "shell", "arguments": {"command": cmd}}


def _turns(n: int) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for i in range(n):
        turns += [{"text": f"t{i}", "tool_calls": [shell(f"echo {i} >> /root/f")]},
                  {"text": f"done {i}"}]  # fmt: skip
    return turns


def _send_all(runtime: Runtime, s: Any, n: int) -> list[str]:
    storage = runtime.engine.checkpoints
    snaps = []
    for i in range(n):
        storage.flush()  # type: ignore[attr-defined]
        snaps.append(str(s.send(str(i)).snapshot))
    storage.flush()  # type: ignore[attr-defined]
    return snaps


def test_by_default_a_session_keeps_its_newest_three(runtime: Runtime, script) -> None:
    s = runtime.create_session(model=script(_turns(5) + [
        {"text": "check", "tool_calls": [shell("cat /root/f")]}, {"text": "ok"}]))
    snaps = _send_all(runtime, s, 5)
    assert s.info().snapshots == snaps[-3:]
    storage = runtime.engine.checkpoints
    for gone in snaps[:2]:
        with pytest.raises(CheckpointNotFound):
            storage.meta(gone)
        assert runtime.db.snapshot_holder(gone) is None  # its records went with it
    storage.meta(snaps[2])
    assert s.send("check").state == "waiting"  # resumed from the newest
    out = [str(e.content) for e in s.log() if e.kind == "tool_result"][-1]
    assert out.split("stdout:")[-1].split() == ["0", "1", "2", "3", "4"]


def test_keep_everything_per_session_and_per_server(runtime: Runtime, script,
                                                    tmp_path: Path) -> None:  # fmt: skip
    n = retention.LISTED + 2  # more than a session's row lists
    s = runtime.create_session(model=script(_turns(n)), policy={"retention": "all"})
    snaps = _send_all(runtime, s, n)
    assert s.info().snapshots == snaps[-retention.LISTED:]
    for snap in snaps:
        runtime.engine.checkpoints.meta(snap)  # every one still in the store
    runtime.retention = "all"  # the server's default (torpor serve --retention all)
    t = runtime.create_session(model=script(_turns(4), "t.jsonl"))
    assert _send_all(runtime, t, 4) == t.info().snapshots
    with pytest.raises(InvalidSession, match="last must be >= 1"):
        runtime.create_session(model=script(_turns(1), "u.jsonl"),
                               policy={"retention": "last=0"})  # fmt: skip


def test_a_snapshot_another_machine_still_uploads_stays_listed(runtime: Runtime, script,
                                                               monkeypatch) -> None:  # fmt: skip
    s = runtime.create_session(model=script(_turns(4)), policy={"retention": "last=2"})
    first, second = _send_all(runtime, s, 2)
    # as if another live machine had taken the first and not stored it yet
    runtime.db.beat("machine-b:1:aa", "machine-b", "host-b", slots=1, running=0)
    retention.forget(runtime.db, first)
    runtime.db.record_snapshot(first, s.id, "machine-b", "machine-b:1:aa")
    storage = runtime.engine.checkpoints
    real = storage.stored  # type: ignore[attr-defined]
    monkeypatch.setattr(storage, "stored", lambda c: c != first and real(c))
    third = _send_all(runtime, s, 1)[0]
    assert s.info().snapshots == [first, second, third]  # held: looked at again next time
    storage.meta(first)
    monkeypatch.setattr(storage, "stored", real)  # its upload is done
    fourth = _send_all(runtime, s, 1)[0]
    assert s.info().snapshots == [third, fourth]
    for gone in (first, second):
        with pytest.raises(CheckpointNotFound):
            storage.meta(gone)


def test_the_scheduled_gc_frees_what_retention_let_go_while_sessions_run(
        rt_home: Path, rt_engine, tmp_path: Path, script) -> None:  # fmt: skip
    import json

    from prometheus_client import generate_latest
    from typer.testing import CliRunner

    from torpor.api.metrics import Metrics
    from torpor.cli.main import app as cli
    from torpor.runtime.storage import recorded_usage, statuses

    rt = Runtime(db=f"sqlite:///{tmp_path / 'gc.db'}", store=f"file://{rt_home / 'snapshots'}",
                 home=rt_home, engine=rt_engine, gc_every=1.0)  # fmt: skip
    try:
        s = rt.create_session(model=script(_turns(6) + [
            {"text": "check", "tool_calls": [shell("cat /root/f")]}, {"text": "ok"}]))
        snaps = _send_all(rt, s, 6)  # the gc runs every second meanwhile
        deadline = time.time() + 20
        while time.time() < deadline:  # a run after the last delete
            st = statuses(rt.db)
            if st and st[0].last and st[0].last["at"] > time.time() - 0.5:
                break
            time.sleep(0.2)
        st = statuses(rt.db)
        assert len(st) == 1 and st[0].runs >= 2 and st[0].freed_bytes > 0, st
        assert st[0].last is not None and st[0].last["error"] is None
        assert s.info().snapshots == snaps[-3:]
        assert s.send("check").state == "waiting"
        out = [str(e.content) for e in s.log() if e.kind == "tool_result"][-1]
        assert out.split("stdout:")[-1].split() == [str(i) for i in range(6)]
        text = generate_latest(Metrics(rt).registry).decode()
        assert f'torpor_gc_runs_total{{store="{rt.snapshot_store.url}"}}' in text  # type: ignore[union-attr]
        assert "torpor_gc_freed_bytes_total" in text and "torpor_gc_last_failed" in text
        # accounting: the session's three snapshots, as the last run counted them
        mine = recorded_usage(rt.db, "session", name=s.id)
        assert len(mine) == 1 and mine[0]["snapshots"] == 3, mine
        assert 0 < mine[0]["exclusive"] <= mine[0]["stored"] < mine[0]["logical"]
        assert 'torpor_storage_bytes{kind="stored",tenant=""}' in text
        # and `torpor du`, counted now from the store
        res = CliRunner().invoke(cli, ["du", "--db", rt.db_url, "--store",
                                       rt.snapshot_store.url, "--json"])  # type: ignore[union-attr]
        assert res.exit_code == 0, res.output
        now = {r["name"]: r for r in json.loads(res.stdout)["sessions"]}
        assert now[s.id]["snapshots"] == 3  # (still three: the "check" turn's wait point
        #                                      took one, retention let one go)
        assert now[s.id]["logical"] > 0 and now[s.id]["stored"] > 0
        res = CliRunner().invoke(cli, ["du", "--db", rt.db_url, "--store",
                                       rt.snapshot_store.url, "--by", "tenant"])  # type: ignore[union-attr]
        assert res.exit_code == 0 and "(no tenant)" in res.stdout and "store:" in res.stdout
    finally:
        rt.close()


def test_a_closed_sessions_snapshots_leave_the_store_and_this_machines_hot_cache(
        rt_home: Path, rt_engine, tmp_path: Path, script,
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from torpor.runtime import checkpoints

    monkeypatch.setattr(checkpoints, "DROP_GRACE", 0.0)
    rt = Runtime(db=f"sqlite:///{tmp_path / 'gc.db'}", store=f"file://{rt_home / 'snapshots'}",
                 home=rt_home, engine=rt_engine, gc_every=0.5,
                 closed_days=1 / 86400)  # fmt: skip
    try:
        s = rt.create_session(model=script(_turns(2)))
        snaps = _send_all(rt, s, 2)
        cache = rt_home / "checkpoint-cache"
        assert all((cache / snap).is_dir() for snap in snaps)  # hot copies, stored
        s.close()
        deadline = time.time() + 30
        while time.time() < deadline and any((cache / x).exists() for x in snaps):
            time.sleep(0.2)
        assert s.info().snapshot is None and s.info().snapshots == []
        assert not any(rt.snapshot_store.exists(x) for x in snaps)  # type: ignore[union-attr]
        assert not any((cache / x).exists() for x in snaps)  # not left until LRU
        assert [e.content for e in s.log() if e.role == "user"] == ["0", "1"]  # log kept
    finally:
        rt.close()


def test_over_its_tenants_quota_a_session_keeps_its_newest_and_says_why(
        runtime: Runtime, script, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from torpor.runtime import quotas
    from torpor.runtime.retention import Quota  # (its old home: still imports)

    runtime.quota = Quota(snapshots=2)
    s = runtime.create_session(model=script(_turns(4) + [
        {"text": "check", "tool_calls": [shell("cat /root/f")]}, {"text": "ok"}]),
        tenant="t-quota")  # fmt: skip
    snaps = _send_all(runtime, s, 2)
    notes = [e.content for e in s.log() if e.kind == "marker"
             and e.content.get("marker") == "retention_note"]  # fmt: skip
    assert notes == [] and s.info().snapshots == snaps  # 2: at the quota, not over
    runtime.engine.checkpoints.flush()  # type: ignore[attr-defined]
    # what its wait points' snapshots stored counts for its tenant as each upload ends
    assert quotas.tenant_use(runtime.db, "t-quota").added_bytes > 0
    assert quotas.tenant_use(runtime.db, None).added_bytes == 0
    # each new snapshot still uploading at its own wait point (its upload may be quicker
    # than the wait point's retention step; here it never is)
    storage = runtime.engine.checkpoints
    real, done = storage.stored, set(snaps)  # type: ignore[attr-defined]
    monkeypatch.setattr(storage, "stored", lambda c: c in done and real(c))
    for i in (2, 3):
        storage.flush()  # type: ignore[attr-defined]
        snaps.append(str(s.send(str(i)).snapshot))
        done.add(snaps[-1])
    storage.flush()  # type: ignore[attr-defined]
    # over it: only the newest is kept (the default schedule would keep three), and the
    # one before while the newest uploads (a lost machine must leave one to restore)
    assert s.info().snapshots == snaps[-2:]
    notes = [e.content for e in s.log() if e.kind == "marker"
             and e.content.get("marker") == "retention_note"]  # fmt: skip
    assert notes and "tenant 't-quota' has 3 snapshots, over its quota of 2" in notes[0]["why"]
    assert [d for n in notes for d in n["deleted"]] == snaps[:2]  # one at each wait point
    for gone in snaps[:-2]:
        with pytest.raises(CheckpointNotFound):
            runtime.engine.checkpoints.meta(gone)
    assert s.send("check").state == "waiting"  # it goes on from its newest
    out = [str(e.content) for e in s.log() if e.kind == "tool_result"][-1]
    assert out.split("stdout:")[-1].split() == ["0", "1", "2", "3"]
