"""The guard of every connection Parley makes on a request's behalf: to the hosts a caller or a model names.

MCP servers (the caller names them), the pages web_search opens (the model
names them, from results anyone on the web writes), and the file URLs of
input parts (parley.engine.files) all connect through an HTTP client this module makes (`Guard.httpx_client`,
`Guard.httpx2_client`: the `mcp` package speaks httpx2). For each connection
the client opens, for the first request and for every redirect followed:

1. the host name is checked against `allowed_hosts`;
2. the name is resolved, once, and every address it resolves to is checked:
   a host that does not resolve, or that resolves to one address the rules
   refuse, is refused (fail closed);
3. the connection is made to a checked address, while TLS verifies the
   certificate for the name (SNI included) and the `Host` header names it.

Steps 1-3 run in the client's network backend (httpcore's, wrapped by
`_PinnedBackend`), where the client asks for a connection to a host, so no
request it makes can reach an address that was not checked, and there is no
second resolution between the check and the connection for a name whose DNS
answer changes (DNS rebinding) to slip through. The clients take no proxy
from the environment, which would resolve the name itself.

The rules (`HostRules`, from the `outbound` configuration section, which each
tool's section may override key by key): public addresses are allowed; this
machine (`allow_loopback`: 127.0.0.0/8, ::1, 0.0.0.0/8, ::) and everything
else that is not public (`allow_private`: 10.0.0.0/8, 172.16.0.0/12,
192.168.0.0/16, 100.64.0.0/10, 169.254.0.0/16 with the cloud metadata service
at 169.254.169.254, fc00::/7, fe80::/10, multicast, reserved and
documentation ranges) are refused, unless `allowed_cidrs` holds the address.
An IPv6 address that carries an IPv4 one (`::ffff:10.0.0.1`, NAT64's
64:ff9b::/96, 6to4, Teredo) is judged by the IPv4 address it reaches.

`HostRefused` says why a host was refused, naming it; it is raised by
`Guard.check_url` (the URL alone, before any request: scheme, name and an
address written in it) and, from inside the HTTP client, as it connects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from parley.config import OutboundSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A host name's addresses, as the system's resolver gives them; raises OSError when it has none.
Resolver = Callable[[str], Awaitable[Sequence[IPAddress]]]

# IPv6 ranges whose addresses carry an IPv4 address in their last 32 bits, which is the one they reach:
# NAT64's well-known prefix, and the IPv4-compatible addresses (deprecated, still routed by some stacks).
_CARRYING_IPV4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # 0.0.0.0 reaches this machine; the rest is not routed
_PRIVATE_NETWORKS = tuple(ipaddress.ip_network(text) for text in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_METADATA = ipaddress.ip_address("169.254.169.254")

# How long a host name may take to resolve when the client gives no connect timeout.
_RESOLVE_SECONDS = 10.0


class HostRefused(Exception):
    """The host may not be reached; the message says why, naming it."""


@dataclass(frozen=True, slots=True)
class HostRules:
    """The hosts outbound connections may reach (see the module's docstring).

    `allowed_hosts`: the names (or addresses) URLs may name, lower-cased; None
    allows every host. It narrows what the address rules allow, never widens
    it: a name on the list that resolves to a refused address is refused.
    """

    allowed_hosts: frozenset[str] | None = None
    allow_loopback: bool = False
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, settings: OutboundSettings) -> HostRules:
        hosts = settings.allowed_hosts
        return cls(
            None if hosts is None else frozenset(_normal_host(host) for host in hosts),
            settings.allow_loopback,
            settings.allow_private,
            tuple(ipaddress.ip_network(text) for text in settings.allowed_cidrs),
        )

    def check_name(self, host: str) -> None:
        """Raises HostRefused unless `allowed_hosts` lets URLs name `host`."""
        if self.allowed_hosts is not None and _normal_host(host) not in self.allowed_hosts:
            raise HostRefused(f"the host '{host}' is not among the allowed hosts")

    def check_address(self, host: str, address: IPAddress) -> None:
        """Raises HostRefused unless `host`, at `address`, may be reached."""
        reached = reached_address(address)
        if any(candidate in network for network in self.allowed_networks for candidate in {address, reached}):
            return
        kind = address_kind(reached)
        if kind == "loopback" and not self.allow_loopback:
            raise HostRefused(
                f"the host '{host}' is on this machine ({address}): not allowed by the server's rules"
                " (outbound.allow_loopback)"
            )
        if kind not in ("loopback", "public") and not self.allow_private:
            # `private` as `allow_private` says it, which allows them all; the kind is for the reader.
            where = ", where cloud metadata services answer" if reached == _METADATA else ""
            raise HostRefused(
                f"the host '{host}' has a private address ({address}: {kind}{where}): not allowed by the server's rules"
                " (outbound.allow_private, outbound.allowed_cidrs)"
            )


def reached_address(address: IPAddress) -> IPAddress:
    """The address a connection to `address` reaches: the IPv4 address an IPv6 one carries, else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _CARRYING_IPV4) and int(address) > 1:  # `::` and `::1` are not
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_kind(address: IPAddress) -> str:
    """`loopback` (this machine), `public`, or the kind of non-public address it is, for messages:
    `link-local`, `private network`, `unique-local`, `shared`, `multicast`, or `special-purpose` (reserved,
    documentation, benchmarking and the other special ranges). Judges the address as given (see `reached_address`)."""
    if address.is_loopback or address.is_unspecified or address in _THIS_NETWORK:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _SHARED:
        return "shared"
    if address in _UNIQUE_LOCAL:
        return "unique-local"
    if address.is_global and not address.is_reserved:
        return "public"
    return "private network" if any(address in network for network in _PRIVATE_NETWORKS) else "special-purpose"


async def system_resolver(host: str) -> list[IPAddress]:
    """The addresses the system's resolver gives `host` (as a connection would find them), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


class Guard:
    """One set of host rules and the resolver it uses; makes HTTP clients whose every connection follows them.

    ```python
    guard = Guard(HostRules.of(settings.tools.outbound))
    async with guard.httpx_client(timeout=10) as client:
        await client.get(url)  # raises HostRefused for a host the rules refuse, redirects included
    ```
    """

    def __init__(self, rules: HostRules, resolver: Resolver = system_resolver) -> None:
        self.rules = rules
        self.resolver = resolver

    def check_url(self, url: str) -> None:
        """Raises HostRefused unless `url` is an http(s) URL whose host the rules may allow, without resolving it.

        The connection checks the host again, with its addresses: this is for a refusal worded before any request.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise HostRefused(f"only http and https URLs may be opened, not '{url[:100]}'")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise HostRefused(f"the URL '{url[:100]}' names no host")
        self.rules.check_name(host)
        address = _literal(host)
        if address is not None:
            self.rules.check_address(host, address)

    async def addresses(self, host: str, timeout: float | None = None) -> list[IPAddress]:
        """The addresses to connect to for `host`, each one checked: resolved once, here, and never again.

        Raises HostRefused for a host the rules refuse, one that does not resolve, or one that takes longer
        than `timeout` to.
        """
        host = host.rstrip(".").lower()
        self.rules.check_name(host)
        address = _literal(host)
        if address is not None:
            found: Sequence[IPAddress] = [address]
        else:
            seconds = timeout or _RESOLVE_SECONDS
            try:
                async with asyncio.timeout(seconds):
                    found = await self.resolver(host)
            except TimeoutError:
                raise HostRefused(f"the host '{host}' did not resolve within {seconds:g} s") from None
            except OSError:
                found = []
            if not found:
                raise HostRefused(f"the host '{host}' does not resolve to any address")
        unique = list(dict.fromkeys(found))
        for candidate in unique:
            self.rules.check_address(host, candidate)
        return unique

    def httpx_client(self, verify: ssl.SSLContext | bool = True, **kwargs: Any) -> Any:
        """An `httpx.AsyncClient` (`verify` and keyword arguments as its own) whose connections go through
        this guard."""
        import httpcore
        import httpx

        return httpx.AsyncClient(transport=self._transport(httpx, httpcore, verify), trust_env=False, **kwargs)

    def httpx2_client(self, verify: ssl.SSLContext | bool = True, **kwargs: Any) -> Any:
        """An `httpx2.AsyncClient`, as `httpx_client` (the `mcp` package's clients are httpx2's)."""
        import httpcore2
        import httpx2

        return httpx2.AsyncClient(transport=self._transport(httpx2, httpcore2, verify), trust_env=False, **kwargs)

    def _transport(self, http: Any, core: Any, verify: ssl.SSLContext | bool) -> Any:
        # httpx's transport takes no network backend, so the connection pool it makes is replaced by one made
        # as it makes it (the default limits, TLS verified as httpx verifies it) whose connections are pinned.
        context = http.create_ssl_context(verify=verify)
        limits = http.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        transport = http.AsyncHTTPTransport(verify=context, limits=limits)
        transport._pool = core.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(self, core.AnyIOBackend()),
        )
        return transport


class _PinnedBackend:
    """A network backend of httpcore's (or httpcore2's: the two share the interface) that connects to a host
    through `Guard.addresses`: to one of the addresses it checked, tried in the resolver's order."""

    def __init__(self, guard: Guard, backend: Any) -> None:
        self._guard = guard
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:
        addresses = await self._guard.addresses(host, timeout)
        for index, address in enumerate(addresses):
            try:
                return await self._backend.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except Exception:  # the library's ConnectError or ConnectTimeout: the next address, if any
                if index == len(addresses) - 1:
                    raise
        raise AssertionError("unreachable: Guard.addresses returns at least one address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise HostRefused("Unix sockets may not be reached")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _literal(host: str) -> IPAddress | None:
    """The address a host is written as, if it is one (`10.0.0.1`, `::1`, `[::1]`, `fe80::1%eth0`)."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    """A host as `allowed_hosts` compares it: lower-cased, an address in its usual form, a name in IDNA."""
    host = host.strip().rstrip(".").lower()
    address = _literal(host)
    if address is not None:
        return str(address)
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host
