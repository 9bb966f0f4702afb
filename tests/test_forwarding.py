"""Client address behind proxies (``versioning.integrations.forwarding``) and request ids
(``versioning.integrations.request_id``, and who may choose one: ``RequestAudit.request_id``).
Pure functions: no database, no web framework.

The threat model: the peer (the socket's other end) cannot be forged; everything in
``X-Forwarded-For`` / ``Forwarded`` can, except the hops our own trusted proxies appended on the
right. So the answer is the peer unless it is a trusted proxy, then the first untrusted hop from
the right; a value written by the client never wins while an untrusted hop stands between.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import random
import re
import string
from collections.abc import Callable, Sequence

import pytest

from versioning import ConfigurationError, VersioningError
from versioning.integrations import request_id
from versioning.integrations.forwarding import (
    MAX_HOPS,
    TrustedProxies,
    client_ip,
    parse_ip,
)
from versioning.integrations.request_audit import UNTRUSTED_REQUEST_ID as UNTRUSTED
from versioning.integrations.request_audit import RequestAudit

# Our proxies: a private v4 range, one single v4 proxy, a v6 range and the v6 loopback.
PROXIES = TrustedProxies(["10.0.0.0/8", "192.168.1.7", "2001:db8:cafe::/48", "::1"])
CLIENT = "203.0.113.5"
CLIENT6 = "2001:db8:1::5"
ATTACKER = "198.51.100.66"
# CLIENT written with other Unicode digits, which str.isdigit() accepts but an address may not use
FULLWIDTH_CLIENT = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in CLIENT)
ARABIC_INDIC_CLIENT = "".join(chr(ord(c) + 0x0630) if c.isdigit() else c for c in CLIENT)


def ip(
    peer: str | None,
    *,
    xff: Sequence[str] = (),
    fwd: Sequence[str] = (),
    trusted: TrustedProxies = PROXIES,
) -> str | None:
    return client_ip(peer, trusted, forwarded=fwd, x_forwarded_for=xff)


# --- the peer alone ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (CLIENT, CLIENT),
        (CLIENT6, CLIENT6),
        ("2001:0DB8:0001:0000:0000:0000:0000:0005", CLIENT6),
        ("10.0.0.1", "10.0.0.1"),  # a trusted proxy talking to us itself, no header
        ("::1", "::1"),
    ],
)
def test_peer_without_forwarded_headers(peer: str, expected: str) -> None:
    assert ip(peer) == expected
    assert ip(peer, trusted=TrustedProxies()) == expected


def test_no_proxy_is_trusted_by_default() -> None:
    assert not TrustedProxies()
    assert PROXIES
    for peer in ("10.0.0.1", "127.0.0.1", "::1"):
        assert client_ip(peer, TrustedProxies(), x_forwarded_for=[CLIENT]) == peer
        assert client_ip(peer, TrustedProxies(), forwarded=[f"for={CLIENT}"]) == peer


# --- an untrusted peer: headers are the client's words -----------------------------------------


@pytest.mark.parametrize("peer", [CLIENT, CLIENT6, "192.168.1.8", "11.0.0.1", "2001:db8:cafd::1"])
@pytest.mark.parametrize(
    "headers",
    [
        {"xff": ["10.0.0.9"]},
        {"xff": [ATTACKER]},
        {"xff": [f"{ATTACKER}, 10.0.0.2"]},
        {"xff": ["2001:db8:cafe::9"]},
        {"fwd": [f"for={ATTACKER}"]},
        {"fwd": ['for="[2001:db8:cafe::9]:443"']},
        {"fwd": [f"for={ATTACKER}"], "xff": ["10.0.0.9"]},
    ],
)
def test_untrusted_peer_ignores_spoofed_headers(peer: str, headers: dict[str, list[str]]) -> None:
    assert ip(peer, **headers) == str(ipaddress.ip_address(peer))


# --- trusted proxies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("10.0.0.1", {"xff": [CLIENT]}, CLIENT),
        ("10.0.0.1", {"xff": [CLIENT6]}, CLIENT6),
        ("::1", {"xff": [CLIENT]}, CLIENT),
        ("2001:db8:cafe::1", {"xff": [CLIENT6]}, CLIENT6),
        ("192.168.1.7", {"xff": [f" {CLIENT} "]}, CLIENT),
        ("10.0.0.1", {"fwd": [f"for={CLIENT}"]}, CLIENT),
        ("::1", {"fwd": [f'for="[{CLIENT6}]"']}, CLIENT6),
    ],
)
def test_trusted_peer_with_one_hop_gives_that_hop(
    peer: str, headers: dict[str, list[str]], expected: str
) -> None:
    assert ip(peer, **headers) == expected


@pytest.mark.parametrize(
    ("peer", "chain", "expected"),
    [
        # v4 and v6 proxies, CIDR and single addresses, in one chain
        ("10.1.2.3", f"{CLIENT}, 2001:db8:cafe::10, 192.168.1.7, 10.9.9.9", CLIENT),
        ("2001:db8:cafe::1", f"{CLIENT6}, 10.0.0.5, ::1", CLIENT6),
        ("::1", f"{CLIENT}, 2001:db8:cafe:ffff::2", CLIENT),
        # 192.168.1.7 is trusted, its neighbour 192.168.1.8 is not
        ("10.0.0.1", f"{CLIENT}, 192.168.1.8, 192.168.1.7", "192.168.1.8"),
        # just outside 2001:db8:cafe::/48
        ("10.0.0.1", f"{CLIENT}, 2001:db8:cafd::1, 10.0.0.2", "2001:db8:cafd::1"),
        # the first untrusted from the right wins; what lies further left is not looked at
        ("10.0.0.1", f"9.9.9.9, {CLIENT}, 10.0.0.2", CLIENT),
    ],
)
def test_chain_through_trusted_proxies_gives_first_untrusted_from_the_right(
    peer: str, chain: str, expected: str
) -> None:
    assert ip(peer, xff=[chain]) == expected
    elements = ", ".join(
        f'for="[{hop}]"' if ":" in hop else f"for={hop}" for hop in chain.split(", ")
    )
    assert ip(peer, fwd=[elements]) == expected


@pytest.mark.parametrize(
    "written_by_client",
    [CLIENT, "10.0.0.99", "192.168.1.7", "::1", "2001:db8:cafe::5", "127.0.0.1"],
)
def test_client_written_leftmost_value_behind_an_untrusted_hop_is_never_returned(
    written_by_client: str,
) -> None:
    # The attacker sends "X-Forwarded-For: <anything>"; our proxy appends the attacker's address.
    assert ip("10.0.0.1", xff=[f"{written_by_client}, {ATTACKER}"]) == ATTACKER
    assert ip("10.0.0.1", xff=[written_by_client, ATTACKER]) == ATTACKER
    # ... and through a second trusted proxy
    assert ip("10.0.0.1", xff=[f"{written_by_client}, {ATTACKER}, 10.0.0.2"]) == ATTACKER
    assert ip("10.0.0.1", fwd=[f'for="{written_by_client}", for={ATTACKER}']) == ATTACKER


def test_all_hops_trusted_gives_the_leftmost_hop() -> None:
    assert ip("10.0.0.1", xff=["10.0.0.7, 192.168.1.7, 10.0.0.8"]) == "10.0.0.7"
    assert ip("::1", xff=["2001:db8:cafe::7, ::1"]) == "2001:db8:cafe::7"
    assert ip("10.0.0.1", fwd=["for=10.0.0.7, for=10.0.0.8"]) == "10.0.0.7"


def test_several_header_occurrences_are_concatenated_in_order() -> None:
    # the last occurrence holds the rightmost hops
    assert ip("10.0.0.1", xff=[ATTACKER, CLIENT]) == CLIENT
    assert ip("10.0.0.1", xff=[CLIENT, ATTACKER]) == ATTACKER
    assert ip("10.0.0.1", xff=[f"{ATTACKER}, {CLIENT}", "10.0.0.3", "10.0.0.2"]) == CLIENT
    assert ip("10.0.0.1", xff=[CLIENT, "10.0.0.3, 10.0.0.2"]) == CLIENT
    assert ip("10.0.0.1", fwd=[f"for={ATTACKER}", f"for={CLIENT}"]) == CLIENT
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}", "for=10.0.0.3, for=10.0.0.2"]) == CLIENT
    # tuples work as well as lists
    assert ip("10.0.0.1", xff=(ATTACKER, CLIENT)) == CLIENT


def test_hop_limit_stops_a_long_trusted_chain_at_a_hop() -> None:
    hops = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(MAX_HOPS + 8)]
    result = ip("10.0.0.1", xff=[", ".join([CLIENT, *hops])])
    # never walked past MAX_HOPS hops: the answer is a hop, not the client far on the left
    assert result == hops[-MAX_HOPS]


# --- RFC 7239 Forwarded ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        (f"for={CLIENT}", CLIENT),
        (f'for="{CLIENT}"', CLIENT),
        (f'for="{CLIENT}:8080"', CLIENT),
        (f'for="[{CLIENT6}]"', CLIENT6),
        (f'for="[{CLIENT6}]:4711"', CLIENT6),
        ('for="[2001:DB8:1:0:0:0:0:5]:4711"', CLIENT6),
        (f"For={CLIENT}", CLIENT),
        (f"FOR={CLIENT}", CLIENT),
        (f"fOr={CLIENT};Proto=https;BY=10.0.0.1", CLIENT),
        (f"proto=https;for={CLIENT};host=example.com", CLIENT),
        (f"by=10.0.0.1; for={CLIENT}", CLIENT),
        (f"for=::ffff:{CLIENT}", CLIENT),
    ],
)
def test_forwarded_for_syntax(element: str, expected: str) -> None:
    assert ip("10.0.0.1", fwd=[element]) == expected
    assert ip("10.0.0.1", fwd=[f"{element}, for=10.0.0.2"]) == expected


@pytest.mark.parametrize("hidden", ["unknown", "_hidden", '"_SEVKISEK"', "UNKNOWN", '"unknown"'])
def test_forwarded_unknown_or_obfuscated_hop_stops_the_walk(hidden: str) -> None:
    # Nothing left of an unverifiable hop is believed: the answer is the last verified address.
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}, for={hidden}"]) == "10.0.0.1"
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}, for={hidden}, for=10.0.0.3"]) == "10.0.0.3"
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}, for={hidden}, for={ATTACKER}"]) == ATTACKER
    # the same in X-Forwarded-For
    bare = hidden.strip('"')
    assert ip("10.0.0.1", xff=[f"{CLIENT}, {bare}, 10.0.0.3"]) == "10.0.0.3"


def test_forwarded_element_without_for_written_by_our_proxy_is_not_attributed() -> None:
    # The rightmost element is our proxy's: it says nothing about the client.
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}, proto=https"]) == "10.0.0.1"
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}", "proto=https;by=10.0.0.1"]) == "10.0.0.1"
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}, "]) == "10.0.0.1"


def test_forwarded_element_without_for_written_by_the_client_does_not_hide_the_client() -> None:
    # The client sends "Forwarded: proto=http"; our proxy appends ", for=<client>". The client's
    # element is to the left of a verified untrusted hop and must not matter — otherwise any
    # client erases its own address from the audit trail (recorded as our proxy's address).
    assert ip("10.0.0.1", fwd=[f"proto=http, for={CLIENT}"]) == CLIENT
    assert ip("10.0.0.1", fwd=["proto=http", f"for={CLIENT}"]) == CLIENT
    assert ip("10.0.0.1", fwd=[f"garbage, for={CLIENT}, for=10.0.0.2"]) == CLIENT


def test_forwarded_is_preferred_over_x_forwarded_for() -> None:
    # A proxy maintaining Forwarded; the client forged X-Forwarded-For, passed through untouched.
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}"], xff=[ATTACKER]) == CLIENT
    assert ip("10.0.0.1", fwd=[f"for={CLIENT}"], xff=[f"{CLIENT}, {ATTACKER}"]) == CLIENT


# --- garbage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ([""], "10.0.0.1"),
        ([" "], "10.0.0.1"),
        ([","], "10.0.0.1"),
        ([",,"], "10.0.0.1"),
        ([f"{CLIENT},,"], "10.0.0.1"),
        ([f"{CLIENT},,10.0.0.2"], "10.0.0.2"),
        ([f"{CLIENT}, , 10.0.0.2"], "10.0.0.2"),
        (["not-an-ip"], "10.0.0.1"),
        ([f"{CLIENT}, localhost"], "10.0.0.1"),
        ([f"{CLIENT}, 10.0.0.2, example.com"], "10.0.0.1"),
        (["1.2.3"], "10.0.0.1"),
        (["256.1.1.1"], "10.0.0.1"),
        (["01.2.3.4"], "10.0.0.1"),
        (["1.2.3.4/24"], "10.0.0.1"),
        (["2001:db8::1::2"], "10.0.0.1"),
        (["[::1"], "10.0.0.1"),
        ([f"[{CLIENT6}]x"], "10.0.0.1"),
        ([f"{CLIENT}:"], "10.0.0.1"),
        ([f"{CLIENT}:http"], "10.0.0.1"),
        ([f"[{CLIENT6}]:"], "10.0.0.1"),
        ([f"{CLIENT}:80:90"], "10.0.0.1"),
        (["9" * 5000], "10.0.0.1"),
        (["x" * 10_000], "10.0.0.1"),
        ([f"{CLIENT}" + "0" * 100], "10.0.0.1"),
        ([f"{CLIENT}\x00"], "10.0.0.1"),
        ([f"{CLIENT}\r\nX-Injected: 1"], "10.0.0.1"),
        ([f"\x00{CLIENT}"], "10.0.0.1"),
        (["\x7f\x1b[31m"], "10.0.0.1"),
        ([FULLWIDTH_CLIENT], "10.0.0.1"),
        ([ARABIC_INDIC_CLIENT], "10.0.0.1"),
        ([f"{CLIENT}\u200b"], "10.0.0.1"),  # zero-width space
        (["203.0.113.5é"], "10.0.0.1"),
        (["🙂"], "10.0.0.1"),
        ([f"{CLIENT};{ATTACKER}"], "10.0.0.1"),
        (["fe80::1%eth0"], "10.0.0.1"),  # zone ids are not addresses of a client
        (["[fe80::1%25eth0]:80"], "10.0.0.1"),
        ([f"{ATTACKER}, fe80::1%eth0, 10.0.0.2"], "10.0.0.2"),
    ],
)
def test_garbage_in_x_forwarded_for(xff: list[str], expected: str) -> None:
    assert ip("10.0.0.1", xff=xff) == expected


@pytest.mark.parametrize(
    "fwd",
    [
        [""],
        [","],
        [";"],
        ["for="],
        ["for"],
        ["="],
        ['for=""'],
        ['for="'],
        ['for="[::1'],
        [f"for=[{CLIENT6}]"],  # RFC 7239 wants it quoted; either way never a bogus address
        ["for=for=1.2.3.4"],
        ["for=" + "9" * 5000],
        ["for=\x00"],
        ["\r\n"],
        ["for=" + FULLWIDTH_CLIENT],
        [f"for={CLIENT}\u0301"],
        ["for=_" + "a" * 10_000],
    ],
)
def test_garbage_in_forwarded_never_yields_a_bogus_address(fwd: list[str]) -> None:
    result = ip("10.0.0.1", fwd=fwd)
    assert result in ("10.0.0.1", CLIENT6)


def test_padding_x_forwarded_for_does_not_hide_the_client() -> None:
    # The client pads the header it sends; our proxy appends the client's real address on the
    # right. The padding lies left of a verified untrusted hop, so it must not matter: otherwise
    # any client erases its address from the audit trail (recorded as our proxy's address).
    padded_10k = ["x" * 10_000 + f", {CLIENT}"]
    assert ip("10.0.0.1", xff=padded_10k) == CLIENT
    thousand_hops = [", ".join([ATTACKER] * 1000) + f", {CLIENT}"]
    assert ip("10.0.0.1", xff=thousand_hops) == CLIENT
    assert ip("10.0.0.1", xff=["1," * 3000, CLIENT, "10.0.0.2"]) == CLIENT
    assert ip("10.0.0.1", fwd=[f'for="{"x" * 5000}", for={CLIENT}']) == CLIENT


def test_huge_headers_never_raise_and_never_give_a_client_written_value() -> None:
    headers = [
        ", ".join(["10.0.0.9"] * 1000),
        ", ".join([CLIENT] * 1000),
        "," * 10_000,
        "1" * 10_000,
        "[" * 10_000,
        "\x00" * 10_000,
        "é" * 10_000,
    ]
    for header in headers:
        result = ip("10.0.0.1", xff=[header])
        assert result is not None
        assert result == str(ipaddress.ip_address(result))
        assert result in ("10.0.0.1", "10.0.0.9", CLIENT)
        assert ip("10.0.0.1", fwd=[header]) == "10.0.0.1"
        assert ip(CLIENT6, xff=[header], fwd=[header]) == CLIENT6


# --- address forms -------------------------------------------------------------------------------


def test_ipv4_mapped_ipv6_is_unmapped() -> None:
    # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    assert ip(f"::ffff:{CLIENT}") == CLIENT
    assert ip("::FFFF:CB00:7105") == CLIENT
    # a mapped trusted proxy is trusted
    assert ip("::ffff:10.0.0.1", xff=[CLIENT]) == CLIENT
    assert ip("::ffff:10.0.0.1", xff=[f"::ffff:{CLIENT}"]) == CLIENT
    assert ip("::ffff:10.0.0.1", xff=[f"{ATTACKER}, ::ffff:{CLIENT}, ::ffff:10.0.0.2"]) == CLIENT
    assert ip("10.0.0.1", fwd=[f'for="[::ffff:{CLIENT}]:80"']) == CLIENT
    # a mapped untrusted peer is still untrusted
    assert ip(f"::ffff:{ATTACKER}", xff=[CLIENT]) == ATTACKER


def test_mapped_form_in_trusted_proxies_is_trusted() -> None:
    # Users copy the peer address their dual-stack server logs ("::ffff:10.0.0.1") into
    # trusted_proxies; it must match that peer, or be refused at configuration time.
    for entries in (["::ffff:10.0.0.1"], ["::ffff:10.0.0.0/104"]):
        trusted = TrustedProxies(entries)
        assert client_ip("::ffff:10.0.0.1", trusted, x_forwarded_for=[CLIENT]) == CLIENT
        assert client_ip("10.0.0.1", trusted, x_forwarded_for=[CLIENT]) == CLIENT


@pytest.mark.parametrize("peer", ["fe80::1%eth0", "fe80::1%1", "[fe80::1%25eth0]:80"])
def test_ipv6_zone_ids_are_rejected(peer: str) -> None:
    assert parse_ip(peer) is None
    assert ip(peer) is None
    assert ip("10.0.0.1", xff=[peer]) == "10.0.0.1"
    assert ip("10.0.0.1", fwd=[f'for="{peer}"']) == "10.0.0.1"


@pytest.mark.parametrize("peer", ["testclient", "", "   ", "localhost", "unix:/tmp/s", None])
def test_unparseable_peer_gives_none(peer: str | None) -> None:
    assert ip(peer) is None
    assert ip(peer, xff=[CLIENT]) is None
    assert ip(peer, fwd=[f"for={CLIENT}"]) is None
    assert client_ip(peer, TrustedProxies(["0.0.0.0/0", "::/0"]), x_forwarded_for=[CLIENT]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ('"1.2.3.4:80"', "1.2.3.4"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[::1]:80", "::1"),
        ('"[2001:DB8::1]:4711"', "2001:db8::1"),
        ("2001:0db8:0000::0001", "2001:db8::1"),
        ("::ffff:1.2.3.4", "::ffff:102:304"),  # parse_ip keeps it; client_ip unmaps
    ],
)
def test_parse_ip_accepts(text: str, expected: str) -> None:
    address = parse_ip(text)
    assert address is not None
    assert str(address) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "unknown",
        "_hidden",
        "localhost",
        "1.2.3",
        "1.2.3.4:",
        "1.2.3.4:http",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:http",
        "1.2.3.4/32",
        "fe80::1%eth0",
        "1" * 100,
        "\x00",
    ],
)
def test_parse_ip_rejects(text: str) -> None:
    assert parse_ip(text) is None


# --- configuration -------------------------------------------------------------------------------


def test_trusted_proxies_accepts_addresses_networks_and_objects() -> None:
    entries = [
        "10.0.0.1",
        "172.16.0.0/12",
        "10.20.0.1/16",  # host bits set: the network 10.20.0.0/16
        ipaddress.ip_address("2001:db8::7"),
        ipaddress.ip_network("2001:db8:cafe::/48"),
    ]
    trusted = TrustedProxies(entry for entry in entries)  # any iterable
    for address in ["10.0.0.1", "172.31.255.255", "10.20.99.1", "2001:db8::7", "2001:db8:cafe::9"]:
        assert ipaddress.ip_address(address) in trusted
    for address in ["10.0.0.2", "172.32.0.1", "10.21.0.1", "2001:db8::8", "2001:db8:caff::1"]:
        assert ipaddress.ip_address(address) not in trusted
    assert "10.0.0.1" not in trusted  # only address objects are members
    assert "10.0.0.1/32" in repr(trusted)


@pytest.mark.parametrize("proxies", ["10.0.0.1", "10.0.0.0/8", "::1"])
def test_trusted_proxies_bare_string_is_a_configuration_error(proxies: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(proxies))):
        TrustedProxies(proxies)


@pytest.mark.parametrize(
    "entry",
    ["localhost", "", "10.0.0.0/33", "10.0.0.300", "10.0.0.1-9", "2001:db8::/129", None, 3.5],
)
def test_trusted_proxies_invalid_entry_is_a_configuration_error_naming_it(entry: object) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(entry))) as info:
        TrustedProxies(["10.0.0.1", entry])  # type: ignore[list-item]
    assert isinstance(info.value, VersioningError)


# --- fuzz: structured chains with a known answer -----------------------------------------------

TRUSTED_POOL = [
    "10.0.0.1",
    "10.255.3.4",
    "192.168.1.7",
    "2001:db8:cafe::1",
    "2001:DB8:CAFE:FFFF::2",
    "::1",
    "::ffff:10.1.1.1",
]
UNTRUSTED_POOL = [
    CLIENT,
    ATTACKER,
    "192.168.1.8",
    "11.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    CLIENT6,
    "2001:db8:cafd::1",
    "::2",
    "::",
    "fe80::1",
    "::ffff:203.0.113.9",
    "2001:0db8:0001:0000:0000:0000:0000:abcd",
]
GARBAGE_POOL = [
    "unknown",
    "_hidden",
    "_SEVKISEK",
    "",
    " ",
    "1.2.3",
    "256.1.1.1",
    "01.2.3.4",
    "::g",
    "fe80::1%eth0",
    "[fe80::1%25eth0]:80",
    "10.0.0.1:http",
    "10.0.0.1:",
    "[::1",
    "[::1]x",
    "localhost",
    "2001:db8::1::2",
    "\x00",
    "é",
    FULLWIDTH_CLIENT,
    "1.2.3.4/8",
]


def normalised(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return str(parsed)


def xff_text(rng: random.Random, address: str) -> str:
    port = rng.randint(1, 65535)
    if ":" in address:
        forms = [address, f"[{address}]", f"[{address}]:{port}"]
    else:
        forms = [address, f"{address}:{port}"]
    form = rng.choice(forms)
    return rng.choice(["", " ", "  "]) + form + rng.choice(["", " "])


def forwarded_element(rng: random.Random, value: str) -> str:
    name = "".join(c.upper() if rng.random() < 0.3 else c for c in "for")
    params = rng.sample(["proto=https", "by=10.0.0.1", "host=example.com"], rng.randint(0, 2))
    params.insert(rng.randint(0, len(params)), f"{name}={value}")
    return rng.choice([";", "; "]).join(params)


def forwarded_value(rng: random.Random, address: str) -> str:
    port = rng.randint(1, 65535)
    if ":" in address:
        return rng.choice([f'"[{address}]"', f'"[{address}]:{port}"'])
    return rng.choice([address, f'"{address}"', f'"{address}:{port}"'])


def split_into_occurrences(rng: random.Random, items: list[str], sep: str) -> list[str]:
    if not items:
        return []
    cuts = sorted(rng.sample(range(1, len(items)), min(len(items) - 1, rng.randint(0, 2))))
    bounds = [0, *cuts, len(items)]
    return [sep.join(items[a:b]) for a, b in itertools.pairwise(bounds)]


def model(peer: str, hops: list[str | None]) -> str:
    """The documented rule, on hops whose parse we know (None = not an address)."""
    result = normalised(peer)
    if ipaddress.ip_address(result) not in PROXIES:
        return result
    for count, hop in enumerate(reversed(hops)):
        if count >= MAX_HOPS or hop is None:
            break
        result = normalised(hop)
        if ipaddress.ip_address(result) not in PROXIES:
            break
    return result


def test_fuzz_structured_chains_follow_the_rule() -> None:
    rng = random.Random(7239)
    for case in range(4000):
        peer = rng.choice(TRUSTED_POOL if rng.random() < 0.8 else UNTRUSTED_POOL)
        hops: list[str | None] = []
        texts: list[str] = []
        use_forwarded = rng.random() < 0.5
        for _ in range(rng.choice([rng.randint(0, 6), rng.randint(0, MAX_HOPS + 8)])):
            kind = rng.random()
            if kind < 0.55:
                address = rng.choice(TRUSTED_POOL)
            elif kind < 0.9:
                address = rng.choice(UNTRUSTED_POOL)
            else:
                garbage = rng.choice(GARBAGE_POOL)
                hops.append(None)
                texts.append(forwarded_element(rng, garbage) if use_forwarded else garbage)
                continue
            hops.append(address)
            texts.append(
                forwarded_element(rng, forwarded_value(rng, address))
                if use_forwarded
                else xff_text(rng, address)
            )
        headers = split_into_occurrences(rng, texts, rng.choice([",", ", "]))
        if use_forwarded:
            result = client_ip(peer, PROXIES, forwarded=headers)
        else:
            result = client_ip(peer, PROXIES, x_forwarded_for=headers)
        expected = model(peer, hops) if headers else normalised(peer)
        assert result == expected, (case, peer, headers)


# --- fuzz: arbitrary garbage never yields a bogus address --------------------------------------

TOKENS = [
    *TRUSTED_POOL,
    *UNTRUSTED_POOL,
    *GARBAGE_POOL,
    ",",
    ", ",
    ",,",
    ";",
    "=",
    "for=",
    "For=",
    "FOR=",
    '"',
    "[",
    "]",
    ":",
    ":80",
    " ",
    "\t",
    "\r\n",
    "\x00",
    "\x1f",
    "\x7f",
    "\u200b",
    "\u2003",
    "\x1c",
    "\u0663",  # Arabic-Indic 3
    "²",
    "%",
    "%25",
    "_",
    "/",
    "unknown",
]
ALPHABET = string.hexdigits + '.:[]",;= _%\t\r\n\x00é²\u0663\uff11/'


def garbage(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return "".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 40)))
    if roll < 0.9:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 80)))
    if roll < 0.95:
        return "".join(rng.choice(TOKENS) for _ in range(rng.randint(500, 3000)))
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(4000, 12_000)))


def addresses_in(text: str) -> set[str]:
    """Every address that could be read out of ``text`` by any lenient reading (an oracle)."""
    found = set()
    for token in re.split(r'[\s,;="]+', text):
        candidates = {token, token.strip("[]"), token.split("]")[0].lstrip("[")}
        candidates |= {c.rsplit(":", 1)[0] for c in list(candidates)}
        for candidate in candidates:
            with contextlib.suppress(ValueError):
                found.add(normalised(candidate))
    return found


PEERS = [*TRUSTED_POOL, *UNTRUSTED_POOL, "testclient", "", "fe80::1%eth0", None]


def test_fuzz_garbage_never_raises_and_never_yields_a_bogus_address() -> None:
    rng = random.Random(20240611)
    for case in range(5000):
        peer = rng.choice(PEERS)
        forwarded = [garbage(rng) for _ in range(rng.choice([0, 0, 1, 1, 2, 3]))]
        xff = [garbage(rng) for _ in range(rng.choice([0, 0, 1, 1, 2, 3]))]
        result = client_ip(peer, PROXIES, forwarded=forwarded, x_forwarded_for=xff)
        context = (case, peer, forwarded, xff)
        peer_address = parse_ip(peer) if peer else None
        if peer_address is None:
            assert result is None, context
            continue
        assert isinstance(result, str), context
        parsed = ipaddress.ip_address(result)
        assert str(parsed) == result, context  # normalised
        assert "%" not in result, context
        assert not (isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped), context
        assert peer is not None
        if result != normalised(peer):
            assert result in addresses_in(" ".join([*forwarded, *xff])), context
        if ipaddress.ip_address(normalised(peer)) not in PROXIES:
            assert result == normalised(peer), context


# --- request ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inbound",
    [
        "a",
        "0",
        "req-42",
        "3f2c1a9e-7b4d-4c2e-9f1a-0b2c3d4e5f60",
        "3f2c1a9e7b4d4c2e9f1a0b2c3d4e5f60",
        "Root=1-5759e988-bd862e3fe1be46a994272793",  # AWS ALB
        "YWJj+ZGVm/Z2hp==",  # base64
        "span:1.2_3",
        "A" * 64,
    ],
)
def test_request_id_accepts_safe_ids(inbound: str) -> None:
    assert request_id.accept(inbound) == inbound


@pytest.mark.parametrize(
    "inbound",
    [
        None,
        "",
        "A" * 65,
        "a" * 10_000,
        "has space",
        " leading",
        "trailing ",
        "line\nbreak",
        "crlf\r\nX-Injected: 1",
        "trailing-newline\n",
        'quote"d',
        "quote'd",
        "semi;colon",
        "comma,id",
        "tab\tid",
        "nul\x00",
        "<script>",
        "id%0d%0a",
        "ünïcode",
        "ид",
        "abc\u200b",
        "\uff11\uff12\uff13",  # full-width digits
        "-leading-dash",
        ".leading-dot",
        "_leading-underscore",
        "/leading-slash",
        "=leading-equals",
        "+leading-plus",
        ":leading-colon",
    ],
)
def test_request_id_rejects_unsafe_ids(inbound: str | None) -> None:
    fresh = request_id.accept(inbound)
    assert fresh != inbound
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)


def test_request_id_custom_max_length() -> None:
    assert request_id.accept("a" * 10, max_length=10) == "a" * 10
    assert request_id.accept("a" * 11, max_length=10) != "a" * 11
    assert request_id.accept("a" * 128, max_length=128) == "a" * 128
    assert request_id.accept("a" * 129, max_length=128) != "a" * 129
    assert request_id.accept("ab", max_length=1) != "ab"
    assert request_id.accept("a", max_length=1) == "a"
    assert request_id.MAX_LENGTH == 64


def test_new_request_ids_are_unique_32_hex_characters() -> None:
    ids = [request_id.new() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
        assert request_id.accept(rid) == rid  # a generated id survives the next hop
    fresh = {request_id.accept("bad id") for _ in range(1000)}
    assert len(fresh) == 1000


# --- who chooses the request id (RequestAudit.request_id) ---------------------------------------


def audit_settings(trust: str, proxies: Sequence[str] = ("10.0.0.0/8", "::1")) -> RequestAudit:
    return RequestAudit.configure(
        "test",
        actor=None,
        trusted_proxies=proxies,
        forwarded_header="X-Forwarded-For",
        request_id_header="X-Request-ID",
        request_id_max_length=64,
        trust_request_id=trust,
    )


def headers_with(*values: str) -> Callable[[str], Sequence[str]]:
    def header(name: str) -> Sequence[str]:
        return list(values) if name == "X-Request-ID" else []

    return header


KEPT, FRESH = "kept", "fresh"


@pytest.mark.parametrize(
    ("trust", "peer", "values", "outcome", "extra"),
    [
        # proxies (the default): only our proxy chooses; a client's safe id is kept aside.
        ("proxies", "10.0.0.1", ["lb-7f3a"], KEPT, {}),
        ("proxies", "::1", ["lb-7f3a"], KEPT, {}),
        ("proxies", "::ffff:10.0.0.1", ["lb-7f3a"], KEPT, {}),
        ("proxies", "[::1]:8080", ["lb-7f3a"], KEPT, {}),
        (
            "proxies",
            "203.0.113.5",
            ["victim-request-0001"],
            FRESH,
            {UNTRUSTED: "victim-request-0001"},
        ),
        ("proxies", "11.0.0.1", ["lb-7f3a"], FRESH, {UNTRUSTED: "lb-7f3a"}),
        ("proxies", None, ["lb-7f3a"], FRESH, {UNTRUSTED: "lb-7f3a"}),
        ("proxies", "not-an-ip", ["lb-7f3a"], FRESH, {UNTRUSTED: "lb-7f3a"}),
        ("proxies", "fe80::1%eth0", ["lb-7f3a"], FRESH, {UNTRUSTED: "lb-7f3a"}),
        # unsafe or ambiguous ids are dropped whoever sent them
        ("proxies", "203.0.113.5", ["a b<script>"], FRESH, {}),
        ("proxies", "203.0.113.5", ["x" * 65], FRESH, {}),
        ("proxies", "10.0.0.1", ["a\r\nSet-Cookie: x=y"], FRESH, {}),
        ("proxies", "10.0.0.1", ["client-first", "proxy-second"], FRESH, {}),
        ("proxies", "203.0.113.5", ["one", "two"], FRESH, {}),
        ("proxies", "10.0.0.1", [], FRESH, {}),
        # always: any safe inbound id
        ("always", "203.0.113.5", ["victim-request-0001"], KEPT, {}),
        ("always", None, ["lb-7f3a"], KEPT, {}),
        ("always", "203.0.113.5", ["a b"], FRESH, {}),
        ("always", "203.0.113.5", ["one", "two"], FRESH, {}),
        # never: the header is not read, not even kept aside
        ("never", "10.0.0.1", ["lb-7f3a"], FRESH, {}),
        ("never", "203.0.113.5", ["lb-7f3a"], FRESH, {}),
    ],
)
def test_who_chooses_the_request_id(
    trust: str,
    peer: str | None,
    values: list[str],
    outcome: str,
    extra: dict[str, str],
) -> None:
    rid, got_extra = audit_settings(trust).request_id(peer, headers_with(*values))
    if outcome == KEPT:
        assert rid == values[0]
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", rid) and rid not in values
    assert got_extra == extra


def test_proxies_trust_without_trusted_proxies_never_keeps_an_inbound_id() -> None:
    settings = audit_settings("proxies", proxies=())
    for peer in ("127.0.0.1", "10.0.0.1", "::1"):
        rid, extra = settings.request_id(peer, headers_with("lb-7f3a"))
        assert rid != "lb-7f3a"
        assert extra == {UNTRUSTED: "lb-7f3a"}


@pytest.mark.parametrize("trust", ["Proxies", "ALWAYS", "", None, True, "trusted", ["proxies"]])
def test_trust_request_id_must_be_one_of_three_words(trust: object) -> None:
    with pytest.raises(ConfigurationError, match="trust_request_id must be 'proxies'"):
        audit_settings(trust)  # type: ignore[arg-type]
