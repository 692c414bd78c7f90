"""Which of a series of snapshots to keep: the newest few, then a thinning schedule (one per
hour, then one per day), pure and deterministic.

A `Retention` is written as a spec, `last=3,hourly=24,daily=7` (the default), or `all`
(keep everything). `select` takes (id, time) pairs and returns the ids to keep; it only
decides, it deletes nothing, and it knows nothing of what else refers to a snapshot
(forks, pins, uploads in flight: the runtime adds those, runtime/retention.py).

The schedule counts periods that *have* a snapshot, not periods of the clock (as
`borg prune` and `restic forget` do): `hourly=24` keeps the newest snapshot of each of
the 24 most recent hours in which the session took one, however long ago they were. A
session is bursty (busy for an hour, idle for a week), so a clock window would first keep
too many snapshots and then drop every old one at once; counting periods bounds what is
kept (at most last + hourly + daily snapshots) whatever the session's pace, and the
decision depends only on the snapshots' own times, never on when it is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

DEFAULT_SPEC = "last=3,hourly=24,daily=7"
KEEP_ALL = "all"
_PERIODS: dict[str, Callable[[float], int]] = {
    "hourly": lambda t: int(t // 3600),
    "daily": lambda t: int(t // 86400),
}


class RetentionError(ValueError):
    """A retention spec that does not parse."""


@dataclass(frozen=True)
class Retention:
    """How many snapshots to keep: the newest `last`, plus the newest of each of the
    `hourly` most recent hours (UTC) and `daily` most recent days that have one not kept
    already. keep_all: every one (the other fields are ignored)."""

    last: int = 3
    hourly: int = 24
    daily: int = 7
    keep_all: bool = False

    @classmethod
    def parse(cls, spec: str | None) -> Retention:
        """`all`, or comma-separated `last=N`, `hourly=N`, `daily=N` (unnamed ones: 0);
        empty or None: the default."""
        spec = (spec or "").strip()
        if not spec:
            return cls.parse(DEFAULT_SPEC)
        if spec == KEEP_ALL:
            return cls(keep_all=True)
        counts = {"last": 0, "hourly": 0, "daily": 0}
        for part in spec.split(","):
            name, eq, value = part.strip().partition("=")
            if name not in counts or not eq:
                raise RetentionError(
                    f"retention {spec!r}: expected 'all' or last=N,hourly=N,daily=N "
                    f"(got {part.strip()!r})")  # fmt: skip
            try:
                counts[name] = int(value)
            except ValueError:
                raise RetentionError(f"retention {spec!r}: {name} must be a whole number") \
                    from None
            if counts[name] < 0:
                raise RetentionError(f"retention {spec!r}: {name} must be >= 0")
        if counts["last"] < 1:
            raise RetentionError(f"retention {spec!r}: last must be >= 1 (the newest "
                                 "snapshot is what a session resumes from)")  # fmt: skip
        return cls(**counts)

    @property
    def spec(self) -> str:
        if self.keep_all:
            return KEEP_ALL
        return f"last={self.last},hourly={self.hourly},daily={self.daily}"

    @property
    def most(self) -> int | None:
        """The most snapshots it keeps (None: no bound)."""
        return None if self.keep_all else self.last + self.hourly + self.daily


def select(snapshots: Sequence[tuple[str, float]], retention: Retention) -> set[str]:
    """The ids to keep of `snapshots` ((id, unix time) pairs, in any order; equal times
    are ordered as given, later ones newer)."""
    if retention.keep_all:
        return {sid for sid, _t in snapshots}
    newest_first = [sid for _i, (sid, _t) in sorted(
        enumerate(snapshots), key=lambda p: (p[1][1], p[0]), reverse=True)]  # fmt: skip
    when = dict(snapshots)
    keep = set(newest_first[:retention.last])
    for name, count in (("hourly", retention.hourly), ("daily", retention.daily)):
        keep |= _thin(newest_first, when, _PERIODS[name], count, keep)
    return keep


def _thin(newest_first: Iterable[str], when: dict[str, float],
          period: Callable[[float], int], count: int, kept: set[str]) -> set[str]:  # fmt: skip
    """The newest snapshot of each of the `count` most recent periods whose newest one is
    not kept already (a period whose newest is kept by an earlier rule uses up nothing)."""
    out: set[str] = set()
    last: int | None = None
    for sid in newest_first:
        if len(out) >= count:
            break
        p = period(when[sid])
        if p == last:
            continue
        last = p
        if sid not in kept:
            out.add(sid)
    return out
