"""Which hosts a server-side tool may reach: one check for every outbound request a request or a model names.

A URL that a caller or a model chose (a page the model opens) is checked
before each request, redirects included: its scheme, its host against an
allow-list, and every address its host resolves to, so that a name pointing
at this machine or at a private network is refused like the address itself.
MCP servers follow the same rules in `mcp_client` (`allowed_hosts`,
`allow_loopback`); the hardening issue makes one guard of the two.

What this does not do: pin the address it checked for the connection that
follows, so a host whose DNS answer changes between the two (DNS rebinding)
is not caught here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

# Names that always reach this machine, whatever the resolver says.
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class HostRefused(Exception):
    """The URL may not be reached; the message says why, naming the host."""


@dataclass(frozen=True, slots=True)
class HostRules:
    """The hosts outbound requests may reach.

    `allowed_hosts`: names (or addresses) requests may name, without regard to
    case; None allows every host. `allow_loopback`: this machine (localhost,
    127.0.0.0/8, ::1, and the unspecified addresses, which reach it too).
    `allow_private`: every other address that is not public: private
    networks, link-local (169.254.0.0/16, where cloud metadata services
    answer), shared, reserved and multicast ranges.
    """

    allowed_hosts: frozenset[str] | None = None
    allow_loopback: bool = False
    allow_private: bool = False

    @classmethod
    def of(cls, allowed_hosts: list[str] | None, allow_loopback: bool, allow_private: bool) -> HostRules:
        hosts = None if allowed_hosts is None else frozenset(host.lower().strip("[]") for host in allowed_hosts)
        return cls(hosts, allow_loopback, allow_private)


async def check_url(url: str, rules: HostRules) -> None:
    """Raises HostRefused unless `url` is an http(s) URL whose host the rules allow, by name and by every address
    the name resolves to. A name that does not resolve passes: the request that follows fails on its own."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise HostRefused(f"only http and https URLs may be opened, not '{url[:100]}'")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise HostRefused(f"the URL '{url[:100]}' names no host")
    if rules.allowed_hosts is not None and host not in rules.allowed_hosts:
        raise HostRefused(f"the host '{host}' is not among the allowed hosts")
    if host in _LOOPBACK_NAMES:
        addresses = [ipaddress.ip_address("127.0.0.1")]
    else:
        addresses = await _addresses(host)
    for address in addresses:
        kind = address_kind(address)
        if kind == "loopback" and not rules.allow_loopback:
            raise HostRefused(f"the host '{host}' is on this machine, which may not be reached")
        if kind == "private" and not rules.allow_private:
            raise HostRefused(
                f"the host '{host}' has a private or non-public address ({address}), which may not be reached"
            )


def address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """`loopback`, `private` (not public, and not this machine), or `public`.

    An IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo) is judged by the IPv4 address it reaches.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            address = embedded
    if address.is_loopback or address.is_unspecified:
        return "loopback"
    if not address.is_global or address.is_multicast or address.is_reserved or address.is_link_local:
        return "private"
    return "public"


async def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.split("%", 1)[0])]  # an IPv6 scope (`fe80::1%eth0`) is no part of it
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
