"""torpor for the OpenAI Agents SDK: `TorporSession`, the SDK's conversation memory on
torpor's context log (`session.py`), and `TorporSandboxClient`, a provider for its sandbox
agents on a torpor server's sandboxes, whose runs resume with the whole sandbox, processes
and memory included (`sandbox.py`). Needs `pip install 'torpor[openai-agents]'`.
"""

from __future__ import annotations

try:
    import agents.memory  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("torpor.integrations.openai_agents needs the OpenAI Agents SDK: "
                      "pip install 'torpor[openai-agents]'") from e

from .sandbox import (
    TorporSandboxClient,
    TorporSandboxClientOptions,
    TorporSandboxSession,
    TorporSandboxSessionState,
)
from .session import TorporSession

__all__ = ["TorporSandboxClient", "TorporSandboxClientOptions", "TorporSandboxSession",
           "TorporSandboxSessionState", "TorporSession"]
