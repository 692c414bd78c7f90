"""docs/integrations.md's OpenAI Agents SDK and MCP sections: the TorporSession example runs
as written (its model a fake Responses API server, through the SDK's own OPENAI_BASE_URL)
and prints what its comments say; the other examples compile (they need a torpor serve
and a model: tests/integrations/test_openai_agents_sandbox.py and test_mcp_http.py run
the same calls)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.agent.fakellm import RESPONSES_PATH, FakeLLM

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "integrations.md"


def section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def examples(title: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(title), re.DOTALL)


def test_the_session_example_prints_what_it_says(tmp_path: Path):
    code = examples("OpenAI Agents SDK")[0]
    (tmp_path / "example.py").write_text(code)
    with FakeLLM() as fake:
        fake.reply(text="San Francisco.")
        fake.reply(text="California.")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OPENAI_API_KEY": "test",
               "OPENAI_BASE_URL": fake.openai_url, "OPENAI_AGENTS_DISABLE_TRACING": "1"}
        res = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-4000:]
        assert res.stdout.splitlines() == ["California.", "4", "3"]
        second = fake.bodies(RESPONSES_PATH)[1]["input"]
        assert len(second) == 3  # the first question and answer were sent again
    assert (tmp_path / "memory.db").exists()


def test_the_other_examples_compile():
    found = examples("OpenAI Agents SDK")[1:] + examples("MCP")
    assert len(found) == 2
    for code in found:
        compile(code, "example.py", "exec")
