"""Several machines, nothing lost: a turn taken by another machine restores the newest
snapshot (it waits for the upload the first machine is still doing), never an older one;
a lost machine's turns are recovered from the newest uploaded snapshot, saying what was
lost."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tests.cluster.conftest import Cluster, needs_pg, wait_until

pytestmark = needs_pg

TOKEN_SERVER = (
    "import os, socket\n"
    "t = os.urandom(8).hex()\n"
    "s = socket.socket(socket.AF_UNIX); s.bind(\"/work/tok.sock\"); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(t.encode()); c.close()\n"
)
ASK_TOKEN = ("import socket; s = socket.socket(socket.AF_UNIX); s.connect('/work/tok.sock'); "
             "print(s.recv(64).decode())")  # fmt: skip


def turn_command(i: int) -> str:
    """Append line i to a file, count the lines, ask the in-memory process for its token
    (started by the first turn; a sandbox that lost it cannot answer)."""
    wait = "while [ ! -S /work/tok.sock ]; do sleep 0.05; done; " if i == 1 else ""
    return f"{wait}echo {i} >> /work/lines; wc -l < /work/lines; python3 -c \"{ASK_TOKEN}\""


def script(path: Path, turns: int) -> str:
    lines = []
    for i in range(1, turns + 1):
        calls = [{"name": "shell", "arguments": {"command": turn_command(i)}}]
        if i == 1:
            calls.insert(0, {"name": "start_process",
                             "arguments": {"command": f"python3 -c '{TOKEN_SERVER}'"}})
        lines.append({"text": "", "tool_calls": calls})
        lines.append({"text": f"turn {i} done"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f"script:{path}"


def markers(entries: list[Any], name: str) -> list[dict[str, Any]]:
    return [e.content for e in entries if e.kind == "marker" and isinstance(e.content, dict)
            and e.content.get("marker") == name]  # fmt: skip


def quick_user(cluster: Cluster, sid: str, turns: int, first: int = 1) -> list[tuple[int, str]]:
    """Answer as soon as each wait point is reached (turns first..turns); returns (line
    count, token) per turn."""
    rt = cluster.rt
    seen: list[tuple[int, str]] = []
    for i in range(first, turns + 1):
        rt.get_session(sid).post(f"turn {i}")

        def done(i: int = i) -> bool:
            row = rt.db.get(sid)
            return (row.state == "waiting" and not row.lease_owner and row.attempt == 0
                    and not rt.db.unread(sid) and row.snapshot_seq is not None
                    and any(e.kind == "message" and e.content == f"turn {i} done"
                            for e in rt.log.read(sid, after=row.snapshot_seq - 8)))  # fmt: skip

        wait_until(done, 120, f"turn {i} not done", cluster)
        result = [e for e in rt.log.read(sid) if e.kind == "tool_result"][-1].content
        out = str(result).split("stdout:\n", 1)[-1].split()
        assert str(result).startswith("exit code 0") and len(out) == 2, result
        count, token = out
        seen.append((int(count), token))
    return seen


def test_quick_answers_across_two_machines_lose_nothing(cluster: Cluster, tmp_path: Path):
    """The race of the issue: two machines, no affinity (any machine takes any turn), a
    user who answers at once. Every turn sees every earlier turn's line and the same
    in-memory process, whichever machine ran it."""
    turns = 50
    for _ in range(2):
        cluster.machine("--affinity", "0")
    s = cluster.rt.create_session(model=script(tmp_path / "race.jsonl", turns))
    seen = quick_user(cluster, s.id, turns)
    entries = s.log()
    assert [c for c, _ in seen] == list(range(1, turns + 1)), seen
    assert len({t for _, t in seen}) == 1, seen  # one process, never restarted
    assert markers(entries, "recovery_note") == []
    workers = {m["worker"].rsplit(":", 1)[0] for m in markers(entries, "state")
               if m.get("state") == "running"}  # fmt: skip
    assert len(workers) == 2, "only one machine took turns: the race was not run"
    awaited = markers(entries, "upload_awaited")
    print(f"\n{turns} turns; {len(awaited)} waited for an upload from the other machine "
          f"(median {sorted(a['ms'] for a in awaited)[len(awaited) // 2] if awaited else 0} ms)")


def restores(entries: list[Any]) -> list[dict[str, Any]]:
    return markers(entries, "session_restored")


def test_affinity_keeps_turns_on_the_machine_with_the_hot_copy(cluster: Cluster,
                                                               tmp_path: Path):  # fmt: skip
    """Default affinity: the machine that took a session's latest snapshot runs its next
    turn (restoring from its hot copy), however quickly the user answers."""
    turns = 20
    for _ in range(2):
        cluster.machine()
    s = cluster.rt.create_session(model=script(tmp_path / "aff.jsonl", turns))
    seen = quick_user(cluster, s.id, turns)
    assert [c for c, _ in seen] == list(range(1, turns + 1))
    rs = restores(s.log())
    hot = sum(1 for r in rs if r.get("hot"))
    print(f"\n2 machines, affinity 0.5 s: {hot} of {len(rs)} resumes from a hot copy")
    assert len(rs) == turns - 1 and hot >= len(rs) - 1, rs


def test_a_lost_machine_is_recovered_from_the_newest_stored_snapshot(cluster: Cluster,
                                                                      tmp_path: Path):  # fmt: skip
    """kill -9 of the machine running a turn (its hot copies go with it): the other machine
    recovers the session from the newest snapshot that reached the store, after the
    lease expires, and says in a recovery note what was lost."""
    path = tmp_path / "loss.jsonl"
    lines = [{"text": "", "tool_calls": [{"name": "shell", "arguments": {
                "command": "echo 1 >> /work/lines"}}]}, {"text": "first"},
             {"text": "", "tool_calls": [{"name": "shell", "arguments": {
                "command": "echo 2 >> /work/lines; sleep 30"}}]}, {"text": "second"},
             {"text": "", "tool_calls": [{"name": "shell", "arguments": {
                "command": "wc -l < /work/lines"}}]}, {"text": "third"}]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    a = cluster.machine("--lease-ttl", "3")
    rt = cluster.rt
    s = rt.create_session(model=f"script:{path}")
    s.post("one")
    wait_until(lambda: rt.db.get(s.id).state == "waiting" and not rt.db.unread(s.id)
               and rt.db.get(s.id).snapshot is not None, 60, "turn 1", cluster)  # fmt: skip
    first = rt.db.get(s.id).snapshot
    s.post("two")
    wait_until(lambda: any(e.kind == "tool_call" and "sleep 30" in str(e.arguments)
                           for e in rt.log.read(s.id)), 60, "turn 2's call", cluster)  # fmt: skip
    b = cluster.machine("--lease-ttl", "3")
    t_kill = time.monotonic()
    a.kill()
    shutil.rmtree(a.home / "checkpoint-cache", ignore_errors=True)  # its disk is gone too
    wait_until(lambda: any(m.get("state") == "recovering" for m in markers(
        rt.log.read(s.id), "state")), 60, "recovery", cluster)  # fmt: skip
    failover = time.monotonic() - t_kill
    wait_until(lambda: rt.db.get(s.id).state == "waiting", 60, "turn 2 recovered", cluster)
    entries = s.log()
    note = markers(entries, "recovery_note")[-1]
    assert note["snapshot"] == first
    assert "echo 2 >> /work/lines; sleep 30" in note["text"]  # the interrupted call is named
    assert restores(entries)[-1]["snapshot"] == first
    s.post("three")
    wait_until(lambda: rt.db.get(s.id).state == "waiting" and not rt.db.unread(s.id),
               60, "turn 3", cluster)  # fmt: skip
    last = [e for e in rt.log.read(s.id) if e.kind == "tool_result"][-1].content
    assert str(last).split("stdout:\n", 1)[-1].split() == ["1"]  # line 2 was lost with a
    print(f"\nfailover: {failover:.1f} s from the kill to the recovery on {b.name}")


def test_a_snapshot_whose_machine_died_before_uploading_it_is_skipped_with_a_note(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The newest snapshot was taken on a machine that is gone (its heartbeat stopped) and
    never reached the store: the next turn does not wait for it forever; it restores the
    one before, and the recovery note says which snapshot went with which machine."""
    rt = cluster.rt
    s = rt.create_session(model=script(tmp_path / "dead.jsonl", 3))
    s.send("turn 1")
    row = rt.db.get(s.id)
    assert row.state == "waiting" and row.snapshot
    # What a machine killed between its wait point and its upload leaves behind: a newer
    # snapshot in the session's row, recorded as held by that machine, not in the store.
    gone = "s-gone-snapshot"
    rt.db.beat("m-gone:1:x", "m-gone", "elsewhere", slots=1, running=0, at=time.time() - 60)
    rt.db.record_snapshot(gone, s.id, "m-gone", "m-gone:1:x")
    rt.db.update(s.id, snapshot=gone, snapshots=[*row.snapshots, gone])
    t0 = time.monotonic()
    out = s.send("turn 2")
    assert time.monotonic() - t0 < 30 and out.state == "waiting"
    entries = s.log()
    assert restores(entries)[-1]["snapshot"] == row.snapshot
    note = markers(entries, "recovery_note")[-1]["text"]
    assert gone in note and "m-gone" in note and "stopped before uploading it" in note
