"""The SSRF guard of webhook URLs: form, then every resolved address.

Host names are resolved through ``socket.getaddrinfo``, replaced here by a fake table
so the tests need no DNS (IP literals never reach DNS anyway).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from podium.server.addresses import address_problem
from podium.server.events.ssrf import (
    WebhookRefused,
    check_webhook_url,
    check_webhook_url_async,
    parse_webhook_url,
)

FAKE_DNS = {
    "loopback.test": ["127.0.0.1"],
    "mixed.test": ["93.184.215.14", "10.0.0.7"],  # one public, one private: refused
    "public.test": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "metadata.test": ["169.254.169.254"],
}


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in FAKE_DNS:
            out = []
            for address in FAKE_DNS[host]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, port, 0, 0) if ":" in address else (address, port)
                out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
            return out
        if host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


REFUSED_ADDRESSES = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.1.2.3:8080/", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "not globally routable"),  # carrier-grade NAT
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "private"),  # unique local
    ("http://[fd12:3456::1]/", "private"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "loopback (embedded in ::ffff:"),
    ("http://[::ffff:10.0.0.1]/", "private (embedded"),
    ("http://[2002:7f00:1::]/", "loopback (embedded"),  # 6to4 of 127.0.0.1
    ("http://[64:ff9b::a00:1]/", "private (embedded"),  # NAT64 of 10.0.0.1
    ("http://[fec0::1]/", "site-local"),
    ("http://localhost:8000/", "loopback"),
    ("http://loopback.test/", "loopback.test resolves to 127.0.0.1, a loopback address"),
    ("http://mixed.test/", "mixed.test resolves to 10.0.0.7, a private address"),
    ("https://metadata.test/", "link-local"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_ADDRESSES)
def test_non_public_targets_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(WebhookRefused) as refused:
        check_webhook_url(url, allow_private=False)
    assert reason in str(refused.value)
    assert "ORCHESTRATION_ALLOW_PRIVATE_WEBHOOKS" in str(refused.value)
    check_webhook_url(url, allow_private=True)  # the flag allows every one of them


@pytest.mark.parametrize(("url", "reason"), REFUSED_ADDRESSES[:3] + REFUSED_ADDRESSES[-3:])
async def test_the_async_check_agrees(url: str, reason: str) -> None:
    with pytest.raises(WebhookRefused, match=reason.replace("(", r"\(").replace(".", r"\.")):
        await check_webhook_url_async(url, allow_private=False)
    await check_webhook_url_async(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://public.test/hooks?token=abc",
        "http://93.184.215.14:8080/",
        "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/x",
    ],
)
def test_public_targets_pass(url: str) -> None:
    check_webhook_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("ftp://public.test/", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("gopher://public.test/", "only http:// and https://"),
        ("http://user:secret@public.test/", "user information"),
        ("http://user@public.test/", "user information"),
        ("http:///path-only", "no host"),
        ("http://public.test:0/", "port must not be 0"),
        ("http://public.test:99999/", "malformed"),
        ("http://public.test/a b", "spaces or control characters"),
        ("http://public.test/\r\nHost: evil", "spaces or control characters"),
        ("http://" + "a" * 2100 + ".test/", "longer than"),
        ("http://nowhere.test/", "cannot resolve nowhere.test"),
        ("http://public.test/caf\u00e9", "must be ASCII"),
        ("http://public.test/?q=\u20ac", "must be ASCII"),
    ],
)
def test_malformed_or_unresolvable_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_webhook_url(url, allow_private=True)


def test_parsed_target_keeps_host_header_path_and_query() -> None:
    target = parse_webhook_url("https://Public.TEST/in/hook?x=1&y=2#frag")
    assert (target.scheme, target.host, target.port) == ("https", "public.test", 443)
    assert (target.host_header, target.target) == ("public.test", "/in/hook?x=1&y=2")
    v6 = parse_webhook_url("http://[2606:2800::1]:8080")
    assert (v6.host, v6.port, v6.host_header, v6.target) == (
        "2606:2800::1",
        8080,
        "[2606:2800::1]:8080",
        "/",
    )
    assert parse_webhook_url("http://public.test:80/").host_header == "public.test"
    assert parse_webhook_url("http://bücher.example/").host == "xn--bcher-kva.example"


def test_address_problem_accepts_public_unicast_only() -> None:
    assert address_problem(ipaddress.ip_address("8.8.8.8")) is None
    assert address_problem(ipaddress.ip_address("2001:4860:4860::8888")) is None
    assert address_problem(ipaddress.ip_address("192.0.2.1")) == "private"  # documentation
    assert address_problem(ipaddress.ip_address("255.255.255.255")) is not None
    assert address_problem(ipaddress.ip_address("2001:db8::1")) is not None
