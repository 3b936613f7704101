"""The outbound guard (parley/tools/outbound.py): which hosts Parley connects to on a request's behalf, and how.

Over HTTP against Parley, with real MCP and search servers on this machine: a
server the rules refuse is never asked anything, whether named by address,
by name or reached by a redirect; the default refuses this machine and every
address that is not public; `allowed_cidrs` opens networks exactly. Servers
listening on every address (`0.0.0.0`) are reachable at 127.0.0.2 and at
this machine's outward address too, so that a refusal is the guard's, not a
connection that failed. That the connection goes to the address checked (one
resolution, no DNS rebinding) is Parley's guard with a resolver of the test's
own, in process: the system's resolver cannot be made to change its answer.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from parley.config import ConfigError, load_settings
from parley.tools.outbound import Guard, HostRefused, HostRules, IPAddress
from tests.conftest import ParleyProcess, upstream_config
from tests.fake_upstream import FakeUpstream
from tests.mcp_servers import ToolServer
from tests.search_server import SearchServer
from tests.support.tools import mcp_tool
from tests.test_tools_mcp_redirects import _outward_address

SCRIPT = "fake/fake-script"
REFUSED = "not allowed by the server's rules"


@pytest.fixture(scope="module")
def everywhere() -> Iterator[ToolServer]:
    """The MCP test server on every address of this machine: 127.0.0.1, 127.0.0.2, its outward address."""
    server = ToolServer()
    server.listen_host = "0.0.0.0"
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pages() -> Iterator[SearchServer]:
    """The search server (pages, redirects) on every address of this machine."""
    server = SearchServer(listen_host="0.0.0.0").start()
    yield server
    server.stop()


def start(workdir: Path, fake: FakeUpstream, outbound: dict[str, Any], tools: dict[str, Any] | None = None) -> Any:
    config = upstream_config(fake)
    config["outbound"] = outbound
    config["tools"] = {"mcp": {"timeout": 5}, **(tools or {})}
    server = ParleyProcess(workdir, config)
    server.start()
    return server


@pytest.fixture(scope="module")
def by_default(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream) -> Iterator[ParleyProcess]:
    """Parley with the default rules: public addresses only."""
    server = start(tmp_path_factory.mktemp("outbound-default"), fake_upstream, {})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def by_cidr(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream, pages: SearchServer
) -> Iterator[ParleyProcess]:
    """Parley that may reach 127.0.0.1 and this machine's outward address, by CIDR, and nothing else here."""
    outward = _outward_address()
    server = start(
        tmp_path_factory.mktemp("outbound-cidr"),
        fake_upstream,
        {"allowed_cidrs": ["127.0.0.1/32", *([f"{outward}/32"] if outward else [])]},
        {"web_search": {"backend": "searxng", "base_url": pages.base_url, "timeout": 5}},
    )
    yield server
    server.stop()


def listing(parley: ParleyProcess, server: ToolServer, url: str) -> tuple[str, str, bool]:
    """Lists the tools of the MCP server at `url`: the listing's status, its error, and whether `server` was asked.

    A listing that fails may come back as a failed `mcp_list_tools` item or as the request's 424; both carry why.
    """
    run = uuid.uuid4().hex
    tool = mcp_tool(server, server_label="probe", server_url=url, headers={"X-Test-Run": run})
    try:
        response = parley.client().responses.create(model="fake/fake-echo", input="hi", tools=[tool])
        item = response.output[0]
        status, error = item.status, item.error or ""
    except openai.APIStatusError as exc:
        assert exc.status_code == 424, exc
        status, error = "failed", exc.message
    return status, error, any(headers.get("x-test-run") == run for headers in server.headers)


def test_servers_on_this_machine_are_refused_by_default(by_default: ParleyProcess, everywhere: ToolServer) -> None:
    """The MCP server answers at each of these; by default, Parley asks it nothing at any."""
    port = everywhere.port
    for host in ["127.0.0.1", "localhost", "127.0.0.2", "0.0.0.0", "[::ffff:127.0.0.1]", "[::1]"]:
        status, error, asked = listing(by_default, everywhere, f"http://{host}:{port}/mcp")
        assert (status, asked) == ("failed", False), (host, error)
        assert "is on this machine" in error and REFUSED in error and "outbound.allow_loopback" in error, error


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",  # the cloud metadata service
        "[::ffff:169.254.169.254]",  # the same, IPv4-mapped
        "[64:ff9b::a9fe:a9fe]",  # the same, through NAT64
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # shared (carrier-grade NAT)
        "[fd00::1]",  # unique-local
        "[fe80::1]",  # link-local
    ],
)
def test_private_and_metadata_addresses_are_refused(
    by_default: ParleyProcess, everywhere: ToolServer, host: str
) -> None:
    status, error, _ = listing(by_default, everywhere, f"http://{host}/mcp")
    assert status == "failed" and "has a private address" in error and REFUSED in error, error
    if "169.254.169.254" in host or "a9fe:a9fe" in host:
        assert "where cloud metadata services answer" in error


def test_a_server_at_a_private_address_is_refused_unless_its_network_is_allowed(
    by_default: ParleyProcess, by_cidr: ParleyProcess, everywhere: ToolServer
) -> None:
    """This machine's outward address is not a public one: refused by default, reached once allowed by CIDR."""
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    url = f"http://{address}:{everywhere.port}/mcp"
    status, error, asked = listing(by_default, everywhere, url)
    assert (status, asked) == ("failed", False) and f"has a private address ({address}" in error, error
    assert listing(by_cidr, everywhere, url) == ("completed", "", True)


def test_allowed_cidrs_allow_exactly_their_networks(by_cidr: ParleyProcess, everywhere: ToolServer) -> None:
    assert listing(by_cidr, everywhere, f"http://127.0.0.1:{everywhere.port}/mcp") == ("completed", "", True)
    status, error, asked = listing(by_cidr, everywhere, f"http://127.0.0.2:{everywhere.port}/mcp")
    assert (status, asked) == ("failed", False) and "is on this machine (127.0.0.2)" in error, error


def test_a_host_that_does_not_resolve_is_refused(by_cidr: ParleyProcess, everywhere: ToolServer) -> None:
    """Fail closed: a name without addresses is refused as such (`.invalid` never resolves)."""
    # "does not resolve to any address", or "did not resolve within" a slow resolver's time: refused either way.
    status, error, _ = listing(by_cidr, everywhere, "http://parley-outbound-test.invalid/mcp")
    assert status == "failed" and "the host 'parley-outbound-test.invalid' d" in error and "not resolve" in error
    response = by_cidr.client().responses.create(
        model=SCRIPT,
        input='open_page {"url": "http://parley-outbound-test.invalid/"}',
        tools=[{"type": "web_search"}],
    )
    call = response.output[0]
    assert call.status == "failed" and call.error.startswith("The page may not be opened: the host"), call.error
    assert "not resolve" in call.error


def test_a_redirect_to_a_refused_address_is_refused(by_cidr: ParleyProcess, pages: SearchServer) -> None:
    """The page server answers at 127.0.0.2 too; a redirect there, from the allowed 127.0.0.1, is not followed."""
    allowed, elsewhere = f"http://127.0.0.1:{pages.port}", f"http://127.0.0.2:{pages.port}"
    opened = {
        f"{allowed}/pages/plain": None,
        f"{allowed}/redirect?to={elsewhere}/pages/parley": "the host '127.0.0.2' is on this machine (127.0.0.2)",
        f"{allowed}/redirect?to=http://169.254.169.254/latest/meta-data/": "the host '169.254.169.254' has a private",
        f"{elsewhere}/pages/parley": "the host '127.0.0.2' is on this machine (127.0.0.2)",
    }
    read_before = len(pages.pages_read)
    script = " & ".join(f'open_page {{"url": "{url}"}}' for url in opened)
    response = by_cidr.client().responses.create(model=SCRIPT, input=script, tools=[{"type": "web_search"}])
    for call, reason in zip(response.output[:-1], opened.values(), strict=True):
        if reason is None:
            assert call.status == "completed", call.error
        else:
            assert call.status == "failed" and reason in call.error and REFUSED in call.error, call.error
    assert pages.pages_read[read_before:] == ["plain"]  # the refused page was never asked for


def test_each_tool_may_override_the_outbound_rules(
    tmp_path: Path, fake_upstream: FakeUpstream, everywhere: ToolServer, pages: SearchServer
) -> None:
    """`tools.mcp.allow_loopback: true` (a local MCP server, as a newcomer has) leaves the pages the model opens
    to `outbound`'s default."""
    parley = start(
        tmp_path,
        fake_upstream,
        {},
        {
            "mcp": {"allow_loopback": True, "timeout": 5},
            "web_search": {"backend": "searxng", "base_url": pages.base_url, "timeout": 5},
        },
    )
    try:
        assert listing(parley, everywhere, everywhere.url) == ("completed", "", True)
        response = parley.client().responses.create(
            model=SCRIPT, input=f'open_page {{"url": "{pages.page("plain")}"}}', tools=[{"type": "web_search"}]
        )
    finally:
        parley.stop()
    assert response.output[0].status == "failed" and "is on this machine" in response.output[0].error


def test_a_network_written_wrong_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "parley.yaml"
    config.write_text("outbound:\n  allowed_cidrs: [10.1.2.3/8]\n")
    with pytest.raises(ConfigError, match=r"outbound\.allowed_cidrs: '10\.1\.2\.3/8' has bits set past its prefix"):
        load_settings(config)
    config.write_text("tools:\n  mcp:\n    allowed_cidrs: [intranet]\n")
    with pytest.raises(ConfigError, match=r"tools\.mcp\.allowed_cidrs: 'intranet' is not an address or a network"):
        load_settings(config)


# The connection goes to the address checked: Parley's guard, with a resolver whose answers the test chooses.


class ChangingResolver:
    """Answers each question about a name with the next of `answers` (the last one over and over)."""

    def __init__(self, *answers: str) -> None:
        self.answers = [ipaddress.ip_address(answer) for answer in answers]
        self.asked: list[str] = []

    async def __call__(self, host: str) -> Sequence[IPAddress]:
        self.asked.append(host)
        return [self.answers[min(len(self.asked), len(self.answers)) - 1]]


@pytest.fixture(scope="module")
def page_server() -> Iterator[SearchServer]:
    """Pages on 127.0.0.1 alone: nothing answers at 127.0.0.2."""
    server = SearchServer().start()
    yield server
    server.stop()


def client_of(guard: Guard, library: str) -> Any:
    return guard.httpx_client(timeout=5) if library == "httpx" else guard.httpx2_client(timeout=5)


ONLY_127_0_0_1 = HostRules(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


@pytest.mark.parametrize("library", ["httpx", "httpx2"])  # web_search's pages, MCP's sessions
async def test_the_connection_goes_to_the_address_checked(page_server: SearchServer, library: str) -> None:
    """The name resolves once, to the address the connection reaches; the request still names the host."""
    resolver = ChangingResolver("127.0.0.1", "127.0.0.2")  # a second resolution would reach no one
    async with client_of(Guard(ONLY_127_0_0_1, resolver), library) as client:
        response = await client.get(f"http://rebinding.test:{page_server.port}/pages/plain")
    assert response.status_code == 200 and response.text.startswith("Plain text about Parley.")
    assert resolver.asked == ["rebinding.test"]
    assert page_server.page_hosts[-1] == f"rebinding.test:{page_server.port}"


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
async def test_a_name_that_resolves_to_a_refused_address_reaches_no_one(
    page_server: SearchServer, library: str
) -> None:
    """The first answer is refused; the allowed one a second resolution would give is never asked for."""
    resolver = ChangingResolver("10.0.0.1", "127.0.0.1")
    read_before = len(page_server.pages_read)
    async with client_of(Guard(ONLY_127_0_0_1, resolver), library) as client:
        with pytest.raises(HostRefused, match=r"the host 'rebinding.test' has a private address \(10\.0\.0\.1"):
            await client.get(f"http://rebinding.test:{page_server.port}/pages/plain")
    assert resolver.asked == ["rebinding.test"] and page_server.pages_read[read_before:] == []


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
async def test_each_new_connection_is_checked_again(page_server: SearchServer, library: str) -> None:
    """A name whose answer turns to a refused address after a first connection: the next connection is refused."""
    resolver = ChangingResolver("127.0.0.1", "169.254.169.254")
    url = f"http://rebinding.test:{page_server.port}/pages/plain"
    async with client_of(Guard(ONLY_127_0_0_1, resolver), library) as client:
        first = await client.get(url, headers={"Connection": "close"})  # the next request needs a new connection
        with pytest.raises(
            HostRefused, match=r"\(169\.254\.169\.254: link-local, where cloud metadata services answer\)"
        ):
            await client.get(url)
    assert first.status_code == 200 and resolver.asked == ["rebinding.test", "rebinding.test"]


async def test_every_address_a_name_resolves_to_must_be_allowed() -> None:
    async def both(host: str) -> Sequence[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.168.0.10")]

    with pytest.raises(HostRefused, match=r"the host 'mixed.test' has a private address \(192\.168\.0\.10"):
        await Guard(ONLY_127_0_0_1, both).addresses("mixed.test")


class TLSServer:
    """An HTTPS server on 127.0.0.1 whose certificate (from a CA of its own) names `rebinding.test` only.

    It keeps the name each client asked for in its TLS handshake (SNI), and the `Host` of each request.
    """

    NAME = "rebinding.test"

    def __init__(self, directory: Path) -> None:
        key, certificate, self.ca_file = _certificates(directory, self.NAME)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, key)
        self.names: list[str | None] = []
        self.hosts: list[str | None] = []
        context.sni_callback = lambda _socket, name, _context: self.names.append(name)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hosts.append(self.headers.get("Host"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def client_context(self) -> ssl.SSLContext:
        """A client's TLS settings that trust the server's CA alone, verifying names as usual."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _certificates(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, and a key and certificate it signed for `name`: their files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("Parley test CA", ca_key, "Parley test CA", ca_key, ca=True)
    leaf = certificate(name, leaf_key, "Parley test CA", ca_key, ca=False)
    files = directory / "key.pem", directory / "certificate.pem", directory / "ca.pem"
    files[0].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    server = TLSServer(tmp_path_factory.mktemp("tls"))
    yield server
    server.httpd.shutdown()


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
async def test_tls_names_and_verifies_the_host_not_the_address(tls_server: TLSServer, library: str) -> None:
    """Connected to 127.0.0.1, the handshake still asks for the name (SNI) and checks the certificate against it;
    the same server named by its address fails that check."""
    guard = Guard(ONLY_127_0_0_1, ChangingResolver("127.0.0.1"))
    client = guard.httpx_client if library == "httpx" else guard.httpx2_client
    async with client(verify=tls_server.client_context(), timeout=5) as session:
        response = await session.get(f"https://rebinding.test:{tls_server.port}/")
        assert response.status_code == 200 and response.text == "ok"
        assert tls_server.names[-1] == "rebinding.test"
        assert tls_server.hosts[-1] == f"rebinding.test:{tls_server.port}"
        with pytest.raises(Exception, match="certificate verify failed"):
            await session.get(f"https://127.0.0.1:{tls_server.port}/")
