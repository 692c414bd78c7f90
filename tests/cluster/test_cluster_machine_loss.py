"""Machine loss with real uploads: `kill -9` of the machine that holds a session's newest
snapshot, (1) while that snapshot's upload into the store is still in flight (a slow
link between the machine and the S3 server keeps it there) and (2) at a wait point after
the upload finished, and (3) mid-turn, when its newest snapshot is a mid-turn one (the
session's policy) that never reached the store. Another machine takes the user's next
message (in (3), the turn): in (1) it restores the previous stored snapshot once the dead
machine's heartbeat has stopped, saying which snapshot was lost; in (2) it restores the
newest one and nothing is lost; in (3) it restores the turn's starting point and its notes
say so, naming each call whose effects went exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.cluster.conftest import Cluster, Machine, needs_pg, wait_until
from torpor.runtime.types import DEFAULT_LEASE_TTL, MACHINE_TTL, UPLOAD_WAIT

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
BLOB_MB = 2  # incompressible memory (a tmpfs file) turn 2 adds to the sandbox in test 1
UPLOAD_RATE = 32_000  # bytes/s the slow link lets through towards the S3 server


class SlowLink:
    """A TCP proxy on loopback in front of the S3 server. While `rate` is set, what the
    client sends goes through at `rate` bytes/s (one budget for all its connections), so
    an upload takes long; what the server sends back is never held."""

    def __init__(self, upstream: str) -> None:
        u = urlsplit(upstream)
        self._to = (u.hostname or "127.0.0.1", u.port or 80)
        self.rate: float | None = None
        self.slowed = 0  # bytes sent on to the server while the rate was set
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-link", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the slow link did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        self._budget = asyncio.Lock()
        server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self._to)
        except OSError:
            writer.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # (close: the link goes away)
            await asyncio.gather(self._pipe(reader, up_w, slow=True),
                                 self._pipe(up_r, writer, slow=False))  # fmt: skip

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *,
                    slow: bool) -> None:  # fmt: skip
        try:
            while data := await r.read(1 << 16):
                while data:
                    rate = self.rate if slow else None
                    piece, data = (data[:1024], data[1024:]) if rate else (data, b"")
                    if rate:
                        async with self._budget:
                            await asyncio.sleep(len(piece) / rate)
                    w.write(piece)
                    await w.drain()
                    if rate:
                        self.slowed += len(piece)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture()
def slow_link(s3_endpoint: str) -> Iterator[SlowLink]:
    link = SlowLink(s3_endpoint)
    try:
        yield link
    finally:
        link.close()


def machine_via(cluster: Cluster, endpoint: str, *args: str) -> Machine:
    """A machine of the cluster whose S3 traffic goes to `endpoint` (the slow link)."""
    n = len(cluster.machines)
    m = Machine(f"m{n}", cluster.root / f"m{n}", cluster.db, cluster.store,
                dict(cluster.env, AWS_ENDPOINT_URL=endpoint))  # fmt: skip
    m.home.mkdir(parents=True)
    cluster.machines.append(m.start(*args))
    return m


def machine_id(m: Machine) -> str | None:
    path = m.home / "machine-id"
    return path.read_text().strip() if path.exists() else None


def serving(m: Machine) -> bool:
    """Is the machine's worker up and looking for work (it says so in its log)?"""
    return "waiting for work" in m.output()


def lose(m: Machine) -> None:
    """kill -9 of the machine; its disk (hot copies, pending uploads) goes with it."""
    m.kill()
    shutil.rmtree(m.home / "checkpoint-cache", ignore_errors=True)


def turn_command(i: int, blob: bool = False) -> str:
    """Append line i to a file, show the file, ask the in-memory process (started by the
    first turn) for its token; a sandbox that lost either shows it."""
    wait = "while [ ! -S /work/tok.sock ]; do sleep 0.05; done; " if i == 1 else ""
    big = f"head -c {BLOB_MB}M /dev/urandom > /work/blob; " if blob else ""
    return (f"{wait}{big}echo {i} >> /work/lines; echo lines: $(cat /work/lines); "
            f"ls /work; python3 -c \"{ASK_TOKEN}\"")


def script(path: Path, turns: int, blob_in: int = 0) -> str:
    lines: list[dict[str, Any]] = []
    for i in range(1, turns + 1):
        calls = [{"name": "shell", "arguments": {"command": turn_command(i, i == blob_in)}}]
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


def wait_turn(cluster: Cluster, sid: str, i: int, timeout: float = 60) -> tuple[str, str, str]:
    """Wait for turn i's wait point; returns its shell call's (lines, files, token)."""
    wait_done(cluster, sid, i, timeout)
    return turn_output(cluster, sid, i)


def wait_done(cluster: Cluster, sid: str, i: int, timeout: float = 60) -> None:
    """Wait for turn i's wait point (its answer "turn i done" logged, the session idle)."""
    rt = cluster.rt

    def done() -> bool:
        row = rt.db.get(sid)
        return (row.state == "waiting" and not row.lease_owner and not rt.db.unread(sid)
                and row.snapshot is not None
                and any(e.kind == "message" and e.content == f"turn {i} done"
                        for e in rt.log.read(sid)))  # fmt: skip

    wait_until(done, timeout, f"turn {i} not done", cluster)


def turn_output(cluster: Cluster, sid: str, i: int) -> tuple[str, str, str]:
    entries = cluster.rt.log.read(sid)
    call = [e for e in entries if e.kind == "tool_call" and f"echo {i} >>" in str(e.arguments)]
    assert len(call) == 1, call
    result = [e for e in entries if e.kind == "tool_result"
              and e.tool_call_id == call[0].tool_call_id]  # fmt: skip
    assert len(result) == 1, result
    return shown(str(result[0].content))


def shown(text: str) -> tuple[str, str, str]:
    """A shell call's (lines, files, token), as turn_command shows them."""
    assert text.startswith("exit code 0"), text
    out = text.split("stdout:\n", 1)[-1].strip().splitlines()
    lines = [o for o in out if o.startswith("lines: ")]
    assert len(lines) == 1 and len(out) >= 3, text
    return lines[0], " ".join(sorted(out[1:-1])), out[-1]


def messages(cluster: Cluster, sid: str) -> list[tuple[str | None, Any]]:
    return [(e.role, e.content) for e in cluster.rt.log.read(sid) if e.kind == "message"]


def expected_messages(turns: int) -> list[tuple[str, str]]:
    """Per turn: the user's message, the model's (empty) text with its tool calls, its
    answer."""
    return [m for i in range(1, turns + 1) for m in (
        ("user", f"turn {i}"), ("assistant", ""), ("assistant", f"turn {i} done"))]  # fmt: skip


def ran_on(cluster: Cluster, sid: str, m: Machine) -> bool:
    """Did the session's latest turn run in machine m's worker?"""
    running = [x for x in markers(cluster.rt.log.read(sid), "state")
               if x.get("state") in ("running", "recovering")]  # fmt: skip
    assert m.proc is not None
    return bool(running) and f":{m.proc.pid}:" in str(running[-1].get("worker"))


def first(pred: Any, timeout: float, what: str, cluster: Cluster) -> float:
    """When pred first held (time.monotonic)."""
    wait_until(pred, timeout, what, cluster)
    return time.monotonic()


def test_a_machine_killed_during_its_upload_loses_that_snapshot_only(
    cluster: Cluster, slow_link: SlowLink, tmp_path: Path
) -> None:
    """Machine A reaches a wait point and starts uploading its snapshot over a slow link;
    it is killed (-9, its disk gone) while the upload is in flight. The user's next
    message is taken by machine B, which waits for A only until A's heartbeat is stale
    (not UPLOAD_WAIT), restores the previous stored snapshot, and says in a recovery note
    which snapshot went with A. The sandbox is turn 1's: turn 2's line and file are gone,
    turn 1's process still runs; the log has every message."""
    rt = cluster.rt
    available = rt.checkpoint_storage("available")
    assert available is not None
    a = machine_via(cluster, slow_link.url)
    s = rt.create_session(model=script(tmp_path / "upload.jsonl", 3, blob_in=2))
    s.post("turn 1")
    lines1, files1, token = wait_turn(cluster, s.id, 1)
    assert lines1 == "lines: 1" and "blob" not in files1
    snap1 = rt.db.get(s.id).snapshot
    assert snap1 is not None
    wait_until(lambda: available(snap1), 60, "snapshot 1 not stored", cluster)

    slow_link.rate = UPLOAD_RATE  # from now on A's uploads crawl
    s.post("turn 2")
    wait_until(lambda: rt.db.get(s.id).snapshot not in (None, snap1), 60,
               "no snapshot of turn 2", cluster)  # fmt: skip
    snap2 = rt.db.get(s.id).snapshot
    assert snap2 is not None
    sent = slow_link.slowed  # the upload of snap2 is all that goes to the store after this
    holder = rt.db.snapshot_holder(snap2)
    assert holder is not None and holder[0] == machine_id(a)  # recorded as A's
    lines2, files2, token2 = wait_turn(cluster, s.id, 2)
    assert (lines2, token2) == ("lines: 1 2", token) and "blob" in files2
    wait_until(lambda: slow_link.slowed > sent, 30, "snapshot 2's upload not started", cluster)
    b = cluster.machine()
    wait_until(lambda: serving(b), 60, "machine B not up", cluster)
    assert not available(snap2), "the upload finished before the kill: too fast a link"
    uploaded = slow_link.slowed - sent
    t_kill = time.monotonic()
    lose(a)
    assert not available(snap2)  # the only copy went with A

    t_post = time.monotonic()
    s.post("turn 3")
    t_restored = first(lambda: restores_since(cluster, s.id, snap2), MACHINE_TTL + 60,
                       "turn 3 restored nothing", cluster)  # fmt: skip
    t_call = first(lambda: any(e.kind == "tool_call" and "echo 3 >>" in str(e.arguments)
                               for e in rt.log.read(s.id)), 60, "no call of turn 3", cluster)
    lines3, files3, token3 = wait_turn(cluster, s.id, 3)
    print(f"\nA killed with {uploaded} bytes of snapshot 2's upload sent; B restored "
          f"snapshot 1 {t_restored - t_post:.1f} s after the post ({t_restored - t_kill:.1f} s "
          f"after the kill; MACHINE_TTL {MACHINE_TTL:g} s), first call "
          f"{t_call - t_post:.1f} s after the post")

    assert ran_on(cluster, s.id, b)
    # what the user sees in the sandbox: turn 1's state, continued; turn 2's effects lost
    assert lines3 == "lines: 1 3"
    assert "blob" not in files3
    assert token3 == token  # the process of turn 1 (in snapshot 1) is still there
    entries = s.log()
    assert restores(entries)[-1]["snapshot"] == snap1
    assert not restores(entries)[-1]["hot"]  # from the store: B had no copy of its own
    notes = markers(entries, "recovery_note")
    assert len(notes) == 1, notes
    note = notes[0]
    assert [f.split(":", 1)[0] for f in note["failures"]] == [snap2]  # exactly that one
    assert snap2 in note["text"] and holder[0] in note["text"] and snap1 in note["text"]
    assert "stopped before uploading it" in note["text"]
    # ... and it lists exactly the calls whose effects went with snapshot 2: turn 2's
    taken = {m["snapshot"]: m["seq"] for m in markers(entries, "snapshot_taken")}
    turn2 = [e.tool_call_id for e in entries if e.kind == "tool_call"
             and taken[snap1] < e.seq <= taken[snap2]]  # fmt: skip
    assert turn2 and note["lost"] == turn2, (note, turn2)
    assert "echo 2 >>" in note["text"]
    print(f"recovery note: {note['text']}")
    assert markers(entries, "upload_awaited") == []
    # B gave up on A's upload when A's heartbeat went stale, not after UPLOAD_WAIT
    assert t_restored - t_post < MACHINE_TTL + 30 < UPLOAD_WAIT
    # the log lost nothing: every message, and turn 2's call and result, are there
    assert messages(cluster, s.id) == expected_messages(3)
    assert turn_output(cluster, s.id, 2) == (lines2, files2, token2)


def restores(entries: list[Any]) -> list[dict[str, Any]]:
    return markers(entries, "session_restored")


def restores_since(cluster: Cluster, sid: str, snapshot: str) -> bool:
    """Has a turn been restored since `snapshot` was taken?"""
    entries = cluster.rt.log.read(sid)
    taken = [e.seq for e in entries if e.kind == "marker" and isinstance(e.content, dict)
             and e.content.get("marker") == "snapshot_taken"
             and e.content.get("snapshot") == snapshot]  # fmt: skip
    return bool(taken) and bool(restores([e for e in entries if e.seq > taken[-1]]))


def test_a_machine_killed_at_a_wait_point_after_its_upload_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Machine A runs two turns and their snapshots reach the store; then it is killed
    (-9, its disk gone) while the session waits. Machine B takes the next message,
    restores the newest snapshot from the store, and nothing is lost: the file has every
    line, the process of turn 1 still runs, no recovery note."""
    rt = cluster.rt
    available = rt.checkpoint_storage("available")
    assert available is not None
    a = cluster.machine()
    s = rt.create_session(model=script(tmp_path / "stored.jsonl", 3))
    s.post("turn 1")
    _, _, token = wait_turn(cluster, s.id, 1)
    s.post("turn 2")
    lines2, _, token2 = wait_turn(cluster, s.id, 2)
    assert (lines2, token2) == ("lines: 1 2", token)
    snap2 = rt.db.get(s.id).snapshot
    assert snap2 is not None
    t0 = time.monotonic()
    wait_until(lambda: available(snap2), 60, "snapshot 2 not stored", cluster)
    stored_after = time.monotonic() - t0
    # (no prefetch: B would follow the session and fetch snapshot 2 before the kill;
    # restoring from the store is what this test is about, test_cluster_prefetch the other)
    b = cluster.machine("--no-prefetch")
    wait_until(lambda: serving(b), 60, "machine B not up", cluster)
    lose(a)

    t_post = time.monotonic()
    s.post("turn 3")
    t_claimed = first(lambda: ran_on(cluster, s.id, b), 60, "B took no turn", cluster)
    t_restored = first(lambda: restores_since(cluster, s.id, snap2), 60,
                       "turn 3 restored nothing", cluster)  # fmt: skip
    t_call = first(lambda: any(e.kind == "tool_call" and "echo 3 >>" in str(e.arguments)
                               for e in rt.log.read(s.id)), 60, "no call of turn 3", cluster)
    lines3, _, token3 = wait_turn(cluster, s.id, 3)
    restored = restores(s.log())[-1]
    print(f"\nsnapshot 2 stored {stored_after:.2f} s after its wait point; after the kill, "
          f"B took the turn {t_claimed - t_post:.2f} s after the post, restored it "
          f"{t_restored - t_post:.2f} s after the post (restore {restored['ms']:.0f} ms), "
          f"first tool call {t_call - t_post:.2f} s after the post")

    assert ran_on(cluster, s.id, b)
    assert lines3 == "lines: 1 2 3"  # nothing lost
    assert token3 == token
    entries = s.log()
    assert restored["snapshot"] == snap2 and not restored["hot"]
    assert markers(entries, "recovery_note") == []
    assert messages(cluster, s.id) == expected_messages(3)
    assert t_call - t_post < DEFAULT_LEASE_TTL + 30


MID_TURN_EVERY = 3  # the session's policy in test 3: a mid-turn snapshot every 3 calls
TURN2_CALLS = ("2a", "2b", "2c", "2d", "2e")  # test 3's turn 2: snapshot after 2c; 2e sleeps
SHOW = f"echo lines: $(cat /work/lines); ls /work; python3 -c \"{ASK_TOKEN}\""


def mid_turn_script(path: Path) -> str:
    """Turn 1 as in `script` (two calls: no mid-turn snapshot). Turn 2: calls 2a (which
    also writes the blob), 2b and 2c in one step, then the mid-turn snapshot; 2d and 2e
    (which sleeps) in the next; after them, one call that shows the sandbox."""
    def sh(command: str) -> dict[str, Any]:
        return {"name": "shell", "arguments": {"command": command}}

    def add(x: str) -> dict[str, Any]:
        big = f"head -c {BLOB_MB}M /dev/urandom > /work/blob; " if x == "2a" else ""
        return sh(f"{big}echo {x} >> /work/lines" + ("; sleep 50" if x == "2e" else ""))

    lines: list[dict[str, Any]] = [
        {"text": "", "tool_calls": [
            {"name": "start_process", "arguments": {"command": f"python3 -c '{TOKEN_SERVER}'"}},
            sh(turn_command(1))]},
        {"text": "turn 1 done"},
        {"text": "", "tool_calls": [add(x) for x in TURN2_CALLS[:MID_TURN_EVERY]]},
        {"text": "", "tool_calls": [add(x) for x in TURN2_CALLS[MID_TURN_EVERY:]]},
        {"text": "", "tool_calls": [sh(SHOW)]},
        {"text": "turn 2 done"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f"script:{path}"


def call_ids(entries: list[Any]) -> dict[str, str]:
    """Test 3's turn-2 calls: "2a" .. "2e" -> tool call id."""
    out = {}
    for e in entries:
        for x in TURN2_CALLS:
            if e.kind == "tool_call" and f"echo {x} >>" in str(e.arguments):
                assert x not in out, (x, e)
                out[x] = e.tool_call_id
    return out


def result_of(entries: list[Any], cid: str | None) -> Any:
    found = [e for e in entries if e.kind == "tool_result" and e.tool_call_id == cid]
    assert len(found) == 1, (cid, found)
    return found[0]


def test_a_machine_killed_mid_turn_with_its_mid_turn_snapshot_unstored(
    cluster: Cluster, slow_link: SlowLink, tmp_path: Path
) -> None:
    """A session snapshots mid-turn every 3 calls. Machine A stores turn 1's wait point
    (snapshot 1) at full speed; then its link crawls. In turn 2, after three calls, A takes
    a mid-turn snapshot (recorded, never stored), answers one more call and is killed (-9,
    its disk gone) during the next, which sleeps. Machine B takes the turn over when A's
    lease expires and restores snapshot 1. The user sees two recovery notes: the fallback
    note names the lost mid-turn snapshot and the three calls before it, the recovery note
    says the sandbox is at snapshot 1 (not the lost one), lists the answered call after the
    lost snapshot and the interrupted one: every call of turn 2 exactly once. The sandbox
    is turn 1's; the log has every message."""
    rt = cluster.rt
    available = rt.checkpoint_storage("available")
    assert available is not None
    a = machine_via(cluster, slow_link.url, "--lease-ttl", "3")
    s = rt.create_session(model=mid_turn_script(tmp_path / "midturn.jsonl"),
                          policy={"snapshot_every_calls": MID_TURN_EVERY})  # fmt: skip
    s.post("turn 1")
    lines1, files1, token = wait_turn(cluster, s.id, 1)
    assert lines1 == "lines: 1" and "blob" not in files1
    snap1 = rt.db.get(s.id).snapshot
    assert snap1 is not None and rt.db.get(s.id).snapshots == [snap1]  # none mid-turn
    wait_until(lambda: available(snap1), 60, "snapshot 1 not stored", cluster)

    slow_link.rate = UPLOAD_RATE  # from now on A's uploads crawl
    s.post("turn 2")

    def mid_turn() -> list[str]:
        return [m["snapshot"] for m in markers(rt.log.read(s.id), "snapshot_taken")
                if m.get("mid_turn")]  # fmt: skip

    wait_until(mid_turn, 60, "no mid-turn snapshot in turn 2", cluster)
    b = cluster.machine("--lease-ttl", "3")

    def answered(x: str) -> bool:
        entries = rt.log.read(s.id)
        cid = call_ids(entries).get(x)
        return any(e.kind == "tool_result" and e.tool_call_id == cid for e in entries)

    wait_until(lambda: answered("2d"), 30, "call 2d not answered", cluster)
    wait_until(lambda: serving(b), 60, "machine B not up", cluster)
    time.sleep(0.5)  # 2e started right after 2d: it sleeps now
    [lost_snap] = mid_turn()
    assert rt.db.get(s.id).snapshots == [snap1, lost_snap]
    holder = rt.db.snapshot_holder(lost_snap)
    assert holder is not None and holder[0] == machine_id(a)  # recorded as A's
    assert not answered("2e") and not available(lost_snap), "too fast a link"
    t_kill = time.monotonic()
    lose(a)
    assert not available(lost_snap)  # the only copy went with A

    wait_done(cluster, s.id, 2, timeout=MACHINE_TTL + 60)
    print(f"\nB finished turn 2 {time.monotonic() - t_kill:.1f} s after A was killed")
    assert ran_on(cluster, s.id, b)
    entries = s.log()
    ids = call_ids(entries)
    assert list(ids) == list(TURN2_CALLS)
    # B restored snapshot 1, from the store
    taken = {m["snapshot"]: m["seq"] for m in markers(entries, "snapshot_taken")}
    after_loss = [e for e in entries if e.seq > taken[lost_snap]]
    [restored] = restores(after_loss)
    assert restored["snapshot"] == snap1 and not restored["hot"]
    assert markers(entries, "upload_awaited") == []

    notes = markers(entries, "recovery_note")
    for n in notes:
        print(f"recovery note: {json.dumps(n, indent=1)}")
    assert len(notes) == 2, notes
    fallback, recover = notes
    seq1 = taken[snap1]  # the log seq snapshot 1 was taken at
    # the fallback note: the mid-turn snapshot was lost, and the calls before it
    assert [f.split(":", 1)[0] for f in fallback["failures"]] == [lost_snap]
    assert "stopped before uploading it" in fallback["text"] and holder[0] in fallback["text"]
    assert fallback["snapshot"] == snap1 and fallback["since_seq"] == seq1
    assert snap1 in fallback["text"] and lost_snap in fallback["text"]
    assert fallback["lost"] == [ids[x] for x in ("2a", "2b", "2c")], (fallback, ids)
    # the recovery note: the sandbox is at snapshot 1, not the lost one; what came after
    assert recover["snapshot"] == snap1 and recover["after_seq"] == seq1, recover
    assert f"restored to the snapshot {snap1}" in recover["text"]
    assert lost_snap not in recover["text"]
    assert recover["lost"] == [ids["2d"]], (recover, ids)
    assert recover["interrupted"] == [ids["2e"]], (recover, ids)
    # together they name every call of turn 2 exactly once
    named = [*fallback["lost"], *recover["lost"], *recover["interrupted"]]
    assert named == [ids[x] for x in TURN2_CALLS]
    for note, xs in ((fallback, ("2a", "2b", "2c")), (recover, ("2d", "2e"))):
        for x in TURN2_CALLS:
            assert (f"echo {x} >>" in note["text"]) == (x in xs), (x, note["text"])
    assert (result_of(entries, ids["2e"]).meta or {}).get("interrupted") is True

    # what the user sees in the sandbox: turn 1's state; turn 2's effects gone
    show = [e for e in entries if e.kind == "tool_call" and "lines: $(cat" in str(e.arguments)
            and e.seq > restored_seq(entries)]  # fmt: skip
    assert len(show) == 1, show
    assert shown(str(result_of(entries, show[0].tool_call_id).content)) == (
        lines1, files1, token)  # fmt: skip
    # the log lost nothing: every message, and every call A answered with its result
    assert messages(cluster, s.id) == [
        ("user", "turn 1"), ("assistant", ""), ("assistant", "turn 1 done"),
        ("user", "turn 2"), ("assistant", ""), ("assistant", ""), ("assistant", ""),
        ("assistant", "turn 2 done")]  # fmt: skip
    for x in TURN2_CALLS[:-1]:
        assert str(result_of(entries, ids[x]).content).startswith("exit code 0")


def restored_seq(entries: list[Any]) -> int:
    return [e.seq for e in entries if e.kind == "marker" and isinstance(e.content, dict)
            and e.content.get("marker") == "session_restored"][-1]  # fmt: skip
