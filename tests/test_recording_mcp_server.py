"""The MCP server behind the shared tool-execution recordings (tests/mcp_server.py), checked with the `mcp` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client

from tests.mcp_server import RecordedToolServer
from tests.recording_fixtures import SHARED_RECORDINGS


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with RecordedToolServer() as server:
        yield server.url


async def call(url: str, tool: str, **arguments: Any) -> str:
    async with Client(url) as client:
        result = await client.call_tool(tool, arguments)
    assert not result.is_error
    (content,) = result.content
    return content.text  # type: ignore[union-attr,no-any-return]


@pytest.mark.skipif(not SHARED_RECORDINGS.is_dir(), reason="../shared/recordings is not here")
async def test_the_tools_are_those_of_the_recordings(mcp_url: str) -> None:
    async with Client(mcp_url) as client:
        tools = (await client.list_tools()).tools
    served = [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
        for t in tools
    ]
    for path in sorted(SHARED_RECORDINGS.glob("*.json")):
        recorded = json.loads(path.read_text())["request"]["body"].get("tools")
        if recorded:
            assert served == recorded, path.name


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("get_user_id", {"username": "alice"}, "user_12345"),
        ("get_user_id", {"username": "bob"}, "user_67890"),
        ("get_user_id", {"username": "charlie"}, "user_11111"),
        ("get_user_id", {"username": "admin"}, "user_00000"),
        ("get_user_id", {"username": "mallory"}, "user_99999"),
        ("get_user_permissions", {"user_id": "user_12345"}, "read,write"),
        ("get_user_permissions", {"user_id": "user_67890"}, "read"),
        ("get_user_permissions", {"user_id": "user_11111"}, "admin"),
        ("get_user_permissions", {"user_id": "user_00000"}, "superadmin"),
        ("get_user_permissions", {"user_id": "user_99999"}, "none"),
        ("check_file_access", {"user_id": "user_00000", "filename": "secret_plans.pdf"}, "yes"),
        ("check_file_access", {"user_id": "user_11111", "filename": "report.pdf"}, "yes"),
        ("check_file_access", {"user_id": "user_11111", "filename": "secret_file.txt"}, "no"),
        ("check_file_access", {"user_id": "user_12345", "filename": "document.txt"}, "yes"),
        ("check_file_access", {"user_id": "user_12345", "filename": "notes.md"}, "yes"),
        ("check_file_access", {"user_id": "user_12345", "filename": "data.csv"}, "no"),
        ("check_file_access", {"user_id": "user_67890", "filename": "notes.md"}, "yes"),
        ("check_file_access", {"user_id": "user_67890", "filename": "data.csv"}, "no"),
        ("check_file_access", {"user_id": "user_99999", "filename": "document.txt"}, "no"),
        ("get_experiment_id", {"experiment_name": "temperature_test"}, "exp_001"),
        ("get_experiment_id", {"experiment_name": "Pressure_Test"}, "exp_002"),
        ("get_experiment_id", {"experiment_name": "CHEMICAL_REACTION"}, "exp_003"),
        ("get_experiment_id", {"experiment_name": "boiling_point"}, "exp_004"),
        ("get_experiment_id", {"experiment_name": "cold_fusion"}, "exp_999"),
        ("get_experiment_results", {"experiment_id": "exp_001"}, "Temperature: 25°C, Status: Success"),
        ("get_experiment_results", {"experiment_id": "exp_002"}, "Pressure: 1.2 atm, Status: Success"),
        ("get_experiment_results", {"experiment_id": "exp_003"}, "Yield: 85%, Status: Complete"),
        ("get_experiment_results", {"experiment_id": "exp_004"}, "Boiling Point: 100°C, Status: Verified"),
        ("get_experiment_results", {"experiment_id": "exp_999"}, "No results found"),
        ("get_experiment_results", {"experiment_id": "exp_123"}, "Invalid experiment ID"),
    ],
)
async def test_each_tool_answers_as_the_readme_says(
    mcp_url: str, tool: str, arguments: dict[str, str], expected: str
) -> None:
    assert await call(mcp_url, tool, **arguments) == expected


async def test_the_server_stops_and_starts_again() -> None:
    server = RecordedToolServer()
    server.start()
    server.stop()
    with RecordedToolServer() as again:
        assert await call(again.url, "get_user_id", username="alice") == "user_12345"
