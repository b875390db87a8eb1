"""What every provider adapter shares: the message handed over, the interface (send → accepted
with a provider message id, or a permanent failure, or a retryable one), its errors, and the
no-op adapter."""

from __future__ import annotations

import uuid
from typing import Protocol

from shared.events import Channel
from shared.reasons import FailReason


class OutgoingMessage:
    """One message to hand to a provider. `idempotency_key` is the same for every attempt of
    one (campaign, recipient, channel): it lets a provider that honours it drop our retries
    after a crash. Given as the request's event id, it is formatted only when a provider
    reads it (most calls of a fast provider never do; formatting a UUID costs more than the
    rest of building the message). `pinned_to`: for a retry of a message left in doubt with
    one provider of a failover chain, that provider's name (failover.py in this package,
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
    went out), so it must not be handed to another provider (failover.py in this package);
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
