"""Provider adapters behind one small interface: send → accepted with a provider message id,
or a permanent failure, or a retryable one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from email.message import EmailMessage
from typing import Protocol, TypedDict

import aiosmtplib
import msgspec

from services.dispatcher.http11 import Http11Pool, HttpError, Response
from services.dispatcher.limiter import AdaptiveLimiter
from shared.events import Channel
from shared.reasons import FailReason


class OutgoingMessage:
    """One message to hand to a provider. `idempotency_key` is the same for every attempt of
    one (campaign, recipient, channel): it lets a provider that honours it drop our retries
    after a crash. Given as the request's event id, it is formatted only when a provider
    reads it (most calls of a fast provider never do; formatting a UUID costs more than the
    rest of building the message). `pinned_to`: for a retry of a message left in doubt with
    one provider of a failover chain, that provider's name (services/dispatcher/failover.py,
    `pinned_to`), so that no other is asked."""

    __slots__ = ("_key", "body", "channel", "pinned_to", "sender", "subject", "to")

    def __init__(self, channel: Channel, to: str, sender: str, subject: str | None, body: str,
                 idempotency_key: str | uuid.UUID, pinned_to: str | None = None) -> None:
        self.channel = channel
        self.to = to
        self.sender = sender
        self.subject = subject
        self.body = body
        self._key = idempotency_key
        self.pinned_to = pinned_to

    @property
    def idempotency_key(self) -> str:
        key = self._key
        if not isinstance(key, str):
            key = self._key = str(key)
        return key

    def _fields(self) -> tuple[object, ...]:
        return (self.channel, self.to, self.sender, self.subject, self.body,
                self.idempotency_key, self.pinned_to)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutgoingMessage):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"OutgoingMessage(channel={self.channel!r}, to={self.to!r}, "
                f"sender={self.sender!r}, subject={self.subject!r}, body={self.body!r}, "
                f"idempotency_key={self.idempotency_key!r}, pinned_to={self.pinned_to!r})")


class ProviderError(Exception):
    pass


class PermanentProviderError(ProviderError):
    """The provider refused this message for good (e.g. invalid number, mailbox unavailable)."""


class RetryableProviderError(ProviderError):
    """Worth trying again later (429, 5xx, timeout, connection reset); `retry_after`: the
    provider's own Retry-After, in seconds, when it gave one. `in_doubt`: the provider may
    have accepted the message all the same (a timeout or a connection lost after the request
    went out), so it must not be handed to another provider (services/dispatcher/failover.py);
    a definite refusal (an answer, a connection refused) is not in doubt."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, in_doubt: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.in_doubt = in_doubt


def check_header_safe(message: OutgoingMessage) -> None:
    """A line break in a value that becomes a header (address, sender, subject) would let a
    recipient's data add headers of its own: refused for that message alone."""
    for field, value in (("address", message.to), ("sender", message.sender),
                         ("subject", message.subject or "")):
        if "\r" in value or "\n" in value or "\x00" in value:
            reason = (FailReason.INVALID_ADDRESS if field == "address"
                      else FailReason.INVALID_HEADER)
            raise PermanentProviderError(f"{reason}: line break in the {field}")


class Provider(Protocol):
    async def send(self, message: OutgoingMessage) -> str:
        """Hand the message over; return the provider's message id."""
        ...

    async def close(self) -> None: ...


class NoopProvider:
    """Accepts everything at once. For benchmarks and dry runs: nothing leaves the process.

    Message ids are unique without a uuid4 per message: a random prefix per instance and a
    counter."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._sent = 0

    async def send(self, message: OutgoingMessage) -> str:
        self._sent += 1
        return f"noop-{self._prefix}-{self._sent}"

    async def close(self) -> None:
        return None


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


class _SmtpOptions(TypedDict):
    """aiosmtplib.SMTP's arguments, as SmtpProvider gives them."""

    hostname: str
    port: int
    timeout: float
    username: str | None
    password: str | None
    start_tls: bool


class SmtpProvider:
    """Email over SMTP (aiosmtplib), through a small pool of kept-open connections.

    The provider message id is the Message-ID header we set. SMTP 4xx answers and dropped
    connections are retryable; 5xx answers (unknown mailbox, policy) are permanent.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
    ) -> None:
        self._options: _SmtpOptions = {"hostname": host, "port": port, "timeout": timeout,
                         "username": username, "password": password, "start_tls": starttls}
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP | None] = asyncio.LifoQueue()
        for _ in range(connections):
            self._idle.put_nowait(None)  # a slot; connected on first use
        self._domain = host

    async def send(self, message: OutgoingMessage) -> str:
        check_header_safe(message)
        try:
            email = _email(message)
        except (ValueError, TypeError) as exc:  # the email package refused a header value
            raise PermanentProviderError(f"invalid_header: {exc}"[:500]) from exc
        message_id: str = email["Message-ID"]
        client = await self._idle.get()
        try:
            if client is None or not client.is_connected:
                client = aiosmtplib.SMTP(**self._options)
                await client.connect()
                _no_delay(client)
            errors, _ = await client.send_message(email)
        except BaseException as exc:
            # After any failure the session's state is unknown: start the next one afresh.
            if client is not None:
                client.close()
            client = None
            failure = _smtp_failure(exc)
            if failure is None:
                raise
            raise failure from exc
        finally:
            self._idle.put_nowait(client)
        if errors:
            code, text = next(iter(errors.values()))
            raise _smtp_error(code, text)
        return message_id.strip("<>")

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client is not None and client.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()


def _smtp_failure(exc: BaseException) -> ProviderError | None:
    """The provider error an SMTP session's exception means; None: not an SMTP failure."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        refused = exc.recipients[0]
        return _smtp_error(refused.code, refused.message)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _smtp_error(exc.code, exc.message)
    if isinstance(exc, (aiosmtplib.SMTPException, OSError, TimeoutError)):
        return RetryableProviderError(f"SMTP {type(exc).__name__}: {exc}")
    return None


def _email(message: OutgoingMessage) -> EmailMessage:
    email = EmailMessage()
    email["From"] = message.sender
    email["To"] = message.to
    email["Subject"] = message.subject or ""
    # Stable across retries, so a receiving system can tell a retry from a new message.
    email["Message-ID"] = f"<{message.idempotency_key}@sendout.local>"
    email["X-Sendout-Idempotency-Key"] = message.idempotency_key
    email.set_content(message.body)
    return email


def _no_delay(client: aiosmtplib.SMTP) -> None:
    # An SMTP transaction is a chain of small writes each waiting for a reply: with Nagle's
    # algorithm on, each can sit out a delayed ACK (measured: about half the throughput).
    sock = client.transport.get_extra_info("socket") if client.transport else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _smtp_error(code: int, text: str) -> ProviderError:
    reason = f"SMTP {code}: {text}"[:500]
    if 400 <= code < 500:
        return RetryableProviderError(reason)
    return PermanentProviderError(reason)
