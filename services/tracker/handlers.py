"""Tracker entry points: Kafka subscribers feeding the projection; HTTP progress reads."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

import asyncpg
from aiokafka import ConsumerRecord
from fastapi import APIRouter, HTTPException, Query
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage

from services.tracker import repo, service
from services.tracker.domain import Progress
from services.tracker.service import PublishCompleted
from shared import topics
from shared.auth import Principal
from shared.db import Conn
from shared.events import LIFECYCLE, LifecycleEvent
from shared.http_input import After
from shared.kafka import BATCH_CONSUMER, process_bounded
from shared.wire import Outcome, decode_outcomes

SERVICE = "tracker"


def kafka_router(
    pool: asyncpg.Pool, publish_completed: PublishCompleted, max_records: int
) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        topics.OUTCOMES,
        group_id="sendout-tracker",
        max_records=max_records,
        # A campaign's outcomes share one partition: at 1 MiB per fetch a batch held ~2,000.
        max_partition_fetch_bytes=4 * 1024 * 1024,
        description="Counts each outcome once into its campaign's progress.",
        **BATCH_CONSUMER,
    )
    async def on_outcomes(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], list[Outcome]]]) -> None:
            await service.apply_outcomes(
                pool, topics.OUTCOMES,
                [(record, outcome) for record, outcomes in good for outcome in outcomes],
                publish_completed,
            )

        await process_bounded(msg, broker, decode_outcomes, apply, service=SERVICE)

    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        group_id="sendout-tracker-lifecycle",
        max_records=500,
        description="Learns each campaign's totals when it starts sending, and its aborts.",
        **BATCH_CONSUMER,
    )
    async def on_lifecycle(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], LifecycleEvent]]) -> None:
            await service.apply_lifecycle(pool, [e for _, e in good], publish_completed)

        await process_bounded(msg, broker, LIFECYCLE, apply, service=SERVICE)

    return router


def not_found(campaign_id: uuid.UUID) -> HTTPException:
    # The same answer for "not started yet" and "another organisation's": existence does not
    # leak across organisations.
    return HTTPException(404, f"no progress for campaign {campaign_id}: not started")


def http_router(pool: asyncpg.Pool, user: Any) -> APIRouter:
    """`user`: the dependency giving the caller; each campaign is answered only to users of
    its organisation."""
    router = APIRouter(prefix="/campaigns", tags=["progress"])

    async def progress_for(
        conn: Conn, campaign_id: uuid.UUID, principal: Principal
    ) -> Progress:
        p = await repo.get_progress(conn, campaign_id)
        if p is None or p.organisation_id != principal.organisation_id:
            raise not_found(campaign_id)
        return p

    @router.get("/{campaign_id}/progress")
    async def progress(campaign_id: uuid.UUID, principal: Principal = user) -> dict[str, Any]:
        async with pool.acquire() as conn:
            p = await progress_for(conn, campaign_id, principal)
        return p.view()

    @router.get("/{campaign_id}/recipients")
    async def recipients(
        campaign_id: uuid.UUID,
        after: After = 0,
        limit: int = Query(1000, ge=1, le=10_000),
        status: Literal["completed", "failed", "skipped"] | None = None,
        *,
        principal: Principal = user,
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            await progress_for(conn, campaign_id, principal)
            rows = await repo.recipient_outcomes(
                conn, campaign_id, after_recipient_id=after, limit=limit, status=status
            )
        distinct = len({r["recipient_id"] for r in rows})
        return {
            "recipients": rows,
            "next_after": rows[-1]["recipient_id"] if distinct == limit else None,
        }

    return router
