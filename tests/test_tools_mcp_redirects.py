"""Redirects from MCP servers: a few are followed within the server, none leaves it.

The `mcp` client follows a redirect only within the server's origin; Parley
caps how many it follows (`mcp_client.MAX_REDIRECTS`, 3). A redirect to
another host is never followed; the outbound guard checks every connection
anyway (tests/test_outbound.py).
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.mcp_servers import RedirectingToolServer, ToolServer
from tests.support.tools import mcp_tool

SCRIPT = "fake/fake-script"


@pytest.fixture(scope="module")
def redirecting(tool_server: ToolServer) -> Iterator[RedirectingToolServer]:
    server = RedirectingToolServer(redirect_to=tool_server.url).start()
    yield server
    server.stop()


@pytest.mark.parametrize("sse", [False, True], ids=["streamable-http", "sse"])
def test_three_redirects_are_followed_and_four_are_not(
    upstream: ParleyProcess, redirecting: RedirectingToolServer, sse: bool
) -> None:
    three = mcp_tool(redirecting, server_label="three", server_url=redirecting.hops_url(3, sse=sse))
    four = mcp_tool(redirecting, server_label="four", server_url=redirecting.hops_url(4, sse=sse))
    client = upstream.client()
    response = client.responses.create(model=SCRIPT, input='echo {"text": "via redirects"}', tools=[three])
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    listing, call, _ = response.output
    assert (listing.server_label, listing.status, listing.error) == ("three", "completed", None)
    assert (call.server_label, call.output, call.status) == ("three", "via redirects", "completed")
    with pytest.raises(openai.APIStatusError) as refused:
        client.responses.create(model=SCRIPT, input='echo {"text": "via redirects"}', tools=[three, four])
    assert refused.value.status_code == 424
    assert "'four'" in refused.value.message and "cannot connect" in refused.value.message.lower()


@pytest.fixture(scope="module")
def only_localhost(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    config = upstream_config(fake_upstream)
    config["tools"] = {"mcp": {"allowed_hosts": ["localhost"]}}
    server = ParleyProcess(Path(tmp_path_factory.mktemp("only-localhost")), config)
    server.start()
    yield server
    server.stop()


def test_a_redirect_to_a_host_not_allowed_is_not_followed(
    only_localhost: ParleyProcess, redirecting: RedirectingToolServer, tool_server: ToolServer
) -> None:
    """`localhost` is allowed and redirects to `127.0.0.1` (the same machine, not an allowed host)."""
    run = uuid.uuid4().hex
    allowed = f"http://localhost:{redirecting.port}/away"
    tools = [mcp_tool(redirecting, server_url=allowed, headers={"X-Test-Run": run})]
    client: openai.OpenAI = only_localhost.client()
    with pytest.raises(openai.APIStatusError) as refused:
        client.responses.create(model="fake/fake-echo", input="hi", tools=tools)
    assert refused.value.status_code == 424  # its listing failed
    assert any(h.get("x-test-run") == run for h in redirecting.headers)  # it was asked, and redirected
    assert not any(h.get("x-test-run") == run for h in tool_server.headers)  # the redirect was not followed


def _outward_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (connecting a UDP socket sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0" else address


def test_a_redirect_to_loopback_is_not_followed_when_loopback_is_refused(
    tmp_path: Path, fake_upstream: FakeUpstream, tool_server: ToolServer
) -> None:
    """The server is named by an outward address of this machine (allowed by CIDR: it is not a public one), and
    redirects to 127.0.0.1."""
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    config = upstream_config(fake_upstream)
    config["tools"] = {"mcp": {"allow_loopback": False, "allowed_cidrs": [address]}}
    parley = ParleyProcess(tmp_path / "parley", config)
    redirecting = RedirectingToolServer(redirect_to=tool_server.url, listen_host="0.0.0.0").start()
    run = uuid.uuid4().hex
    parley.start()
    try:
        outward = f"http://{address}:{redirecting.port}"
        tools = [
            mcp_tool(redirecting, server_label="direct", server_url=f"{outward}/mcp"),
            mcp_tool(redirecting, server_label="away", server_url=f"{outward}/away", headers={"X-Test-Run": run}),
        ]
        response = parley.client().responses.create(model="fake/fake-echo", input="hi", tools=tools[:1])
        with pytest.raises(openai.APIStatusError) as refused:
            parley.client().responses.create(model="fake/fake-echo", input="hi", tools=tools)
    finally:
        parley.stop()
        redirecting.stop()
    direct = response.output[0]
    assert (direct.server_label, direct.status, direct.error) == ("direct", "completed", None)  # allowed as named
    assert refused.value.status_code == 424 and "'away'" in refused.value.message
    assert any(h.get("x-test-run") == run for h in redirecting.headers)
    assert not any(h.get("x-test-run") == run for h in tool_server.headers)
