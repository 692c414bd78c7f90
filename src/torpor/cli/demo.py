"""`torpor demo`: a sandbox that sleeps and wakes, shown end to end.

Starts a sandbox, runs a process that keeps a counter and a random token in memory, writes
a file, checkpoints the sandbox (it then uses no CPU or memory), restores it and shows the
same process counting on from where it was, then forks the checkpoint into a second,
independent sandbox. The agent-session demo (scripted model, context log) builds on this.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from rich.console import Console

from torpor.sandbox.engine import SandboxError
from torpor.sandbox.handle import Checkpoint, Sandbox

log = logging.getLogger(__name__)

COUNTER = (
    "import os, time\n"
    "token = os.urandom(4).hex()\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    with open('/tmp/counter.tmp', 'w') as f: f.write(f'{token} {n}')\n"
    "    os.replace('/tmp/counter.tmp', '/tmp/counter')\n"
    "    time.sleep(0.05)\n"
)


def _counter(sb: Sandbox) -> tuple[str, int]:
    for _ in range(100):
        try:
            token, n = sb.files.read_text("/tmp/counter").split()
            return token, int(n)
        except (SandboxError, ValueError):  # not written yet
            time.sleep(0.05)
    raise RuntimeError("the counter process never wrote its counter")


def sandbox_round_trip(eng: Any, image: str, out: Console) -> None:
    suffix = secrets.token_hex(3)
    name, fork_name = f"demo-{suffix}", f"demo-{suffix}-fork"
    made: list[Sandbox] = []
    ck: Checkpoint | None = None
    try:
        t0 = time.monotonic()
        sb = Sandbox.create(image, engine=eng, name=name)
        made.append(sb)
        out.print(f"[bold]1.[/bold] started sandbox {name} from {image} "
                  f"in {(time.monotonic() - t0) * 1000:.0f} ms")
        sb.spawn(["python3", "-c", COUNTER])
        sb.files.write("/root/notes.txt", "written before the checkpoint\n")
        time.sleep(0.5)
        token, before = _counter(sb)
        out.print(f"[bold]2.[/bold] a process in it counts in memory: token {token}, n = {before}")

        ck = sb.checkpoint("demo", leave_running=False)
        out.print(
            f"[bold]3.[/bold] checkpoint {ck.id}: {ck.size / 1e6:.1f} MB on disk, "
            f"{ck.info.seconds * 1000:.0f} ms; sandbox state now: {sb.state} "
            "(no process, no memory)"
        )
        time.sleep(1.0)

        t0 = time.monotonic()
        sb.start(checkpoint=ck)
        restore_ms = (time.monotonic() - t0) * 1000
        token2, after = _counter(sb)
        notes = sb.files.read_text("/root/notes.txt").strip()
        out.print(f"[bold]4.[/bold] restored in {restore_ms:.0f} ms: token {token2}, n = {after}; "
                  f"notes.txt: {notes!r}")
        if token2 != token or after < before:
            raise RuntimeError("the process did not survive the checkpoint")
        out.print(
            "   [green]same process, same memory: it counted on instead of restarting[/green]"
        )

        t0 = time.monotonic()
        fork = ck.restore(name=fork_name)
        made.append(fork)
        fork.files.write("/root/only-in-fork.txt", "fork\n")
        in_original = sb.files.exists("/root/only-in-fork.txt")
        out.print(f"[bold]5.[/bold] forked the checkpoint as {fork_name} "
                  f"in {(time.monotonic() - t0) * 1000:.0f} ms; "
                  f"a file written in the fork is {'ALSO' if in_original else 'not'} "
                  "in the original")
        out.print("[bold green]demo finished[/bold green]")
    finally:
        for box in reversed(made):
            try:
                box.kill()
            except SandboxError as e:  # the demo's result stands; say what was left
                log.warning("demo: cannot remove sandbox %s: %s", box.ref, e)
        if ck is not None:
            try:
                ck.remove()
            except SandboxError as e:
                log.warning("demo: cannot remove checkpoint %s: %s", ck.id, e)
