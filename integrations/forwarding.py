"""The client's IP address behind proxies, without trusting what a client can forge.

Framework-free: the Starlette and Flask integrations both use it. The rule: the address is the
peer's, unless the peer is a *trusted proxy*; then the forwarded chain (``X-Forwarded-For``, or
RFC 7239 ``Forwarded`` — whichever one header the proxies maintain) is walked from the right —
the hops our own proxies appended — to the first address that is not a trusted proxy. Entries a
client wrote itself sit further left and are never reached while an untrusted hop stands between.
Only the tail of a header is read, and a malformed or obfuscated hop is never followed past: the
result is the last address that could be verified. Nothing here raises on header content.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from versioning.errors import ArgumentError, ConfigurationError

__all__ = [
    "MAX_HEADER_LENGTH",
    "MAX_HOPS",
    "TrustedProxies",
    "client_ip",
    "parse_ip",
    "proxied_client_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Of each forwarded header value, only the last this-many characters are read.
MAX_HEADER_LENGTH = 4096
#: At most this many hops are walked.
MAX_HOPS = 32


class TrustedProxies:
    """A set of proxy addresses and networks, e.g. ``["10.0.0.0/8", "::1"]``.

    Invalid entries raise :class:`versioning.ConfigurationError` here, when the app is set up.
    """

    __slots__ = ("_networks",)

    def __init__(self, proxies: Iterable[str | IPAddress | IPNetwork] = ()) -> None:
        if isinstance(proxies, str):
            raise ConfigurationError(
                f"trusted_proxies must be a list of addresses or networks, not the string "
                f"{proxies!r}; write [{proxies!r}]"
            )
        networks: list[IPNetwork] = []
        for entry in proxies:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"trusted_proxies entry {entry!r} is not an IP address or network; use e.g. "
                    f"'10.0.0.1', '10.0.0.0/8' or '2001:db8::/32'"
                ) from None
            networks.append(_unmapped_network(network))
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self._networks]!r})"


def parse_ip(text: str) -> IPAddress | None:
    """An address from a header or socket value: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``.

    ``None`` for anything else (names, ``unknown``, obfuscated ``_identifiers``, garbage).
    """
    value = text.strip().strip('"').strip()
    if not value or len(value) > 64:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        rest = value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()):
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
        if not (port.isascii() and port.isdigit()):
            return None
        value = host
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return address


def _forwarded_for(element: str) -> str:
    """The ``for=`` of one element of an RFC 7239 ``Forwarded`` header ('' if it has none)."""
    found = ""
    for pair in element.split(";"):
        name, sep, param = pair.partition("=")
        if sep and name.strip().lower() == "for":
            found = param
    return found


def _last_hops(values: Sequence[str]) -> list[str]:
    """The last :data:`MAX_HOPS` comma-separated entries of the header values, right first.

    Only the tail is read: what a client writes at the left end — padding included — is never
    looked at, so it can neither slow us down nor hide the hops our proxies appended.
    """
    hops: list[str] = []
    for value in reversed(values):
        tail = value[-MAX_HEADER_LENGTH:]
        entries = tail.split(",")
        cut = len(tail) < len(value)
        if cut:
            entries = entries[1:]  # the first entry of a cut tail may be cut too
        for entry in reversed(entries):
            hops.append(entry)
            if len(hops) == MAX_HOPS:
                return hops
        if cut:
            hops.append("")  # what was cut off cannot be verified: the walk stops here
            return hops
    return hops


def client_ip(
    peer: str | None,
    trusted: TrustedProxies,
    forwarded: Sequence[str] = (),
    x_forwarded_for: Sequence[str] = (),
) -> str | None:
    """The client address of a request, as a normalised string, or ``None`` if unknown.

    ``peer`` is the address of the socket's other end; ``forwarded`` and ``x_forwarded_for`` are
    the values of those headers (all occurrences, in order); ``forwarded`` wins when both are
    given. Pass only the header your proxies maintain (the integrations do): a client can always
    send the other one itself.
    """
    if isinstance(forwarded, str) or isinstance(x_forwarded_for, str):
        raise ArgumentError("client_ip() takes the header values as a list of strings")
    address = parse_ip(peer) if peer is not None else None
    if address is None:
        return None
    if address not in trusted or not (forwarded or x_forwarded_for):
        return str(_unmapped(address))
    if forwarded:
        hops = [_forwarded_for(element) for element in _last_hops(forwarded)]
    else:
        hops = _last_hops(x_forwarded_for)
    for hop in hops:
        candidate = parse_ip(hop)
        if candidate is None:
            break  # cannot verify anything further left
        address = candidate
        if address not in trusted:
            break
    return str(_unmapped(address))


def proxied_client_ip(
    peer: str | None, trusted: TrustedProxies, values: Sequence[str], rfc7239: bool
) -> str | None:
    """:func:`client_ip` reading the one header the proxies maintain (``values`` are its own)."""
    if rfc7239:
        return client_ip(peer, trusted, forwarded=values)
    return client_ip(peer, trusted, x_forwarded_for=values)


def _unmapped_network(network: IPNetwork) -> IPNetwork:
    """``::ffff:10.0.0.0/104`` is the IPv4 network ``10.0.0.0/8``: compare it as such."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    return network


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
