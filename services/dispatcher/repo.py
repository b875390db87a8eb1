"""Dispatcher persistence (schema `dispatcher`): templates, and one delivery row per
(campaign, recipient, channel) holding its outcome — the dedupe record — in bulk."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from services.dispatcher.domain import CampaignTemplate, Outcome, Request
from shared import db
from shared.events import AddressOptedOut, CampaignStarted, ChannelTemplate, SenderInfo
from shared.wire import decode_outcome


async def save_template(conn: asyncpg.Connection, event: CampaignStarted) -> None:
    templates = {channel: t.model_dump() for channel, t in event.templates.items()}
    await conn.execute(
        """
        INSERT INTO templates (campaign_id, organisation_id, template_id, template_version,
                               templates, sender)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)
        ON CONFLICT (campaign_id) DO NOTHING
        """,
        event.campaign_id, event.organisation_id, event.template.id, event.template.version,
        json.dumps(templates), event.sender.model_dump_json(),
    )


async def load_templates(
    conn: asyncpg.Connection, campaign_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, CampaignTemplate]:
    rows = await conn.fetch(
        """
        SELECT campaign_id, organisation_id, template_version, templates::text AS templates,
               sender::text AS sender
        FROM templates WHERE campaign_id = ANY($1::uuid[])
        """,
        list(campaign_ids),
    )
    return {
        r["campaign_id"]: CampaignTemplate(
            campaign_id=r["campaign_id"],
            organisation_id=r["organisation_id"],
            version=r["template_version"],
            templates={
                channel: ChannelTemplate(**t) for channel, t in json.loads(r["templates"]).items()
            },
            sender=SenderInfo.model_validate_json(r["sender"]),
        )
        for r in rows
    }


async def save_aborts(conn: asyncpg.Connection, campaign_ids: Sequence[uuid.UUID]) -> None:
    await conn.execute(
        """
        INSERT INTO aborted_campaigns (campaign_id) SELECT unnest($1::uuid[])
        ON CONFLICT DO NOTHING
        """,
        list(campaign_ids),
    )


async def aborted_campaigns(conn: asyncpg.Connection) -> set[uuid.UUID]:
    return {r["campaign_id"] for r in await conn.fetch("SELECT campaign_id FROM aborted_campaigns")}


async def settled_count(conn: asyncpg.Connection, campaign_id: uuid.UUID) -> int:
    """How many of the campaign's messages have an outcome (sent, failed or skipped)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND outcome IS NOT NULL",
        campaign_id,
    ))


_KEYS_IN = db.Staging("delivery_keys_in", {
    "campaign_id": "uuid", "recipient_id": "bigint", "channel": "text",
})
_DELIVERIES_IN = db.Staging("deliveries_in", {
    "campaign_id": "uuid", "recipient_id": "bigint", "channel": "text", "request_id": "uuid",
    "outcome": "json", "done_at": "timestamptz",
})
_DELIVERY_COLUMNS = _DELIVERIES_IN.columns


async def settled(
    conn: asyncpg.Connection, requests: Sequence[Request]
) -> dict[tuple[uuid.UUID, int, str], Outcome]:
    """The outcomes already recorded for some of the requests' dedupe keys.

    Keys returned were sent (or settled) before and must not be sent again, only re-reported.
    A key without a row is sent; its row is written once, with its outcome (`record_outcomes`).
    (It used to be claimed by an insert before the call and updated after it; a claim without
    an outcome was treated exactly as no row — sent again, with the same idempotency key — so
    the claim only doubled the writes.)
    """
    async with conn.transaction():
        await _KEYS_IN.load(conn, [(r.campaign_id, r.recipient_id, r.channel) for r in requests])
        # One primary-key probe per key, whatever the statistics say: the staged keys have
        # none, and while `deliveries` is young (a few 100k rows) scanning it for a hash join
        # costs about as much as the probes in the planner's eyes — a plain join was the
        # busiest statement of the benchmark's PostgreSQL (docs/benchmarks.md, third pass).
        rows = await conn.fetch(
            f"""
            SELECT k.campaign_id, k.recipient_id, k.channel, d.outcome::text AS outcome
            FROM {_KEYS_IN.name} AS k
            CROSS JOIN LATERAL (
                SELECT outcome FROM deliveries d
                WHERE d.campaign_id = k.campaign_id AND d.recipient_id = k.recipient_id
                  AND d.channel = k.channel AND d.outcome IS NOT NULL
                LIMIT 1
            ) AS d
            """
        )
    return {
        (r["campaign_id"], r["recipient_id"], r["channel"]): decode_outcome(r["outcome"])
        for r in rows
    }


async def record_outcomes(
    conn: asyncpg.Connection, outcomes: Sequence[tuple[Request, Outcome, bytes]]
) -> None:
    """Store each request's outcome, as the JSON that is published; the first one recorded for
    a dedupe key stays (a row claimed without an outcome by an older version gets it).

    The keys were looked up just before (`settled`), so they are nearly always new: the rows
    are copied straight into `deliveries`, in a savepoint. Only if a key is there after all
    (another dispatcher recorded it meanwhile, or an old claim) does that fail, and the batch
    goes the careful way — staged, then inserted with `ON CONFLICT`. Straight in, PostgreSQL
    inserts the rows page by page, without a speculative insertion per row.
    """
    done_at = datetime.now(UTC)
    rows = [
        (o.campaign_id, o.recipient_id, o.channel, r.event_id, data.decode(), done_at)
        for r, o, data in outcomes
    ]
    async with conn.transaction():
        try:
            async with conn.transaction():
                await conn.copy_records_to_table("deliveries", records=rows,
                                                 columns=_DELIVERY_COLUMNS)
                return
        except asyncpg.UniqueViolationError:
            pass
        await _DELIVERIES_IN.load(conn, rows)
        await conn.execute(
            f"""
            INSERT INTO deliveries AS d ({", ".join(_DELIVERY_COLUMNS)})
            SELECT * FROM {_DELIVERIES_IN.name}
            ON CONFLICT (campaign_id, recipient_id, channel) DO UPDATE
            SET outcome = excluded.outcome, done_at = excluded.done_at
            WHERE d.outcome IS NULL
            """
        )


async def save_opt_outs(conn: asyncpg.Connection, events: Sequence[AddressOptedOut]) -> None:
    await conn.execute(
        """
        INSERT INTO opt_outs (organisation_id, address)
        SELECT * FROM unnest($1::uuid[], $2::text[])
        ON CONFLICT DO NOTHING
        """,
        [e.organisation_id for e in events], [e.address for e in events],
    )


async def all_opt_outs(conn: asyncpg.Connection) -> set[tuple[uuid.UUID, str]]:
    rows = await conn.fetch("SELECT organisation_id, address FROM opt_outs")
    return {(r["organisation_id"], r["address"]) for r in rows}
