"""Tracker persistence (schema `tracker`): bulk projection writes, progress reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from services.tracker.domain import Counts, Progress, Reasons
from shared import db
from shared.events import CampaignStarted
from shared.wire import Outcome  # the msgspec mirror of the outcome events (duck-typed alike)

__all__ = ["Outcome"]


async def applied_offsets(conn: db.Conn, topic: str) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1", topic
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def save_offsets(conn: db.Conn, topic: str, next_offsets: dict[int, int]) -> None:
    await conn.execute(
        """
        INSERT INTO consumer_offsets (topic, partition, next_offset)
        SELECT $1, * FROM unnest($2::int[], $3::bigint[])
        ON CONFLICT (topic, partition)
        DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, excluded.next_offset)
        """,
        topic, list(next_offsets), list(next_offsets.values()),
    )


# Key space of the per-campaign advisory locks (pg_advisory_xact_lock(int, int)).
_CAMPAIGN_LOCKS = 0x5E0D


async def lock_campaigns(conn: db.Conn, campaign_ids: Iterable[uuid.UUID]) -> None:
    """Lock the campaigns a transaction will touch, in one order for every transaction.

    An outcome batch writes counters, then the campaign's state; a lifecycle batch writes the
    state, then the totals. Without a common order the two deadlock now and then (PostgreSQL
    aborts one, and it is redelivered); taking these locks first, sorted, they queue instead.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, k) "
        "FROM (SELECT DISTINCT hashtext(id::text) AS k FROM unnest($2::uuid[]) AS id "
        "      ORDER BY 1) AS keys",
        _CAMPAIGN_LOCKS, list(set(campaign_ids)),
    )


# The outcomes of a batch that may hold outcomes applied before (see `apply_outcomes`).
OUTCOMES_IN = db.Staging("outcomes_in", {
    "campaign_id": "uuid", "recipient_id": "bigint", "channel": "text", "status": "text",
    "reason": "text", "provider_message_id": "text", "event_id": "uuid",
    "occurred_at": "timestamptz", "voter_id": "bigint", "address": "text",
})


async def apply_outcomes(
    conn: db.Conn, outcomes: Sequence[Outcome]
) -> list[uuid.UUID]:
    """Insert the outcomes not seen before and add them to their counters; return the
    campaigns whose counters moved.

    Outcomes come once, nearly always (redelivered batches are filtered by offset before): the
    rows are copied straight into `recipient_outcomes`, and the counters moved by what the
    batch holds. If one was applied before after all (two dispatchers raced on a message, or a
    batch redelivered past the stored offsets), the batch goes the careful way: staged,
    inserted with `ON CONFLICT DO NOTHING`, and counted by what was inserted.
    """
    rows = [
        (o.campaign_id, o.recipient_id, o.channel, o.status, o.reason, o.provider_message_id,
         o.event_id, o.occurred_at, o.voter_id, o.address)
        for o in outcomes
    ]
    if await db.copy_if_all_new(conn, "recipient_outcomes", OUTCOMES_IN.columns, rows):
        inserted = [(o.campaign_id, o.channel, o.status, o.reason) for o in outcomes]
    else:
        await OUTCOMES_IN.load(conn, rows)
        inserted = [tuple(r) for r in await conn.fetch(
            f"""
            INSERT INTO recipient_outcomes ({", ".join(OUTCOMES_IN.columns)})
            SELECT * FROM {OUTCOMES_IN.name}
            ON CONFLICT DO NOTHING
            RETURNING campaign_id, channel, status, reason
            """
        )]
    return await _count(conn, inserted)


_STATUS_SLOT = {"completed": 0, "failed": 1, "skipped": 2}


# complexity: one pass over a batch's outcomes into one statement's columns, inline per outcome
async def _count(
    conn: db.Conn, inserted: Sequence[tuple[uuid.UUID, str, str, str | None]]
) -> list[uuid.UUID]:
    """Add newly inserted outcomes — (campaign, channel, status, reason) — to their campaigns'
    counters and reasons, in one statement; return the campaigns."""
    counts: dict[tuple[uuid.UUID, str], list[int]] = {}
    reasons: dict[tuple[uuid.UUID, str, str, str], int] = {}
    for campaign_id, channel, status, reason in inserted:
        per_status = counts.get((campaign_id, channel))
        if per_status is None:
            per_status = counts[(campaign_id, channel)] = [0, 0, 0]
        per_status[_STATUS_SLOT[status]] += 1
        if status != "completed":
            reason_key = (campaign_id, channel, status, reason or "")
            reasons[reason_key] = reasons.get(reason_key, 0) + 1
    if not counts:
        return []
    campaigns = list({c for c, _ in counts})
    await conn.execute(
        """
        WITH reasons AS (
            INSERT INTO campaign_reasons AS r (campaign_id, channel, status, reason, n)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[])
            ON CONFLICT (campaign_id, channel, status, reason) DO UPDATE SET n = r.n + excluded.n
        ), campaigns_seen AS (
            INSERT INTO campaigns (campaign_id) SELECT unnest($6::uuid[])
            ON CONFLICT DO NOTHING
        )
        INSERT INTO campaign_channels AS c (campaign_id, channel, completed, failed, skipped)
        SELECT * FROM unnest($7::uuid[], $8::text[], $9::int[], $10::int[], $11::int[])
        ON CONFLICT (campaign_id, channel) DO UPDATE
        SET completed = c.completed + excluded.completed,
            failed = c.failed + excluded.failed,
            skipped = c.skipped + excluded.skipped
        """,
        [k[0] for k in reasons], [k[1] for k in reasons], [k[2] for k in reasons],
        [k[3] for k in reasons], list(reasons.values()),
        campaigns,
        [k[0] for k in counts], [k[1] for k in counts], [n[0] for n in counts.values()],
        [n[1] for n in counts.values()], [n[2] for n in counts.values()],
    )
    return campaigns


async def apply_started(conn: db.Conn, event: CampaignStarted) -> None:
    await conn.execute(
        """
        INSERT INTO campaigns (campaign_id, started, started_at, organisation_id)
        VALUES ($1, true, $2, $3)
        ON CONFLICT (campaign_id) DO UPDATE
        SET started = true, started_at = excluded.started_at,
            organisation_id = excluded.organisation_id, updated_at = now()
        """,
        event.campaign_id, event.occurred_at, event.organisation_id,
    )
    await conn.execute(
        """
        INSERT INTO campaign_channels AS c (campaign_id, channel, total)
        SELECT $1, * FROM unnest($2::text[], $3::int[])
        ON CONFLICT (campaign_id, channel) DO UPDATE SET total = excluded.total
        """,
        event.campaign_id, list(event.totals), list(event.totals.values()),
    )


async def apply_aborted(conn: db.Conn, campaign_id: uuid.UUID, at: Any) -> None:
    await conn.execute(
        """
        INSERT INTO campaigns (campaign_id, state, aborted_at) VALUES ($1, 'aborting', $2)
        ON CONFLICT (campaign_id) DO UPDATE
        SET state = 'aborting', aborted_at = excluded.aborted_at, updated_at = now()
        WHERE campaigns.state = 'sending'
        """,
        campaign_id, at,
    )


async def finish(conn: db.Conn, finished: Sequence[Progress]) -> None:
    await conn.execute(
        """
        UPDATE campaigns c SET state = f.state, completed_at = now(), updated_at = now()
        FROM unnest($1::uuid[], $2::text[]) AS f(campaign_id, state)
        WHERE c.campaign_id = f.campaign_id AND c.state IN ('sending', 'aborting')
        """,
        [p.campaign_id for p in finished], [p.final_state for p in finished],
    )


async def progress_of(
    conn: db.Conn, campaign_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Progress]:
    rows = await conn.fetch(
        """
        SELECT c.campaign_id, c.state, c.started, c.organisation_id, ch.channel, ch.total,
               ch.completed, ch.failed, ch.skipped, ch.delivered, ch.not_delivered,
               (SELECT coalesce(jsonb_agg(jsonb_build_array(r.status, r.reason, r.n)), '[]')
                FROM campaign_reasons r
                WHERE r.campaign_id = c.campaign_id AND r.channel = ch.channel) AS reasons
        FROM campaigns c LEFT JOIN campaign_channels ch USING (campaign_id)
        WHERE c.campaign_id = ANY($1::uuid[])
        """,
        list(campaign_ids),
    )
    progress: dict[uuid.UUID, Progress] = {}
    for r in rows:
        p = progress.setdefault(
            r["campaign_id"],
            Progress(r["campaign_id"], r["state"], r["started"], {}, r["organisation_id"]),
        )
        if r["channel"] is not None:
            p.channels[r["channel"]] = Counts(
                r["total"], r["completed"], r["failed"], r["skipped"], r["delivered"],
                r["not_delivered"], reasons=Reasons.from_rows(json.loads(r["reasons"])),
            )
    return progress


async def get_progress(conn: db.Conn, campaign_id: uuid.UUID) -> Progress | None:
    return (await progress_of(conn, [campaign_id])).get(campaign_id)


async def recipient_outcomes(
    conn: db.Conn,
    campaign_id: uuid.UUID,
    *,
    after_recipient_id: int,
    limit: int,
    status: str | None,
) -> list[dict[str, Any]]:
    """Whole recipients per page (all their channels), so a page never splits one.

    The page's last recipient id is computed once and the rows read as one key range. Joining
    the page instead left the plan to the statistics; taken mid-send (receipts now update
    these rows during a send-out) they once made it a 60 s query at 20,000 recipients.
    """
    rows = await conn.fetch(
        """
        SELECT o.recipient_id, o.channel, o.status, o.reason, o.provider_message_id,
               o.occurred_at
        FROM recipient_outcomes o
        WHERE o.campaign_id = $1 AND o.recipient_id > $2 AND ($4::text IS NULL OR o.status = $4)
          AND o.recipient_id <= (
              SELECT max(recipient_id) FROM (
                  SELECT DISTINCT recipient_id FROM recipient_outcomes
                  WHERE campaign_id = $1 AND recipient_id > $2
                    AND ($4::text IS NULL OR status = $4)
                  ORDER BY recipient_id LIMIT $3
              ) AS page)
        ORDER BY o.recipient_id, o.channel
        """,
        campaign_id, after_recipient_id, limit, status,
    )
    return [dict(r) for r in rows]
