"""What the server logs of events it should expect: one line each, never a traceback at ERROR.

Parley runs at `--log-level warning`, as every test's does (tests/conftest.py), and its whole output is read.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT, ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream


@pytest.fixture
def server(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    process = ParleyProcess(tmp_path, upstream_config(fake_upstream))
    process.start()
    yield process
    process.stop()


def _logged_after(server: ParleyProcess, start: int, settle: float = 1.0) -> str:
    time.sleep(settle)  # for what the server logs as it notices
    return "".join(server.output[start:])


def test_a_client_that_leaves_while_its_body_is_read_is_no_error(server: ParleyProcess) -> None:
    address = urlsplit(server.base_url)
    start = len(server.output)
    for path in ("/v1/responses", "/v1/chat/completions", "/v1/conversations"):
        with socket.create_connection((address.hostname, address.port)) as sock:
            head = f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
            sock.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode() + b'{"model": ')
            time.sleep(0.3)
    logged = _logged_after(server, start)
    assert "Traceback" not in logged and "ERROR" not in logged, logged
    assert server.client().models.list().data  # and the server is none the worse


def test_an_mcp_server_that_goes_away_is_one_line(server: ParleyProcess) -> None:
    """Its sessions (an SSE stream stays open between requests) end with one warning each, naming the server."""
    tools_process = subprocess.Popen(
        [sys.executable, "tests/mcp_servers.py"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert tools_process.stdout is not None
        url = tools_process.stdout.readline().strip()
        sse = url.removesuffix("/mcp") + "/sse"
        tool = {"type": "mcp", "server_label": "doomed", "server_url": sse, "require_approval": "never"}
        response = server.client().responses.create(
            model="fake/fake-script", input='add {"a": 1, "b": 2}', tools=[tool]
        )
        assert response.output_text == "Results: 3"
        start = len(server.output)
    finally:
        tools_process.kill()
        tools_process.wait()
    logged = _logged_after(server, start)
    assert "Traceback" not in logged and "ERROR" not in logged, logged
    (line,) = logged.splitlines()
    assert line.startswith("WARNING") and "MCP server 'doomed'" in line and "the connection ended" in line, line
