"""Erasure in the dispatcher: a deleted voter's recipients (`sendout.erasures.v1`, written by
the scheduler) keep their delivery rows — the dedupe record: a recipient with an outcome is
never sent again — but the outcome recorded for them no longer holds the address.

Their messages on the retry schedule lose the address too, and are not sent: one waiting for
its next attempt is settled as skipped `erased` (nothing was sent, by the user's decision, as
a message of an aborted campaign is skipped `aborted`); that outcome is recorded at once, and
the retry is made due, so the next retry round reports it to the tracker from the record and
takes it off the schedule. A retry whose provider call is under way at that moment (a few
seconds at most) completes, and its outcome is recorded as it comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from faststream.kafka import KafkaRouter

from services.dispatcher import domain
from shared import erasure as shared_erasure
from shared import wire
from shared.db import Conn
from shared.events import RecipientsErased
from shared.reasons import SkipReason

SERVICE = "dispatcher"
ERASED = SkipReason.ERASED  # the skip reason of a retry whose voter was erased
_REQUEST = msgspec.json.Decoder(wire.SendRequested)


async def erase(conn: Conn, events: Sequence[RecipientsErased]) -> int:
    """Blank the address in the recipients' recorded outcomes (every channel) and in their
    retries, settling waiting retries as skipped `erased`; idempotent. Each applied event is
    noted in `erasures_applied` (ids and counts only). Returns the outcomes blanked."""
    campaigns = [r.campaign_id for e in events for r in e.recipients]
    recipients = [r.recipient_id for e in events for r in e.recipients]
    async with conn.transaction():
        await _settle_waiting_retries(conn, campaigns, recipients)
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


async def _settle_waiting_retries(
    conn: Conn, campaigns: list[Any], recipients: list[int]
) -> None:
    """The recipients' retries lose their address and template variables; those waiting for
    their next attempt get their outcome (skipped `erased`) recorded and are made due, to be
    reported and dropped by the next retry round (which never calls a provider for a key with
    a recorded outcome)."""
    rows = await conn.fetch(
        """
        SELECT r.campaign_id, r.recipient_id, r.channel, r.status, r.request::text AS request
        FROM retries r
        JOIN unnest($1::uuid[], $2::bigint[]) AS e(campaign_id, recipient_id)
          ON r.campaign_id = e.campaign_id AND r.recipient_id = e.recipient_id
        ORDER BY 1, 2, 3
        FOR UPDATE OF r
        """,
        campaigns, recipients,
    )
    if not rows:
        return
    now = datetime.now(UTC)
    outcomes = []
    for row in rows:
        if row["status"] != "waiting":
            continue  # mid-call, or settled already: its outcome is (being) recorded
        req = msgspec.structs.replace(_REQUEST.decode(row["request"]), address=None)
        outcome = domain.skipped(req, ERASED)
        outcomes.append((req.campaign_id, req.recipient_id, req.channel, req.event_id,
                         outcome.to_bytes().decode(), now))
    if outcomes:
        # The first outcome recorded for a key stays (as the dispatcher records them).
        await conn.executemany(
            """
            INSERT INTO deliveries AS d (campaign_id, recipient_id, channel, request_id,
                                         outcome, done_at)
            VALUES ($1, $2, $3, $4, $5::json, $6)
            ON CONFLICT (campaign_id, recipient_id, channel) DO UPDATE
            SET outcome = excluded.outcome, done_at = excluded.done_at
            WHERE d.outcome IS NULL
            """,
            outcomes,
        )
    await conn.execute(
        """
        UPDATE retries r
        SET request = (r.request::jsonb || '{"address": null, "variables": {}}'::jsonb)::json,
            due_at = CASE WHEN r.status = 'waiting' THEN now() ELSE r.due_at END,
            last_reason = CASE WHEN r.status = 'waiting' THEN 'erased' ELSE r.last_reason END
        FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS k(campaign_id, recipient_id, channel)
        WHERE (r.campaign_id, r.recipient_id, r.channel)
            = (k.campaign_id, k.recipient_id, k.channel)
        """,
        [r["campaign_id"] for r in rows], [r["recipient_id"] for r in rows],
        [r["channel"] for r in rows],
    )


def kafka_router(pool: asyncpg.Pool) -> KafkaRouter:
    return shared_erasure.kafka_router(
        pool, erase, service=SERVICE,
        description="Blanks erased voters' addresses in the recorded outcomes and retries.")
