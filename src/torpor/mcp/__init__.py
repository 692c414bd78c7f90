"""torpor over MCP (the Model Context Protocol, with the `mcp` SDK): a sandbox's tools
(run a command, read, write and list files, snapshot, restore, fork) for any MCP client.
`server.py` builds the server on a resolver of targets; `targets.py` has the targets of
engine sandboxes. The front doors serve it: `torpor mcp` over stdio (cli/mcp_cmd.py) and
`/mcp` in `torpor serve` over streamable HTTP (api/mcp_mount.py). Needs
`pip install 'torpor[mcp]'`; nothing else in torpor imports it unless asked to serve MCP.
"""

from __future__ import annotations

try:
    import mcp.server.mcpserver  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("torpor's MCP server needs the mcp SDK: pip install 'torpor[mcp]'") from e

from .server import OUTPUT_CAP, Resolver, Target, build
from .targets import SessionSandbox, engine_resolver, engine_target

__all__ = ["OUTPUT_CAP", "Resolver", "SessionSandbox", "Target", "build", "engine_resolver",
           "engine_target"]
