"""The rules of peer to peer (the seed's, ../shared/seeds/002_*); its use cases
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

from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.opt_outs import use_cases

# Kept for callers of the old names: opt-outs are the opt_outs room's (opt_outs/use_cases.py).


async def ensure_organisation_exists(pool: asyncpg.Pool, organisation_id: uuid.UUID) -> None:
    await use_cases.ensure_organisation_exists(AsyncpgUnitOfWork(pool), organisation_id)


async def opt_out(
    pool: asyncpg.Pool,
    organisation_id: uuid.UUID,
    address: str,
    *,
    source: str,
    keyword: str | None,
    region: str,
) -> str:
    return await use_cases.opt_out(AsyncpgUnitOfWork(pool), organisation_id, address,
                                   source=source, keyword=keyword, region=region)
