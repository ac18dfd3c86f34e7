"""Where a completion callback may go: the guard against server-side request forgery.

An upload may name its own callback target (`callback_url` form field or `Callback-URL`
header). Sent blindly, that would let any client make our workers POST to the cloud metadata
address, to Redis on loopback, or to anything on the private network. So:

* at upload, the URL must be http(s), carry no credentials, and name a host on
  CALLBACK_ALLOWED_HOSTS (`check_requested`, no DNS), and its name must resolve only to
  addresses we may send to (`resolve_for_send`, run off the event loop);
* at every attempt, the name is resolved again and every address checked, and the request
  connects to the address that was checked (`SendTarget`): a name that resolved to a public
  address at upload and to 127.0.0.1 an hour later (DNS rebinding) is refused, not followed.

Addresses we may send to are global ones. Loopback, link-local (169.254.0.0/16, the metadata
service), private, shared, reserved and multicast addresses are refused unless the allowlist
names that address or its network (`10.0.0.0/8`, `127.0.0.1`): an allowlisted *name* admits
public addresses only, because whoever controls its DNS would otherwise choose where we send.
The operator's own CALLBACK_URL is trusted as set and is not checked here.

Allowlist entries: `host`, `host:port`, `*.domain` (any subdomain), an IP address or a CIDR
network, comma-separated, case-insensitive.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from yousync.core.config import Settings

MAX_URL_LENGTH = 2048
REFUSED_CODE = "callback_url_not_allowed"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


class CallbackTargetRefused(ValueError):
    """The URL may not be a callback target; the message says why (shown to the client)."""

    code = REFUSED_CODE


@dataclass(frozen=True)
class SendTarget:
    """One attempt's destination. `url` keeps the host by name (pool, TLS check, SNI and Host
    go by it); the sender connects to `host`:`port` at `address` only, the address checked for
    this attempt (yousync/worker/callback_http.py). `address` is None for the operator's URL,
    which is not checked."""

    url: str
    host: str
    port: int
    address: str | None = None


@dataclass(frozen=True)
class _Allowlist:
    names: frozenset[str]  # host or host:port
    suffixes: tuple[str, ...]  # from *.domain: ".domain"
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> _Allowlist:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw
            if not raw.isascii():
                with contextlib.suppress(UnicodeError):  # an unusable entry matches nothing
                    entry = raw.encode("idna").decode("ascii")
            if entry.startswith("*."):
                suffixes.append(entry[1:])
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def admits_host(self, host: str, port: int) -> bool:
        address = _literal_address(host)
        if address is not None:
            return self.admits_address(address, port)
        return (
            host in self.names
            or f"{host}:{port}" in self.names
            or any(host.endswith(suffix) for suffix in self.suffixes)
        )

    def admits_address(self, address: IPAddress, port: int) -> bool:
        """Named by an address or network entry, or as `address:port`."""
        return f"{address}:{port}" in self.names or any(
            address in network for network in self.networks
        )


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# IPv6 ranges that carry an IPv4 address in their last 32 bits and reach it: NAT64
# (64:ff9b::/96, RFC 6052) and the deprecated IPv4-compatible form (::/96). 6to4 (2002::/16)
# carries it in bits 16–48 (`sixtofour`). 64:ff9b:1::/48 (RFC 8215, local NAT64) may embed it
# anywhere, so it is never public. Python counts all of these as global.
_LAST_32_BITS = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded(address: IPAddress) -> list[IPAddress]:
    """`address` and every IPv4 address it leads to: ::ffff:127.0.0.1, 64:ff9b::7f00:1,
    ::7f00:1 and 2002:7f00:1:: all reach 127.0.0.1, so 127.0.0.1 is judged too."""
    if not isinstance(address, ipaddress.IPv6Address):
        return [address]
    found: list[IPAddress] = [address]
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if any(address in network for network in _LAST_32_BITS):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _public(address: IPAddress) -> bool:
    """Global unicast, and so is every IPv4 address it embeds."""
    if isinstance(address, ipaddress.IPv6Address) and address in _LOCAL_NAT64:
        return False
    return all(
        found.is_global and not found.is_multicast
        for found in _embedded(address)
        # ::ffff:a.b.c.d itself is not global; only the address it maps to counts.
        if not (isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None)
    )


def _unmapped(address: IPAddress) -> IPAddress:
    """::ffff:127.0.0.1 is 127.0.0.1 (for the allowlist: an entry 127.0.0.1 admits it)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parsed(url: str) -> tuple[SplitResult, str, int]:
    if len(url) > MAX_URL_LENGTH:
        raise CallbackTargetRefused(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise CallbackTargetRefused("callback_url is not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise CallbackTargetRefused("callback_url must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise CallbackTargetRefused("callback_url must not carry credentials")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise CallbackTargetRefused("callback_url has no host")
    if not host.isascii():
        # An internationalised name goes as DNS and the Host header know it (punycode), and
        # is matched against the allowlist in that form.
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise CallbackTargetRefused("callback_url's host is not a valid name") from exc
        netloc = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=netloc.lower().replace(host, ascii_host, 1))
        host = ascii_host
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def check_requested(url: str, settings: Settings) -> str:
    """An upload's own callback URL, checked without DNS: well-formed, http(s), no credentials,
    a host on CALLBACK_ALLOWED_HOSTS. Returns the URL as it will be stored."""
    parts, host, port = _parsed(url)
    allowlist = _Allowlist.parse(settings.callback_allowed_host_set)
    if not allowlist.admits_host(host, port):
        raise CallbackTargetRefused(f"callback_url host {host!r} is not on the allowlist")
    return urlunsplit(parts)


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def resolve_for_send(
    url: str, settings: Settings, *, operator_set: bool, resolve: Resolver = _getaddrinfo
) -> SendTarget:
    """The destination of one attempt. The operator's CALLBACK_URL goes as it is. An upload's
    URL is checked again (the allowlist may have changed since) and its host resolved now:
    every address must be public or allowlisted, and the attempt connects to the first.
    Blocking (DNS): call it from a worker thread, never on an event loop."""
    parts, host, port = _parsed(url if operator_set else check_requested(url, settings))
    if operator_set:
        return SendTarget(url=url, host=host, port=port)
    allowlist = _Allowlist.parse(settings.callback_allowed_host_set)
    literal = _literal_address(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            addresses = [ipaddress.ip_address(found.split("%")[0]) for found in resolve(host, port)]
        except (OSError, UnicodeError) as exc:
            raise CallbackTargetRefused(f"callback_url host {host!r} does not resolve") from exc
        if not addresses:
            raise CallbackTargetRefused(f"callback_url host {host!r} does not resolve")
    for address in addresses:
        plain = _unmapped(address)
        if not _public(plain) and not allowlist.admits_address(plain, port):
            raise CallbackTargetRefused(
                f"callback_url host {host!r} resolves to {plain}, which is not allowed"
            )
    return SendTarget(url=urlunsplit(parts), host=host, port=port, address=str(addresses[0]))
