"""Receipts entry points: the providers' status-callback webhook (it only publishes to
`sendout.receipts.v1`) and the Kafka subscriber that projects receipts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from fastapi import APIRouter, HTTPException, Request
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage
from pydantic import SecretStr, ValidationError

from services.tracker import receipts_domain, receipts_service
from services.tracker.receipts_domain import RECEIPT_BODY
from services.tracker.receipts_service import PublishReceipts
from shared import topics, webhooks
from shared.events import RECEIPT, DeliveryReported
from shared.http_input import validation_detail
from shared.kafka import BATCH_CONSUMER, process_bounded
from shared.metrics import RECEIPTS_CONSUMED

SERVICE = "tracker"


def kafka_router(pool: asyncpg.Pool, max_records: int) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        topics.RECEIPTS,
        group_id="sendout-tracker-receipts",
        max_records=max_records,
        description="Refines completed recipients into delivered / not delivered.",
        **BATCH_CONSUMER,
    )
    async def on_receipts(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], DeliveryReported]]) -> None:
            await receipts_service.apply_receipts(pool, topics.RECEIPTS, good)
            for _, receipt in good:
                RECEIPTS_CONSUMED.labels(receipt.status).inc()

        await process_bounded(msg, broker, RECEIPT, apply, service=SERVICE)

    return router


def http_router(
    pool: asyncpg.Pool,
    publish: PublishReceipts,
    secret: SecretStr | None,
    max_skew_seconds: float,
) -> APIRouter:
    router = APIRouter(tags=["receipts"])
    nonces = webhooks.NonceStore(pool, max_skew_seconds)

    @router.post("/receipts", status_code=202)
    async def receipts(request: Request) -> dict[str, Any]:
        """Providers' delivery receipts: one `{provider_message_id, status: delivered |
        not_delivered, reason?, at}` or `{"receipts": [...]}` (at most 1000), signed (see
        `receipts_domain`). 202 once they are on Kafka; the progress counts them shortly."""
        if secret is None:
            raise HTTPException(503, "receipts webhook not configured (SENDOUT_RECEIPTS_SECRET)")
        body, claimed = await webhooks.signed_body(
            request, secret.get_secret_value().encode(), max_skew_seconds=max_skew_seconds)
        try:
            parsed = RECEIPT_BODY.validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, validation_detail(exc.errors())) from exc
        async with nonces.claimed(claimed.nonce):
            accepted = await receipts_service.accept(
                pool, publish, receipts_domain.receipts_of(parsed)
            )
        return {"accepted": accepted}

    return router
