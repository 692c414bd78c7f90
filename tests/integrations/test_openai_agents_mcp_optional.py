"""The OpenAI Agents SDK and the mcp SDK are optional extras: every torpor module but their
own imports in a process where neither can be imported (the API then has no /mcp), and
their modules then say how to get them. Runs in a subprocess whose import system refuses
agents, mcp and mcp_types."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("agents", "mcp", "mcp_types"):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Blocked())
    import torpor
    skip = ("torpor.integrations.openai_agents", "torpor.mcp")
    names = [m.name for m in pkgutil.walk_packages(torpor.__path__, "torpor.")
             if not m.name.startswith(skip)]
    for name in names:
        importlib.import_module(name)
    for name in torpor.__all__:
        getattr(torpor, name)
    from torpor.api import mcp_mount
    print("mcp route:", mcp_mount.TransportSecuritySettings is not None)
    for name in skip:
        try:
            importlib.import_module(name)
        except ImportError as e:
            print("refused:", e)
    print("imported", len(names))
""")


def test_core_imports_without_the_agents_and_mcp_sdks():
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "mcp route: False" in out
    assert "refused: torpor.integrations.openai_agents needs the OpenAI Agents SDK: pip " \
           "install 'torpor[openai-agents]'" in out
    assert "refused: torpor's MCP server needs the mcp SDK: pip install 'torpor[mcp]'" in out
    assert int(out.split("imported ")[1]) > 60


def test_torpor_mcp_says_how_to_get_the_sdk_when_it_is_missing():
    code = ("import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, n, p=None, t=None):\n"
            "        if n.split('.')[0] in ('mcp', 'mcp_types'): raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\n"
            "sys.argv = ['torpor', 'mcp', '--sandbox', 'x']\n"
            "from torpor.cli.main import main; main()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0 and "pip install 'torpor[mcp]'" in res.stderr, res.stderr
