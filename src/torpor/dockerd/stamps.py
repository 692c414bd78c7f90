"""When a container's console grew: `x-log-stamps` next to its record, lines of
"OFFSET UNIX-TIME" appended by the daemon's watcher every 0.1 s while the container runs,
which give its log lines their Docker timestamps (see logs.py)."""

from __future__ import annotations

import bisect
import time
from pathlib import Path

from torpor.sandbox.engine import Engine, SandboxNotFound

STAMPS = "x-log-stamps"



def last_stamp(engine: Engine, sid: str) -> int:
    """The console offset last stamped (0: none yet)."""
    try:
        stamps = Stamps(engine.sandbox_file(sid, STAMPS), 0)
    except SandboxNotFound:
        return 0
    return stamps.offsets[-1] if stamps.offsets else 0


def note_growth(engine: Engine, sid: str, seen: list[int]) -> None:
    """Record the console's new size with the time, if it grew since `seen[0]`."""
    try:
        size = engine.console_path(sid).stat().st_size
    except (OSError, SandboxNotFound):
        return
    if size > seen[0]:
        seen[0] = size
        try:
            with open(engine.sandbox_file(sid, STAMPS), "a") as f:
                f.write(f"{size} {time.time():.3f}\n")
        except (OSError, SandboxNotFound):
            pass


class Stamps:
    """When each byte of a console was seen (see the module's docstring)."""

    def __init__(self, path: Path | None, fallback: float) -> None:
        self.offsets: list[int] = []
        self.times: list[float] = []
        self.fallback = fallback
        try:
            text = path.read_text() if path is not None else ""
        except OSError:
            text = ""
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2:
                try:
                    off, t = int(parts[0]), float(parts[1])
                except ValueError:
                    continue  # a line torn by a crash
                self.offsets.append(off)
                self.times.append(t)

    def at(self, end: int) -> float:
        i = bisect.bisect_left(self.offsets, end)
        return self.times[i] if i < len(self.times) else self.fallback
