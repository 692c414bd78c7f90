"""`torpor demo`: a durable agent session, end to end, on the embedded defaults.

SQLite log, local snapshot store, the base image and a scripted model (or a real one with
--model). Turn 1 builds a git repo, starts a dev server and a process that keeps notes in
memory; the wait point snapshots the sandbox and stops it. Turn 2 restores it and shows
that the server, the files and the process memory are all still there. Turn 3 starts a
long tool call in a separate worker process, kills that worker with SIGKILL, and shows
another worker recovering the session from its last snapshot and the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

NOTES_PY = r'''
import http.server, json, os
token = os.urandom(4).hex()
notes, hits = [], 0
class H(http.server.BaseHTTPRequestHandler):
    def reply(self):
        global hits
        hits += 1
        body = json.dumps({"token": token, "notes": notes, "requests": hits}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def do_GET(self): self.reply()
    def do_POST(self):
        notes.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.reply()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8001), H).serve_forever()
'''

WAIT_UP = "for i in $(seq 100); do curl -sf localhost:{port}/ >/dev/null && break; sleep 0.1; done"

TURNS: list[dict[str, Any]] = [
    {"text": "Creating the repository.", "tool_calls": [{"name": "shell", "arguments": {
        "command": "mkdir -p /work/app && cd /work/app && git init -q && "
                   "printf '# demo app\\nserved from the sandbox\\n' > README.md && "
                   "for i in $(seq 1 50); do echo \"def f$i(): return $i\" > mod$i.py; done && "
                   "git add -A && git -c user.email=agent@torpor -c user.name=agent "
                   "commit -qm 'first commit' && git log --oneline"}}]},
    {"text": "Starting a dev server and a notes process that keeps its notes in memory.",
     "tool_calls": [
         {"name": "write_file", "arguments": {"path": "/work/notes.py", "content": NOTES_PY}},
         {"name": "start_process",
          "arguments": {"command": "python3 -m http.server 8000 --directory /work/app"}},
         {"name": "start_process", "arguments": {"command": "python3 /work/notes.py"}}]},
    {"text": "Writing a note into the notes process.", "tool_calls": [{"name": "shell",
     "arguments": {"command": WAIT_UP.format(port=8000) + "; " + WAIT_UP.format(port=8001)
                   + "; curl -s -X POST -d 'the build uses make' localhost:8001/"}}]},
    {"text": "The project is ready: a git repo in /work/app, a dev server on port 8000 and a "
             "notes process on port 8001 holding one note in memory."},
    {"text": "Checking the server, the repo and the notes process.", "tool_calls": [
        {"name": "shell", "arguments": {"command": "curl -s localhost:8000/README.md; "
                                        "git -C /work/app log --oneline; "
                                        "curl -s localhost:8001/"}}]},
    {"text": "Everything is still there: same files, same server, same process memory."},
    {"text": "Running the long test suite.", "tool_calls": [
        {"name": "shell", "arguments": {"command": "sleep 60; echo tests passed",
                                        "timeout": 120}}]},
    {"text": "The worker running the tests died; the sandbox is back at the last snapshot. "
             "Checking the notes process survived that too.", "tool_calls": [
        {"name": "shell", "arguments": {"command": WAIT_UP.format(port=8001)
                                        + "; curl -s localhost:8001/"}}]},
    {"text": "Recovered: the notes are intact. The interrupted test run can be started again."},
]

MESSAGES = [
    "Set up a small project: a git repo, a dev server, and somewhere to keep notes.",
    "I'm back after lunch. Is everything still there?",
    "Run the long test suite.",
]


def _notes_in(outcome_entries: list[Any]) -> dict[str, Any] | None:
    for e in reversed(outcome_entries):
        if e.kind == "tool_result" and isinstance(e.content, str) and '"token"' in e.content:
            start = e.content.rfind('{"token"')
            try:
                return json.loads(e.content[start:].splitlines()[0])
            except ValueError:
                return None
    return None


def run_demo(out: Console, *, model: str | None = None, as_json: bool = False) -> dict[str, Any]:
    from torpor.runtime.core import Runtime

    rt = Runtime(standby=1)  # a standby sandbox, set up while the session waits
    try:
        return _run_demo(rt, out, model=model, as_json=as_json)
    finally:
        rt.close()  # removes the standby, finishes background uploads


def _run_demo(rt: Any, out: Console, *, model: str | None, as_json: bool) -> dict[str, Any]:
    """Three turns of one session: a wait point, a resume into the same processes and
    memory, and a recovery after a worker is killed mid-call."""
    from torpor.cli.session_cmd import print_event

    say = (lambda *a, **k: None) if as_json else out.print
    if model is None:
        script = rt.home / "demo" / f"turns-{os.getpid()}-{int(time.time())}.jsonl"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("".join(json.dumps(t) + "\n" for t in TURNS))
        model = f"script:{script}"
    events: list[dict[str, Any]] | None = [] if as_json else None

    def on_event(ev: Any) -> None:
        if events is not None:
            events.append(ev.to_json())
        else:
            print_event(ev)

    s = rt.create_session(image="base", model=model,
                          system="You are a coding agent working in a Linux sandbox.")  # fmt: skip
    say(f"[bold]session {s.id}[/bold] (model {model})")
    first = _turn_to_a_wait_point(rt, s, say, on_event)
    time.sleep(1)
    second = _turn_resumed(s, first["notes"], say, on_event)
    third = _turn_after_a_killed_worker(rt, s, say, on_event)
    verify = rt.log.verify(s.id)
    say(f"log: {len(s.log())} entries, hash chain {'verifies' if verify else 'BROKEN'}")
    report: dict[str, Any] = {"turns": [first, second, third], "session": s.id,
                              "entries": len(s.log()), "chain_ok": bool(verify)}  # fmt: skip
    if events is not None:
        report["events"] = events
    if not (second["same_process"] and third["recovered"] and verify):
        raise RuntimeError("the demo did not show what it should (see above)")
    say("[bold green]demo finished[/bold green]")
    return report


def _turn_to_a_wait_point(rt: Any, s: Any, say: Callable[..., None],
                          on_event: Callable[[Any], None]) -> dict[str, Any]:  # fmt: skip
    say(f"\n[bold]turn 1[/bold] user: {MESSAGES[0]}")
    t1 = s.send(MESSAGES[0], on_event=on_event)
    notes1 = _notes_in(s.log())
    running = [i.name for i in rt.engine.list() if i.name == f"s-{s.id}"]
    say(f"[bold]agent:[/bold] {t1.text}")
    say(f"[green]wait point:[/green] snapshot {t1.snapshot}: {t1.snapshot_bytes / 1e6:.1f} MB "
        f"in {t1.snapshot_ms:.0f} ms (compressed into the store in the background); sandbox "
        f"running now: {running or 'none'} (no process, no memory)")  # fmt: skip
    return {"snapshot": t1.snapshot, "bytes": t1.snapshot_bytes,
            "snapshot_ms": t1.snapshot_ms, "notes": notes1}  # fmt: skip


def _turn_resumed(s: Any, notes1: dict[str, Any] | None, say: Callable[..., None],
                  on_event: Callable[[Any], None]) -> dict[str, Any]:  # fmt: skip
    say(f"\n[bold]turn 2[/bold] user: {MESSAGES[1]}")
    t2 = s.send(MESSAGES[1], on_event=on_event)
    notes2 = _notes_in(s.log())
    same = bool(notes1 and notes2 and notes1["token"] == notes2["token"]
                and notes2["notes"] == notes1["notes"] and notes2["requests"] > notes1["requests"])
    say(f"[bold]agent:[/bold] {t2.text}")
    say(f"[green]restored[/green] in {t2.restore_ms or 0:.0f} ms; notes process: token "
        f"{(notes2 or {}).get('token')} (turn 1: {(notes1 or {}).get('token')}), notes "
        f"{(notes2 or {}).get('notes')}, request #{(notes2 or {}).get('requests')} -> "
        + ("[green]same process, same memory[/green]" if same else "[red]NOT the same[/red]"))
    return {"restore_ms": t2.restore_ms, "snapshot": t2.snapshot, "notes": notes2,
            "same_process": same}  # fmt: skip


def _turn_after_a_killed_worker(rt: Any, s: Any, say: Callable[..., None],
                                on_event: Callable[[Any], None]) -> dict[str, Any]:  # fmt: skip
    from torpor.runtime.worker import Worker

    say(f"\n[bold]turn 3[/bold] user: {MESSAGES[2]}  (in a separate worker process)")
    s.post(MESSAGES[2])
    worker = subprocess.Popen(
        [sys.executable, "-m", "torpor.cli.main", "worker", "--session", s.id,
         "--lease-ttl", "3"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        if any(e.kind == "tool_call" and "sleep 60" in (e.arguments or "") for e in s.log()):
            break
        if worker.poll() is not None:
            raise RuntimeError("the demo's worker exited before starting the long call")
        time.sleep(0.1)
    time.sleep(1.0)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed_at = time.time()
    say(f"[red]killed worker pid {worker.pid} with SIGKILL[/red] in the middle of the long call")
    while (rt.db.get(s.id).lease_until or 0) >= time.time():  # its lease runs out (3 s)
        time.sleep(0.1)
    t3 = Worker(rt, lease_ttl=3).run_session(s.id, on_event=on_event)
    notes3 = _notes_in(s.log())
    say(f"[bold]agent:[/bold] {t3.text}")
    say(f"[green]recovered[/green] {time.time() - killed_at:.1f} s after the kill (3 s of it "
        f"waiting out the dead worker's lease); restored in {t3.restore_ms or 0:.0f} ms; notes "
        f"process token {(notes3 or {}).get('token')}")  # fmt: skip
    return {"recovered": t3.recovered, "restore_ms": t3.restore_ms, "notes": notes3}

