"""Tracker reads for the voter directory (schema `tracker`)."""

from __future__ import annotations

import uuid
from typing import Any

from shared.db import Conn


async def voter_history(
    conn: Conn, voter_id: int, organisation_id: uuid.UUID, *, limit: int
) -> list[dict[str, Any]]:
    """The voter's outcomes in the organisation's campaigns, newest first: one row per
    campaign and channel."""
    rows = await conn.fetch(
        """
        SELECT o.campaign_id, o.channel, o.status, o.reason, o.occurred_at
        FROM recipient_outcomes o JOIN campaigns c USING (campaign_id)
        WHERE o.voter_id = $1 AND c.organisation_id = $3
        ORDER BY o.occurred_at DESC, o.campaign_id, o.channel
        LIMIT $2
        """,
        voter_id, limit, organisation_id,
    )
    return [
        {**dict(r), "campaign_id": str(r["campaign_id"]),
         "occurred_at": r["occurred_at"].isoformat()}
        for r in rows
    ]
