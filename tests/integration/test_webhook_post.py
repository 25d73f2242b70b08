"""The request the webhook HTTP client writes, and answers that are not HTTP, against
one-shot asyncio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from podium.server.events.webhooks import parse_webhook_url, post_webhook


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


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", "closed the connection without answering"),
        (b"SSH-2.0-OpenSSH\r\n", "not HTTP/1.x"),
        (b"HTTP/1.1 " + b"2" * 9000 + b"\r\n", "status line is too long"),
    ],
)
async def test_answers_that_are_not_http_are_protocol_errors(answer: bytes, error: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(Exception, match=error):
            await post_webhook(
                parse_webhook_url(f"http://127.0.0.1:{port}/"),
                b"{}",
                {},
                allow_private=True,
                timeout_seconds=5,
            )
    finally:
        server.close()
        await server.wait_closed()
