"""`torpor demo`: a sandbox that sleeps and wakes, shown end to end.

Starts a sandbox, runs a process that keeps a counter and a random token in memory, writes
a file, checkpoints the sandbox (it then uses no CPU or memory), restores it and shows the
same process counting on from where it was, then forks the checkpoint into a second,
independent sandbox. The agent-session demo (scripted model, context log) builds on this.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import Any

from rich.console import Console

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


def _counter(eng: Any, name: str) -> tuple[str, int]:
    for _ in range(100):
        try:
            token, n = eng.read_file(name, "/tmp/counter").decode().split()
            return token, int(n)
        except Exception:  # noqa: BLE001 - not written yet
            time.sleep(0.05)
    raise RuntimeError("the counter process never wrote its counter")


def sandbox_round_trip(eng: Any, image: str, out: Console) -> None:
    from torpor.sandbox.engine import SandboxSpec

    suffix = secrets.token_hex(3)
    name, fork = f"demo-{suffix}", f"demo-{suffix}-fork"
    ck_id = None
    try:
        t0 = time.monotonic()
        eng.run(SandboxSpec(image=image), name=name)
        out.print(f"[bold]1.[/bold] started sandbox {name} from {image} "
                  f"in {(time.monotonic() - t0) * 1000:.0f} ms")
        eng.spawn(name, ["python3", "-c", COUNTER])
        eng.write_file(name, "/root/notes.txt", b"written before the checkpoint\n")
        time.sleep(0.5)
        token, before = _counter(eng, name)
        out.print(f"[bold]2.[/bold] a process in it counts in memory: token {token}, n = {before}")

        ck = eng.checkpoint(name, "demo")
        ck_id = ck.id
        out.print(
            f"[bold]3.[/bold] checkpoint {ck.id}: {ck.size / 1e6:.1f} MB on disk, "
            f"{ck.seconds * 1000:.0f} ms; sandbox state now: {eng.inspect(name).state} "
            "(no process, no memory)"
        )
        time.sleep(1.0)

        t0 = time.monotonic()
        eng.start(name, checkpoint=ck.id)
        restore_ms = (time.monotonic() - t0) * 1000
        token2, after = _counter(eng, name)
        notes = eng.read_file(name, "/root/notes.txt").decode().strip()
        out.print(f"[bold]4.[/bold] restored in {restore_ms:.0f} ms: token {token2}, n = {after}; "
                  f"notes.txt: {notes!r}")
        if token2 != token or after < before:
            raise RuntimeError("the process did not survive the checkpoint")
        out.print(
            "   [green]same process, same memory: it counted on instead of restarting[/green]"
        )

        t0 = time.monotonic()
        eng.restore(ck.id, name=fork)
        eng.write_file(fork, "/root/only-in-fork.txt", b"fork\n")
        in_original = eng.exec(name, ["test", "-e", "/root/only-in-fork.txt"]).exit_code == 0
        out.print(f"[bold]5.[/bold] forked the checkpoint as {fork} "
                  f"in {(time.monotonic() - t0) * 1000:.0f} ms; "
                  f"a file written in the fork is {'ALSO' if in_original else 'not'} "
                  "in the original")
        out.print("[bold green]demo finished[/bold green]")
    finally:
        for n in (fork, name):
            with contextlib.suppress(Exception):
                eng.remove(n, force=True)
        if ck_id:
            with contextlib.suppress(Exception):
                eng.checkpoints.delete(ck_id)
