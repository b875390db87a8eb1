"""Erasure in the tracker: a deleted voter's recipients (`sendout.erasures.v1`, written by the
scheduler) keep their report rows and statuses, without the address and the link to the voter
(so `/voters/{id}/history` no longer lists them)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from faststream.kafka import KafkaRouter

from shared import erasure
from shared.db import Conn
from shared.events import RecipientsErased

SERVICE = "tracker"


async def erase(conn: Conn, events: Sequence[RecipientsErased]) -> int:
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
    return erasure.kafka_router(
        pool, erase, service=SERVICE,
        description="Blanks erased voters' addresses in the report rows and voter history.")
