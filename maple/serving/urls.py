"""Image URLs, fetched only when `serve.allow_image_urls` is true, and never from the server's own network.

A URL names a host; the host resolves to addresses, and the request goes to one of them. Each hop (the URL, then
every redirect, at most MAX_REDIRECTS) is resolved here, refused when any address is not public (loopback,
private, link-local such as the cloud metadata service at 169.254.169.254, multicast, reserved, unspecified,
IPv4 inside IPv6), and then connected to by the address that was checked: the host is not resolved a second time
(a DNS answer that changes between check and connect, "DNS rebinding", cannot redirect the fetch). The TLS name and
the Host header stay the URL's host, so certificates are verified as usual. No proxy from the environment is used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

from maple.serving.errors import ApiError

MAX_REDIRECTS = 5
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: Address) -> bool:
    """True for an address on the public internet; False for loopback, private, link-local, multicast, reserved,
    unspecified and shared (CGNAT) ranges, and for IPv4 wrapped in IPv6 whose IPv4 is not public."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if inner is not None:
            return is_public(inner)
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an IP literal is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def _refused(param: str, url: str, why: str) -> ApiError:
    return ApiError(422, f"{param}: {url} is not fetched ({why}); send the image as a base64 data URL",
                    "image_url_refused", param)


async def _checked_address(url: str, param: str, allowed: Callable[[Address], bool]) -> tuple[str, Address]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refused(param, url, "only http(s) URLs with a host are fetched")
    if parts.username or parts.password:
        raise _refused(param, url, "URLs with credentials are not fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await resolve(parts.hostname, port)
    except OSError as exc:
        raise ApiError(422, f"{param}: the host of {url} does not resolve ({exc})", "image_fetch_failed",
                       param) from None
    refused = [a for a in addresses if not allowed(a)]
    if not addresses or refused:
        raise _refused(param, url, f"{parts.hostname} resolves to {refused[0] if refused else 'nothing'}, which is "
                                   "not a public address")
    return parts.hostname, addresses[0]


def _pinned(url: str, address: Address) -> str:
    """The URL with its host replaced by the checked address (the connection goes there, nowhere else)."""
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


async def fetch_image(url: str, param: str, *, max_bytes: int, timeout_s: float,
                      allowed: Callable[[Address], bool] = is_public) -> bytes:
    """GET an image URL, following at most MAX_REDIRECTS redirects, each hop checked (see the module docstring);
    413 over `max_bytes`, 422 for a refused or failed fetch. `allowed`: which resolved addresses may be connected
    to (tests narrow it to one loopback address)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                host, address = await _checked_address(url, param, allowed)
                port = urlsplit(url).port
                headers = {"Host": host if port is None else f"{host}:{port}", "Accept": "image/*"}
                request = client.build_request("GET", _pinned(url, address), headers=headers,
                                               extensions={"sni_hostname": host})
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ApiError(422, f"{param}: fetching {url} returned HTTP {response.status_code}",
                                       "image_fetch_failed", param)
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > max_bytes:
                            raise ApiError(413, f"{param}: {url} is larger than {max_bytes} bytes (what is left of "
                                                "serve.max_body_bytes for this request)", "image_too_large", param)
                    return bytes(data)
                finally:
                    await response.aclose()
    except httpx.HTTPError as exc:
        raise ApiError(422, f"{param}: fetching {url} failed ({type(exc).__name__}: {exc})", "image_fetch_failed",
                       param) from None
    raise _refused(param, url, f"more than {MAX_REDIRECTS} redirects")
