"""SSRF guard for outgoing requests (webhook deliveries, the `fetch` kind).

A URL passes only if it is http(s), carries no credentials, names no `localhost`, uses an allowed port, and
every address its host stands for (an IP literal in any notation, or every A/AAAA record, and any IPv4
address embedded in an IPv6 one) lies outside the forbidden ranges below. The ranges are explicit tables, not
Python's `ipaddress` flags, which change between interpreter versions (3.11 calls 192.0.0.8 global).

Requests then go to the checked address itself (pinned), over a connection pool keyed by scheme, host name,
port and address, so a second DNS answer (rebinding) cannot redirect them and TLS verifies the certificate
against the host name. CALLBACK_ALLOW_PRIVATE lets loopback and private receivers through, for local runs.

Refusals name the rule that refused a URL, never the address a name resolved to (that would be an oracle
for internal DNS).
"""

import ipaddress
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpcore
import httpx
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
"""The only schemes an outgoing request may use."""

LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
"""Names that mean this machine, whatever DNS says; subdomains of `localhost` too (RFC 6761)."""

DEFAULT_PORTS = {"http": 80, "https": 443}
"""The port of a URL that names none."""


@dataclass(frozen=True)
class Block:
    """One registry entry: a range, the rule name shown in refusals, and whether it may be connected to."""

    network: IPNetwork
    rule: str
    reachable: bool = False
    private: bool = False
    """Loopback or private: allowed when CALLBACK_ALLOW_PRIVATE is on (local receivers)."""


def _blocks(*rows: tuple[str, str] | tuple[str, str, str]) -> tuple[Block, ...]:
    """Rows of (range, rule[, "reachable" | "private"]) into Blocks, most specific first (longest prefix wins)."""
    blocks = [
        Block(
            ipaddress.ip_network(row[0]),
            row[1],
            reachable=row[2:] == ("reachable",),
            private=row[2:] == ("private",),
        )
        for row in rows
    ]
    return tuple(sorted(blocks, key=lambda block: -block.network.prefixlen))


# IANA IPv4 and IPv6 Special-Purpose Address Registries (iana-ipv4-special-registry, iana-ipv6-special-registry), as of
# 2025 (newest rows: RFC 9637, 9602, 9665, 9780), plus multicast and reserved space from the address registries.
IPV4_BLOCKS = _blocks(
    ("0.0.0.0/8", "this network (RFC 791)"),
    ("10.0.0.0/8", "private-use (RFC 1918)", "private"),
    ("100.64.0.0/10", "shared address space (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)", "private"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("172.16.0.0/12", "private-use (RFC 1918)", "private"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.0.0/29", "IPv4 service continuity prefix (RFC 7335)"),
    ("192.0.0.8/32", "IPv4 dummy address (RFC 7600)"),
    ("192.0.0.9/32", "port control protocol anycast (RFC 7723)", "reachable"),
    ("192.0.0.10/32", "TURN anycast (RFC 8155)", "reachable"),
    ("192.0.0.170/31", "NAT64/DNS64 discovery (RFC 7050)"),
    ("192.0.2.0/24", "documentation TEST-NET-1 (RFC 5737)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private-use (RFC 1918)", "private"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", "documentation TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved (RFC 1112)"),
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
)
"""Forbidden IPv4 ranges, with the registry's globally reachable exceptions inside 192.0.0.0/24."""

IPV6_BLOCKS = _blocks(
    ("::/8", "reserved by IETF (RFC 4291)"),
    ("::/128", "unspecified address (RFC 4291)"),
    ("::1/128", "loopback (RFC 4291)", "private"),
    ("::/96", "deprecated IPv4-compatible address (RFC 4291)"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("100:0:0:1::/64", "dummy IPv6 prefix (RFC 9780)"),
    ("2001::/23", "IETF protocol assignments (RFC 2928)"),
    ("2001::/32", "Teredo (RFC 4380)"),
    ("2001:1::1/128", "port control protocol anycast (RFC 7723)", "reachable"),
    ("2001:1::2/128", "TURN anycast (RFC 8155)", "reachable"),
    ("2001:1::3/128", "DNS-SD service registration protocol anycast (RFC 9665)", "reachable"),
    ("2001:2::/48", "benchmarking (RFC 5180)"),
    ("2001:3::/32", "AMT (RFC 7450)", "reachable"),
    ("2001:4:112::/48", "AS112-v6 (RFC 7535)", "reachable"),
    ("2001:10::/28", "deprecated ORCHID (RFC 4843)"),
    ("2001:20::/28", "ORCHIDv2 (RFC 7343)", "reachable"),
    ("2001:30::/28", "drone remote ID DETs (RFC 9374)", "reachable"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "segment routing SIDs (RFC 9602)"),
    ("fc00::/7", "unique-local (RFC 4193)", "private"),
    ("fe80::/10", "link-local unicast (RFC 4291)"),
    ("fec0::/10", "deprecated site-local (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291)"),
)
"""Forbidden IPv6 ranges inside or beside global unicast, with the registry's globally reachable exceptions."""

IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
"""RFC 4291: the only IPv6 space IANA allocates for global unicast; the rest is reserved (or listed above)."""

IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
"""RFC 4291: ::ffff:a.b.c.d is the IPv4 address a.b.c.d on a dual-stack socket."""

NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
"""RFC 6052: the IPv4 address is the last 32 bits, reached through a NAT64 translator."""

SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
"""RFC 3056: the IPv4 address is bits 16-47, reached through a 6to4 relay."""


def url_port(url: httpx.URL) -> int:
    """The port a URL connects to: its explicit port (even 0), else its scheme's default."""
    return DEFAULT_PORTS[url.scheme] if url.port is None else url.port


class UrlForbidden(Exception):
    """The URL may not be requested; `reason` names the rule (safe to show to the URL's owner)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UrlUnresolved(Exception):
    """The URL's host name does not resolve (now); it may later."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every A and AAAA address of a host name, through the system resolver (hosts file, then DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


resolver: Callable[[str, int], list[str]] = system_resolver
"""The resolver the guard calls; tests swap in a fake DNS that answers what they choose."""


def _matching_block(address: IPAddress) -> Block | None:
    table = IPV4_BLOCKS if address.version == 4 else IPV6_BLOCKS
    return next((block for block in table if address in block.network), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address a packet to this IPv6 address would reach (mapped, NAT64, 6to4), with its notation."""
    if address in IPV4_MAPPED:
        return "IPv4-mapped", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in NAT64_WELL_KNOWN:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in SIXTOFOUR:
        return "6to4", ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: IPAddress, *, allow_private: bool) -> str | None:
    """The rule that forbids connecting to this address, or None when it is allowed.

    The rule names a range, never the address itself: callers may show it for a name that resolved here.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            notation, ipv4 = embedded
            reason = forbidden_reason(ipv4, allow_private=allow_private)
            return f"{notation} address embedding {reason}" if reason else None
    block = _matching_block(address)
    if block is None:
        if address.version == 6 and address not in IPV6_GLOBAL_UNICAST:
            return "reserved IPv6 address space (RFC 4291, outside 2000::/3)"
        return None
    if block.reachable or (allow_private and block.private):
        return None
    return block.rule


def port_allowed(port: int) -> bool:
    """Whether outgoing requests may use a port: in OUTBOUND_ALLOWED_PORTS, not in OUTBOUND_DENIED_PORTS (settings).

    Two lookups, not the set difference: the allowed set holds ~64 000 ports, and copying it cost ~0.25 ms a URL."""
    return port in settings.OUTBOUND_ALLOWED_PORTS and port not in settings.OUTBOUND_DENIED_PORTS


def _parse_ipv4_number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)
    if not part.isdigit():
        raise ValueError(part)
    return int(part)


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The WHATWG URL IPv4 parser: decimal, hex, octal and short forms (127.1); None if not IPv4.

    Hand-written: `ipaddress` accepts only dotted quads, and inet_aton accepts trailing garbage.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1]
    ends_in_number = last.isdigit() or (
        last[:2].lower() == "0x" and all(c in "0123456789abcdefABCDEF" for c in last[2:])
    )
    if not ends_in_number:
        return None
    try:
        numbers = [_parse_ipv4_number(part) for part in parts]
    except ValueError:
        raise UrlForbidden("the host is not a valid IPv4 address") from None
    if len(numbers) > 4 or any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise UrlForbidden("the host is not a valid IPv4 address")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _literal_address(host: str) -> IPAddress | None:
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlForbidden("the host is not a valid IPv6 address") from None
    return parse_ipv4(host)


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the guard, with the addresses it was checked against (empty if unresolved)."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    def pinned_address(self) -> IPAddress:
        """The checked address a request connects to (the first one the resolver gave)."""
        if not self.addresses:
            raise UrlUnresolved(f"{self.url.host} does not resolve")
        return self.addresses[0]


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UrlForbidden("not a valid URL") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise UrlForbidden("only http and https URLs are allowed")
    if parsed.userinfo:
        raise UrlForbidden("credentials in the URL are not allowed")
    port = url_port(parsed)
    if not port_allowed(port):
        raise UrlForbidden(f"port {port} is not allowed for outgoing requests")
    return parsed


def check_url(url: str, *, allow_unresolved: bool = False) -> CheckedUrl:
    """Check a URL and every address its host stands for; raises UrlForbidden (or UrlUnresolved)."""
    allow_private = settings.CALLBACK_ALLOW_PRIVATE
    parsed = _parse(url)
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise UrlForbidden("the URL has no host")
    if "%" in host:
        raise UrlForbidden("percent-encoded hosts and IPv6 zone ids are not allowed")
    name = host.removesuffix(".")
    if not allow_private and (name in LOCALHOST_NAMES or name.endswith(".localhost")):
        raise UrlForbidden("the host name means this machine (localhost)")
    literal = _literal_address(name)
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
    else:
        try:
            answers = resolver(name, url_port(parsed))
        except (OSError, UnicodeError):
            answers = []
        if not answers:
            if allow_unresolved:
                return CheckedUrl(parsed, ())
            raise UrlUnresolved(f"{name} does not resolve")
        addresses = tuple(ipaddress.ip_address(answer) for answer in answers)
    for address in addresses:
        reason = forbidden_reason(address, allow_private=allow_private)
        if reason:
            subject = "the address is" if literal is not None else "the host name resolves to an address"
            raise UrlForbidden(f"{subject} in a forbidden range: {reason}")
    return CheckedUrl(parsed, addresses)


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore network backend that connects to one checked address whatever host name it is asked for.

    TLS still runs against the URL's host name (httpcore's server_hostname), so SNI and certificate
    verification see the name, while the TCP connection goes to the address the guard checked.
    """

    def __init__(self, address: IPAddress):
        self.address = address
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return self._backend.connect_tcp(str(self.address), port, *args, **kwargs)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not an outgoing destination")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


PoolKey = tuple[str, str, int, IPAddress]
"""(scheme, host name, port, pinned address): a kept-alive connection serves only requests equal in all four."""

MAX_POOLS = 256
"""Pools kept per process; the least recently used beyond this is dropped (its idle sockets close with it)."""


class PinnedTransport(httpx.BaseTransport):
    """One httpx connection pool per PoolKey; the address comes from the request's `pinned_address` extension."""

    def __init__(self) -> None:
        self._ssl_context = httpx.create_ssl_context()  # built once: ~20 ms each, shared by every pool
        self._pools: OrderedDict[PoolKey, httpx.HTTPTransport] = OrderedDict()
        self._lock = threading.Lock()

    def _pool(self, key: PoolKey) -> httpx.HTTPTransport:
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = httpx.HTTPTransport(verify=self._ssl_context)
                # httpx has no network_backend option: swap in a pool that dials the pinned address.
                pool._pool = httpcore.ConnectionPool(
                    ssl_context=self._ssl_context, network_backend=PinnedBackend(key[3])
                )
                self._pools[key] = pool
                while len(self._pools) > MAX_POOLS:
                    self._pools.popitem(last=False)  # not closed here: another thread may still be streaming
            self._pools.move_to_end(key)
            return pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        address = request.extensions.get("pinned_address")
        if address is None:
            raise httpx.ConnectError("outgoing request without a checked address", request=request)
        key = (request.url.scheme, request.url.host, url_port(request.url), address)
        return self._pool(key).handle_request(request)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            pool.close()


@lru_cache(maxsize=1)
def outbound_client() -> httpx.Client:
    """One client per process for webhooks and `fetch`, over pools keyed by (scheme, host, port, address)."""
    return httpx.Client(transport=PinnedTransport(), follow_redirects=False, trust_env=False)


@contextmanager
def guarded_stream(method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
    """Stream a request to a URL that passed the guard, connected to the address that was checked."""
    checked = check_url(url)
    extensions = {**kwargs.pop("extensions", {}), "pinned_address": checked.pinned_address()}
    with outbound_client().stream(method, checked.url, extensions=extensions, **kwargs) as response:
        yield response
