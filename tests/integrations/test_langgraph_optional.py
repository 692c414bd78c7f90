"""LangGraph is an optional extra: every torpor module but the integration imports in a
process where LangGraph cannot be imported, and the integration then says how to get it.
Runs in a subprocess whose import system refuses langgraph and langchain_core."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, sys

    class NoLangGraph(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("langgraph", "langchain_core"):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, NoLangGraph())
    import torpor
    names = [m.name for m in pkgutil.walk_packages(torpor.__path__, "torpor.")
             if not m.name.startswith("torpor.integrations.langgraph")]
    for name in names:
        importlib.import_module(name)
    for name in torpor.__all__:
        getattr(torpor, name)
    try:
        import torpor.integrations.langgraph
    except ImportError as e:
        print("refused:", e)
    print("imported", len(names))
""")


def test_core_imports_without_langgraph():
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "refused: torpor.integrations.langgraph needs LangGraph: pip install " \
           "'torpor[langgraph]'" in res.stdout
    assert int(res.stdout.split("imported ")[1]) > 60  # it did import the modules
