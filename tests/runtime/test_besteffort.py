"""A best-effort step that fails is logged and the caller goes on; nothing else is swallowed."""

from __future__ import annotations

import logging

import pytest

from torpor.runtime.besteffort import best_effort


def test_a_failed_step_is_logged_and_the_caller_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    reached = []
    with caplog.at_level(logging.WARNING, logger="torpor.runtime"):
        with best_effort("releasing the lease of session %s", "s-1"):
            raise RuntimeError("database is locked")
        reached.append(True)
    assert reached == [True]
    assert "releasing the lease of session s-1 failed: RuntimeError: database is locked" in (
        caplog.text)


def test_a_step_that_succeeds_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="torpor.runtime"), best_effort("heartbeat"):
        pass
    assert caplog.text == ""


def test_the_level_is_the_callers_choice(caplog: pytest.LogCaptureFixture) -> None:
    quiet = best_effort("reading ahead", level=logging.DEBUG)
    with caplog.at_level(logging.INFO, logger="torpor.runtime"), quiet:
        raise OSError("gone")
    assert caplog.text == ""  # below INFO: not shown


def test_an_interrupt_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt), best_effort("anything"):
        raise KeyboardInterrupt
