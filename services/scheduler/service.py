"""Scheduler commands not yet over a unit of work: the streamed recipients CSV, an individual
send to a voter. Each takes the pool (or the caller's connection) and does its work in one
transaction. The campaign's transitions are services/scheduler/campaigns/use_cases.py; users
and their API tokens, identity/use_cases.py; senders and templates, content/use_cases.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg

from services.scheduler import domain, outbox, repo
from services.scheduler.adapters.repositories import AsyncpgIdentity
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns import use_cases
from services.scheduler.campaigns.unit_of_work import FanOut
from services.scheduler.identity.model import new_token, token_issued, tokens_revoked
from services.scheduler.recipients_csv import RecipientsCsv
from services.scheduler.voters import repo as voters_repo
from shared.auth import Principal, hash_token
from shared.db import Conn

# Recipients per COPY while a CSV streams in.
CSV_BATCH_ROWS = 5000


async def _locked_state(
    conn: Conn, campaign_id: uuid.UUID, actor: Principal | None
) -> str:
    """The campaign's state, locked; 404 unless it is the acting user's organisation's
    (`actor` None: the scheduler itself acts)."""
    org = actor.organisation_id if actor is not None else None
    state = await repo.lock_campaign_state(conn, campaign_id, org)
    if state is None:
        raise domain.NotFound(f"campaign {campaign_id} not found")
    return state


async def add_recipients_csv(
    pool: asyncpg.Pool,
    campaign_id: uuid.UUID,
    body: AsyncIterator[bytes],
    region: str,
    actor: Principal,
    batch_rows: int = CSV_BATCH_ROWS,
) -> domain.CsvAdded:
    """Stream a recipients CSV into a draft campaign: parsed as it arrives (off the event
    loop) and copied in batches, so memory stays flat whatever the file's size. Good rows are
    kept, bad rows refused and listed by line, as voters.csv does. One transaction (the
    campaign stays locked while the file arrives, so it cannot start with half a file): the
    rows are added once the whole file was read, or none if the upload breaks off. A header
    that cannot be read, or a file without one good row, raises `Invalid` (nothing added)."""
    parser = RecipientsCsv(region)
    added = 0
    async with pool.acquire() as conn, conn.transaction():
        state = await _locked_state(conn, campaign_id, actor)
        domain.ensure_can_add_recipients(campaign_id, state)
        pending: list[domain.RecipientRow] = []
        async for chunk in body:
            pending += await asyncio.to_thread(parser.feed, chunk)
            if len(pending) >= batch_rows:
                added += await repo.copy_recipients(conn, campaign_id, pending)
                pending = []
        pending += await asyncio.to_thread(parser.close)
        added += await repo.copy_recipients(conn, campaign_id, pending) if pending else 0
        if not added:
            raise domain.Invalid(
                f"no recipients added: {parser.rejected} rows refused (read as "
                f"{parser.detected['encoding']}, {parser.detected['delimiter']}-separated)"
                if parser.rejected else "CSV has a header but no recipients",
                parser.errors)
    return domain.CsvAdded(added=added, rejected=parser.rejected,
                           errors=[domain.RowError.model_validate(e) for e in parser.errors],
                           detected=domain.Detected.model_validate(parser.detected))


async def send_to_voter(
    pool: asyncpg.Pool, fanout: FanOut, voter_id: int, cmd: domain.SendToVoter,
    actor: Principal, region: str,
) -> uuid.UUID:
    """The "send email / SMS" action of a voter's page: an individual send to the voter."""
    async with pool.acquire() as conn:
        voter = await voters_repo.get_voter(conn, actor.organisation_id, voter_id)
    if voter is None:
        raise domain.NotFound(f"voter {voter_id} not found")
    if voter["opted_out"]:
        raise domain.Invalid(f"voter {voter_id} opted out of messages; nothing was sent")
    name = " ".join(n for n in (voter["first_name"], voter["last_name"]) if n) or str(voter_id)
    individual = domain.SendIndividually(
        recipient=domain.voter_recipient(voter), channels=cmd.channels,
        sender_id=cmd.sender_id, template_id=cmd.template_id, name=f"To {name}",
    )
    return await use_cases.send_individually(AsyncpgUnitOfWork(pool), fanout, individual,
                                             actor, region, voter_id)


# --- API tokens: identity/use_cases.py --------------------------------------------------------
# Kept for callers of the old names: issued and revoked inside the caller's transaction, their
# events written to the outbox in it.

async def issue_token(conn: Conn, user: Principal) -> str:
    token = new_token()
    token_hash = hash_token(token)
    await AsyncpgIdentity(conn).add_token(user.user_id, token_hash)
    await outbox.add(conn, outbox.identity([token_issued(user, token_hash)]))
    return token


async def revoke_tokens(conn: Conn, user: Principal) -> int:
    hashes = await AsyncpgIdentity(conn).revoke_tokens(user.user_id)
    await outbox.add(conn, outbox.identity(tokens_revoked(user, hashes)))
    return len(hashes)
