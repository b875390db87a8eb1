"""The generic JSON HTTP messaging API adapter (`http`)."""

from __future__ import annotations

import json

import msgspec

from services.dispatcher.limiter import AdaptiveLimiter
from services.dispatcher.providers.base import (
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from services.dispatcher.providers.http11 import Http11Pool, HttpError, Response


class HttpProvider:
    """A JSON HTTP messaging API: `POST {base}/messages` → `{"id": ...}`.

    Over `http11.Http11Pool` (kept-alive connections, at most `max_connections`): per request
    it cost a fraction of aiohttp's client CPU (docs/benchmarks.md), which bounded the
    50 ms-latency benchmark. A timeout, a refused or dropped connection, 429 and 5xx are
    retryable; other 4xx are permanent.
    """

    def __init__(self, base_url: str, *, timeout: float, max_connections: int,
                 limiter: AdaptiveLimiter | None = None) -> None:
        self._pool = Http11Pool(base_url, max_connections=max_connections)
        self._timeout = timeout
        self._limiter = limiter
        self._request_line = (f"POST {self._pool.path_prefix}/messages HTTP/1.1\r\n"
                              f"Host: {self._pool.host_header}\r\n"
                              "Content-Type: application/json\r\n").encode()

    async def send(self, message: OutgoingMessage) -> str:
        body = _JSON.encode({
            "channel": message.channel,
            "to": message.to,
            "from": message.sender,
            "subject": message.subject,
            "body": message.body,
        })
        key = message.idempotency_key
        if "\r" in key or "\n" in key:
            raise PermanentProviderError("idempotency key with a line break")
        request = b"".join((
            self._request_line,
            f"Content-Length: {len(body)}\r\nIdempotency-Key: {key}\r\n\r\n".encode(),
            body,
        ))
        try:
            response = await limited_request(self._pool, request, self._timeout, self._limiter)
        except (OSError, HttpError, TimeoutError) as exc:
            raise RetryableProviderError(f"{type(exc).__name__}: {exc}",
                                         in_doubt=in_doubt(exc)) from exc
        status = response.status
        if status in (200, 201, 202):
            try:
                return str(msgspec.json.decode(response.body)["id"])
            except (msgspec.DecodeError, KeyError, TypeError) as exc:
                raise RetryableProviderError(f"HTTP {status} without a message id") from exc
        reason = _error_text(response.body)
        if status == 429 or status >= 500:
            raise RetryableProviderError(f"HTTP {status}: {reason}",
                                         retry_after=response.retry_after)
        raise PermanentProviderError(f"HTTP {status}: {reason}")

    async def close(self) -> None:
        await self._pool.close()


_JSON = msgspec.json.Encoder()


async def limited_request(
    pool: Http11Pool, request: bytes, seconds: float, limiter: AdaptiveLimiter | None
) -> Response:
    """One call, within `seconds`, in a slot of `limiter` when there is one (its limit learns
    from the call's latency and whether the provider was overloaded: 429, 503, timeouts)."""
    if limiter is None:
        return await pool.request(request, seconds)
    started = await limiter.acquire()
    overloaded, measured, timed_out = False, True, False
    try:
        response = await pool.request(request, seconds)
        overloaded = response.status in (429, 503)
        return response
    except TimeoutError:
        timed_out = True
        raise
    except BaseException:
        measured = False  # a connection refused or dropped says nothing about load
        raise
    finally:
        limiter.release(started, overloaded=overloaded, measured=measured, timed_out=timed_out)


def in_doubt(exc: BaseException) -> bool:
    """A failed HTTP call the provider may have accepted all the same: a timeout or a
    connection lost once the request could have gone out (not a connection refused)."""
    return isinstance(exc, (HttpError, TimeoutError))


def _error_text(body: bytes) -> str:
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            return str(parsed.get("error") or parsed.get("detail") or parsed)[:500]
        return str(parsed)[:500]
    except ValueError:
        return body.decode(errors="replace")[:500]
