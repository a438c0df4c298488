"""Which SIP gateways a request may point LiveKit at.

LiveKit sends SIP, and the provider's digest credentials, to `outboundPstn`. A target inside
the platform (loopback, link-local, cloud metadata, a private network) would turn Trunkline
into a way of reaching it. The check is on the text alone: nothing is resolved at request
time (LiveKit resolves later, from its own network), so a hostname is refused only when its
name says it is internal.

Refused by default:
- IP literals in loopback, unspecified, link-local (169.254/16, which holds the AWS, GCP and
  Azure metadata address 169.254.169.254, and fe80::/10), private (10/8, 172.16/12,
  192.168/16, fc00::/7, which holds AWS's fd00:ec2::254), shared address space (100.64/10,
  which holds Alibaba's metadata address 100.100.100.200), multicast, reserved and
  broadcast ranges, and IPv6 addresses that embed a refused IPv4 address (IPv4-mapped,
  NAT64, 6to4);
- numeric spellings of IPv4 other than a.b.c.d (`2130706433`, `0x7f000001`, `0177.0.0.1`,
  `127.1`): resolvers read them as addresses;
- the names `localhost`, `*.localhost`, `metadata`, `metadata.goog`, `*.internal`.

`TRUNKLINE_GATEWAY_ALLOWLIST` (IP networks and hostnames, comma-separated) lets operators
whose gateways really are on a private network allow exactly those.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REFUSED_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
    "240.0.0.0/4"))
_REFUSED_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8"))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
_INTERNAL_NAMES = ("localhost", "metadata", "metadata.goog")
_INTERNAL_SUFFIXES = (".localhost", ".internal")


@dataclass(frozen=True)
class GatewayPolicy:
    """The operator's exceptions to the refusals above."""

    networks: tuple[IPNetwork, ...] = ()
    hostnames: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> GatewayPolicy:
        """From TRUNKLINE_GATEWAY_ALLOWLIST's items; ValueError names a bad one."""
        networks: list[IPNetwork] = []
        hostnames: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not re.fullmatch(r"[a-z0-9.-]{1,253}", entry):
                    raise ValueError(f"{raw.strip()!r} is neither an IP network nor a "
                                     "hostname") from None
                hostnames.add(entry.rstrip("."))
        return cls(tuple(networks), frozenset(hostnames))

    def check(self, host: str) -> None:
        """Raise ValueError, saying why, for a host LiveKit must not be sent to."""
        name = host.lower().rstrip(".")
        try:
            address: IPAddress = ipaddress.ip_address(name)
        except ValueError:
            self._check_name(name)
            return
        if any(address in network for network in self.networks):
            return
        reason = _refusal(address)
        if reason is not None:
            raise ValueError(f"points inside the platform ({reason}); set "
                             "TRUNKLINE_GATEWAY_ALLOWLIST to allow a private gateway")

    def _check_name(self, name: str) -> None:
        if name in self.hostnames:
            return
        last = name.rsplit(".", 1)[-1]
        if _NUMERIC_LABEL.match(last):
            raise ValueError("is a numeric or hex spelling of an IPv4 address; write the "
                             "address as four decimal numbers, a.b.c.d")
        if name in _INTERNAL_NAMES or name.endswith(_INTERNAL_SUFFIXES):
            raise ValueError("names a host inside the platform; set "
                             "TRUNKLINE_GATEWAY_ALLOWLIST to allow a private gateway")


def _refusal(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv4Address):
        for network in _REFUSED_V4:
            if address in network:
                return f"{address} is in {network}"
        return None
    for network6 in _REFUSED_V6:
        if address in network6:
            return f"{address} is in {network6}"
    embedded = _embedded_v4(address)
    if embedded is not None:
        return _refusal(embedded)
    return None


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    # IPv4-compatible (::a.b.c.d, deprecated but still parsed by resolvers)
    if int(address) >> 32 == 0:
        return ipaddress.IPv4Address(int(address))
    return None
