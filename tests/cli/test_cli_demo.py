"""The README's first command ends in `torpor demo`: run it end to end, as a user would,
on a home of its own (the embedded defaults: SQLite, a local snapshot directory, the base
image, the scripted model). It must show a wait point that leaves no sandbox running, a
resume into the same processes and memory, and a recovery after a SIGKILLed worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import remove_home
from torpor.sandbox.images import ImageStore

pytestmark = pytest.mark.runsc


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root and runsc")
def test_torpor_demo_runs_end_to_end(tmp_path: Path):
    home = tmp_path / "home"
    env = dict(os.environ, TORPOR_HOME=str(home), TORPOR_IMAGES=str(ImageStore().root))
    try:
        r = subprocess.run([sys.executable, "-m", "torpor.cli.main", "demo", "--json"],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        report = json.loads(r.stdout)
        first, second, third = report["turns"]
        assert first["snapshot"] and first["bytes"] > 0 and first["notes"]["notes"]
        assert second["same_process"] and second["notes"]["token"] == first["notes"]["token"]
        assert third["recovered"] and report["chain_ok"]
        assert any(e["type"] == "recovery" for e in report["events"])
        ps = subprocess.run([sys.executable, "-m", "torpor.cli.main", "ps", "-a", "--format",
                             "json"], env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
        assert json.loads(ps.stdout) == [], ps.stdout  # nothing left running or stopped
    finally:
        remove_home(home)
