"""Receipts webhook rules: who may post (a signature over timestamp and body) and what a
receipt is. No I/O.

Signature: `X-Sendout-Signature: sha256=<hex>` where hex is HMAC-SHA256 with the shared secret
over `<X-Sendout-Timestamp>.<raw body>` (Unix seconds, a dot, the bytes as sent). The
timestamp is signed so that a captured request cannot be replayed later than the allowed skew.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from shared.events import DeliveryReported, DeliveryStatus

TIMESTAMP_HEADER = "X-Sendout-Timestamp"
SIGNATURE_HEADER = "X-Sendout-Signature"
MAX_RECEIPTS_PER_REQUEST = 1000


class ReceiptRejected(Exception):
    """The request is not from a provider we share the secret with (→ 401)."""


class Receipt(BaseModel):
    """What a provider reports about one message it accepted."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider_message_id: str = Field(min_length=1, max_length=500)
    status: DeliveryStatus
    reason: str | None = Field(default=None, max_length=1000)
    at: AwareDatetime


class ReceiptBatch(BaseModel):
    """Providers that batch their callbacks post `{"receipts": [...]}`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    receipts: list[Receipt] = Field(min_length=1, max_length=MAX_RECEIPTS_PER_REQUEST)


RECEIPT_BODY: TypeAdapter[Receipt | ReceiptBatch] = TypeAdapter(Receipt | ReceiptBatch)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    max_skew_seconds: float,
) -> None:
    """Raise ReceiptRejected unless the request is signed with `secret` and recent."""
    timestamp = headers.get(TIMESTAMP_HEADER)
    given = headers.get(SIGNATURE_HEADER)
    if not timestamp or not given:
        raise ReceiptRejected(f"unsigned: {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} required")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise ReceiptRejected(f"{TIMESTAMP_HEADER} must be Unix seconds") from None
    if abs(now - sent_at) > max_skew_seconds:
        raise ReceiptRejected("stale timestamp")
    # Constant-time comparison: the signature must not leak through answer timing.
    if not hmac.compare_digest(signature(secret, timestamp, body), given):
        raise ReceiptRejected("bad signature")


def receipts_of(body: Receipt | ReceiptBatch) -> list[Receipt]:
    return list(body.receipts) if isinstance(body, ReceiptBatch) else [body]


def reported(
    receipts: Sequence[Receipt], campaigns: Mapping[str, uuid.UUID]
) -> list[tuple[bytes, DeliveryReported]]:
    """(Kafka key, event) per receipt: keyed by campaign where the tracker knows it, so a
    campaign's receipts stay in order; by provider message id for one that overtook its
    outcome (its campaign is not known yet)."""
    out: list[tuple[bytes, DeliveryReported]] = []
    for r in receipts:
        campaign_id = campaigns.get(r.provider_message_id)
        event = DeliveryReported(
            campaign_id=campaign_id, provider_message_id=r.provider_message_id,
            status=r.status, reason=r.reason, occurred_at=r.at,
        )
        key = campaign_id.bytes if campaign_id else r.provider_message_id.encode()
        out.append((key, event))
    return out
