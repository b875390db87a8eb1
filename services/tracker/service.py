"""Applying consumed events to the progress projection, exactly once per outcome."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord

from services.tracker import domain, receipts_repo, repo
from services.tracker.repo import Outcome
from shared import tracing
from shared.db import Conn
from shared.events import CampaignAborted, CampaignCompleted, CampaignStarted, Event

log = logging.getLogger(__name__)

PublishCompleted = Callable[[list[CampaignCompleted]], Awaitable[None]]


def _not_yet_applied(
    records: Sequence[tuple[ConsumerRecord[Any, Any], Outcome]], applied: dict[int, int]
) -> list[Outcome]:
    return [e for r, e in records if r.offset >= applied.get(r.partition, 0)]


def _next_offsets(records: Sequence[tuple[ConsumerRecord[Any, Any], Any]]) -> dict[int, int]:
    nxt: dict[int, int] = {}
    for record, _ in records:
        nxt[record.partition] = max(nxt.get(record.partition, 0), record.offset + 1)
    return nxt


async def _finish_done(
    conn: Conn, campaign_ids: Sequence[Any], publish: PublishCompleted
) -> None:
    if not campaign_ids:
        return
    progress = await repo.progress_of(conn, campaign_ids)
    done = [p for p in progress.values() if p.state in ("sending", "aborting") and p.is_done]
    if not done:
        return
    await repo.finish(conn, done)
    # Published before the transaction commits: if the commit then fails, the batch is
    # redelivered, completion is detected again and re-published with the same event id.
    await publish([domain.completion_event(p) for p in done])
    for p in done:
        tracing.log_campaign(log, "campaign finished", p.campaign_id, state=p.final_state)


async def apply_outcomes(
    pool: asyncpg.Pool,
    topic: str,
    records: Sequence[tuple[ConsumerRecord[Any, Any], Outcome]],
    publish_completed: PublishCompleted,
) -> None:
    """One transaction per batch: outcome rows, one counter update per campaign and channel,
    the consumed offsets."""
    if not records:
        return
    async with pool.acquire() as conn, conn.transaction():
        await receipts_repo.lock_for_outcomes(conn)
        applied = await repo.applied_offsets(conn, topic)
        fresh = _not_yet_applied(records, applied)
        if fresh:
            await repo.lock_campaigns(conn, (o.campaign_id for o in fresh))
            moved = await repo.apply_outcomes(conn, fresh)
            # Receipts that overtook these outcomes were parked; they count now.
            await receipts_repo.apply_pending(
                conn, [o.provider_message_id for o in fresh if o.provider_message_id]
            )
            await _finish_done(conn, moved, publish_completed)
        await repo.save_offsets(conn, topic, _next_offsets(records))


async def apply_lifecycle(
    pool: asyncpg.Pool, events: Sequence[Event], publish_completed: PublishCompleted
) -> None:
    relevant = [e for e in events if isinstance(e, (CampaignStarted, CampaignAborted))]
    if not relevant:
        return
    async with pool.acquire() as conn, conn.transaction():
        await repo.lock_campaigns(conn, [e.campaign_id for e in relevant])
        for event in relevant:
            if isinstance(event, CampaignStarted):
                await repo.apply_started(conn, event)
                tracing.log_campaign(log, "campaign started", event.campaign_id,
                                     event_id=str(event.event_id), total=event.total)
            else:
                await repo.apply_aborted(conn, event.campaign_id, event.occurred_at)
        # Every outcome may have arrived before the started event did.
        await _finish_done(conn, list({e.campaign_id for e in relevant}), publish_completed)
