"""The tool definitions a request may carry, as Parley validates and echoes them.

The definitions of the tools the caller answers follow the installed `openai`
package: a field the package declares is accepted and echoed even where
Parley has no use for it (`defer_loading`, `allowed_callers`, ...), so that a
new OpenAI field never breaks a client; a name the package does not know is
`Unknown parameter`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from openai.types.responses import (
    apply_patch_tool_param,
    custom_tool_param,
    function_shell_tool_param,
    function_tool_param,
    namespace_tool_param,
    tool_param,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from parley.package_fields import PackageFields, keys_of

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionTool(PackageFields):
    known = keys_of(function_tool_param.FunctionToolParam, namespace_tool_param.ToolFunction)
    type: Literal["function"]
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomToolTextFormat(_Model):
    type: Literal["text"]


class CustomToolGrammarFormat(_Model):
    type: Literal["grammar"]
    syntax: Literal["lark", "regex"]
    definition: str


class CustomTool(PackageFields):
    """A tool of free-form text input, optionally in a grammar."""

    known = keys_of(custom_tool_param.CustomToolParam)
    type: Literal["custom"]
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    format: CustomToolTextFormat | CustomToolGrammarFormat | None = Field(None, discriminator="type")

    def model_description(self) -> str:
        """The description the model reads: the tool's own, and the grammar its input must follow."""
        description = self.description or ""
        if isinstance(self.format, CustomToolGrammarFormat):
            kind = "regular expression" if self.format.syntax == "regex" else "Lark grammar"
            rule = f"The input must match this {kind}:\n{self.format.definition}"
            description = f"{description}\n\n{rule}" if description else rule
        return description

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class NamespaceTool(PackageFields):
    """Function and custom tools grouped under a name the caller reads back in their calls."""

    known = keys_of(namespace_tool_param.NamespaceToolParam)
    type: Literal["namespace"]
    name: str = Field(pattern=_NAME_PATTERN)
    description: str
    tools: list[FunctionTool | CustomTool] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _tool_types(cls, data: Any) -> Any:
        # Without this, pydantic names every member of the union for a tool of another type.
        for index, tool in enumerate(data.get("tools") or () if isinstance(data, dict) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in ("function", "custom"):
                raise ValueError(f"tools[{index}].type must be 'function' or 'custom', not {kind!r}")
        return data

    def public(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"tools"})
        data["tools"] = [tool.public() if isinstance(tool, CustomTool) else tool.model_dump() for tool in self.tools]
        return data


class LocalShellTool(PackageFields):
    known = keys_of(tool_param.LocalShell)
    type: Literal["local_shell"]


class ShellTool(PackageFields):
    known = keys_of(function_shell_tool_param.FunctionShellToolParam)
    type: Literal["shell"]


class ApplyPatchTool(PackageFields):
    known = keys_of(apply_patch_tool_param.ApplyPatchToolParam)
    type: Literal["apply_patch"]


# The tools the caller answers, by type (see `parley.tools.caller`).
CALLER_DEFINITIONS: dict[str, type[BaseModel]] = {
    "function": FunctionTool,
    "namespace": NamespaceTool,
    "custom": CustomTool,
    "local_shell": LocalShellTool,
    "shell": ShellTool,
    "apply_patch": ApplyPatchTool,
}


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
