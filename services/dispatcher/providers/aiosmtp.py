"""Email over SMTP with aiosmtplib (`SENDOUT_SMTP_CLIENT=aiosmtplib`; the default SMTP client
is the lean one in smtp.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from email.message import EmailMessage
from typing import TypedDict

import aiosmtplib

from services.dispatcher.providers.base import (
    OutgoingMessage,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
    check_header_safe,
)


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
