"""Durable sessions on a real sandbox: wait points, resume, retries, recovery, forks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from torpor.runtime.core import Runtime, Worker
from torpor.sandbox.checkpoints import CheckpointNotFound
from torpor.sandbox.images import ImageStore

COUNTER = (
    "import os, time\n"
    "token = os.urandom(4).hex()\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    open('/tmp/c.tmp', 'w').write(f'{token} {n}')\n"
    "    os.replace('/tmp/c.tmp', '/tmp/c')\n"
    "    time.sleep(0.05)\n"
)


def shell(command: str, **kw: Any) -> dict[str, Any]:
    return {"name": "shell", "arguments": {"command": command, **kw}}


def markers(entries: list[Any], name: str) -> list[dict[str, Any]]:
    return [
        e.content
        for e in entries
        if e.kind == "marker" and isinstance(e.content, dict) and e.content.get("marker") == name
    ]


def results(entries: list[Any]) -> list[str]:
    return [str(e.content) for e in entries if e.kind == "tool_result"]


def test_background_process_memory_lasts_across_two_wait_points(runtime: Runtime, script):
    model = script([
        {"text": "starting", "tool_calls": [
            {"name": "write_file", "arguments": {"path": "/work/counter.py", "content": COUNTER}},
            {"name": "start_process", "arguments": {"command": "python3 /work/counter.py"}}]},
        {"text": "started"},
        {"text": "reading", "tool_calls": [shell("sleep 0.3; cat /tmp/c")]},
        {"text": "read"},
        {"text": "reading again", "tool_calls": [shell("cat /tmp/c")]},
        {"text": "done"},
    ])  # fmt: skip
    s = runtime.create_session(model=model)
    t1 = s.send("start a counter")
    assert t1.state == "waiting" and t1.snapshot
    assert all(i.name != f"s-{s.id}" for i in runtime.engine.list())  # no sandbox while waiting
    t2 = s.send("read it")
    assert t2.restore_ms is not None
    t3 = s.send("read it again")
    values = []
    for r in results(s.log())[-2:]:
        for line in r.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                values.append((parts[0], int(parts[1])))
    assert len(values) == 2, results(s.log())
    (tok_a, n_a), (tok_b, n_b) = values
    assert tok_a == tok_b, "the counter process was restarted instead of restored"
    assert n_b >= n_a
    assert t3.state == "waiting"
    snaps = markers(s.log(), "snapshot_taken")
    assert len(snaps) == 3 and all(m["bytes"] > 0 and m["ms"] > 0 for m in snaps)
    assert len(markers(s.log(), "session_restored")) == 2
    assert runtime.log.verify(s.id)


def test_model_429_three_times_then_success(runtime: Runtime, script):
    model = script([
        {"error": {"status": 429, "retry_after": 0.2, "times": 3, "message": "slow down"}},
        {"text": "finally"},
    ])  # fmt: skip
    s = runtime.create_session(model=model)
    outcome = s.send("hello")
    assert outcome.state == "retrying" and outcome.wake_at
    w = Worker(runtime)
    for _ in range(50):
        row = s.info()
        if row.state == "waiting":
            break
        time.sleep(0.1)
        w.run_once()
    assert s.info().state == "waiting"
    entries = s.log()
    assistant = [e for e in entries if e.kind == "message" and e.role == "assistant"]
    assert [e.content for e in assistant] == ["finally"]  # one answer, not four
    assert len(markers(entries, "retry_scheduled")) == 3
    assert runtime.log.verify(s.id)


def test_two_workers_racing_for_one_session(runtime: Runtime, script):
    model = script([{"text": "working", "tool_calls": [shell("sleep 1; echo done")]},
                    {"text": "finished"}])  # fmt: skip
    s = runtime.create_session(model=model)
    s.post("go")
    outcomes: list[Any] = []
    errors: list[Exception] = []

    def race() -> None:
        try:
            outcomes.append(Worker(runtime).run_once())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    done = [o for o in outcomes if o is not None]
    assert len(done) == 1, outcomes
    entries = s.log()
    assert len([e for e in entries if e.kind == "tool_call"]) == 1
    assert len([e for e in entries if e.kind == "message" and e.role == "user"]) == 1
    assert runtime.log.verify(s.id)


def test_fork_gives_two_sessions_that_diverge(runtime: Runtime, script):
    model = script([
        {"text": "writing", "tool_calls": [shell("echo base > /root/f")]},
        {"text": "written"},
        {"text": "appending", "tool_calls": [shell("echo more >> /root/f; cat /root/f")]},
        {"text": "appended"},
    ])  # fmt: skip
    s = runtime.create_session(model=model)
    t1 = s.send("write")
    child = s.fork(t1.snapshot)
    s.send("append in the parent")
    out_child = child.send("append in the child")
    assert out_child.state == "waiting"
    assert results(child.log())[-1].strip().endswith("base\nmore")
    assert results(s.log())[-1].strip().endswith("base\nmore")
    assert markers(child.log(), "fork")[0]["parent"] == s.id
    # Each appended once to its own copy: the parent's write never reached the child.
    assert results(child.log())[-1].count("more") == 1
    assert child.info().parent == s.id


def test_corrupt_snapshot_falls_back_with_a_recovery_note(runtime: Runtime, script, rt_home: Path):
    model = script([
        {"text": "a", "tool_calls": [shell("echo one > /root/f")]}, {"text": "one"},
        {"text": "b", "tool_calls": [shell("echo two >> /root/f")]}, {"text": "two"},
        {"text": "c", "tool_calls": [shell("cat /root/f")]}, {"text": "three"},
    ])  # fmt: skip
    s = runtime.create_session(model=model)
    s.send("1")
    t2 = s.send("2")
    # Damage the latest snapshot: its hot copy and every stored chunk it alone uses.
    import shutil

    storage = runtime.engine.checkpoints
    storage.flush()  # type: ignore[attr-defined]  # its upload must be done to damage it
    shutil.rmtree(rt_home / "checkpoint-cache" / t2.snapshot, ignore_errors=True)
    storage.store.delete(t2.snapshot)  # type: ignore[attr-defined]
    t3 = s.send("3")
    assert t3.state == "waiting"
    notes = markers(s.log(), "recovery_note")
    assert notes and t2.snapshot in notes[-1]["text"]
    # The older snapshot came back: the second write is gone, the first is there.
    assert results(s.log())[-1].split("stdout:")[-1].split() == ["one"]


def test_killed_worker_is_recovered_by_another(runtime: Runtime, script, tmp_path: Path):
    model = script([
        {"text": "setup", "tool_calls": [shell("echo kept > /root/state")]}, {"text": "ok"},
        {"text": "long", "tool_calls": [shell("sleep 60; echo late", timeout=120)]},
        {"text": "recovered", "tool_calls": [shell("cat /root/state")]}, {"text": "done"},
    ])  # fmt: skip
    s = runtime.create_session(model=model)
    s.send("setup")
    s.post("run the long thing")
    env = dict(os.environ, TORPOR_HOME=str(runtime.home), TORPOR_LOG=runtime.db_url,
               TORPOR_SNAPSHOTS=f"file://{runtime.home / 'snapshots'}",
               TORPOR_IMAGES=str(ImageStore().root))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "torpor.cli.main", "worker", "--session", s.id,
         "--lease-ttl", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        if any(e.kind == "tool_call" and "sleep 60" in (e.arguments or "") for e in s.log()):
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acknowledged = [e.seq for e in s.log()]
    while (s.info().lease_until or 0) > time.time():
        time.sleep(0.1)
    outcome = Worker(runtime, lease_ttl=2).run_session(s.id)
    assert outcome.recovered and outcome.state == "waiting"
    entries = s.log()
    assert [e.seq for e in entries][: len(acknowledged)] == acknowledged  # nothing lost
    note = markers(entries, "recovery_note")[-1]
    assert note["interrupted"]
    interrupted = [
        e for e in entries if e.kind == "tool_result" and (e.meta or {}).get("interrupted")
    ]
    assert len(interrupted) == 1
    assert "kept" in results(entries)[-1]
    assert runtime.log.verify(s.id)


def test_pool_gives_new_sessions_a_running_sandbox(runtime: Runtime, script):
    runtime.pool_size = 1
    pool = runtime.pool("base")
    deadline = time.time() + 60
    while not pool._ready() and time.time() < deadline:
        time.sleep(0.1)
    assert pool._ready(), "the pool never started a sandbox"
    model = script([{"text": "hi", "tool_calls": [shell("echo pooled")]}, {"text": "done"}])
    s = runtime.create_session(model=model)
    s.send("go")
    started = markers(s.log(), "sandbox_started")[0]
    assert started["pooled"] is True
    assert "pooled" in results(s.log())[-1]
    while len(pool._ready()) < 1 and time.time() < deadline:  # refilled in the background
        time.sleep(0.1)
    assert len(pool._ready()) == 1
    runtime.close()
    assert not [i for i in runtime.engine.list() if i.name.startswith("pool-")]


def test_streaming_and_async_send(runtime: Runtime, script):
    import asyncio

    model = script([{"text": "a", "tool_calls": [shell("echo streamed")]}, {"text": "one"},
                    {"text": "two"}])  # fmt: skip
    s = runtime.create_session(model=model)
    kinds = [ev["type"] for ev in s.stream("go")]
    assert kinds[-1] == "outcome"
    assert "tool_call_started" in kinds and "snapshot" in kinds
    assert kinds.index("tool_call_started") < kinds.index("snapshot")
    outcome = asyncio.run(s.asend("again"))
    assert outcome.text == "two" and outcome.state == "waiting"


def _fake_llm_class():  # the fake OpenAI/Anthropic server of tests/agent, loaded by path
    import importlib.util

    path = Path(__file__).parent.parent / "agent" / "fakellm.py"
    spec = importlib.util.spec_from_file_location("torpor_test_fakellm", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.FakeLLM


def test_retry_timer_survives_a_restart_of_every_process(runtime: Runtime, monkeypatch):
    fake = _fake_llm_class()().start()
    try:
        fake.error(429, headers={"retry-after": "1"})
        fake.reply(text="answered after the outage")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_url)  # checked at creation
        s = runtime.create_session(model="openai:fake-model")
        s.post("hello")
        env = dict(os.environ, TORPOR_HOME=str(runtime.home), TORPOR_LOG=runtime.db_url,
                   TORPOR_SNAPSHOTS=f"file://{runtime.home / 'snapshots'}",
                   TORPOR_IMAGES=str(ImageStore().root), OPENAI_BASE_URL=fake.openai_url,
                   OPENAI_API_KEY="test")  # fmt: skip
        worker = [sys.executable, "-m", "torpor.cli.main", "worker"]
        # Process 1 takes the turn; the model answers 429; it schedules a retry and exits.
        subprocess.run([*worker, "--session", s.id], env=env, timeout=120, check=True,
                       capture_output=True)  # fmt: skip
        row = s.info()
        assert row.state == "retrying" and row.wake_at
        assert markers(s.log(), "retry_scheduled")[0]["delay"] == 1.0
        # Nothing of process 1 is left. Once the timer is due, a new process finishes it.
        time.sleep(max(0.0, row.wake_at - time.time()) + 0.1)
        subprocess.run([*worker, "--once"], env=env, timeout=120, check=True,
                       capture_output=True)  # fmt: skip
        assert s.info().state == "waiting"
        answers = [e.content for e in s.log() if e.kind == "message" and e.role == "assistant"]
        assert answers == ["answered after the outage"]
        assert len(fake.bodies("/v1/chat/completions")) == 2
    finally:
        fake.stop()


def test_keep_warm_skips_the_restore_then_snapshots(runtime: Runtime, script):
    model = script([
        {"text": "a", "tool_calls": [shell("echo one > /root/f")]}, {"text": "one"},
        {"text": "b", "tool_calls": [shell("echo two >> /root/f; cat /root/f")]}, {"text": "two"},
        {"text": "c", "tool_calls": [shell("cat /root/f")]}, {"text": "three"},
    ])  # fmt: skip
    s = runtime.create_session(model=model, policy={"warm_seconds": 2.0})
    t1 = s.send("1")
    assert t1.state == "waiting" and t1.snapshot is None  # no snapshot yet: kept warm
    assert any(i.name == f"s-{s.id}" and i.state == "running" for i in runtime.engine.list())
    t2 = s.send("2")  # within the warm window: no restore at all
    assert t2.restore_ms == 0.0
    assert markers(s.log(), "sandbox_warm") and not markers(s.log(), "session_restored")
    # The janitor's deferred wait point ends by clearing wake_at and the lease (after
    # the snapshot marker and the sandbox's removal): wait for that, not the marker.
    deadline = time.time() + 15
    while s.info().wake_at is not None and time.time() < deadline:
        time.sleep(0.1)
    assert markers(s.log(), "snapshot_taken"), "the warm sandbox was never snapshotted"
    assert all(i.name != f"s-{s.id}" for i in runtime.engine.list())
    row = s.info()
    assert row.state == "waiting" and row.wake_at is None and row.lease_owner is None
    s.send("3")
    assert markers(s.log(), "session_restored")
    assert "one\ntwo" in results(s.log())[-1]


def test_a_warm_sandbox_lost_with_its_worker_is_recovered(runtime: Runtime, script):
    model = script([
        {"text": "a", "tool_calls": [shell("echo kept > /root/f")]}, {"text": "one"},
        {"text": "b", "tool_calls": [shell("echo lost >> /root/f")]}, {"text": "two"},
        {"text": "c", "tool_calls": [shell("cat /root/f")]}, {"text": "three"},
    ])  # fmt: skip
    s = runtime.create_session(model=model)
    s.send("1")  # a normal wait point: snapshot with "kept"
    runtime.db.update(s.id, policy={"warm_seconds": 60.0})
    warm_worker = Worker(runtime)
    s.post("2")
    warm_worker.run_session(s.id)  # its sandbox now also holds "lost", unsnapshotted
    warm_worker.warm.take(s.id)  # that worker is gone: nobody will snapshot it
    runtime.db.update(s.id, lease_until=time.time() - 1)  # ... and its lease ran out
    s.post("3")
    outcome = Worker(runtime).run_once()
    assert outcome is not None and outcome.recovered
    note = markers(s.log(), "recovery_note")[-1]
    assert "warm" in note["text"] and note["lost"]
    assert results(s.log())[-1].strip().endswith("kept")  # back at the last snapshot


def test_closing_a_warm_session_snapshots_it_first(runtime: Runtime, script):
    model = script([{"text": "a", "tool_calls": [shell("echo x > /root/f")]}, {"text": "one"}])
    s = runtime.create_session(model=model, policy={"warm_seconds": 60.0})
    s.send("1")
    s.close()
    assert s.info().state == "closed"
    assert markers(s.log(), "snapshot_taken")
    assert all(i.name != f"s-{s.id}" for i in runtime.engine.list())


def test_keep_snapshots_prunes_old_ones_but_not_a_forks(runtime: Runtime, script):
    turns: list[dict[str, Any]] = []
    for i in range(4):
        turns += [{"text": f"t{i}", "tool_calls": [shell(f"echo {i} >> /root/f")]},
                  {"text": f"done {i}"}]  # fmt: skip
    turns += [{"text": "check", "tool_calls": [shell("cat /root/f")]}, {"text": "ok"}]
    s = runtime.create_session(model=script(turns), policy={"keep_snapshots": 2})
    storage = runtime.engine.checkpoints

    def send(i: int) -> str:
        storage.flush()  # type: ignore[attr-defined]  # the last upload done (see below)
        return str(s.send(str(i)).snapshot)

    snaps = [send(i) for i in range(2)]
    fork = s.fork(at=snaps[0])  # made before it would be pruned: it must survive
    snaps += [send(i) for i in range(2, 4)]
    storage.flush()  # type: ignore[attr-defined]
    assert s.info().snapshots == snaps[-2:]
    with pytest.raises(CheckpointNotFound):
        storage.meta(snaps[1])  # fell out of the newest two, and no fork needs it
    storage.meta(snaps[0])  # the fork starts from it
    storage.meta(snaps[3])
    last = s.send("check")
    assert last.state == "waiting"
    assert results(s.log())[-1].split("stdout:")[-1].split() == ["0", "1", "2", "3"]
    assert fork.info().snapshot == snaps[0]


def test_keep_snapshots_keeps_the_newest_stored_one_until_a_newer_one_is_stored(
    runtime: Runtime, script, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    # keep_snapshots=1: the one kept must not be a snapshot still uploading, or losing the
    # machine (or a power cut) before the upload leaves nothing to fall back to.
    turns: list[dict[str, Any]] = []
    for i in range(3):
        turns += [{"text": f"t{i}", "tool_calls": [shell(f"echo {i} >> /root/f")]},
                  {"text": f"done {i}"}]  # fmt: skip
    s = runtime.create_session(model=script(turns), policy={"keep_snapshots": 1})
    storage = runtime.engine.checkpoints
    s1 = s.send("1").snapshot
    storage.flush()  # type: ignore[attr-defined]
    queued: list[str] = []
    with monkeypatch.context() as m:  # uploads stall (a slow link): s2 is not stored yet
        m.setattr(storage, "_enqueue", queued.append)
        s2 = s.send("2").snapshot
    assert s.info().snapshots == [s1, s2]  # s1, the newest stored one, stays
    assert storage.stored(s1) and not storage.stored(s2)  # type: ignore[attr-defined]
    for ckpt in queued:
        storage._enqueue(ckpt)  # type: ignore[attr-defined]
    storage.flush()  # type: ignore[attr-defined]
    queued.clear()
    with monkeypatch.context() as m:  # s3's upload stalls too (else it may end first)
        m.setattr(storage, "_enqueue", queued.append)
        s3 = s.send("3").snapshot  # s2 is stored now: s1 goes, s2 stays while s3 uploads
    assert s.info().snapshots == [s2, s3]
    for ckpt in queued:
        storage._enqueue(ckpt)  # type: ignore[attr-defined]
    storage.flush()  # type: ignore[attr-defined]
    with pytest.raises(CheckpointNotFound):
        storage.meta(s1)


def test_a_standby_sandbox_takes_the_resume(runtime: Runtime, script):
    runtime.standby_size = 1
    model = script([
        {"text": "a", "tool_calls": [shell("echo one > /root/f")]}, {"text": "one"},
        {"text": "b", "tool_calls": [shell("cat /root/f")]}, {"text": "two"},
    ])  # fmt: skip
    s = runtime.create_session(model=model)
    s.send("1")  # the wait point asks for a standby to be set up in the background
    deadline = time.time() + 30
    while not [i for i in runtime.engine.list(all=True) if i.state == "standby"]:
        assert time.time() < deadline, "no standby was set up"
        time.sleep(0.05)
    t2 = s.send("2")
    restored = markers(s.log(), "session_restored")
    assert restored and restored[-1]["standby"] is True
    assert t2.restore_ms and "one" in results(s.log())[-1]
    runtime.close()  # drains: no standby left behind
    assert not [i for i in runtime.engine.list(all=True) if i.state == "standby"]


def test_the_workspace_is_a_tmpfs_kept_across_wait_points(runtime: Runtime, script):
    # Sessions' sandboxes get a tmpfs at /work (Runtime.sandbox_spec): churn there leaves
    # no whiteouts in the snapshot, and what the agent keeps there comes back.
    model = script([
        {"text": "setting up", "tool_calls": [
            shell("grep ' /work ' /proc/mounts; mkdir -p /work/repo && cd /work/repo && "
                  "git init -q && echo v1 > f && git add f && git -c user.name=a "
                  "-c user.email=a@b commit -qm one && echo committed")]},
        {"text": "ready"},
        {"text": "checking", "tool_calls": [shell("cd /work/repo && git log --oneline | wc -l "
                                                  "&& cat f")]},
        {"text": "done"},
    ])  # fmt: skip
    s = runtime.create_session(model=model)
    assert runtime.sandbox_spec("base").tmpfs[0].target == "/work"
    s.send("set up a repo")
    first = results(s.log())[-1]
    assert " /work tmpfs " in first, first
    assert "committed" in first
    s.send("check it")
    assert results(s.log())[-1].split()[-2:] == ["1", "v1"]
    assert len(markers(s.log(), "session_restored")) == 1


def test_no_workspace_tmpfs_over_an_image_with_files_there(rt_home: Path, rt_engine,
                                                           tmp_path: Path):  # fmt: skip
    rt = Runtime(db=f"sqlite:///{tmp_path / 'w.db'}", home=rt_home, engine=rt_engine,
                 workspace="/etc")  # fmt: skip
    assert rt.sandbox_spec("base").tmpfs == []  # /etc has the image's files: not hidden
    rt = Runtime(db=f"sqlite:///{tmp_path / 'w.db'}", home=rt_home, engine=rt_engine,
                 workspace=None)  # fmt: skip
    assert rt.sandbox_spec("base").tmpfs == []
