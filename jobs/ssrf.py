"""SSRF guard for outgoing requests (webhook deliveries, the `fetch` kind).

A URL passes only if it is http(s), carries no credentials, names no `localhost`, and every address its
host stands for (an IP literal in any notation, or every A/AAAA record) is public. Requests then go to
the checked address itself, with the original Host header and TLS SNI, so a second DNS answer
(rebinding) cannot redirect them. CALLBACK_ALLOW_PRIVATE lets loopback/private receivers through for
local testing only.
"""

import ipaddress
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpx
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})
"""The only schemes an outgoing request may use."""

LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
"""Names that mean this machine, whatever DNS says; subdomains of `localhost` too (RFC 6761)."""

NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
"""RFC 6052: the IPv4 address is the last 32 bits."""

NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
"""RFC 8215: operator-local translation, the embedded address cannot be known: always forbidden."""

IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
"""Deprecated IPv4-compatible addresses (::a.b.c.d); some stacks still route them to IPv4."""


class UrlForbidden(Exception):
    """The URL may not be requested; `reason` says why (safe to show to the URL's owner)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UrlUnresolved(Exception):
    """The URL's host name does not resolve (now); it may later."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every A and AAAA address of a host name, through the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


resolver: Callable[[str, int], list[str]] = system_resolver
"""The resolver the guard calls; tests swap in a fake DNS that answers what they choose."""


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the guard, with the addresses it was checked against (empty if unresolved)."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    def pinned_request_args(self) -> dict[str, Any]:
        """Arguments for httpx that send to the checked address, keeping Host and SNI of the original."""
        if not self.addresses:
            raise UrlUnresolved(f"{self.url.host} did not resolve")
        address = self.addresses[0]
        host = self.url.raw_host.decode("ascii")
        extensions = {"sni_hostname": host} if self.url.scheme == "https" else {}
        return {
            "url": self.url.copy_with(host=str(address)),
            "headers": {"Host": self.url.netloc.decode("ascii")},
            "extensions": extensions,
        }


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
        raise UrlForbidden(f"{host!r} is not a valid IPv4 address") from None
    if len(numbers) > 4 or any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise UrlForbidden(f"{host!r} is not a valid IPv4 address")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why connecting to this address is forbidden, or None when it is allowed."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = forbidden_reason(embedded, allow_private=allow_private)
            return f"{address} embeds {reason}" if reason else None
        if address in NAT64_LOCAL_USE:
            return f"{address} is a local-use NAT64 address"
        if address in IPV4_COMPATIBLE and not (address.is_loopback or address.is_unspecified):
            return f"{address} is an IPv4-compatible (deprecated, reserved) address"
        if address.sixtofour is not None:
            reason = forbidden_reason(address.sixtofour, allow_private=allow_private)
            if reason:
                return f"{address} (6to4) embeds {reason}"
    for attribute, name in (
        ("is_unspecified", "an unspecified"),
        ("is_multicast", "a multicast"),
        ("is_link_local", "a link-local"),
    ):
        if getattr(address, attribute):
            return f"{address} is {name} address"
    if allow_private and (address.is_loopback or address.is_private):
        return None
    for label in ("loopback", "private", "reserved"):
        if getattr(address, f"is_{label}"):
            return f"{address} is a {label} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def _literal_address(host: str) -> IPAddress | None:
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlForbidden(f"{host!r} is not a valid IPv6 address") from None
    return parse_ipv4(host)


def check_url(url: str, *, allow_unresolved: bool = False) -> CheckedUrl:
    """Check a URL and every address its host stands for; raises UrlForbidden (or UrlUnresolved)."""
    allow_private = settings.CALLBACK_ALLOW_PRIVATE
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UrlForbidden("not a valid URL") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise UrlForbidden("only http and https URLs are allowed")
    if parsed.userinfo:
        raise UrlForbidden("credentials in the URL are not allowed")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise UrlForbidden("the URL has no host")
    if "%" in host:
        raise UrlForbidden("percent-encoded hosts and IPv6 zone ids are not allowed")
    name = host.removesuffix(".")
    if not allow_private and (name in LOCALHOST_NAMES or name.endswith(".localhost")):
        raise UrlForbidden(f"{name!r} names this machine")
    literal = _literal_address(name)
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
    else:
        try:
            answers = resolver(name, parsed.port or (443 if parsed.scheme == "https" else 80))
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
            raise UrlForbidden(reason if literal is not None else f"{name} resolves to {reason}")
    return CheckedUrl(parsed, addresses)


@lru_cache(maxsize=1)
def outbound_client() -> httpx.Client:
    """One pooled client per process for webhooks and `fetch`: building one costs ~20 ms (its TLS context).

    Pooling is safe behind the guard: requests go to the checked IP, so a kept-alive connection is only ever
    reused for an address that has just passed the check again.
    """
    return httpx.Client(follow_redirects=False, trust_env=False)


@contextmanager
def guarded_stream(method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
    """Stream a request to a URL that passed the guard, connected to the address that was checked."""
    pinned = check_url(url).pinned_request_args()
    headers = {**kwargs.pop("headers", {}), **pinned["headers"]}
    client = outbound_client()
    with client.stream(method, pinned["url"], headers=headers, extensions=pinned["extensions"], **kwargs) as response:
        yield response
