"""``http.get``: fetch a URL from an admin-set allowlist of hosts (off by default).

The allowlist is the ``TOLLGATE_HTTP_ALLOWLIST`` setting plus the
``HttpAllowedHost`` rows admins add. Entries are host names (``example.com``),
subdomain wildcards (``*.example.com``), IP addresses (``127.0.0.1``) or CIDR
networks (``10.0.0.0/8``).

A request is refused, before anything is sent, when:

- the scheme is not ``http`` or ``https``, or the URL carries credentials;
- the host is not on the allowlist (an IP-literal host must be inside an IP or
  network entry);
- the host resolves to an address that is not globally routable (loopback,
  private, link-local, reserved, multicast) and no IP/network entry covers that
  address — so an allowlisted name cannot be pointed at the internal network
  (DNS rebinding); the connected peer address is checked again after connect.

Redirects are followed by hand, at most ``MAX_REDIRECTS``, and every hop passes
the same checks, so a redirect to another host is refused. The body is read up
to ``TOLLGATE_HTTP_MAX_BYTES`` and each request is bounded by
``TOLLGATE_HTTP_TIMEOUT_SECONDS``. Proxies from the environment are ignored
(``trust_env=False``) so they cannot bypass the checks.

Residual risk, documented rather than hidden: when a name re-resolves to an
internal address between the check and the connect, the request line is sent
before the post-connect check refuses to read the answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Annotated, cast

import httpx
from django.conf import settings
from pydantic import Field

from tools.models import HttpAllowedHost
from tools.registry import ToolError, tool

MAX_REDIRECTS = 5
USER_AGENT = "Tollgate http.get (+https://github.com/)"
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class Allowlist:
    """Parsed allowlist entries: exact names, wildcard suffixes, IP networks."""

    names: set[str] = field(default_factory=set)
    suffixes: list[str] = field(default_factory=list)
    networks: list[IPNetwork] = field(default_factory=list)

    @classmethod
    def parse(cls, entries: list[str]) -> Allowlist:
        allow = cls()
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                allow.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                allow.suffixes.append(entry[1:])
            else:
                allow.names.add(entry)
        return allow

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        address = _ip_or_none(host)
        if address is not None:
            return self.address_listed(address)
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def address_listed(self, address: IPAddress) -> bool:
        address = _unmap(address)
        return any(address in net for net in self.networks if net.version == address.version)

    def address_allowed(self, address: IPAddress) -> bool:
        """Public addresses are fine; others only when an IP/network entry covers them."""
        address = _unmap(address)
        if address.is_global and not address.is_multicast:
            return True
        return self.address_listed(address)


def _ip_or_none(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unmap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def http_allowlist() -> Allowlist:
    """The effective allowlist: the setting plus ``HttpAllowedHost`` rows."""
    entries = list(getattr(settings, "TOLLGATE_HTTP_ALLOWLIST", []))
    entries += [host async for host in HttpAllowedHost.objects.values_list("host", flat=True)]
    return Allowlist.parse(entries)


def _check_url(url: httpx.URL, allow: Allowlist) -> None:
    if url.scheme not in ("http", "https"):
        raise ToolError(f"Refused: only http and https URLs are fetched, not {url.scheme!r}.")
    if url.userinfo:
        raise ToolError("Refused: URLs with credentials are not fetched.")
    if not url.host:
        raise ToolError("Refused: the URL has no host.")
    if not allow.host_allowed(url.host):
        raise ToolError(
            f"Refused: host {url.host!r} is not on the administrator's allowlist for http.get."
        )


async def _check_resolution(url: httpx.URL, allow: Allowlist) -> None:
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            url.host, port, type=socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        raise ToolError(f"Cannot resolve host {url.host!r}.") from exc
    for info in infos:
        # An AF_INET/AF_INET6 sockaddr, (host, port[, flowinfo, scope_id]), whose
        # host is a string: the only families getaddrinfo answers for a host name.
        host = cast(str, info[4][0])
        address = ipaddress.ip_address(host.split("%", 1)[0])
        if not allow.address_allowed(address):
            raise ToolError(
                f"Refused: host {url.host!r} resolves to the non-public address {address}, "
                "which is not on the allowlist."
            )


def _check_peer(response: httpx.Response, url: httpx.URL, allow: Allowlist) -> None:
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not peer:
        return
    address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    if not allow.address_allowed(address):
        raise ToolError(
            f"Refused: {url.host!r} connected to the non-public address {address}, "
            "which is not on the allowlist."
        )


async def _read_limited(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


@tool(
    name="http.get",
    read_only=True,
    idempotent=True,
    open_world=True,
    timeout_seconds=30,
    max_result_chars=50_000,
    enabled_by_default=False,
)
async def http_get(
    url: Annotated[
        str,
        Field(
            description="Absolute http(s) URL on a host the administrator allowed.",
            min_length=1,
            max_length=2000,
        ),
    ],
) -> str:
    """Fetch a web page or API response with HTTP GET (allowlisted hosts only)."""
    allow = await http_allowlist()
    try:
        current = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ToolError(f"Not a valid URL: {exc}.") from exc
    max_bytes = int(getattr(settings, "TOLLGATE_HTTP_MAX_BYTES", 1_000_000))
    timeout = float(getattr(settings, "TOLLGATE_HTTP_TIMEOUT_SECONDS", 10.0))
    async with httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    ) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            _check_url(current, allow)
            await _check_resolution(current, allow)
            try:
                async with client.stream("GET", current) as response:
                    _check_peer(response, current, allow)
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        try:
                            current = current.join(location)
                        except httpx.InvalidURL as exc:
                            raise ToolError(f"Invalid redirect location {location!r}.") from exc
                        continue
                    body, cut = await _read_limited(response, max_bytes)
                    return _render(response, current, body, cut, max_bytes)
            except httpx.TimeoutException as exc:
                raise ToolError(f"Timed out after {timeout:g} s fetching {current}.") from exc
            except httpx.HTTPError as exc:
                raise ToolError(f"Request to {current} failed: {exc}.") from exc
    raise ToolError(f"Refused: more than {MAX_REDIRECTS} redirects.")


def _render(
    response: httpx.Response, url: httpx.URL, body: bytes, cut: bool, max_bytes: int
) -> str:
    content_type = response.headers.get("content-type", "")
    head = (
        f"HTTP {response.status_code} {response.reason_phrase}\n"
        f"URL: {url}\nContent-Type: {content_type or 'unknown'}\n\n"
    )
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime and not mime.startswith(TEXT_TYPES):
        return head + f"[binary content, {len(body)} bytes{'+' if cut else ''}; not shown]"
    text = body.decode(response.charset_encoding or "utf-8", errors="replace")
    if cut:
        text += f"\n[body cut at {max_bytes} bytes]"
    return head + text
