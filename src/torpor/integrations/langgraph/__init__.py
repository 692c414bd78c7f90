"""torpor for LangGraph: `TorporSaver` (a checkpointer: `saver.py`, how values are stored:
`values.py`) and `SandboxTools` (tools run in a torpor sandbox that sleeps, checkpointed,
while the graph waits for a human: `sandbox.py`). Needs `pip install 'torpor[langgraph]'`.
"""

from __future__ import annotations

try:
    import langgraph.checkpoint.base  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("torpor.integrations.langgraph needs LangGraph: "
                      "pip install 'torpor[langgraph]'") from e

from .sandbox import SandboxMessagesState, SandboxTools
from .saver import TorporSaver

__all__ = ["SandboxMessagesState", "SandboxTools", "TorporSaver"]
