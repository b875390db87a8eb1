"""Erasure in the dispatcher: a deleted voter's recipients (`sendout.erasures.v1`, written by
the scheduler) keep their delivery rows — the dedupe record: a recipient with an outcome is
never sent again — but the outcome recorded for them no longer holds the address."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from faststream.kafka import KafkaRouter

from shared import erasure as shared_erasure
from shared.events import RecipientsErased

SERVICE = "dispatcher"


async def erase(conn: asyncpg.Connection, events: Sequence[RecipientsErased]) -> int:
    """Blank the address in the recipients' recorded outcomes (every channel); idempotent.
    Each applied event is noted in `erasures_applied` (ids and counts only)."""
    campaigns = [r.campaign_id for e in events for r in e.recipients]
    recipients = [r.recipient_id for e in events for r in e.recipients]
    async with conn.transaction():
        status = await conn.execute(
            """
            UPDATE deliveries d
            SET outcome = (d.outcome::jsonb || '{"address": null}'::jsonb)::json
            FROM unnest($1::uuid[], $2::bigint[]) AS e(campaign_id, recipient_id)
            WHERE d.campaign_id = e.campaign_id AND d.recipient_id = e.recipient_id
              AND d.outcome IS NOT NULL AND d.outcome::jsonb ->> 'address' IS NOT NULL
            """,
            campaigns, recipients,
        )
        await conn.executemany(
            "INSERT INTO erasures_applied (event_id, recipients) VALUES ($1, $2) "
            "ON CONFLICT (event_id) DO NOTHING",
            [(e.event_id, len(e.recipients)) for e in events],
        )
    return int(status.split()[-1])


def kafka_router(pool: asyncpg.Pool) -> KafkaRouter:
    return shared_erasure.kafka_router(
        pool, erase, service=SERVICE,
        description="Blanks erased voters' addresses in the recorded outcomes.")
