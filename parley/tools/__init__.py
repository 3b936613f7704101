"""Server-side tools: one module per kind (MCP now), behind one interface (`base.ToolKind`), in one toolbox.

Importing the package imports every kind (through `toolbox`), so each is registered.
"""

from parley.tools.base import ItemEvents, NameOf, ServerTool, ToolKind, chat_messages_of, item_events, register
from parley.tools.toolbox import Toolbox

__all__ = [
    "ItemEvents",
    "NameOf",
    "ServerTool",
    "ToolKind",
    "Toolbox",
    "chat_messages_of",
    "item_events",
    "register",
]
