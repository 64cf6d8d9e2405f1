"""Where a webhook may go: the allow-list check (at job time) and the address check (at send time).

Both parse with httpx, the library that sends the POST, so the host checked is the host called.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from sdqueue.config import WebhookSettings
from sdqueue.contracts.errors import Forbidden

DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """Where one POST goes: the URL pinned to a checked address, with the original Host header and TLS name."""

    url: httpx.URL
    host_header: str
    sni_hostname: str | None


def check_callback_url(url: str | None, *, webhooks: WebhookSettings) -> str | None:
    """Return the request's callback URL if this worker may call it, or None when the request names none.

    Raises:
        Forbidden: callbacks are off here, the URL is not plain http(s) without credentials, or its host and
            port are not on the allow-list.
    """
    if url is None:
        return None
    if not webhooks.allowed_hosts or webhooks.secret is None:
        raise Forbidden("callbacks are not enabled on this worker")
    parsed = _parse(url)
    host, port = _host_and_port(parsed)
    default_port = DEFAULT_PORTS[parsed.scheme]
    if f"{host}:{port}" not in webhooks.allowed_hosts and not (port == default_port and host in webhooks.allowed_hosts):
        raise Forbidden("callback_url host is not on this worker's allow-list")
    return url


async def resolve_target(url: str, *, webhooks: WebhookSettings) -> Target:
    """Check `url` against the allow-list again and pin it to one address that may be called.

    A host name must resolve to public addresses only (unless `allow_private_networks`), and the POST goes to the
    address checked, so a DNS answer that changes between check and connect (rebinding) cannot redirect it.

    Raises:
        Forbidden: off the allow-list, or the name resolves to a private, loopback or link-local address.
        OSError: the name does not resolve (a retry may help).
    """
    check_callback_url(url, webhooks=webhooks)
    parsed = _parse(url)
    host = parsed.raw_host.decode("ascii").lower()
    if _ip_literal(host) is not None:
        # An IP literal on the allow-list was chosen by the operator: nothing to rebind.
        return Target(url=parsed, host_header=parsed.netloc.decode("ascii"), sni_hostname=None)
    address = await _public_address(host, port=_host_and_port(parsed)[1], webhooks=webhooks)
    return Target(
        url=parsed.copy_with(host=str(address)),
        host_header=parsed.netloc.decode("ascii"),
        sni_hostname=host if parsed.scheme == "https" else None,
    )


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise Forbidden("callback_url is not a valid URL") from exc
    if parsed.scheme not in DEFAULT_PORTS:
        raise Forbidden("callback_url must be http or https")
    if parsed.userinfo:
        raise Forbidden("callback_url must not carry credentials")
    if not parsed.raw_host:
        raise Forbidden("callback_url has no host")
    return parsed


def _host_and_port(url: httpx.URL) -> tuple[str, int]:
    """The allow-list form of the URL's host (IPv6 in brackets) and its effective port."""
    host = url.raw_host.decode("ascii").lower()
    if ":" in host:
        host = f"[{host}]"
    return host, url.port or DEFAULT_PORTS[url.scheme]


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def _public_address(host: str, *, port: int, webhooks: WebhookSettings) -> IPAddress:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(webhooks.timeout_s):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise OSError(f"{host} has no address")
    if not webhooks.allow_private_networks and not all(is_public_address(address) for address in addresses):
        raise Forbidden("callback host resolves to a private, loopback or link-local address")
    return addresses[0]


def is_public_address(address: IPAddress) -> bool:
    """Say whether an address is globally routable unicast (IPv4-mapped IPv6 judged as the IPv4 it maps)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast
