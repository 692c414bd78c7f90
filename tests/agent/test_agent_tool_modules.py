"""Tool modules: custom tools that every worker imports (`load_tools`: built-in tools, the
modules named by --tools or TORPOR_TOOLS, the torpor.tools entry points), and the clear
one-line errors for a module that cannot be imported or provides no tools."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torpor.agent.tools import (
    ENTRY_POINT_GROUP,
    TOOLS_ENV,
    ToolModuleError,
    ToolRegistry,
    UnknownTool,
    builtin_tools,
    load_tools,
    parse_tool_modules,
)

BUILTINS = [t.name for t in builtin_tools()]
# A module in the documented form: TOOLS is a ToolRegistry filled with @TOOLS.register.
GREET = """
    from torpor.agent.tools import ToolRegistry, Workspace

    TOOLS = ToolRegistry([])

    @TOOLS.register(safe_to_rerun=True)
    def greet(workspace: Workspace, name: str, times: int = 1) -> str:
        '''Greet someone.'''
        return " ".join([f"hello {name}"] * times)
"""
# ... and the other: a plain list of functions and Tool objects.
LISTED = """
    from torpor.agent.tools import Tool

    def shout(workspace, text: str) -> str:
        '''Upper-case the text.'''
        return text.upper()

    TOOLS = [shout, Tool("count", "Count characters.", {"type": "object"},
                         lambda ws, **kw: str(len(kw.get("text", ""))))]
"""

Write = Callable[[str, str], str]


@pytest.fixture()
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Write]:
    """Write a module into a directory on sys.path; returns its (unique) name."""
    root = tmp_path / "toolmods"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))  # also invalidates the import caches
    monkeypatch.delenv(TOOLS_ENV, raising=False)
    names: list[str] = []

    def write(stem: str, source: str) -> str:
        name = f"{stem}_{secrets.token_hex(3)}"
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def entry_points_dist(root: Path, lines: list[str], dist: str = "acme_tools") -> None:
    """A minimal installed distribution (a dist-info directory) with torpor.tools entry
    points, in a directory on sys.path: what `pip install` of a plugin leaves behind."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")


def test_load_tools_from_modules(write_module: Write) -> None:
    greet, listed = write_module("greet", GREET), write_module("listed", LISTED)
    reg = load_tools(f"{greet}, {listed}")
    assert reg.names() == [*BUILTINS, "greet", "shout", "count"]
    assert reg.get("greet").safe_to_rerun and reg.get("greet").description == "Greet someone."
    assert reg.get("greet").parameters["required"] == ["name"]
    # host-side tools: they run in the worker's process (no sandbox needed for these)
    assert reg.run("greet", {"name": "ada", "times": 2}, None).content == "hello ada hello ada"
    assert reg.run("shout", {"text": "hi"}, None).content == "HI"
    assert reg.run("count", {"text": "four"}, None).content == "4"
    assert load_tools([greet, greet]).names() == [*BUILTINS, "greet"]  # named twice: once
    assert load_tools([]).names() == BUILTINS
    assert parse_tool_modules(" a.b ,, c ") == ["a.b", "c"] and parse_tool_modules(None) == []


def test_a_module_that_cannot_be_imported_is_one_clear_line(write_module: Write) -> None:
    cases = {
        "no_such_module_here": "cannot be imported: no module named 'no_such_module_here' in "
        "this process (check the name, and that its package is installed or its directory "
        "is on PYTHONPATH)",
        "no_such_pkg.sub": "no module named 'no_such_pkg'",
        "tools/mine.py": "is not a module name: write pkg.module",
        write_module(
            "raises", "import os\nraise RuntimeError('no config here')\n"
        ): "failed to import: RuntimeError: no config here (at ",
        write_module("syntax", "def broken(:\n"): "failed to import: SyntaxError: ",
        write_module(
            "dep", "import surely_not_installed_dep\n"
        ): "failed to import: ModuleNotFoundError: No module named 'surely_not_installed_dep'",
    }
    for name, says in cases.items():
        with pytest.raises(ToolModuleError) as err:
            load_tools([name])
        msg = str(err.value)
        assert msg.startswith(f"tool module {name!r}") and says in msg, msg
        assert "\n" not in msg
    with pytest.raises(ToolModuleError, match=r"raises_\w+\.py:2\)"):  # file and line
        load_tools([next(n for n in cases if n.startswith("raises_"))])


def test_a_module_without_tools_is_refused(write_module: Write) -> None:
    cases = {
        write_module("none", "X = 1\n"): "provides no tools: define TOOLS at module level, "
        "a list of Tool objects or functions (or a ToolRegistry)",
        write_module("empty", "TOOLS = []\n"): "(its TOOLS) provides no tools (it is empty)",
        write_module("text", "TOOLS = 'greet'\n"): "expected a list of Tool objects or "
        "functions, not str",
        write_module("junk", "TOOLS = [42]\n"): "42 is neither a Tool nor a function",
        write_module("hints", "def odd(ws, x: complex) -> str:\n    return ''\nTOOLS = [odd]\n"):
        "cannot derive a JSON Schema for parameter 'x' of odd",
        write_module(
            "schema", "from torpor.agent.tools import Tool\n"
            "TOOLS = [Tool('bad', 'd', {'type': 'nonsense'}, lambda ws: '')]\n"
        ): "tool 'bad': invalid JSON Schema",
    }  # fmt: skip
    for name, says in cases.items():
        with pytest.raises(ToolModuleError) as err:
            load_tools(name)
        assert str(err.value).startswith(f"tool module {name!r}") and says in str(err.value)


def test_two_modules_with_one_tool_name_and_a_builtin_replaced(write_module: Write) -> None:
    a = write_module("a", "def twin(ws) -> str:\n    return 'a'\nTOOLS = [twin]\n")
    b = write_module("b", "def twin(ws) -> str:\n    return 'b'\nTOOLS = [twin]\n")
    with pytest.raises(ToolModuleError, match=rf"tool module '{b}' defines the tool 'twin', "
                       rf"and so does tool module '{a}': rename one of them"):  # fmt: skip
        load_tools([a, b])
    shell = write_module("shell", "def shell(ws, command: str) -> str:\n"
                                  "    return 'mine'\nTOOLS = [shell]\n")  # fmt: skip
    reg = load_tools([shell])
    assert reg.names() == BUILTINS and reg.run("shell", {"command": "x"}, None).content == "mine"


def test_torpor_tools_env_is_the_default(
    write_module: Write, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    greet, listed = write_module("greet", GREET), write_module("listed", LISTED)
    monkeypatch.setenv(TOOLS_ENV, f"{greet},{listed}")
    assert "greet" in load_tools() and "shout" in load_tools()
    assert load_tools([]).names() == BUILTINS  # an explicit list (--tools) replaces it
    assert load_tools(listed).names() == [*BUILTINS, "shout", "count"]
    # the Python front door loads them too, so it agrees with the workers
    from torpor.runtime.core import Runtime

    rt = Runtime(db=f"sqlite:///{tmp_path / 'rt.db'}", home=tmp_path)
    try:
        assert rt.tools.names() == [*BUILTINS, "greet", "shout", "count"]
    finally:
        rt.close()
    rt = Runtime(db=f"sqlite:///{tmp_path / 'rt.db'}", home=tmp_path, tools=ToolRegistry([]))
    try:
        assert rt.tools.names() == []  # an empty registry given is kept as it is
    finally:
        rt.close()
    monkeypatch.setenv(TOOLS_ENV, "no_such_module_here")
    with pytest.raises(ToolModuleError, match="tool module 'no_such_module_here' "
                       rf"\(from {TOOLS_ENV}\) cannot be imported"):  # fmt: skip
        load_tools()


def test_entry_points_are_loaded_by_default(
    write_module: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    greet, listed = write_module("greet", GREET), write_module("listed", LISTED)
    entry_points_dist(tmp_path / "toolmods", [f"greetings = {greet}",
                                              f"shouting = {listed}:TOOLS"])  # fmt: skip
    reg = load_tools()
    assert reg.names() == [*BUILTINS, "greet", "shout", "count"]
    assert reg.run("greet", {"name": "ep"}, None).content == "hello ep"
    assert load_tools([greet]).names() == reg.names()  # the same module by two roads: once
    assert load_tools([], entry_points=False).names() == BUILTINS

    broken = tmp_path / "broken"
    broken.mkdir()
    monkeypatch.syspath_prepend(str(broken))
    entry_points_dist(broken, ["lost = gone_module_xyz"], dist="broken_tools")
    with pytest.raises(ToolModuleError) as err:
        load_tools()
    assert str(err.value).startswith(
        f"entry point 'lost = gone_module_xyz' ({ENTRY_POINT_GROUP}, of broken_tools) failed "
        "to load: ModuleNotFoundError: No module named 'gone_module_xyz'"
    )


def test_an_unknown_tool_says_how_to_load_it() -> None:
    with pytest.raises(UnknownTool) as err:
        load_tools([]).get("weather")
    msg = str(err.value)  # not KeyError's repr of its argument
    assert msg.startswith("unknown tool 'weather'; registered tools: shell, read_file")
    assert "--tools pkg.module" in msg and "TORPOR_TOOLS=pkg.module" in msg
    assert f"{ENTRY_POINT_GROUP} entry point" in msg
    assert isinstance(err.value, KeyError)


def test_the_cli_refuses_a_bad_tool_module_in_one_line(tmp_path: Path, write_module) -> None:
    empty = write_module("empty", "TOOLS = []\n")
    env = {k: v for k, v in os.environ.items() if k != TOOLS_ENV}
    env.update(TORPOR_HOME=str(tmp_path / "home"), PYTHONPATH=str(tmp_path / "toolmods"))
    torpor = [sys.executable, "-m", "torpor.cli.main"]
    runs = [
        ([*torpor, "worker", "--once", "--tools", "no_such_module_here"], env,
         "tool module 'no_such_module_here' cannot be imported"),
        ([*torpor, "serve", "--port", "0", "--tools", f"{empty}"], env,
         f"tool module '{empty}' (its TOOLS) provides no tools"),
        ([*torpor, "worker", "--once"], {**env, TOOLS_ENV: "no_such_module_here"},
         f"tool module 'no_such_module_here' (from {TOOLS_ENV}) cannot be imported"),
    ]  # fmt: skip
    for argv, run_env, says in runs:
        r = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r
        assert r.stderr.startswith("torpor: error: ") and says in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
