"""The webhook HTTP sender: the request it writes, TLS to a checked address with the
host's name, and how its failures are recorded (real servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpcore
import pytest

from podium.server.events.ssrf import WebhookRefused, parse_webhook_url
from podium.server.events.webhook_http import HttpAnswer, describe_failure, post_webhook


async def _capture_request(url_path: str, body: bytes) -> tuple[bytes, int]:
    """Run post_webhook against a one-shot asyncio server; the raw request and status."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        seen.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await post_webhook(
            parse_webhook_url(f"http://127.0.0.1:{port}{url_path}"),
            body,
            {"webhook-id": "d1"},
            allow_private=True,
            timeout_seconds=5,
        )
    finally:
        server.close()
        await server.wait_closed()
    return seen[0], answer.status


async def test_the_client_writes_one_plain_http_post() -> None:
    body = '{"type":"step.completed","note":"é"}'.encode()
    raw, status = await _capture_request("/in/hook?key=1#fragment", body)
    assert status == 204
    head, sent = raw.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "POST /in/hook?key=1 HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Host"].startswith("127.0.0.1:")
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(body))
    assert headers["Connection"] == "close"
    assert headers["webhook-id"] == "d1"
    assert sent == body


async def _answering(answer: bytes, *, close: bool = True) -> asyncio.Server:
    """A server that reads a request head, writes ``answer`` and closes (or keeps the
    connection open until the client goes)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            if not close:
                await reader.read()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_header_values_cannot_inject_lines() -> None:
    server = await _answering(b"HTTP/1.1 204 No Content\r\n\r\n")
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpcore.LocalProtocolError) as refused:
            await post_webhook(
                parse_webhook_url(f"http://127.0.0.1:{port}/"),
                b"{}",
                {"webhook-id": "x\r\nEvil: 1"},
                allow_private=True,
                timeout_seconds=5,
            )
        assert (describe_failure(refused.value, 5) or "").startswith("cannot send the request")
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("answer", "close"),
    [
        (b"", True),  # closed without answering
        (b"SSH-2.0-OpenSSH\r\n", True),
        (b"HTTP/1.1 " + b"2" * 9000 + b"\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200_000, False),  # a head without end
    ],
)
async def test_answers_that_are_not_http_are_protocol_errors(answer: bytes, close: bool) -> None:
    server = await _answering(answer, close=close)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpcore.RemoteProtocolError) as bad:
            await post_webhook(
                parse_webhook_url(f"http://127.0.0.1:{port}/"),
                b"{}",
                {},
                allow_private=True,
                timeout_seconds=5,
            )
        assert (describe_failure(bad.value, 5) or "").startswith("bad HTTP answer: ")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_names_the_socket_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpcore.ConnectError) as failed:
        await post_webhook(
            parse_webhook_url(f"http://127.0.0.1:{port}/"),
            b"{}",
            {},
            allow_private=True,
            timeout_seconds=5,
        )
    error = describe_failure(failed.value, 5)
    assert error is not None and error.startswith("connection failed: ")
    assert "All connection attempts failed" not in error  # the socket's own reason


def _certificates(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``name`` signed by it: (ca, cert, key) files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def build(subject: str, key: ec.EllipticCurvePrivateKey, issuer: Any, signer: Any) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )
        if subject == "test CA":
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = build("test CA", ca_key, ca_name, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(name, key, ca_name, ca_key)
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.mark.parametrize("name", ["hooks.podium.test", "other.podium.test"])
async def test_tls_goes_to_the_checked_address_with_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The URL names a host that resolves to 127.0.0.1: the connection goes there, the
    TLS server name and Host header are the host's, and the certificate must be the
    host's (a certificate for another name is a TLS error)."""
    ca, cert, key = _certificates(tmp_path, name)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server_names: list[str | None] = []
    server_tls.sni_callback = lambda sock, sni, ctx: server_names.append(sni)
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "hooks.podium.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    client_tls = ssl.create_default_context(cafile=str(ca))
    try:
        send = post_webhook(
            parse_webhook_url(f"https://hooks.podium.test:{port}/in"),
            b"{}",
            {},
            allow_private=True,
            timeout_seconds=5,
            ssl_context=client_tls,
        )
        if name == "hooks.podium.test":
            answer = await send
            assert answer == HttpAnswer(202, "Accepted")
            assert f"Host: hooks.podium.test:{port}\r\n".encode() in heads[0]
        else:
            with pytest.raises(httpcore.ConnectError) as failed:
                await send
            error = describe_failure(failed.value, 5)
            assert error is not None and error.startswith("TLS error: CERTIFICATE_VERIFY_FAILED")
            assert heads == []
        assert server_names == ["hooks.podium.test"]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_name_that_resolves_to_a_private_address_is_never_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender resolves and checks on its own (DNS rebinding after StartRun's check):
    one private address among the answers refuses the try before any connection."""
    contacted: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        contacted.append(True)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        assert host == "rebind.podium.test"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        with pytest.raises(WebhookRefused, match="resolves to 127.0.0.1, a loopback address"):
            await post_webhook(
                parse_webhook_url(f"http://rebind.podium.test:{port}/"),
                b"{}",
                {},
                allow_private=False,
                timeout_seconds=5,
            )
    finally:
        server.close()
        await server.wait_closed()
    assert contacted == []


async def test_the_answer_body_is_never_read() -> None:
    """Only the status line and head count: a receiver that announces a large body and
    sends it slowly does not hold the try (nor fill memory)."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1024)
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 10)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await asyncio.wait_for(
            post_webhook(
                parse_webhook_url(f"http://127.0.0.1:{port}/"),
                b"{}",
                {},
                allow_private=True,
                timeout_seconds=5,
            ),
            timeout=2,
        )
        assert answer == HttpAnswer(200, "OK")
    finally:
        release.set()
        server.close()
        await server.wait_closed()
