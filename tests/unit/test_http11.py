"""The dispatcher's lean HTTP/1.1 client: response framing, connection reuse and bounds."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.dispatcher.providers import HttpProvider, OutgoingMessage
from services.dispatcher.providers.http11 import Http11Pool, HttpError, Response, _parse


def _whole(raw: bytes, *, at_eof: bool = False) -> tuple[Response, bool, int] | None:
    return _parse(bytearray(raw), at_eof=at_eof)


def test_a_response_is_complete_only_once_its_content_length_arrived() -> None:
    raw = b"HTTP/1.1 202 Accepted\r\nContent-Length: 11\r\n\r\n{\"id\":\"m\"}\nHTTP/1.1"
    first = len(raw) - len(b"HTTP/1.1")
    assert all(_whole(raw[:cut]) is None for cut in range(first))
    response, keep_alive, used = _whole(raw)  # type: ignore[misc]
    assert (response.status, response.body, keep_alive) == (202, b'{"id":"m"}\n', True)
    assert raw[used:] == b"HTTP/1.1"  # the next response's bytes stay


def test_chunked_bodies_are_joined() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\n{\"id\r\n6;x=y\r\n\":\"m\"}\r\n0\r\n\r\n")
    assert _whole(raw[:-2]) is None
    response, keep_alive, used = _whole(raw)  # type: ignore[misc]
    assert (response.body, keep_alive, used) == (b'{"id":"m"}', True, len(raw))


def test_connection_close_and_bodies_to_the_end_of_the_stream() -> None:
    closing = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"
    assert _whole(closing)[1] is False  # type: ignore[index]
    old = b"HTTP/1.0 200 OK\r\n\r\n{\"id\": 1}"
    assert _whole(old) is None
    response, keep_alive, _ = _whole(old, at_eof=True)  # type: ignore[misc]
    assert (response.body, keep_alive) == (b'{"id": 1}', False)


def test_garbage_is_not_taken_for_a_response() -> None:
    with pytest.raises(HttpError):
        _whole(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_connections_are_kept_alive_and_never_more_than_the_bound_on_uvloop() -> None:
    import uvloop

    uvloop.run(test_connections_are_kept_alive_and_never_more_than_the_bound())


async def test_connections_are_kept_alive_and_never_more_than_the_bound() -> None:
    connections: set[int] = set()
    in_flight, most = 0, 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        connections.add(id(request.transport))
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        body = await request.json()
        return web.json_response({"id": f"{body['to']}:{request.headers['Idempotency-Key']}"},
                                 status=202)

    app = web.Application()
    app.router.add_post("/api/messages", handler)
    async with TestServer(app) as server:
        provider = HttpProvider(str(server.make_url("/api")), timeout=5, max_connections=3)
        try:
            ids = await asyncio.gather(*(provider.send(OutgoingMessage(
                "sms", f"+45{i}", "Office", None, "hi", f"k{i}")) for i in range(60)))
        finally:
            await provider.close()
    assert ids == [f"+45{i}:k{i}" for i in range(60)]
    assert len(connections) <= 3 and most <= 3


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"id": "m"}, status=202, headers={"Connection": "close"})

    app = web.Application()
    app.router.add_post("/messages", handler)
    async with TestServer(app) as server:
        pool = Http11Pool(str(server.make_url("")), max_connections=1)
        request = (f"POST /messages HTTP/1.1\r\nHost: {server.host}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}").encode()
        try:
            for _ in range(3):
                response = await asyncio.wait_for(pool.request(request), 5)
                assert response.status == 202
        finally:
            await pool.close()


def test_interim_1xx_responses_are_skipped() -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\n"
           b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\n{\"id\":\"m\"}")
    response, keep_alive, used = _whole(raw)  # type: ignore[misc]
    assert (response.status, response.body, keep_alive, used) == (202, b'{"id":"m"}', True,
                                                                  len(raw))
    assert _whole(raw[:30]) is None  # only the 100 so far: not an answer


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_framing_is_an_http_error(raw: bytes) -> None:
    with pytest.raises(HttpError):
        _whole(raw)


async def _scripted(answers: list[bytes]) -> tuple[asyncio.Server, list[int]]:
    """A server answering each request (any bytes ending a head with `{}`) with the next
    scripted bytes; records a connection number per request."""
    served: list[int] = []
    script = iter(answers)
    count = 0

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        me = count
        try:
            while await reader.readuntil(b"{}"):
                served.append(me)
                answer = next(script)
                writer.write(answer)
                await writer.drain()
                if not answer:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            writer.close()

    return await asyncio.start_server(client, "127.0.0.1", 0), served


def _request() -> bytes:
    return b"POST /m HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


async def test_extra_bytes_after_a_response_make_the_connection_not_reused() -> None:
    """A stray second response must never be read as the answer to the next request."""
    stray = (b"HTTP/1.1 202 OK\r\nContent-Length: 8\r\n\r\n{\"id\":1}"
             b"HTTP/1.1 202 OK\r\nContent-Length: 8\r\n\r\n{\"id\":2}")
    fresh = b"HTTP/1.1 202 OK\r\nContent-Length: 8\r\n\r\n{\"id\":3}"
    server, served = await _scripted([stray, fresh])
    port = server.sockets[0].getsockname()[1]
    pool = Http11Pool(f"http://127.0.0.1:{port}", max_connections=1)
    try:
        first = await asyncio.wait_for(pool.request(_request()), 5)
        second = await asyncio.wait_for(pool.request(_request()), 5)
    finally:
        await pool.close()
        server.close()
    assert (first.body, second.body) == (b'{"id":1}', b'{"id":3}')
    assert served == [1, 2]  # the second went over a new connection


async def test_a_malformed_answer_fails_the_request_at_once_not_at_its_timeout() -> None:
    server, _ = await _scripted([b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"])
    port = server.sockets[0].getsockname()[1]
    pool = Http11Pool(f"http://127.0.0.1:{port}", max_connections=1)
    try:
        with pytest.raises(HttpError):
            await asyncio.wait_for(pool.request(_request()), 2)
    finally:
        await pool.close()
        server.close()


async def test_the_bound_holds_when_the_server_closes_every_connection_and_cancels_free_slots(
) -> None:
    in_flight = most = 0

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, most
        try:
            await reader.readuntil(b"{}")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # a cancelled request's connection
            return
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        writer.write(b"HTTP/1.1 202 OK\r\nConnection: close\r\nContent-Length: 8\r\n\r\n"
                     b"{\"id\":1}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http11Pool(f"http://127.0.0.1:{port}", max_connections=3)

    async def worker() -> None:
        for _ in range(10):
            assert (await pool.request(_request())).status == 202

    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(6))), 20)
        assert most <= 3
        # Requests cancelled while waiting for a slot or mid-request give their slot back.
        waiting = [asyncio.ensure_future(pool.request(_request())) for _ in range(8)]
        await asyncio.sleep(0.002)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert (await asyncio.wait_for(pool.request(_request()), 5)).status == 202
    finally:
        await pool.close()
        server.close()


async def test_an_answer_that_does_not_come_times_out_and_its_connection_is_not_reused() -> None:
    """The deadline covers the answer (a timer on its future): the request fails with
    `TimeoutError` at the deadline, the silent connection is closed, and the slot serves the
    next request over a new connection."""
    silent_then_fast: list[int] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_then_fast.append(1)
        try:
            await reader.readuntil(b"{}")
            if len(silent_then_fast) == 1:
                await reader.read()  # never answers; returns when the client closes
                writer.close()
                return
            writer.write(b"HTTP/1.1 202 OK\r\nContent-Length: 8\r\n\r\n{\"id\":7}")
            await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http11Pool(f"http://127.0.0.1:{port}", max_connections=1)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await pool.request(_request(), 0.2)
        assert 0.15 <= loop.time() - started < 2
        answer = await pool.request(_request(), 2)
    finally:
        await pool.close()
        server.close()
    assert answer.body == b'{"id":7}'
    assert len(silent_then_fast) == 2  # a new connection for the second request
