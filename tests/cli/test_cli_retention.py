"""`--retention` of `torpor serve` and `torpor worker`: a bad spec is refused before
anything starts, naming what a spec looks like. Pure: no root."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_bad_retention_is_refused_at_start(command: str) -> None:
    r = subprocess.run([sys.executable, "-m", "torpor.cli.main", command, "--retention",
                        "last=0,daily=2"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--retention" in r.stderr and "last must be >= 1" in r.stderr
