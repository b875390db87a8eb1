"""Tracker reads for the voter directory (schema `tracker`)."""

from __future__ import annotations

from typing import Any

import asyncpg


async def voter_history(
    conn: asyncpg.Connection, voter_id: int, *, limit: int
) -> list[dict[str, Any]]:
    """The voter's outcomes, newest first: one row per campaign and channel."""
    rows = await conn.fetch(
        """
        SELECT campaign_id, channel, status, reason, occurred_at
        FROM recipient_outcomes
        WHERE voter_id = $1
        ORDER BY occurred_at DESC, campaign_id, channel
        LIMIT $2
        """,
        voter_id, limit,
    )
    return [
        {**dict(r), "campaign_id": str(r["campaign_id"]),
         "occurred_at": r["occurred_at"].isoformat()}
        for r in rows
    ]
