"""A lean HTTP/1.1 client for one provider API: a bounded pool of kept-alive connections, one
request at a time on each, as asyncio protocols.

The dispatcher makes one small POST per message. aiohttp's client spent ~400 µs of CPU per
request here (a writer task, payload and header objects, a response object, a timer and
tracing hooks per request), which capped the 50 ms-latency benchmark by CPU long before the
1,000 calls in flight could. This does the part we need — write pre-built request bytes, parse
the status line, the headers that frame the body (Content-Length, chunked, Connection) and the
body — and nothing else: no redirects, no cookies, no compression, no proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed, closed early, or the answer was not HTTP/1.x we understand."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    # Seconds from a `Retry-After: <seconds>` header (429/503), if the answer had one.
    retry_after: float | None = None


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[Response, bool]] | None = None
        self._loop = asyncio.get_running_loop()  # made inside the loop, by create_connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both can write and close.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._answer(at_eof=True, lost=exc)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: the stream is out of step
            return
        self._answer(at_eof=False)

    def _answer(self, *, at_eof: bool, lost: Exception | None = None) -> None:
        """Settle the waiting request once its whole response is in (or cannot come). The
        connection is reusable only if nothing but that response was received."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = _parse(self._buffer, at_eof=at_eof)
        except HttpError as exc:
            self.close()
            waiter.set_exception(exc)
            return
        if parsed is None:
            if at_eof:
                waiter.set_exception(HttpError(f"connection closed: {lost or 'by the server'}"))
            return
        response, keep_alive, used = parsed
        reusable = keep_alive and not at_eof and used == len(self._buffer)
        self._buffer.clear()
        if not reusable:
            self.close()
        waiter.set_result((response, reusable))

    def request(self, data: bytes) -> asyncio.Future[tuple[Response, bool]]:
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self.transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        self._buffer.clear()
        if self.transport is not None:
            self.transport.close()


def _parse(buffer: bytearray, *, at_eof: bool) -> tuple[Response, bool, int] | None:
    """(final response, keep-alive, bytes used) once a whole response is in `buffer`, else
    None. Interim 1xx responses before it are skipped, as HTTP/1.1 requires of clients."""
    offset = 0
    while True:
        parsed = _parse_one(buffer, offset, at_eof=at_eof)
        if parsed is None or not 100 <= parsed[0].status < 200:
            return parsed
        offset = parsed[2]


def _parse_one(
    buffer: bytearray, offset: int, *, at_eof: bool
) -> tuple[Response, bool, int] | None:
    try:
        return _parse_from(buffer, offset, at_eof=at_eof)
    except ValueError as exc:  # a Content-Length or chunk size that is not a number
        raise HttpError(f"malformed response: {exc}") from exc


# complexity: the HTTP/1.1 response parser: one pass over the bytes (docs/benchmarks.md)
def _parse_from(  # noqa: C901
    buffer: bytearray, offset: int, *, at_eof: bool
) -> tuple[Response, bool, int] | None:
    end = buffer.find(b"\r\n\r\n", offset)
    if end < 0:
        return None
    head = bytes(buffer[offset:end]).split(b"\r\n")
    parts = head[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {head[0][:100]!r}")
    status = int(parts[1])
    keep_alive = parts[0] == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    retry_after: float | None = None
    for line in head[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
            if length < 0:
                raise HttpError(f"negative Content-Length: {length}")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            keep_alive = token == b"keep-alive" or (keep_alive and token != b"close")
        elif name == b"retry-after":
            with contextlib.suppress(ValueError):  # an HTTP date: not honoured, backoff applies
                retry_after = max(0.0, min(float(value.strip()), 86400.0))
    start = end + 4
    if chunked:
        body = bytearray()
        pos = start
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
            if size < 0:
                raise HttpError(f"negative chunk size: {size}")
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                return Response(status, bytes(body), retry_after), keep_alive, trailer_end + 4
            if len(buffer) < line_end + 2 + size + 2:
                return None
            body += buffer[line_end + 2:line_end + 2 + size]
            pos = line_end + 2 + size + 2
    if length is None:
        if status in (204, 304) or 100 <= status < 200:
            return Response(status, b"", retry_after), keep_alive, start
        # The body runs to the end of the connection.
        if not at_eof:
            return None
        return Response(status, bytes(buffer[start:]), retry_after), False, len(buffer)
    if len(buffer) < start + length:
        return None
    response = Response(status, bytes(buffer[start:start + length]), retry_after)
    return response, keep_alive, start + length


def _expire(answer: asyncio.Future[tuple[Response, bool]]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


class Http11Pool:
    """At most `max_connections` kept-alive connections to one origin; a request waits for a
    free one."""

    def __init__(self, base_url: str, *, max_connections: int) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        default_port = self._port == (443 if url.scheme == "https" else 80)
        self.host_header = url.netloc if not default_port else self._host
        self.path_prefix = url.path.rstrip("/")
        # One slot per allowed connection, holding its connection once opened (None: not
        # yet, or dropped). A request holds a slot from start to end, so connections never
        # exceed the bound, and a cancelled request gives its slot back (SmtpProvider's way).
        self._slots: asyncio.LifoQueue[_Connection | None] = asyncio.LifoQueue()
        for _ in range(max_connections):
            self._slots.put_nowait(None)
        self._loop: asyncio.AbstractEventLoop | None = None

    # complexity: the per-call connection, timer and reuse handling, inline (docs/benchmarks.md)
    async def request(self, data: bytes, within: float | None = None) -> Response:
        """Send one whole request (bytes as built by the caller); its response, within
        `within` seconds (waiting for a connection included), else `TimeoutError`.

        The response is awaited with a timer on its future, not `asyncio.timeout`: that costs
        5-6 µs a call (the running loop and task looked up, each lookup a system call here),
        a tenth of a request's CPU; the rarer waits (a free connection, a new one) still use
        it."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        if deadline is not None and self._slots.empty():
            async with asyncio.timeout_at(deadline):
                conn = await self._slots.get()
        else:
            conn = self._slots.get_nowait() if not self._slots.empty() else await self._slots.get()
        reusable = False
        try:
            if conn is None or conn.closed:
                async with asyncio.timeout_at(deadline):
                    _, conn = await loop.create_connection(
                        _Connection, self._host, self._port, ssl=self._ssl)
            answer = conn.request(data)
            timer = None if deadline is None else loop.call_at(deadline, _expire, answer)
            try:
                response, reusable = await answer
            finally:
                if timer is not None:
                    timer.cancel()
            return response
        finally:
            if conn is not None and not reusable:
                conn.close()  # after a failure, a timeout or `Connection: close`
            self._slots.put_nowait(conn if reusable else None)

    async def close(self) -> None:
        """Close the idle connections (their slots stay, empty)."""
        slots = [self._slots.get_nowait() for _ in range(self._slots.qsize())]
        for conn in slots:
            if conn is not None:
                conn.close()
            self._slots.put_nowait(None)
