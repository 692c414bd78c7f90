"""The retention schedule (torpor.snapshots.retention): which snapshots of a series stay.
Pure: no store, no sandbox, no root."""

from __future__ import annotations

import random

import pytest

from torpor.snapshots.retention import DEFAULT_SPEC, Retention, RetentionError, select

H, D = 3600.0, 86400.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % D  # midnight UTC


def series(times: list[float]) -> list[tuple[str, float]]:
    return [(f"s{i}", t) for i, t in enumerate(times)]


def test_parse_default_all_and_custom() -> None:
    assert Retention.parse(None) == Retention.parse("") == Retention.parse(DEFAULT_SPEC)
    assert Retention.parse(DEFAULT_SPEC) == Retention(last=3, hourly=24, daily=7)
    assert Retention.parse("all").keep_all and Retention.parse("all").most is None
    assert Retention.parse("last=5") == Retention(last=5, hourly=0, daily=0)
    assert Retention.parse(" daily=2 , last=1 ") == Retention(last=1, hourly=0, daily=2)
    assert Retention.parse("last=3,hourly=24,daily=7").most == 34
    assert Retention.parse(Retention(last=2, hourly=1, daily=0).spec) == Retention(2, 1, 0)


@pytest.mark.parametrize("bad", ["last=0", "hourly=3", "last=-1", "last=x", "weekly=2",
                                 "last", "last=3;daily=2", "everything"])
def test_bad_specs_are_refused_with_the_reason(bad: str) -> None:
    with pytest.raises(RetentionError, match="retention"):
        Retention.parse(bad)


def test_a_burst_within_one_hour_keeps_the_newest_three() -> None:
    snaps = series([T0 + 10 * i for i in range(50)])  # 50 wait points in 8 minutes
    assert select(snaps, Retention.parse(DEFAULT_SPEC)) == {"s47", "s48", "s49"}


def test_keep_all_keeps_everything() -> None:
    snaps = series([T0 + i for i in range(100)])
    assert select(snaps, Retention(keep_all=True)) == {s for s, _ in snaps}


def test_hourly_keeps_the_newest_of_each_hour_with_a_snapshot() -> None:
    # 4 snapshots per hour for 30 hours
    snaps = series([T0 + h * H + m * 900 for h in range(30) for m in range(4)])
    kept = select(snaps, Retention(last=3, hourly=24, daily=0))
    newest = [f"s{4 * h + 3}" for h in range(30)]  # the last of each hour
    assert kept == {"s119", "s118", "s117"} | set(newest[-25:-1])
    assert len(kept) == 3 + 24


def test_counts_periods_that_have_snapshots_not_clock_periods() -> None:
    # a session busy on day 0, idle for 20 days, busy again for an hour
    snaps = series([T0 + i * 600 for i in range(12)] + [T0 + 20 * D + i * 60 for i in range(5)])
    kept = select(snaps, Retention(last=3, hourly=24, daily=7))
    # the new burst's newest three; hour 0 of day 20 is used up by them; day 0's two hours
    # (newest of each), and day 0 itself whose newest is kept already
    assert kept == {"s16", "s15", "s14", "s11", "s5"}


def test_daily_reaches_back_after_hourly_is_used_up() -> None:
    snaps = series([T0 + d * D + h * H for d in range(10) for h in range(0, 24, 6)])
    kept = select(snaps, Retention(last=1, hourly=2, daily=7))
    by_time = dict(snaps)
    days = {int(by_time[s] // D) for s in kept}
    assert len(kept) == 1 + 2 + 7
    assert days == {int(T0 // D) + d for d in range(2, 10)}  # day 9's hours, then days 2-8


def test_equal_times_keep_the_later_listed() -> None:
    snaps = [("a", T0), ("b", T0), ("c", T0)]
    assert select(snaps, Retention(last=1, hourly=0, daily=0)) == {"c"}


@pytest.mark.parametrize("seed", range(20))
def test_bounded_newest_always_kept_and_stable(seed: int) -> None:
    rng = random.Random(seed)
    t, times = T0, []
    for _ in range(rng.randint(1, 400)):
        t += rng.choice([5, 60, 900, 4 * H, 2 * D])
        times.append(t)
    snaps = series(times)
    r = Retention.parse(DEFAULT_SPEC)
    kept = select(snaps, r)
    assert snaps[-1][0] in kept  # what the session resumes from
    assert len(kept) <= r.most  # type: ignore[operator]
    assert {s for s, _ in snaps[-3:]} <= kept
    # applying it again to what it kept deletes nothing more (the wait point applies it
    # to the kept list plus the new snapshot, over and over)
    again = [p for p in snaps if p[0] in kept]
    assert select(again, r) == kept


@pytest.mark.parametrize("seed", range(20))
def test_applied_at_each_wait_point_keeps_what_applying_it_once_keeps(seed: int) -> None:
    rng = random.Random(seed)
    t, snaps = T0, []
    for i in range(rng.randint(1, 300)):
        t += rng.choice([5, 60, 900, 4 * H, 2 * D])
        snaps.append((f"s{i}", t))
    r = Retention.parse(DEFAULT_SPEC)
    listed: list[tuple[str, float]] = []
    for snap in snaps:  # what the wait point does: the kept list plus the new one
        listed = [p for p in [*listed, snap] if p[0] in select([*listed, snap], r)]
    assert {s for s, _ in listed} == select(snaps, r)
