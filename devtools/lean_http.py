"""A small HTTP/1.1 JSON server on asyncio protocols, for the fake provider.

The fake provider stands in for a remote messaging API but shares this machine's two cores
with Sendout in the benchmarks: under aiohttp's server it cost more CPU per message than the
dispatcher itself (docs/benchmarks.md), so the 50 ms-latency figure measured the fake. This
server does what the fake needs and no more: requests with a `Content-Length` body or none,
kept-alive connections, one request at a time per connection (as its clients send them), JSON
answers. Anything else — a chunked body, a malformed request line or header, headers over
64 KiB — is answered 400/411 and the connection closed. Loopback only; not a product component.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        """The body as JSON (`ValueError` if it is not)."""
        return json.loads(self.body) if self.body else None


# status and JSON-able body, optionally extra headers; or `DROP`: close without answering.
Response = tuple[int, Any] | tuple[int, Any, dict[str, str]]
Handler = Callable[[Request], Awaitable[Response]]
# A handler's answer that closes the connection with no response at all (a provider that
# hangs up), so the client cannot tell whether its request was taken.
DROP: Response = (0, None)
Routes = dict[tuple[str, str], Handler]  # (method, path) → handler


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _encode(status: int, body: Any, *, close: bool,
            headers: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    connection = "connection: close\r\n" if close else ""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n{extra}{connection}\r\n")
    return head.encode("latin-1") + payload


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, f"malformed request line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, f"malformed header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


class _Connection(asyncio.Protocol):
    def __init__(self, routes: Routes) -> None:
        self._routes = routes
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False  # a request of this connection is being handled
        self._task: asyncio.Future[None] | None = None  # its handling

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        """Take the next complete request off the buffer, if there is one, and handle it."""
        if self._transport is None:
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._fail(_BadRequest(400, "request head too large"))
            return
        try:
            method, target, version, headers = _parse_head(bytes(self._buffer[:end]))
            if "transfer-encoding" in headers:
                raise _BadRequest(411, "a body needs a content-length here")
            length_text = headers.get("content-length", "0")
            if not length_text.isdigit() or int(length_text) > MAX_BODY:
                raise _BadRequest(400, f"bad content-length {length_text[:20]!r}")
        except _BadRequest as exc:
            self._fail(exc)
            return
        length = int(length_text)
        if len(self._buffer) < end + 4 + length:
            return  # the rest of the body is still to come
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        url = urlsplit(target)
        request = Request(method, url.path, dict(parse_qsl(url.query)), headers, body)
        close = headers.get("connection", "").lower() == "close" or (
            version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive")
        handler = self._routes.get((method, url.path))
        if handler is None:
            self._answer(404, {"error": f"no route {method} {url.path}"}, close)
            return
        self._busy = True
        self._task = asyncio.ensure_future(self._handle(handler, request, close))

    async def _handle(self, handler: Handler, request: Request, close: bool) -> None:
        headers: dict[str, str] | None = None
        try:
            answer = await handler(request)
            status, body = answer[0], answer[1]
            if len(answer) == 3:
                headers = answer[2]
        except Exception as exc:  # a fake: report it to the client rather than hang it
            status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
        self._busy = False
        if status == DROP[0]:
            self._buffer.clear()
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            return
        self._answer(status, body, close, headers)

    def _answer(self, status: int, body: Any, close: bool,
                headers: dict[str, str] | None = None) -> None:
        if self._transport is None:
            return
        self._transport.write(_encode(status, body, close=close, headers=headers))
        if close:
            self._transport.close()
            self._transport = None
        elif self._buffer:
            self._next()

    def _fail(self, exc: _BadRequest) -> None:
        self._buffer.clear()
        self._answer(exc.status, {"error": str(exc)}, close=True)


async def serve(routes: Routes, host: str, port: int) -> asyncio.Server:
    """Listen on host:port; the caller keeps the server and closes it."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(routes), host, port)
