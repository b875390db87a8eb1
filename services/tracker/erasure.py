"""Erasure in the tracker: a deleted voter's recipients (`sendout.erasures.v1`, written by the
scheduler) keep their report rows and statuses, without the address and the link to the voter
(so `/voters/{id}/history` no longer lists them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage

from shared import topics
from shared.events import ERASURE, RecipientsErased
from shared.kafka import BATCH_CONSUMER, process_bounded

SERVICE = "tracker"


async def erase(conn: asyncpg.Connection, events: Sequence[RecipientsErased]) -> int:
    """Blank the recipients' addresses (and voter link) in their report rows; idempotent."""
    campaigns = [r.campaign_id for e in events for r in e.recipients]
    recipients = [r.recipient_id for e in events for r in e.recipients]
    status = await conn.execute(
        """
        UPDATE recipient_outcomes o SET address = NULL, voter_id = NULL
        FROM unnest($1::uuid[], $2::bigint[]) AS e(campaign_id, recipient_id)
        WHERE o.campaign_id = e.campaign_id AND o.recipient_id = e.recipient_id
          AND (o.address IS NOT NULL OR o.voter_id IS NOT NULL)
        """,
        campaigns, recipients,
    )
    return int(status.split()[-1])


def kafka_router(pool: asyncpg.Pool) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        topics.ERASURES,
        group_id="sendout-tracker-erasures",
        max_records=500,
        description="Blanks erased voters' addresses in the report rows and voter history.",
        **BATCH_CONSUMER,
    )
    async def on_erasures(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], RecipientsErased]]) -> None:
            async with pool.acquire() as conn:
                await erase(conn, [e for _, e in good])

        await process_bounded(msg, broker, ERASURE, apply, service=SERVICE)

    return router
