"""What the API shows of campaigns: reads straight from the scheduler's tables, shaped as the
answers' JSON (the read side; changes go through the use cases). A campaign of another
organisation is "not found". Senders and templates: content/views.py."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.scheduler import repo
from services.scheduler.errors import NotFound


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def campaign_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "kind": row["kind"],
        "channels": row["channels"],
        "sender": {"id": str(row["sender_id"]), "name": row["sender_name"],
                   "email": row["sender_email"], "sms_sender_id": row["sender_sms_id"]},
        "template": {"id": str(row["template_id"]), "version": row["template_version"],
                     "email_subject": row["email_subject"], "email_body": row["email_body"],
                     "sms_body": row["sms_body"]},
        "state": row["state"],
        "scheduled_for": _iso(row["scheduled_for"]),
        "recipients": row["recipients"],
        # Peer to peer: recipients a user pressed SEND for (the seed's "processed").
        "processed": row["processed"],
        "total": row["total"],
        "abort_pending": row["abort_pending"],
        "final_counts": row["final_counts"],
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "aborted_at": _iso(row["aborted_at"]),
        "completed_at": _iso(row["completed_at"]),
    }


async def campaign(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, organisation_id: uuid.UUID
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        row = await repo.get_campaign(conn, campaign_id, organisation_id)
    if row is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign_view(row)


async def campaigns(
    pool: asyncpg.Pool, organisation_id: uuid.UUID, state: str | None
) -> list[dict[str, Any]]:
    """The organisation's campaigns (in `state` if given), newest first, the latest 500."""
    async with pool.acquire() as conn:
        rows = await repo.campaigns_of(conn, organisation_id, state, limit=500)
    return [campaign_view(r) for r in rows]


async def audit_trail(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, organisation_id: uuid.UUID
) -> list[dict[str, Any]]:
    await campaign(pool, campaign_id, organisation_id)
    async with pool.acquire() as conn:
        return await repo.audit_trail(conn, campaign_id)


async def p2p_recipients(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, organisation_id: uuid.UUID, after: int,
    limit: int,
) -> dict[str, Any]:
    """A page of a peer-to-peer campaign's recipients, with whether SEND was pressed."""
    async with pool.acquire() as conn:
        row = await repo.lock_campaign(conn, campaign_id, share=True)
        if row is None or row["organisation_id"] != organisation_id:
            raise NotFound(f"campaign {campaign_id} not found")
        rows = await repo.p2p_recipients(conn, campaign_id, after, limit)
    return {
        "recipients": [
            {"id": r["id"], "first_name": r["first_name"], "last_name": r["last_name"],
             "email": r["email"], "phone": r["phone"],
             "sent": r["pressed_at"] is not None} for r in rows],
        "next_after": rows[-1]["id"] if len(rows) == limit else None,
    }
