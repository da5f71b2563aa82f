"""The one policy for outbound HTTP to tenant-chosen addresses (decisions §22).

A connector's ``config.base_url`` and a remote MCP server's ``remote_url`` are typed in by a
tenant, and requests to them carry that tenant's credentials. Every such request goes through
``egress_client()``: its transport checks the target (``check_target``: pure given a resolver)
and connects to the address it checked, so a DNS answer that changes between check and connect
(rebinding) cannot reach an unchecked address.

The rules: http(s) only, no userinfo, no odd IPv4 spellings (``2130706433``, ``0x7f.1``), and
every address the host resolves to must be public: no unspecified, loopback, link-local (cloud
metadata at 169.254.169.254), private (RFC 1918, ULA ``fc00::/7``), shared, multicast, reserved
or otherwise non-global address, also not embedded in IPv4-mapped, 6to4 or NAT64 form. Test
mode (``livemode=False``) may reach loopback, for local stand-ins such as the fake Magento.

Never: connect before the check, follow a redirect, or send a request (and so its
``Authorization`` header) to any origin but the one the client was made for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]

HTTP_SCHEMES = {"http": 80, "https": 443}  # the only schemes, with their default ports
# Test mode exists to run against local stand-ins (tests' fake Magento, `fibric up --demo`'s
# store), which listen on 127.0.0.1; nothing else is loosened in test mode.
TEST_MODE_ALLOWS_LOOPBACK = True
# A checked resolution is reused this long by one client. Safe: the connection always goes to
# the address that was checked; the TTL only bounds how often getaddrinfo runs per request.
RESOLVED_TTL_S = 30.0
# getaddrinfo runs in a thread; a resolver that hangs must not hold a call past its deadline.
RESOLVE_TIMEOUT_S = 5.0
# "localhost" and every name under it are loopback by definition (RFC 6761 §6.3), whatever
# a resolver answers for them.
LOCALHOST = "localhost"
# inet_aton accepts 1–4 dot-separated decimal, octal (leading 0) or hex (0x) parts; resolvers
# and parsers disagree on such spellings, so any numeric host that is not plain dotted-quad
# decimal is refused rather than interpreted.
_NUMERIC_HOST_RE = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$", re.I)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(Exception):
    """The target is not allowed; ``reason`` reads after the URL's name ("resolves to ...").
    Raised before any connection is attempted, so it says nothing about open ports."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower-case ASCII (IDNA), IPv6 without brackets
    port: int

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


@dataclass(frozen=True)
class CheckedTarget:
    target: Target
    addresses: tuple[IPAddress, ...]  # every address the host resolved to, all allowed


# ---- pure checks ----------------------------------------------------------------------------
def parse_target(url: str) -> Target:
    """Scheme, host and port of ``url`` as the HTTP client will see them; refuses non-http(s)
    schemes, userinfo, a missing host and ambiguous numeric hosts."""
    try:
        parsed = httpx.URL(url)  # the parser our clients use: no parser-differential tricks
        host = _host_of(parsed.raw_host)
    except (httpx.InvalidURL, UnicodeError, TypeError):
        raise EgressRefused("is not a valid URL") from None
    if parsed.scheme not in HTTP_SCHEMES:
        raise EgressRefused("must be an http or https URL")
    if parsed.userinfo:
        raise EgressRefused("must not contain a user name or password")
    if not host:
        raise EgressRefused("has no host")
    if "%" in host:
        raise EgressRefused("must not name an IPv6 zone")
    if _NUMERIC_HOST_RE.match(host) and _ip_literal(host) is None:
        raise EgressRefused("spells an IPv4 address in a non-standard form")
    return Target(parsed.scheme, host, parsed.port or HTTP_SCHEMES[parsed.scheme])


def _host_of(raw_host: bytes) -> str:
    """The host as compared and resolved: ASCII, lower case, without a root-label dot."""
    host = raw_host.decode("ascii").lower()
    return host[:-1] if host.endswith(".") else host


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_refusal(ip: IPAddress, *, loopback_ok: bool) -> str | None:
    """Why ``ip`` may not be reached (an address kind), or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 host a.b.c.d
            return _kind(ip.ipv4_mapped, loopback_ok)
        tunnelled = ip.sixtofour
        if tunnelled is None and ip in _NAT64:
            tunnelled = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if tunnelled is not None:
            # A tunnelled loopback is never a local stand-in: refused in every mode.
            inner = _kind(tunnelled, loopback_ok=False)
            if inner is not None:
                return inner
    return _kind(ip, loopback_ok)


def _kind(ip: IPAddress, loopback_ok: bool) -> str | None:
    if ip.is_unspecified:
        return "an unspecified"
    if ip.is_loopback:
        return None if loopback_ok else "a loopback"
    if ip.is_link_local:
        return "a link-local"
    if ip.is_multicast:
        return "a multicast"
    if ip.is_reserved:  # before is_private: Python counts 240.0.0.0/4 as both
        return "a reserved"
    if ip.is_private:
        return "a private"
    if not ip.is_global:
        return "a non-public"
    return None


def check_addresses(
    target: Target, addresses: Iterable[str | IPAddress], *, loopback_ok: bool
) -> CheckedTarget:
    """Every address must be allowed (one bad answer refuses the host: a client may pick any)."""
    verb = "is" if _ip_literal(target.host) is not None else "resolves to"
    checked: list[IPAddress] = []
    for raw in addresses:
        ip = raw if not isinstance(raw, str) else ipaddress.ip_address(raw.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # connect over IPv4: the address that was judged
        kind = address_refusal(ip, loopback_ok=loopback_ok)
        if kind is not None:
            raise EgressRefused(f"{verb} {kind} address ({ip})")
        if ip not in checked:
            checked.append(ip)
    if not checked:
        raise EgressRefused("does not resolve")
    return CheckedTarget(target, tuple(checked))


def loopback_allowed(*, livemode: bool, allow_loopback: bool) -> bool:
    """Live mode never reaches loopback; test mode may, for local stand-ins."""
    return allow_loopback and not livemode


def check_target(
    url: str,
    *,
    livemode: bool,
    allow_loopback: bool = TEST_MODE_ALLOWS_LOOPBACK,
    resolve: Resolver | None = None,
) -> CheckedTarget:
    """The addresses ``url`` may be reached at, or ``EgressRefused``. Opens no connection:
    ``resolve`` (default: the system resolver) is the only I/O."""
    loopback_ok = loopback_allowed(livemode=livemode, allow_loopback=allow_loopback)
    return check_parsed(parse_target(url), loopback_ok=loopback_ok, resolve=resolve)


def check_parsed(
    target: Target, *, loopback_ok: bool, resolve: Resolver | None = None
) -> CheckedTarget:
    """``check_target`` for an already parsed target."""
    literal = _ip_literal(target.host)
    if literal is not None:
        return check_addresses(target, [literal], loopback_ok=loopback_ok)
    if (target.host == LOCALHOST or target.host.endswith("." + LOCALHOST)) and not loopback_ok:
        raise EgressRefused("names a loopback host")
    try:
        addresses = list((resolve or system_resolve)(target.host, target.port))
    except OSError:
        raise EgressRefused("does not resolve") from None
    return check_addresses(target, addresses, loopback_ok=loopback_ok)


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_target_async(
    url: str, *, livemode: bool, allow_loopback: bool = TEST_MODE_ALLOWS_LOOPBACK
) -> CheckedTarget:
    """``check_target`` with the system resolver off the event loop, bounded in time."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(check_target, url, livemode=livemode, allow_loopback=allow_loopback),
            RESOLVE_TIMEOUT_S,
        )
    except TimeoutError:
        raise EgressRefused("does not resolve in time") from None


# ---- the client -----------------------------------------------------------------------------
def _pinned_transport(
    lib: ModuleType, target: Target, inner: Any, loopback_ok: bool, resolve: Resolver | None
) -> Any:
    """A transport of ``lib`` (httpx or httpx2) that only sends to ``target``'s origin and
    connects to a checked address (TLS still verifies, and SNI names, the host)."""

    class PinnedTransport(lib.AsyncBaseTransport):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self._checked: CheckedTarget | None = None
            self._checked_until = 0.0

        async def _addresses(self) -> CheckedTarget:
            now = time.monotonic()
            if self._checked is None or now >= self._checked_until:
                try:
                    self._checked = await asyncio.wait_for(
                        asyncio.to_thread(
                            check_parsed, target, loopback_ok=loopback_ok, resolve=resolve
                        ),
                        RESOLVE_TIMEOUT_S,
                    )
                except TimeoutError:
                    raise EgressRefused("does not resolve in time") from None
                self._checked_until = now + RESOLVED_TTL_S
            return self._checked

        async def handle_async_request(self, request: Any) -> Any:
            url = request.url
            port = url.port or HTTP_SCHEMES.get(url.scheme, 0)
            if (url.scheme, _host_of(url.raw_host), port) != target.origin:
                # Credentials (the client's default headers) go to the configured host only.
                raise EgressRefused("is not the configured host; request not sent")
            checked = await self._addresses()
            ip = checked.addresses[0]
            request.url = url.copy_with(host=str(ip))
            if url.scheme == "https" and _ip_literal(target.host) is None:
                request.extensions = {**request.extensions, "sni_hostname": target.host}
            return await inner.handle_async_request(request)

        async def aclose(self) -> None:
            await inner.aclose()

    return PinnedTransport()


def egress_client(
    url: str,
    *,
    livemode: bool,
    lib: ModuleType = httpx,
    limits: Any = None,
    resolve: Resolver | None = None,
    **client_kwargs: Any,
) -> Any:
    """An ``AsyncClient`` of ``lib`` (httpx, or httpx2 for the MCP SDK) bound to ``url``'s
    origin under the egress policy; redirects are never followed. ``EgressRefused`` at once if
    the URL itself is not allowed (scheme, userinfo, spelling); addresses are checked per
    connection, and a refused one surfaces as ``EgressRefused`` from the request. ``resolve``
    replaces the system resolver (tests: a DNS answer that changes)."""
    target = parse_target(url)
    loopback_ok = loopback_allowed(livemode=livemode, allow_loopback=TEST_MODE_ALLOWS_LOOPBACK)
    # A custom transport also means no proxy from the environment: a proxy would do the
    # connecting, to addresses this policy never saw.
    inner = lib.AsyncHTTPTransport(**({"limits": limits} if limits is not None else {}))
    client_kwargs.setdefault("base_url", url)
    return lib.AsyncClient(
        transport=_pinned_transport(lib, target, inner, loopback_ok, resolve),
        follow_redirects=False,
        **client_kwargs,
    )
