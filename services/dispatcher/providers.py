"""Provider adapters behind one small interface: send → accepted with a provider message id,
or a permanent failure, or a retryable one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import httpx

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
    """A JSON HTTP messaging API: `POST {base}/messages` → `{"id": ...}`."""

    def __init__(self, base_url: str, *, timeout: float, max_connections: int) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def send(self, message: OutgoingMessage) -> str:
        try:
            response = await self._client.post(
                "/messages",
                json={
                    "channel": message.channel,
                    "to": message.to,
                    "from": message.sender,
                    "subject": message.subject,
                    "body": message.body,
                },
                headers={"Idempotency-Key": message.idempotency_key},
            )
        except httpx.TransportError as exc:
            raise RetryableProviderError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in (200, 201, 202):
            return str(response.json()["id"])
        reason = _error_text(response)
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableProviderError(f"HTTP {response.status_code}: {reason}")
        raise PermanentProviderError(f"HTTP {response.status_code}: {reason}")

    async def close(self) -> None:
        await self._client.aclose()


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error") or body.get("detail") or body)[:500]
    except ValueError:
        return response.text[:500]
