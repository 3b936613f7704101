"""Server-side tools: one module per kind (MCP now), behind one interface (`base.ToolKind`), in one toolbox."""

from parley.tools.base import ItemEvents, ServerTool, ToolKind, item_events, register
from parley.tools.toolbox import Toolbox

__all__ = ["ItemEvents", "ServerTool", "ToolKind", "Toolbox", "item_events", "register"]
