"""Receipts webhook rules: who may post (signed, see shared/webhooks.py) and what a receipt
is. No I/O."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from shared.events import DeliveryReported, DeliveryStatus
from shared.webhooks import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from shared.webhooks import WebhookRejected as ReceiptRejected

__all__ = ["NONCE_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "ReceiptRejected", "sign",
           "verify"]

MAX_RECEIPTS_PER_REQUEST = 1000


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
