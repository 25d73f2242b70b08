"""The SSRF guard of webhook URLs: the form of a URL, then every address its host
resolves to.

:func:`check_webhook_url` accepts http(s) URLs without user information whose host
resolves only to public unicast addresses (unless private targets are allowed). The
sender (:mod:`podium.server.events.webhook_http`) resolves again on each try and checks
every address with :func:`resolve_checked` before it connects, so a name that re-binds
to a private address after the check is refused at delivery time. What counts as public
is :func:`podium.server.addresses.address_problem`, shared with the agents' guard; the
form of a URL is :func:`podium.server.outbound_http.parse_http_url`, shared with A2A
agents reached over HTTP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from podium.server.addresses import Address, address_problem
from podium.server.outbound_http import MAX_URL_LENGTH, HttpTarget, UrlRefused, parse_http_url

__all__ = [
    "MAX_URL_LENGTH",
    "WebhookRefused",
    "WebhookTarget",
    "check_webhook_url",
    "check_webhook_url_async",
    "parse_webhook_url",
    "resolve_checked",
]


class WebhookRefused(UrlRefused):
    """The URL or an address its host resolves to is not an allowed webhook target."""


WebhookTarget = HttpTarget
"""A parsed webhook URL (:class:`~podium.server.outbound_http.HttpTarget`)."""


def parse_webhook_url(url: str) -> WebhookTarget:
    """Parse and check the form of a webhook URL (no DNS;
    :func:`~podium.server.outbound_http.parse_http_url`). Raises WebhookRefused."""
    try:
        return parse_http_url(url)
    except UrlRefused as exc:
        raise WebhookRefused(str(exc)) from None


def _ip_literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_addresses(host: str, addresses: Sequence[str]) -> list[str]:
    """The addresses (without IPv6 zone); WebhookRefused if any is not public."""
    checked: list[str] = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        problem = address_problem(address)
        if problem is not None:
            where = (
                f"{host} is" if _ip_literal(host) is not None else f"{host} resolves to {address},"
            )
            raise WebhookRefused(
                f"{where} a {problem} address; webhook targets must be public "
                "(ORCHESTRATION_ALLOW_PRIVATE_WEBHOOKS=true allows private ones)"
            )
        checked.append(text)
    return checked


def _addresses(infos: Sequence[tuple[Any, ...]]) -> list[str]:
    """Distinct addresses of getaddrinfo results, in their order."""
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def _resolve_error(host: str, exc: OSError) -> WebhookRefused:
    reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
    return WebhookRefused(f"cannot resolve {host}: {reason}")


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuse (ValueError, a :class:`WebhookRefused`, with a message naming the
    problem) a URL that is not http(s), carries user information, does not resolve,
    or resolves to any non-public address (loopback, link-local, private, unique-local,
    multicast, unspecified, reserved...) unless ``allow_private``.

    Blocking (DNS): from async code use :func:`check_webhook_url_async`.
    """
    target = parse_webhook_url(url)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _resolve_error(target.host, exc) from None
    if not allow_private:
        _check_addresses(target.host, _addresses(infos))


async def check_webhook_url_async(url: str, *, allow_private: bool) -> None:
    """:func:`check_webhook_url` resolving without blocking the event loop."""
    target = parse_webhook_url(url)
    await resolve_checked(target.host, target.port, allow_private=allow_private)


async def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Resolve ``host`` once (without blocking the event loop) and return its distinct
    addresses, every one of them checked (unless ``allow_private``): the only addresses
    a webhook connection may go to. Raises WebhookRefused."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _resolve_error(host, exc) from None
    if not infos:
        raise WebhookRefused(f"cannot resolve {host}: no address")
    addresses = _addresses(infos)
    return addresses if allow_private else _check_addresses(host, addresses)
