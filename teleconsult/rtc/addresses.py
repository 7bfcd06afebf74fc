"""Which remote addresses the server's WebRTC peer may send ICE checks to (pure).

A client's offer may name any address as a candidate, and the server's ICE
agent would send STUN binding requests there: to its own loopback services
(``127.0.0.1:5432``), the cloud metadata service (``169.254.169.254``) or hosts
of its private network. As coturn's ``denied-peer-ip`` does, the server contacts
only globally routable unicast addresses, plus the networks an operator allows
(``RTC_ALLOWED_PEER_NETWORKS``: a LAN deployment, or tests on loopback).
Unspecified, multicast and broadcast addresses are never contacted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: embeds an IPv4 address
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def is_mdns_name(host: str) -> bool:
    """An mDNS host name (``<uuid>.local``), as browsers put in host candidates."""
    return host.lower().rstrip(".").endswith(".local")


def parse_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def kind_of(address: Address) -> str | None:
    """What makes an address unfit for ICE checks by default; None for public unicast."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:  # reaches the IPv4 address through the host or NAT64
            return kind_of(embedded)
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address == _BROADCAST:
        return "broadcast"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address in _SHARED:
        return "shared (carrier-grade NAT)"
    if isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL:
        return "unique-local"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


_NEVER = frozenset({"unspecified", "multicast", "broadcast"})


@dataclass(frozen=True)
class PeerAddressPolicy:
    """Public unicast addresses, plus ``allowed`` networks (never unspecified,
    multicast or broadcast)."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def of(cls, networks: Sequence[Network]) -> PeerAddressPolicy:
        return cls(tuple(networks))

    def refusal(self, host: str) -> str | None:
        """None when ICE may contact ``host``; otherwise why not (for logs and errors)."""
        if is_mdns_name(host):
            return "mDNS name"
        address = parse_address(host)
        if address is None:
            return "not an IP address"
        kind = kind_of(address)
        if kind is None:
            return None
        if kind in _NEVER:
            return kind
        targets = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            targets.append(address.ipv4_mapped)
        if any(t in network for t in targets for network in self.allowed):
            return None
        return kind
