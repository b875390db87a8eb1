"""The fake provider's small HTTP server: framing, keep-alive, and refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devtools import lean_http


async def _echo(request: lean_http.Request) -> lean_http.Response:
    return 200, {"method": request.method, "path": request.path, "query": request.query,
                 "key": request.headers.get("idempotency-key"), "body": request.json()}


async def _slow(request: lean_http.Request) -> lean_http.Response:
    await asyncio.sleep(0.05)
    return 202, {"slow": True}


async def _boom(request: lean_http.Request) -> lean_http.Response:
    raise RuntimeError("broken")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    routes: lean_http.Routes = {("POST", "/echo"): _echo, ("GET", "/echo"): _echo,
                                ("POST", "/slow"): _slow, ("GET", "/boom"): _boom}
    server = await lean_http.serve(routes, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def _request(method: str, path: str, body: Any = None, headers: str = "") -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    return (f"{method} {path} HTTP/1.1\r\nhost: x\r\n{headers}"
            f"content-length: {len(payload)}\r\n\r\n").encode() + payload


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, json.loads(body)


async def test_keeps_the_connection_for_requests_one_after_another(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(3):
        writer.write(_request("POST", f"/echo?n={i}", {"i": i},
                              headers=f"Idempotency-Key: k{i}\r\n"))
        status, headers, body = await _read_answer(reader)
        assert status == 200 and "connection" not in headers
        assert body == {"method": "POST", "path": "/echo", "query": {"n": str(i)},
                        "key": f"k{i}", "body": {"i": i}}
    writer.close()


async def test_requests_sent_together_are_answered_in_order(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("POST", "/slow", {}) + _request("GET", "/echo") +
                 _request("POST", "/echo", {"last": True}))
    answers = [await _read_answer(reader) for _ in range(3)]
    assert [(s, b) for s, _, b in answers] == [
        (202, {"slow": True}),
        (200, {"method": "GET", "path": "/echo", "query": {}, "key": None, "body": None}),
        (200, {"method": "POST", "path": "/echo", "query": {}, "key": None,
               "body": {"last": True}}),
    ]
    writer.close()


async def test_a_request_arriving_in_pieces_is_answered_once_whole(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = _request("POST", "/echo", {"text": "x" * 5000})
    for i in range(0, len(data), 700):
        writer.write(data[i : i + 700])
        await writer.drain()
        await asyncio.sleep(0.005)
    status, _, body = await _read_answer(reader)
    assert status == 200 and body["body"] == {"text": "x" * 5000}
    writer.close()


@pytest.mark.parametrize(("data", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nbad header\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\ncontent-length: -1\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 411),
])
async def test_malformed_requests_are_refused_and_the_connection_closed(
    port: int, data: bytes, status: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got, headers, body = await _read_answer(reader)
    assert got == status and headers["connection"] == "close" and body["error"]
    assert await reader.read() == b""  # closed by the server
    writer.close()


async def test_connection_close_unknown_routes_and_handler_errors(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("GET", "/nowhere"))
    assert (await _read_answer(reader))[0] == 404
    writer.write(_request("GET", "/boom"))
    status, _, body = await _read_answer(reader)
    assert status == 500 and "broken" in body["error"]
    writer.write(_request("GET", "/echo", headers="connection: close\r\n"))
    status, headers, _ = await _read_answer(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await reader.read() == b""
    writer.close()
