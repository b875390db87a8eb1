"""Delivery receipts: from the webhook onto Kafka, and from Kafka into the projection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord

from services.tracker import receipts_domain, receipts_repo, repo
from services.tracker.receipts_domain import Receipt
from shared.events import DeliveryReported

PublishReceipts = Callable[[list[tuple[bytes, DeliveryReported]]], Awaitable[None]]


async def accept(
    pool: asyncpg.Pool, publish: PublishReceipts, receipts: Sequence[Receipt]
) -> int:
    """Publish the receipts (the projection applies them from Kafka); return how many.

    Only a read here: which campaign each message belongs to, for the record key.
    """
    async with pool.acquire() as conn:
        campaigns = await receipts_repo.campaigns_of(
            conn, [r.provider_message_id for r in receipts]
        )
    await publish(receipts_domain.reported(receipts, campaigns))
    return len(receipts)


async def apply_receipts(
    pool: asyncpg.Pool,
    topic: str,
    records: Sequence[tuple[ConsumerRecord[Any, Any], DeliveryReported]],
) -> receipts_repo.Applied:
    """One transaction per batch: outcome refinements, counters, parked receipts, offsets."""
    if not records:
        return receipts_repo.Applied(0, 0)
    async with pool.acquire() as conn, conn.transaction():
        await receipts_repo.lock_for_receipts(conn)
        applied = await repo.applied_offsets(conn, topic)
        fresh = [e for r, e in records if r.offset >= applied.get(r.partition, 0)]
        result = await receipts_repo.apply_receipts(conn, fresh)
        nxt: dict[int, int] = {}
        for record, _ in records:
            nxt[record.partition] = max(nxt.get(record.partition, 0), record.offset + 1)
        await repo.save_offsets(conn, topic, nxt)
    return result
