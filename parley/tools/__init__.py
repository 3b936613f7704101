"""Server-side tools: one module per kind (MCP now), behind the toolbox the agent loop uses."""

from parley.tools.toolbox import ServerToolRoute, Toolbox

__all__ = ["ServerToolRoute", "Toolbox"]
