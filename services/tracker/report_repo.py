"""The recipient report's rows (schema `tracker`), read through a server-side cursor."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg

from shared.db import Conn

COLUMNS = (
    "recipient_id", "channel", "address", "processed_at", "status", "reason",
    "provider_message_id", "delivery", "delivery_reason", "delivered_at",
)


async def report_rows(
    conn: Conn, campaign_id: uuid.UUID, *, prefetch: int = 2000
) -> AsyncIterator[asyncpg.Record]:
    """Every settled recipient and channel of the campaign, by recipient id then channel.

    A cursor, so only `prefetch` rows are in memory at a time; the caller holds a transaction
    open for as long as it reads (asyncpg cursors need one).
    """
    async for row in conn.cursor(
        """
        SELECT recipient_id, channel, address, occurred_at AS processed_at, status, reason,
               provider_message_id, delivery, delivery_reason, delivered_at
        FROM recipient_outcomes
        WHERE campaign_id = $1
        ORDER BY recipient_id, channel
        """,
        campaign_id,
        prefetch=prefetch,
    ):
        yield row
