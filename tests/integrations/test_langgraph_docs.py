"""docs/integrations.md runs as written: its LangGraph examples are run (the checkpointer
one anywhere; the sandbox one, two processes on the real runsc, when there is one), and
every `torpor.*` name it mentions imports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import remove_home
from tests.docnames import resolve, torpor_names
from torpor.sandbox.images import ImageStore

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "integrations.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)


def run(code: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    (cwd / "example.py").write_text(code)
    res = subprocess.run([sys.executable, "example.py", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=600, env={**os.environ, **(env or {}),
                                                      "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout


def test_the_checkpointer_example_prints_what_it_says(tmp_path: Path):
    code = examples()[0]
    said = [c.split("#")[1].split(":")[0].strip()
            for c in code.splitlines() if c.strip().startswith("print(")]
    assert run(code, tmp_path).splitlines() == [s.split(" checkpoints")[0] for s in said]
    assert (tmp_path / "graph.db").exists()


@pytest.mark.runsc
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runsc") is None,
                    reason="needs root and runsc (run scripts/setup.sh)")
def test_the_sandbox_example_sleeps_and_wakes_in_another_process(tmp_path: Path):
    home = Path(tempfile.mkdtemp(prefix="torpor-lg-docs-"))
    env = {"TORPOR_HOME": str(home), "TORPOR_IMAGES": str(ImageStore().root)}
    try:
        code = examples()[1]
        first = run(code, tmp_path, "start", env=env)
        assert "waiting for: ('human',)" in first and "'id': None" in first
        assert not list((home / "sandboxes").glob("*"))  # removed while it waits
        before = int(re.findall(r"stdout:\\n(\d+)", first)[-1])
        second = run(code, tmp_path, "resume", "yes", env=env)
        after = int(re.findall(r"stdout:\\n(\d+)", second)[-1])
        assert "ai: 'Done.'" in second and "waiting for: ()" in second
        assert after > before  # the same counter went on: its process was restored
    finally:
        remove_home(home)


def test_every_torpor_name_the_page_mentions_imports():
    names = torpor_names(PAGE.read_text())
    assert "torpor.integrations.langgraph" in names and len(names) > 5
    for dotted in sorted(names):
        resolve(dotted)
