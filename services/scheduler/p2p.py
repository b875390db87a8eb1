"""Opt-outs, and the rules of peer to peer (the seed's, ../shared/seeds/002_*); its use cases
(start sending, press SEND, end) are in campaigns/use_cases.py:

- non-scheduled campaign: SEND sends at once;
- scheduled campaign, before its time: SEND queues; the queued go out when the time comes;
- after the time: SEND sends at once; recipients nobody pressed SEND for are never messaged;
- one user sends one campaign at a time (the database's primary key decides, not a check);
- End Campaign needs the typed word END; the campaign is completed; those already SENT still
  go (a scheduled campaign ended before its time sends to nobody);
- opted-out recipients are never messaged.
"""

from __future__ import annotations

import uuid

import asyncpg

from services.scheduler import domain, errors, outbox, repo
from services.scheduler.adapters.repositories import AsyncpgIdentity
from shared.events import AddressOptedOut


async def ensure_organisation_exists(pool: asyncpg.Pool, organisation_id: uuid.UUID) -> None:
    async with pool.acquire() as conn:
        if not await AsyncpgIdentity(conn).organisation_exists(organisation_id):
            raise errors.NotFound(f"organisation {organisation_id} not found")


async def opt_out(
    pool: asyncpg.Pool,
    organisation_id: uuid.UUID,
    address: str,
    *,
    source: str,
    keyword: str | None,
    region: str,
) -> str:
    normalised = domain.normalise_address(address, region)
    async with pool.acquire() as conn, conn.transaction():
        await repo.insert_opt_out(conn, organisation_id, normalised, source, keyword)
        await conn.execute(
            """
            UPDATE voters SET opted_out = true, opted_out_at = coalesce(opted_out_at, now())
            WHERE organisation_id = $1 AND (phone = $2 OR lower(email) = lower($2))
            """,
            organisation_id, normalised,
        )
        # Dispatchers learn once it commits (a repeated event is harmless).
        await outbox.add(conn, [outbox.opt_out(
            AddressOptedOut(organisation_id=organisation_id, address=normalised))])
    return normalised
