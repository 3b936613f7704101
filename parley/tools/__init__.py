"""Server-side tools: one module per kind, behind one interface (`base.ToolKind`), in one toolbox.

Importing the package imports every kind, so each is registered: a new kind is its module, marked
`@register`, and its line below.
"""

from parley.tools import file_search, mcp, web_search  # noqa: F401  (registers the kinds)
from parley.tools.base import (
    ItemEvents,
    NameOf,
    ServerTool,
    ToolKind,
    ToolResources,
    chat_messages_of,
    definition_model,
    item_events,
    register,
)
from parley.tools.toolbox import CitationMarks, Toolbox, ToolServices

__all__ = [
    "CitationMarks",
    "ItemEvents",
    "NameOf",
    "ServerTool",
    "ToolKind",
    "ToolResources",
    "ToolServices",
    "Toolbox",
    "chat_messages_of",
    "definition_model",
    "item_events",
    "register",
]
