"""`--log-level` of `torpor serve` and `torpor worker`: torpor's loggers go to stderr at
the level asked for, a bad level is refused with the ones that exist. Pure: no root."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import typer

from torpor.cli.lifecycle import setup_logging


def test_torpor_loggers_go_to_stderr_at_the_level_asked(capsys: pytest.CaptureFixture[str]):
    setup_logging("info")
    logging.getLogger("torpor.runtime").info("turn of %s took %d ms", "ses-1", 12)
    logging.getLogger("torpor.sandbox.gvisor").debug("not shown at info")
    setup_logging("debug")
    logging.getLogger("torpor.sandbox.gvisor").debug("shown at debug")
    err = capsys.readouterr().err
    assert "torpor INFO torpor.runtime: turn of ses-1 took 12 ms" in err
    assert "not shown at info" not in err and "shown at debug" in err
    assert err.count("turn of ses-1") == 1  # one handler, however often it is set up


def test_a_bad_level_is_refused_with_the_ones_that_exist():
    with pytest.raises(typer.BadParameter, match="debug, info, warning, error"):
        setup_logging("loud")
    r = subprocess.run([sys.executable, "-m", "torpor.cli.main", "worker", "--log-level",
                        "loud"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "--log-level" in r.stderr, r.stderr
