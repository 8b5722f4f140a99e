"""Network allowlist rules (`network.allow`, `network.deny` under mode "proxy"). Pure data, no syscalls.

A rule is one string, in one of these forms (docs/network.md, "Rules"):

    example.org            that name, on ports 80 and 443 (as a deny rule: on every port)
    *.example.org          every name below example.org (not example.org itself), ports 80 and 443
    example.org:8443       that name, on port 8443 only (likewise *.example.org:8443)
    10.1.2.3, 10.1.2.3:80  that address (ports 80 and 443, or the one given); as an allow rule it also
    fd00::1, [fd00::1]:80  lets a listed name that resolves to it connect there although it is private
                           (the ranges of REFUSED_RANGES and the host's own addresses and networks are
                           refused otherwise)

Names are checked and stored as IDNA A-labels in lower case without a trailing dot ("Bücher.example." ->
"xn--bcher-kva.example"). Refused, with a PolicyError naming the entry: a scheme, a path, a query, user
info, a wildcard anywhere but a whole leading label, a wildcard over a single label ("*.org"), an empty
label, a label over 63 bytes or a name over 253, characters a host name cannot have, a port outside
1-65535 or with a sign or leading zeros, an address in anything but its canonical form (the proxy accepts
"0x7f.1" from a client and normalises it; a policy must say what it means).

`match_target` is the decision the proxy takes, here so that it is one pure function the unit tests and
the proxy share.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from policies._errors import PolicyError

#: Where corral's proxy listens inside every sandbox under network mode "proxy" (its own loopback).
PROXY_HOST = "127.0.0.1"
PROXY_PORT = 3128


def proxy_environment() -> dict[str, str]:
    """The variables that point a sandbox's tools at corral's proxy (docs/network.md): HTTP_PROXY,
    HTTPS_PROXY, ALL_PROXY and NO_PROXY (the sandbox's own loopback), in upper and lower case."""
    url = f"http://{PROXY_HOST}:{PROXY_PORT}"
    env: dict[str, str] = {}
    for name, value in (
        ("HTTP_PROXY", url),
        ("HTTPS_PROXY", url),
        ("ALL_PROXY", url),
        ("NO_PROXY", "localhost,127.0.0.1,::1"),
    ):
        env[name] = env[name.lower()] = value
    return env


#: Ports a rule without a port allows: HTTP and HTTPS.
DEFAULT_PORTS: frozenset[int] = frozenset({80, 443})
#: Most rules in one list: the proxy checks each request against every rule.
MAX_RULES = 1024

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*", re.ASCII)
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)
_MAX_NAME = 253
_MAX_TEXT = 1024

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class NetRule:
    """One parsed rule. `name` is the A-label name (without the "*." of a wildcard), or None for an
    address rule; `address` the address, or None for a name rule; `port` None for the default ports."""

    text: str
    name: str | None
    wildcard: bool
    address: Address | None
    port: int | None

    def ports_match(self, port: int, any_port: bool = False) -> bool:
        """Whether this rule covers `port`: its own port, else 80 and 443 (`any_port`: else every port)."""
        if self.port is None:
            return any_port or port in DEFAULT_PORTS
        return port == self.port

    def matches(self, host: str | Address, port: int, any_port: bool = False) -> bool:
        """Whether this rule covers a request for `host` (a normalised name or an address) on `port`;
        `any_port`: a rule without a port covers every port (deny rules)."""
        if not self.ports_match(port, any_port):
            return False
        if isinstance(host, str):
            if self.name is None:
                return False
            if self.wildcard:
                return host.endswith("." + self.name)
            return host == self.name
        return self.address is not None and self.address == host


def parse_rule(value: object, path: str) -> NetRule:
    """Parse one rule string (forms in the module docstring). Raises PolicyError(path) saying what is
    wrong with it and what would be right."""
    if not isinstance(value, str) or not value:
        raise PolicyError(
            path, "expected a host name, '*.domain', an address, each with an optional ':PORT'", value
        )
    if len(value) > _MAX_TEXT:
        raise PolicyError(path, "too long for a host name", value)
    text = value.strip()
    if text != value or any(c.isspace() for c in text):
        raise PolicyError(path, "a host name has no spaces", value)
    if "://" in text:
        raise PolicyError(path, "a rule names a host, not a URL: drop the scheme ('https://')", value)
    for char, what in (("/", "path"), ("?", "query"), ("#", "fragment"), ("@", "user info")):
        if char in text:
            raise PolicyError(path, f"a rule names a host: it has no {what} ({char!r})", value)
    host, port = _split_port(text, path, value)
    address = _address(host)
    if address is not None:
        address = canonical_address(address)
        if str(address) != host.strip("[]"):
            raise PolicyError(path, f"write the address in its canonical form: {address}", value)
        shown = (f"[{address}]" if address.version == 6 else str(address)) if port else str(address)
        return NetRule(_with_port(shown, port), None, False, address, port)
    if host.startswith("[") or ":" in host:
        raise PolicyError(path, "not a valid IPv6 address", value)
    numeric = _inet_aton(host)
    if numeric is not None:
        raise PolicyError(path, f"write the address in its canonical form: {numeric}", value)
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if "*" in name:
        raise PolicyError(path, "a wildcard is only allowed as a whole leading label: '*.example.org'", value)
    name = _a_label(name, path, value)
    if wildcard and "." not in name:
        raise PolicyError(path, "a wildcard must cover a domain, not a top-level one ('*.org')", value)
    if name.rsplit(".", 1)[-1].isdigit():
        raise PolicyError(path, "neither a host name (its last label is a number) nor an address", value)
    shown = f"*.{name}" if wildcard else name
    return NetRule(_with_port(shown, port), name, wildcard, None, port)


def check_rules(value: object, path: str) -> tuple[str, ...]:
    """Return a list of rules in canonical form, deduplicated, as a tuple. Raises PolicyError naming
    ``path[i]`` for a bad entry, or `path` for a non-list or a list over MAX_RULES."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise PolicyError(path, "expected a list of host names", value)
    if len(value) > MAX_RULES:
        raise PolicyError(path, f"at most {MAX_RULES} rules", len(value))
    out: dict[str, None] = {}
    for i, item in enumerate(value):
        out[parse_rule(item, f"{path}[{i}]").text] = None
    return tuple(out)


def normalise_host(host: str) -> str | Address | None:
    """A request's host as the proxy decides on it: an address for any IP literal, in every form a
    resolver would take (IPv4 as dotted quad, shorthand "127.1", decimal "2130706433", octal "0177.0.0.1",
    hex "0x7f.0.0.1"; IPv6 in brackets or not, an IPv4-mapped or -compatible one as its IPv4 address),
    else the A-label name in lower case without a trailing dot; None when it is neither (a name a host
    cannot have). Never raises."""
    if not host or len(host) > _MAX_TEXT:
        return None
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    address = _address(text) or _inet_aton(text)
    if address is not None:
        return canonical_address(address)
    if text.startswith("[") or ":" in text:
        return None
    try:
        name = _a_label(text, "host", host)
    except PolicyError:
        return None
    last = name.rsplit(".", 1)[-1]
    if last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])):
        return None  # looks numeric but is no address resolvers agree on ("1.2.3.4.5", "0x"): refused
    return name


def canonical_address(address: Address) -> Address:
    """`address`, with an IPv4-mapped (::ffff:a.b.c.d) or IPv4-compatible (::a.b.c.d) IPv6 address as
    the IPv4 address it carries (the kernel connects there)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        packed = address.packed
        if packed[:12] == bytes(12) and int(address) > 1:
            return ipaddress.IPv4Address(packed[12:])
    return address


#: What the proxy refuses to connect to unless an address rule of `network.allow` names the address
#: (docs/network.md, "Which addresses a name may lead to"): every range that reaches the host itself or a
#: network inside, and the ranges no ordinary server lives in. First match wins; IPv4-mapped and
#: IPv4-compatible IPv6 addresses are their IPv4 address by then (`canonical_address`). Not refused: every
#: other IPv4 address, IPv6 global unicast (2000::/3) outside the ranges below, and the documentation
#: ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20): no network is ever
#: assigned those by standard (RFC 5737, RFC 3849, RFC 9637), so they name neither the host nor a network
#: inside unless an operator made them one (then say so: `ProxyConfig.internal_networks`, or a
#: `network.deny` address rule).
_PRIVATE = "a private address (RFC 1918)"
REFUSED_RANGES: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "the unspecified address or 'this network' (0.0.0.0/8: it means this host)"),
        ("10.0.0.0/8", _PRIVATE),
        (
            "100.64.0.0/10",
            "a shared address (carrier-grade NAT, 100.64.0.0/10, RFC 6598: a provider's inside)",
        ),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address (169.254.0.0/16 holds cloud metadata services)"),
        ("172.16.0.0/12", _PRIVATE),
        (
            "192.0.0.0/24",
            "an IETF protocol assignment (192.0.0.0/24: tunnel ends inside a network, RFC 6890)",
        ),
        ("192.168.0.0/16", _PRIVATE),
        (
            "198.18.0.0/15",
            "a benchmarking address (198.18.0.0/15, RFC 2544: lab networks, local DNS stand-ins)",
        ),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address (240.0.0.0/4)"),
        ("::/128", "the unspecified address (it means this host)"),
        ("::1/128", "a loopback address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48, RFC 8215: a network's inside)"),
        ("100::/64", "a discard-only address (100::/64)"),
        ("2001::/23", "an IETF protocol assignment (2001::/23: Teredo, benchmarking, ORCHID; RFC 6890)"),
        ("fc00::/7", "a unique local address (fc00::/7, RFC 4193: a private network)"),
        ("fe80::/10", "a link-local address (fe80::/10)"),
        ("fec0::/10", "a site-local address (fec0::/10, RFC 3879: a private network)"),
        ("ff00::/8", "a multicast address"),
    )
)
#: IPv6 prefixes that carry an IPv4 address in their low 32 bits (NAT64, RFC 6052) or in bits 16-47
#: (6to4, RFC 3056): decided as that IPv4 address, since that is where a translator or relay sends them.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_GLOBAL_V6 = ipaddress.ip_network("2000::/3")


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) IPv6 address carries, else None."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64:
            return ipaddress.IPv4Address(address.packed[12:])
        if address in _6TO4:
            return ipaddress.IPv4Address(address.packed[2:6])
    return None


def refused_range(address: Address) -> str | None:
    """Why `address` is refused as a destination by default (REFUSED_RANGES; an IPv6 address outside
    global unicast 2000::/3 and NAT64; the IPv4 address a NAT64 or 6to4 one carries), or None when it is
    reachable. `address` is canonical (`canonical_address`): an IPv4-mapped one is decided as IPv4.
    Never raises."""
    address = canonical_address(address)
    for network, why in REFUSED_RANGES:
        if address.version == network.version and address in network:
            return why
    inner = embedded_ipv4(address)
    if inner is not None:
        inner_why = refused_range(inner)
        return None if inner_why is None else f"an IPv6 address carrying {inner}, {inner_why}"
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_V6:
        return "not a global unicast IPv6 address (outside 2000::/3)"
    return None


def match_target(
    allow: tuple[NetRule, ...], deny: tuple[NetRule, ...], host: str | Address, port: int
) -> tuple[bool, NetRule | None]:
    """The policy's decision for `host` (normalised) on `port`: (allowed, the rule that decided), deny
    first (a deny rule without a port covers every port). (False, None) when no allow rule covers it."""
    for rule in deny:
        if rule.matches(host, port, any_port=True):
            return False, rule
    for rule in allow:
        if rule.matches(host, port):
            return True, rule
    return False, None


def _split_port(text: str, path: str, value: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise PolicyError(path, "an IPv6 address in brackets needs its ']'", value)
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise PolicyError(path, "expected ':PORT' after ']'", value)
        return host, _port(rest[1:], path, value)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, path, value)
    return text, None


def _port(text: str, path: str, value: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise PolicyError(path, "a port is a number from 1 to 65535, without sign or leading zeros", value)
    return int(text)


def _with_port(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


def _address(text: str) -> Address | None:
    """`text` (IPv6 possibly in brackets) as an address if it is one in the standard notation."""
    try:
        return ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    except ValueError:
        return None


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address inet_aton(3) (and so getaddrinfo, curl, Python's socket) reads in `text`: one to
    four parts, each decimal, octal (leading 0) or hex (0x), the last filling the remaining bytes."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or len(text) > 64:
        return None
    numbers = []
    for part in parts:
        if not _ATON_PART.fullmatch(part):
            return None
        if part[:2].lower() == "0x":
            numbers.append(int(part[2:], 16) if part[2:] else 0)
        elif len(part) > 1 and part.startswith("0"):
            numbers.append(int(part[1:], 8))
        else:
            numbers.append(int(part, 10))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = 0
    for n in head:
        value = value << 8 | n
    return ipaddress.IPv4Address(value << 8 * (4 - len(head)) | last)


def _a_label(name: str, path: str, value: str) -> str:
    """`name` as lower-case IDNA A-labels without a trailing dot; PolicyError(path) if it is no host name."""
    name = name.removesuffix(".")
    if not name:
        raise PolicyError(path, "expected a host name", value)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as err:
            raise PolicyError(path, f"not a valid internationalised domain name ({err})", value) from None
    name = name.lower()
    if len(name) > _MAX_NAME:
        raise PolicyError(path, f"a host name has at most {_MAX_NAME} characters", value)
    for label in name.split("."):
        if not label:
            raise PolicyError(path, "a host name has no empty label ('..')", value)
        if not _LABEL_RE.fullmatch(label):
            raise PolicyError(
                path,
                "each label of a host name is 1-63 letters, digits or '-', not starting or ending with '-'",
                value,
            )
    return name
