"""A sandbox agent of the OpenAI Agents SDK on TorporSandboxClient, for
test_openai_agents_sandbox.py: `start` runs it to its approval interruption, writes the
serialized RunState to STATE and prints "ready", then waits to be killed; `resume` reads
STATE, approves, runs it to its end and prints the final output.

    python -m tests.integrations.oa_sandbox_app start|resume MODEL_URL SERVER TOKEN STATE ON_EXIT
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

from agents import RunConfig, Runner, RunState, function_tool, set_tracing_disabled
from agents.models.openai_responses import OpenAIResponsesModel
from agents.sandbox import SandboxAgent, SandboxRunConfig
from openai import AsyncOpenAI

from torpor.integrations.openai_agents import TorporSandboxClient, TorporSandboxClientOptions


@function_tool(needs_approval=True)
def deploy() -> str:
    """Deploy what was built (a human approves it first)."""
    return "deployed"


def agent(model_url: str) -> SandboxAgent:
    client = AsyncOpenAI(base_url=model_url, api_key="test", max_retries=0)
    return SandboxAgent(name="builder", instructions="Build, then deploy.",
                        model=OpenAIResponsesModel(model="fake-model", openai_client=client),
                        tools=[deploy])


async def main(action: str, model_url: str, server: str, token: str, state_path: str,
               on_exit: str) -> None:
    set_tracing_disabled(True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("torpor").setLevel(logging.INFO)
    a = agent(model_url)
    config = RunConfig(sandbox=SandboxRunConfig(
        client=TorporSandboxClient(server, token or None),
        options=TorporSandboxClientOptions(on_exit=on_exit)))  # type: ignore[arg-type]
    if action == "start":
        result = await Runner.run(a, "Start the counter, then deploy.", run_config=config)
        assert result.interruptions, result.final_output
        Path(state_path).write_text(result.to_state().to_string())
        print("ready", flush=True)
        time.sleep(3600)  # until the test kills this process (kill -9)
        return
    state = await RunState.from_string(a, Path(state_path).read_text())
    for item in state.get_interruptions():
        state.approve(item)
    result = await Runner.run(a, state, run_config=config)
    print(result.final_output, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
