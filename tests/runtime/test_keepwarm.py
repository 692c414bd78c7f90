"""The keep-warm janitor's life: it runs while a session is kept warm and ends when none
is. Pure: no root, no sandbox, no database (nothing here is cooled)."""

from __future__ import annotations

import threading
import time

from torpor.runtime.keepwarm import KeepWarm


def janitors() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "torpor-warm" and t.is_alive()]


def test_the_janitor_ends_when_no_session_is_warm_and_comes_back_with_the_next():
    before = len(janitors())
    warm = KeepWarm(None, "w1", 15.0, lambda sid: threading.Lock())  # type: ignore[arg-type]
    warm.keep("ses-a", time.time() + 3600)
    assert warm.janitor_running() and len(janitors()) == before + 1
    assert warm.take("ses-a") and not warm.take("ses-a")
    deadline = time.monotonic() + 5
    while warm.janitor_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not warm.janitor_running() and len(janitors()) == before
    warm.keep("ses-b", time.time() + 3600)  # kept warm again: a janitor again
    assert warm.janitor_running() and warm.sessions() == ["ses-b"]
    warm.take("ses-b")
