"""The egress allowlist's rules (pure): which destinations a run may reach through the proxy.

A destination is allowed when its name matches an entry of the policy's ``allowed_domains``
(``host``, ``*.suffix`` for any subdomain, optionally ``:port``), its port is 80 or 443 (or the
entry's own port), it is a name and not an IP literal, and every address it resolves to is
public: loopback, private, shared (CGNAT), link-local (169.254.169.254, the cloud metadata
service, included), multicast, reserved and unspecified addresses are refused, so a name cannot
be pointed at the host or its network (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_PORTS = frozenset({80, 443})


@dataclass(frozen=True)
class Verdict:
    """The proxy's decision on one destination.

    Attributes:
        allowed: whether to connect.
        reason: why not (for the refusal and the run's ``network:`` violation).
        address: the address to dial when allowed (the one that passed the checks).
    """

    allowed: bool
    reason: str = ""
    address: str | None = None


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def is_public(address: str) -> bool:
    """Whether an address may be dialled: not loopback, private, link-local, reserved, ..."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _entry_matches(entry: str, host: str, port: int) -> bool:
    name, _, entry_port = entry.partition(":")
    if entry_port:
        if int(entry_port) != port:
            return False
    elif port not in DEFAULT_PORTS:
        return False
    if name.startswith("*."):
        return host.endswith(name[1:])  # "*.example.com": subdomains, not example.com itself
    return host == name


def name_verdict(host: str, port: int, allowed: Sequence[str]) -> Verdict:
    """Judge a destination by its name and port alone (before resolving it)."""
    host = host.lower().rstrip(".")
    if is_ip_literal(host):
        return Verdict(False, "IP addresses are not allowed: use a name from the allowlist")
    if not 0 < port < 65536:
        return Verdict(False, f"port {port} is not a port")
    if any(_entry_matches(entry, host, port) for entry in allowed):
        return Verdict(True)
    if any(_entry_matches(entry, host, p) for entry in allowed for p in DEFAULT_PORTS):
        return Verdict(
            False, f"port {port} is not allowed for {host} (only 80 and 443 unless listed)"
        )
    return Verdict(False, f"{host} is not in the policy's allowed_domains")


def address_verdict(host: str, addresses: Iterable[str], pinned: bool = False) -> Verdict:
    """Pick the first public address ``host`` resolved to; refuse when there is none.

    A pinned name (a test-only mapping to a server of our own) skips the public check.
    """
    found = list(addresses)
    if not found:
        return Verdict(False, f"{host} does not resolve")
    for address in found:
        if pinned or is_public(address):
            return Verdict(True, address=address)
    return Verdict(False, f"{host} resolves to a private, loopback or link-local address")
