"""Provider adapters behind one small interface: send → accepted with a provider message id,
or a permanent failure, or a retryable one."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from shared.events import Channel


@dataclass(frozen=True)
class OutgoingMessage:
    channel: Channel
    to: str
    sender: str
    subject: str | None
    body: str
    # Same for every attempt of one (campaign, recipient, channel): lets a provider that honours
    # it drop our retries after a crash.
    idempotency_key: str


class ProviderError(Exception):
    pass


class PermanentProviderError(ProviderError):
    """The provider refused this message for good (e.g. invalid number, mailbox unavailable)."""


class RetryableProviderError(ProviderError):
    """Worth trying again later (429, 5xx, timeout, connection reset)."""


class Provider(Protocol):
    async def send(self, message: OutgoingMessage) -> str:
        """Hand the message over; return the provider's message id."""
        ...

    async def close(self) -> None: ...


class NoopProvider:
    """Accepts everything at once. For benchmarks and dry runs: nothing leaves the process."""

    async def send(self, message: OutgoingMessage) -> str:
        return f"noop-{uuid.uuid4().hex}"

    async def close(self) -> None:
        return None


class HttpProvider:
    """A JSON HTTP messaging API: `POST {base}/messages` → `{"id": ...}`.

    aiohttp rather than httpx: on this hot path it measured ~6x more requests/s per core.
    """

    def __init__(self, base_url: str, *, timeout: float, max_connections: int) -> None:
        self._session = aiohttp.ClientSession(
            base_url=base_url,
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(limit=max_connections),
        )

    async def send(self, message: OutgoingMessage) -> str:
        payload = {
            "channel": message.channel,
            "to": message.to,
            "from": message.sender,
            "subject": message.subject,
            "body": message.body,
        }
        try:
            async with self._session.post(
                "/messages", json=payload, headers={"Idempotency-Key": message.idempotency_key}
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableProviderError(f"{type(exc).__name__}: {exc}") from exc
        if status in (200, 201, 202):
            return str(json.loads(body)["id"])
        reason = _error_text(body)
        if status == 429 or status >= 500:
            raise RetryableProviderError(f"HTTP {status}: {reason}")
        raise PermanentProviderError(f"HTTP {status}: {reason}")

    async def close(self) -> None:
        await self._session.close()


def _error_text(body: bytes) -> str:
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            return str(parsed.get("error") or parsed.get("detail") or parsed)[:500]
        return str(parsed)[:500]
    except ValueError:
        return body.decode(errors="replace")[:500]
