"""The tool definitions a request may carry, as Parley validates and echoes them."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionTool(_Model):
    type: Literal["function"]
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class MCPToolFilter(_Model):
    tool_names: list[str] | None = None
    read_only: bool | None = None


class MCPApprovalFilter(_Model):
    always: MCPToolFilter | None = None
    never: MCPToolFilter | None = None


class MCPTool(_Model):
    """A remote MCP server whose tools Parley runs for the model."""

    type: Literal["mcp"]
    server_label: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    server_url: str | None = None
    connector_id: str | None = None
    server_description: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    allowed_tools: list[str] | MCPToolFilter | None = None
    require_approval: Literal["always", "never"] | MCPApprovalFilter | None = None

    @model_validator(mode="after")
    def _has_a_server(self) -> MCPTool:
        if self.connector_id is not None:
            raise ValueError("connectors are OpenAI's own services; give a server_url instead")
        if self.server_url is None:
            raise ValueError("server_url is required")
        if not re.match(r"^https?://[^/\s]+", self.server_url):
            raise ValueError("server_url must be an http:// or https:// URL")
        return self

    def allows(self, name: str, read_only: bool) -> bool:
        """Whether the model may be offered the server's tool `name`."""
        allowed = self.allowed_tools
        if allowed is None:
            return True
        if isinstance(allowed, list):
            return name in allowed
        if allowed.tool_names is not None and name not in allowed.tool_names:
            return False
        return not allowed.read_only or read_only

    def needs_approval(self, name: str, read_only: bool) -> bool:
        policy = self.require_approval
        if policy is None or policy == "always":
            return True
        if policy == "never":
            return False
        for rule, answer in ((policy.never, False), (policy.always, True)):
            if rule is None:
                continue
            names_match = rule.tool_names is None or name in rule.tool_names
            if names_match and (rule.read_only is None or rule.read_only == read_only):
                return answer
        return True

    def public(self) -> dict[str, Any]:
        """The definition as it is echoed and stored: without its secrets."""
        data = self.model_dump(exclude={"authorization", "headers", "connector_id"}, exclude_none=True)
        return {**data, "headers": None, "require_approval": self.require_approval_echo()}

    def require_approval_echo(self) -> Any:
        policy = self.require_approval
        if policy is None:
            return "always"
        return policy if isinstance(policy, str) else policy.model_dump(exclude_none=True)
