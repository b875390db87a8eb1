"""Tracker persistence (schema `tracker`): bulk projection writes, progress reads."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.tracker.domain import Progress
from shared.events import CampaignStarted, MessageFailed, MessageSent, MessageSkipped

Outcome = MessageSent | MessageFailed | MessageSkipped
_PROGRESS_COLUMNS = "campaign_id, total, completed, failed, skipped, state"



def _progress(row: asyncpg.Record) -> Progress:
    return Progress(
        campaign_id=row["campaign_id"], total=row["total"], completed=row["completed"],
        failed=row["failed"], skipped=row["skipped"], state=row["state"],
    )


async def applied_offsets(conn: asyncpg.Connection, topic: str) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1", topic
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def save_offsets(conn: asyncpg.Connection, topic: str, next_offsets: dict[int, int]) -> None:
    await conn.execute(
        """
        INSERT INTO consumer_offsets (topic, partition, next_offset)
        SELECT $1, * FROM unnest($2::int[], $3::bigint[])
        ON CONFLICT (topic, partition)
        DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, excluded.next_offset)
        """,
        topic, list(next_offsets), list(next_offsets.values()),
    )


async def apply_outcomes(conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> list[Progress]:
    """Insert the outcomes not seen before and add them to their campaigns' counters, in one
    statement; return the progress of every campaign whose counters moved."""
    rows = await conn.fetch(
        f"""
        WITH inserted AS (
            INSERT INTO recipient_outcomes (campaign_id, recipient_id, channel, status, reason,
                                            provider_message_id, event_id, occurred_at,
                                            voter_id)
            SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::uuid[], $8::timestamptz[], $9::bigint[])
            ON CONFLICT DO NOTHING
            RETURNING campaign_id, status
        ), counts AS (
            SELECT campaign_id,
                   count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'skipped') AS skipped
            FROM inserted GROUP BY campaign_id
        )
        INSERT INTO campaigns AS c (campaign_id, completed, failed, skipped)
        SELECT campaign_id, completed, failed, skipped FROM counts
        ON CONFLICT (campaign_id) DO UPDATE
        SET completed = c.completed + excluded.completed,
            failed = c.failed + excluded.failed,
            skipped = c.skipped + excluded.skipped,
            updated_at = now()
        RETURNING {_PROGRESS_COLUMNS}
        """,
        [o.campaign_id for o in outcomes],
        [o.recipient_id for o in outcomes],
        [o.channel for o in outcomes],
        [o.status for o in outcomes],
        [o.reason for o in outcomes],
        [o.provider_message_id for o in outcomes],
        [o.event_id for o in outcomes],
        [o.occurred_at for o in outcomes],
        [o.voter_id for o in outcomes],
    )
    return [_progress(r) for r in rows]


async def apply_started(conn: asyncpg.Connection, event: CampaignStarted) -> Progress:
    row = await conn.fetchrow(
        f"""
        INSERT INTO campaigns AS c (campaign_id, total, channel, started_at)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (campaign_id) DO UPDATE
        SET total = excluded.total, channel = excluded.channel, started_at = excluded.started_at,
            updated_at = now()
        RETURNING {_PROGRESS_COLUMNS}
        """,
        event.campaign_id, event.total, event.channel, event.occurred_at,
    )
    return _progress(row)


async def mark_completed(conn: asyncpg.Connection, campaign_ids: Sequence[uuid.UUID]) -> None:
    await conn.execute(
        """
        UPDATE campaigns SET state = 'completed', completed_at = now(), updated_at = now()
        WHERE campaign_id = ANY($1::uuid[]) AND state = 'sending'
        """,
        list(campaign_ids),
    )


async def get_progress(conn: asyncpg.Connection, campaign_id: uuid.UUID) -> Progress | None:
    row = await conn.fetchrow(
        f"SELECT {_PROGRESS_COLUMNS} FROM campaigns WHERE campaign_id = $1", campaign_id
    )
    return _progress(row) if row else None


async def recipient_outcomes(
    conn: asyncpg.Connection,
    campaign_id: uuid.UUID,
    *,
    after_recipient_id: int,
    limit: int,
    status: str | None,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT recipient_id, channel, status, reason, provider_message_id, occurred_at
        FROM recipient_outcomes
        WHERE campaign_id = $1 AND recipient_id > $2 AND ($4::text IS NULL OR status = $4)
        ORDER BY recipient_id, channel
        LIMIT $3
        """,
        campaign_id, after_recipient_id, limit, status,
    )
    return [dict(r) for r in rows]
