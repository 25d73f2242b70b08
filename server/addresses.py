"""Where Podium may connect to: the classification of IP addresses shared by the outbound
guards of webhooks (:mod:`podium.server.events.ssrf`) and agents
(:mod:`podium.server.agents.endpoints`), and the operator allow-list of agent targets
(``PODIUM_AGENT_ALLOWED_NETWORKS``).

A neutral module below every layer (it imports nothing of Podium): the configuration
parses the allow-list with it, events and agents classify addresses with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = [
    "LOOPBACK",
    "METADATA_HOSTS",
    "Address",
    "AllowList",
    "address_problem",
    "parse_allow_list",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")

METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
"""Names of cloud metadata services: refused as hosts unless the allow-list names them
(their addresses are link-local or private, refused anyway)."""


def address_problem(address: Address) -> str | None:
    """Why ``address`` is not a public unicast address (e.g. ``"loopback"``), or None.

    IPv6 addresses that embed an IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64) are
    judged by the embedded address too.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(embedded)
            if problem is not None:
                return f"{problem} (embedded in {address})"
        if address.is_site_local:
            return "site-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class AllowList:
    """Non-public targets an operator admits for agents.

    Attributes:
        networks: an address in one of them is admitted whatever its kind (an
            IPv4-mapped IPv6 address is matched as its IPv4 address).
        hosts: host names admitted whatever they resolve to; ``.example.internal``
            (leading dot) admits every name under that domain.
    """

    networks: tuple[Network, ...] = ()
    hosts: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ",".join([*(str(n) for n in self.networks), *self.hosts])

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts)

    def admits_address(self, address: Address) -> bool:
        """Whether ``address`` is in an allowed network."""
        plain = _unmapped(address)
        return any(plain.version == net.version and plain in net for net in self.networks)

    def admits_host(self, host: str) -> bool:
        """Whether the host name ``host`` is allowed by name."""
        name = host.lower().rstrip(".")
        for allowed in self.hosts:
            if allowed.startswith("."):
                if name.endswith(allowed) or name == allowed[1:]:
                    return True
            elif name == allowed:
                return True
        return False


LOOPBACK = AllowList(
    networks=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
)
"""The loopback networks: agents on this machine (demos, tests, a development server)."""


def parse_allow_list(raw: str) -> AllowList:
    """Parse comma-separated CIDRs (``10.0.0.0/8``), single addresses (``10.1.2.3``,
    ``::1``), host names (``agents.internal``) and domains (``.svc.cluster.local``);
    ``loopback`` stands for 127.0.0.0/8 and ::1. Raises ValueError naming the entry."""
    networks: list[Network] = []
    hosts: list[str] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        if entry.lower() == "loopback":
            networks.extend(LOOPBACK.networks)
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        label = name.removeprefix(".")
        if (
            not label
            or len(label) > 253
            or not all(part and len(part) <= 63 for part in label.split("."))
            or not all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in label)
            or "/" in entry
        ):
            raise ValueError(
                f"{entry!r} is neither a network (10.0.0.0/8, ::1), a host name "
                "(agents.internal) nor a domain (.svc.cluster.local)"
            )
        hosts.append(name)
    return AllowList(networks=tuple(networks), hosts=tuple(hosts))
