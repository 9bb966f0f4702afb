"""The client's IP address behind proxies, without trusting what a client can forge.

Framework-free: the Starlette and Flask integrations both use it. The rule: the address is the
peer's, unless the peer is a *trusted proxy*; then the forwarded chain (RFC 7239 ``Forwarded``,
or else ``X-Forwarded-For``) is walked from the right — the hops our own proxies appended — to the
first address that is not a trusted proxy. Entries a client wrote itself sit further left and are
never reached while an untrusted hop stands between. A malformed, obfuscated or oversized chain is
never followed past the last address that could be verified, and never raises.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from versioning.errors import ConfigurationError

__all__ = ["MAX_HEADER_LENGTH", "MAX_HOPS", "TrustedProxies", "client_ip", "parse_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Forwarded headers longer than this (all values together) are not followed at all.
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
                networks.append(ipaddress.ip_network(entry, strict=False))
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"trusted_proxies entry {entry!r} is not an IP address or network; use e.g. "
                    f"'10.0.0.1', '10.0.0.0/8' or '2001:db8::/32'"
                ) from None
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
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
        if not port.isdigit():
            return None
        value = host
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return address


def _forwarded_for(values: Sequence[str]) -> list[str] | None:
    """The ``for=`` of each element of RFC 7239 ``Forwarded`` headers, in order."""
    hops: list[str] = []
    for value in values:
        for element in value.split(","):
            found = None
            for pair in element.split(";"):
                name, sep, param = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    found = param
            if found is None:
                return None  # an element without for= cannot be attributed: stop trusting
            hops.append(found)
    return hops


def _hops(forwarded: Sequence[str], x_forwarded_for: Sequence[str]) -> list[str] | None:
    if sum(len(v) for v in forwarded) + sum(len(v) for v in x_forwarded_for) > MAX_HEADER_LENGTH:
        return None
    if forwarded:
        return _forwarded_for(forwarded)
    return [hop for value in x_forwarded_for for hop in value.split(",")]


def client_ip(
    peer: str | None,
    trusted: TrustedProxies,
    forwarded: Sequence[str] = (),
    x_forwarded_for: Sequence[str] = (),
) -> str | None:
    """The client address of a request, as a normalised string, or ``None`` if unknown.

    ``peer`` is the address of the socket's other end; ``forwarded`` and ``x_forwarded_for`` are
    the values of those headers (all occurrences, in order).
    """
    address = parse_ip(peer) if peer is not None else None
    if address is None:
        return None
    if address not in trusted or not (forwarded or x_forwarded_for):
        return str(_unmapped(address))
    hops = _hops(forwarded, x_forwarded_for)
    if hops is None:
        return str(_unmapped(address))
    for count, hop in enumerate(reversed(hops)):
        if count >= MAX_HOPS:
            break
        candidate = parse_ip(hop)
        if candidate is None:
            break  # cannot verify anything further left
        address = candidate
        if address not in trusted:
            break
    return str(_unmapped(address))


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
