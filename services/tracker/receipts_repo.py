"""Tracker persistence for delivery receipts (schema `tracker`).

Ordering between the two consumers: a receipt is applied to its outcome row if that row exists,
else parked in `receipts_pending` until the outcome's transaction applies it. The two
transactions must not interleave (each would miss the other's uncommitted row), so receipt
batches take an advisory lock exclusively and outcome batches take it shared: outcome batches
never wait for each other, only for a receipt batch in flight. Both take it before any write,
so the lock cannot be part of a deadlock with the row locks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from shared import db
from shared.events import DeliveryReported

# Fixed, so every tracker replica takes the same lock; unlike the migrations' key (a hash of
# the schema name) it is held only for a transaction.
_RECEIPTS_LOCK = 0x5E_0D_0B_7E_CE_1B_75


@dataclass(frozen=True)
class Applied:
    applied: int  # receipts that refined an outcome now
    parked: int  # receipts whose outcome is not known yet


async def lock_for_receipts(conn: db.Conn) -> None:
    """Receipt batch: wait for outcome batches in flight, keep new ones out until commit."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _RECEIPTS_LOCK)


async def lock_for_outcomes(conn: db.Conn) -> None:
    """Outcome batch: shut out receipt batches (not other outcome batches) until commit."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", _RECEIPTS_LOCK)


# A batch's receipts, in arrival order (`ord`).
_RECEIPTS_IN = db.Staging("receipts_in", {
    "ord": "integer", "pmid": "text", "status": "text", "reason": "text", "at": "timestamptz",
    "event_id": "uuid",
})


async def apply_receipts(
    conn: db.Conn, receipts: Sequence[DeliveryReported]
) -> Applied:
    """Refine `completed` outcomes with their receipts and count them, in one statement.

    The first final receipt for a message wins: an outcome that already has a delivery, or a
    message id already parked, is left alone, so a receipt applied twice counts once. Within
    one batch the earliest record wins (DISTINCT ON by position). A receipt for an outcome that
    is not `completed` (it cannot be: providers only report what they accepted) is dropped.
    """
    if not receipts:
        return Applied(0, 0)
    await _RECEIPTS_IN.load(conn, [
        (i, r.provider_message_id, r.status, r.reason, r.occurred_at, r.event_id)
        for i, r in enumerate(receipts)
    ])
    row = await conn.fetchrow(
        f"""
        WITH r AS (
            SELECT DISTINCT ON (pmid) pmid, status, reason, at, event_id
            FROM {_RECEIPTS_IN.name}
            ORDER BY pmid, ord
        ), updated AS (
            UPDATE recipient_outcomes o
            SET delivery = r.status, delivery_reason = r.reason, delivered_at = r.at
            FROM r
            WHERE o.provider_message_id = r.pmid AND o.status = 'completed'
              AND o.delivery IS NULL
            RETURNING o.campaign_id, o.channel, o.delivery, o.delivery_reason
        ), reasons AS (
            INSERT INTO campaign_reasons AS cr (campaign_id, channel, status, reason, n)
            SELECT campaign_id, channel, 'not_delivered', coalesce(delivery_reason, ''), count(*)
            FROM updated WHERE delivery = 'not_delivered'
            GROUP BY campaign_id, channel, coalesce(delivery_reason, '')
            ON CONFLICT (campaign_id, channel, status, reason) DO UPDATE SET n = cr.n + excluded.n
        ), parked AS (
            INSERT INTO receipts_pending (provider_message_id, status, reason, reported_at,
                                          event_id)
            SELECT pmid, status, reason, at, event_id FROM r
            WHERE NOT EXISTS (
                SELECT 1 FROM recipient_outcomes o WHERE o.provider_message_id = r.pmid)
            ON CONFLICT DO NOTHING
            RETURNING 1
        ), counts AS (
            SELECT campaign_id, channel,
                   count(*) FILTER (WHERE delivery = 'delivered') AS delivered,
                   count(*) FILTER (WHERE delivery = 'not_delivered') AS not_delivered
            FROM updated GROUP BY campaign_id, channel
        ), counted AS (
            -- The row exists: the outcome's batch created it.
            UPDATE campaign_channels c
            SET delivered = c.delivered + counts.delivered,
                not_delivered = c.not_delivered + counts.not_delivered
            FROM counts
            WHERE c.campaign_id = counts.campaign_id AND c.channel = counts.channel
        )
        SELECT (SELECT count(*) FROM updated) AS applied,
               (SELECT count(*) FROM parked) AS parked
        """
    )
    assert row is not None
    return Applied(row["applied"], row["parked"])


# The provider message ids of an outcome batch, when receipts are parked.
_MESSAGES_IN = db.Staging("messages_in", {"provider_message_id": "text"})


async def apply_pending(conn: db.Conn, provider_message_ids: Sequence[str]) -> int:
    """Apply the parked receipts of these messages, whose outcomes this transaction applied;
    return how many. Called under `lock_for_outcomes` (so no receipt is parked meanwhile)."""
    if not provider_message_ids or not await conn.fetchval(
        "SELECT EXISTS (SELECT FROM receipts_pending)"
    ):
        return 0
    await _MESSAGES_IN.load(conn, [(m,) for m in provider_message_ids])
    rows = await conn.fetch(
        f"""
        DELETE FROM receipts_pending
        WHERE provider_message_id IN (SELECT provider_message_id FROM {_MESSAGES_IN.name})
        RETURNING provider_message_id, status, reason, reported_at, event_id
        """
    )
    if not rows:
        return 0
    parked = [
        DeliveryReported(
            event_id=r["event_id"], provider_message_id=r["provider_message_id"],
            status=r["status"], reason=r["reason"], occurred_at=r["reported_at"],
        )
        for r in rows
    ]
    return (await apply_receipts(conn, parked)).applied


async def campaigns_of(
    conn: db.Conn, provider_message_ids: Sequence[str]
) -> dict[str, uuid.UUID]:
    """The campaign of each message id whose outcome the tracker has projected already."""
    rows = await conn.fetch(
        """
        SELECT provider_message_id, campaign_id FROM recipient_outcomes
        WHERE provider_message_id = ANY($1::text[])
        """,
        list(provider_message_ids),
    )
    return {r["provider_message_id"]: r["campaign_id"] for r in rows}
