"""Peer-to-peer use cases: a user starts sending a campaign, presses SEND per recipient, ends
the campaign; opt-outs. The rules are the seed's (../shared/seeds/002_*):

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
from typing import Any

import asyncpg

from services.scheduler import domain, errors, outbox, repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.auth import Principal
from services.scheduler.campaigns import use_cases
from services.scheduler.campaigns.unit_of_work import FanOut
from shared.events import AddressOptedOut

Busy = errors.Busy


async def start_sending(
    pool: asyncpg.Pool, fanout: FanOut, campaign_id: uuid.UUID, principal: Principal
) -> str:
    """The user begins sending from this campaign (a draft starts sending now; a scheduled
    one stays scheduled, and SEND queues until its time)."""
    return await use_cases.start_sending(AsyncpgUnitOfWork(pool), fanout, campaign_id,
                                         principal)


async def press_send(
    pool: asyncpg.Pool,
    campaign_id: uuid.UUID,
    recipient_id: int,
    principal: Principal,
    batch_size: int,
) -> dict[str, Any]:
    return await use_cases.press_send(AsyncpgUnitOfWork(pool), campaign_id, recipient_id,
                                      principal, batch_size)


async def end(
    pool: asyncpg.Pool,
    fanout: FanOut,
    campaign_id: uuid.UUID,
    principal: Principal,
    cmd: domain.EndCampaign,
) -> None:
    """`cmd` was checked on the way in: the typed word END."""
    await use_cases.end(AsyncpgUnitOfWork(pool), fanout, campaign_id, principal)


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
