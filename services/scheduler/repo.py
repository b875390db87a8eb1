"""Scheduler persistence (schema `scheduler`): explicit SQL over asyncpg."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.scheduler.domain import CreateCampaign, Recipient
from services.scheduler.voters import repo as voters_repo

_CAMPAIGN_COLUMNS = """
    c.id, c.name, c.channel, c.sender_name, c.sender_email, c.sender_sms_id, c.subject,
    c.template_id, c.template_version, c.template_body, c.state, c.total, c.started_event_id,
    c.fanout_after_id, c.fanout_done, c.final_counts, c.created_at, c.started_at, c.completed_at
"""


async def init_connection(conn: asyncpg.Connection) -> None:
    # Binary, so that COPY (binary only) can carry recipient attributes too. jsonb's binary form
    # is a version byte (1) followed by the JSON text.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + json.dumps(value).encode(),
        decoder=lambda data: json.loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def insert_campaign(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, cmd: CreateCampaign
) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""
        WITH c AS (
            INSERT INTO campaigns (id, name, channel, sender_name, sender_email, sender_sms_id,
                                   subject, template_id, template_version, template_body)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9)
            RETURNING *
        )
        SELECT {_CAMPAIGN_COLUMNS}, 0::bigint AS recipients FROM c
        """,
        campaign_id, cmd.name, cmd.channel, cmd.sender.name, cmd.sender.email,
        cmd.sender.sms_sender_id, cmd.subject, uuid.uuid4(), cmd.template,
    )


async def get_campaign(conn: asyncpg.Connection, campaign_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {_CAMPAIGN_COLUMNS},
               (SELECT count(*) FROM recipients r WHERE r.campaign_id = c.id) AS recipients
        FROM campaigns c WHERE c.id = $1
        """,
        campaign_id,
    )


async def lock_campaign_state(conn: asyncpg.Connection, campaign_id: uuid.UUID) -> str | None:
    """The campaign's state, row-locked until the transaction ends (serialises transitions)."""
    return await conn.fetchval(
        "SELECT state FROM campaigns WHERE id = $1 FOR UPDATE", campaign_id
    )


async def copy_recipients(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, recipients: Sequence[Recipient]
) -> int:
    await conn.copy_records_to_table(
        "recipients",
        schema_name="scheduler",
        columns=["campaign_id", "email", "phone", "first_name", "last_name", "attributes"],
        records=(
            (campaign_id, r.email, r.phone, r.first_name, r.last_name, r.attributes)
            for r in recipients
        ),
    )
    return len(recipients)


async def start_sending(conn: asyncpg.Connection, campaign_id: uuid.UUID) -> asyncpg.Record:
    """Move a locked draft to `sending`, fixing its total and the id of its started event."""
    await voters_repo.snapshot_lists_into_recipients(conn, campaign_id)
    return await conn.fetchrow(
        """
        UPDATE campaigns c
        SET state = 'sending', started_at = now(), started_event_id = gen_random_uuid(),
            total = (SELECT count(*) FROM recipients r WHERE r.campaign_id = c.id)
        WHERE c.id = $1
        RETURNING c.total
        """,
        campaign_id,
    )


async def unfinished_fanouts(conn: asyncpg.Connection) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM campaigns WHERE state = 'sending' AND NOT fanout_done ORDER BY started_at"
    )
    return [r["id"] for r in rows]


async def recipients_page(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, after_id: int, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT id, email, phone, first_name, last_name, attributes, voter_id
        FROM recipients WHERE campaign_id = $1 AND id > $2 ORDER BY id LIMIT $3
        """,
        campaign_id, after_id, limit,
    )


async def save_fanout_checkpoint(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, after_id: int, done: bool
) -> None:
    await conn.execute(
        "UPDATE campaigns SET fanout_after_id = $2, fanout_done = $3 WHERE id = $1",
        campaign_id, after_id, done,
    )


async def mark_completed(
    conn: asyncpg.Connection, event_id: uuid.UUID, campaign_id: uuid.UUID, counts: dict[str, Any]
) -> bool:
    """Apply a tracker's completed event once; False if this event was already applied."""
    first = await conn.fetchval(
        "INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
        event_id,
    )
    if not first:
        return False
    await conn.execute(
        """
        UPDATE campaigns SET state = 'completed', completed_at = now(), final_counts = $2
        WHERE id = $1 AND state = 'sending'
        """,
        campaign_id, counts,
    )
    return True
