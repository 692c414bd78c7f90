"""A LangGraph graph whose tools run in a torpor sandbox on the real runsc: one process
runs it to its human-in-the-loop interrupt (the sandbox checkpointed and removed) and
exits; a second process resumes it from the saver, and the sandbox it wakes holds what
the first one's held in memory (a background process and its random token)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from torpor.integrations.langgraph import SandboxMessagesState, SandboxTools
from torpor.sandbox import Sandbox
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.runsc, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runsc") is None,
    reason="needs root and runsc (run scripts/setup.sh)")]


def run_app(url: str, action: str, home: Path) -> dict[str, Any]:
    env = {**os.environ, "TORPOR_HOME": str(home), "TORPOR_IMAGES": str(ImageStore().root),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    res = subprocess.run([sys.executable, "-m", "tests.integrations.lg_sandbox_app", url,
                          "t1", action], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def holder_replies(state: dict[str, Any]) -> list[list[str]]:
    return [m[1].split("holder ")[1].split() for m in state["messages"]
            if m[0] == "tool" and "holder " in m[1]]


def test_a_second_process_resumes_the_graph_and_its_sandbox(home: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'graph.db'}"
    engine = GVisorEngine(home, images=ImageStore())

    first = run_app(url, "start", home)
    assert first["next"] == ["human"]
    assert first["interrupts"] == [{"question": "APPROVAL: the holder runs; may I go on?"}]
    [[token, count]] = holder_replies(first)
    assert count == "1"
    # the sandbox sleeps: checkpointed (its id in the graph's state), removed
    slept = first["sandbox"]
    assert slept["id"] is None and slept["checkpoint"]
    assert Sandbox.list(engine=engine, all=True) == []
    assert slept["checkpoint"] in {c["id"] for c in engine.list_checkpoints()}

    second = run_app(url, "resume", home)  # another process, from the saver
    assert second["next"] == [] and second["messages"][-1] == ["ai", "Done."]
    assert ["human", "Yes, go on."] in second["messages"]
    # the same background process, with its token and its count, in memory
    assert holder_replies(second) == [[token, "1"], [token, "2"]]
    assert second["sandbox"]["id"] is None and second["sandbox"]["checkpoint"] not in (
        None, slept["checkpoint"])
    assert Sandbox.list(engine=engine, all=True) == []


def test_the_tool_node_wakes_a_lost_sandbox_from_its_checkpoint(home: Path):
    engine = GVisorEngine(home, images=ImageStore())
    box = SandboxTools(engine=engine)
    assert [t.name for t in box.tools] == ["shell", "start_process", "read_file",
                                           "write_file"]
    assert set(box.tools[0].args) == {"command", "timeout"}  # not the sandbox

    def call(name: str, **args: Any) -> SandboxMessagesState:
        return {"messages": [HumanMessage("go"), AIMessage("", tool_calls=[
            {"name": name, "args": args, "id": "c1"}])]}

    out = box.node(call("write_file", path="/work/a.txt", content="kept\n"))
    state: dict[str, Any] = {"sandbox": out["sandbox"]}
    made = state["sandbox"]["id"]
    assert out["messages"][0].content == "wrote 5 bytes to /work/a.txt"
    state["sandbox"] = box.sleep(state)["sandbox"]
    assert state["sandbox"]["id"] is None and Sandbox.list(engine=engine, all=True) == []
    out = box.node({**call("shell", command="cat /work/a.txt"), **state})
    woken = out["sandbox"]["id"]
    assert woken != made and "stdout:\nkept" in out["messages"][0].content
    # the running sandbox vanishes (its process died, it was reaped): the next call
    # restores the latest checkpoint and says so
    Sandbox(woken, engine=engine).kill()
    out = box.node({**out, **call("read_file", path="/work/a.txt")})
    msg = out["messages"][0]
    assert msg.content.startswith(f"[the sandbox {woken} was lost; restored from its "
                                  f"checkpoint {state['sandbox']['checkpoint']}]\nkept")
    # a tool that fails answers the model with the error
    out = box.node({**out, **call("read_file", path="/nope")})
    assert out["messages"][0].status == "error" and "Error:" in out["messages"][0].content
    for sb in Sandbox.list(engine=engine, all=True):
        sb.kill()
