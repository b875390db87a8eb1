"""Scheduler use cases: each operator command as one function, its dependencies passed in."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from services.scheduler import auth, domain, outbox, repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns import use_cases
from services.scheduler.campaigns.aborts import AbortAcks as AbortAcks
from services.scheduler.campaigns.model import Kind
from services.scheduler.campaigns.unit_of_work import FanOut
from services.scheduler.campaigns.use_cases import ListDispatchers as ListDispatchers
from services.scheduler.fanout import FanoutRunner
from services.scheduler.recipients_csv import RecipientsCsv
from services.scheduler.voters import repo as voters_repo
from shared.auth import Principal
from shared.db import Conn
from shared.events import ApiTokenIssued, ApiTokenRevoked, CampaignCompleted

# Recipients per COPY while a CSV streams in.
CSV_BATCH_ROWS = 5000

PublishIdentity = Callable[[list[ApiTokenIssued | ApiTokenRevoked]], Awaitable[None]]


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


async def create_campaign(
    pool: asyncpg.Pool,
    cmd: domain.CreateCampaign,
    actor: Principal,
    kind: str | None = None,
) -> uuid.UUID:
    """The campaign belongs to the actor's organisation and may use only its senders and
    templates (another organisation's are "not found")."""
    return await use_cases.create_campaign(
        AsyncpgUnitOfWork(pool), cmd, actor, Kind(kind) if kind is not None else None)


async def add_recipients(
    pool: asyncpg.Pool,
    campaign_id: uuid.UUID,
    recipients: list[domain.Recipient],
    region: str,
    actor: Principal,
    voter_id: int | None = None,
) -> int:
    return await use_cases.add_recipients(AsyncpgUnitOfWork(pool), campaign_id, recipients,
                                          region, actor, voter_id)


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


# The campaign's transitions: the use cases over the asyncpg unit of work.

async def send_now(
    pool: asyncpg.Pool, fanout: FanOut, campaign_id: uuid.UUID, actor: Principal
) -> None:
    await use_cases.send_now(AsyncpgUnitOfWork(pool), fanout, campaign_id, actor)


async def schedule(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, at: datetime, actor: Principal
) -> None:
    await use_cases.schedule(AsyncpgUnitOfWork(pool), campaign_id, at, actor)


async def cancel(pool: asyncpg.Pool, campaign_id: uuid.UUID, actor: Principal) -> None:
    await use_cases.cancel(AsyncpgUnitOfWork(pool), campaign_id, actor)


async def fire_due(pool: asyncpg.Pool, fanout: FanOut, limit: int = 50) -> list[uuid.UUID]:
    return await use_cases.fire_due(AsyncpgUnitOfWork(pool), fanout, limit)


async def abort(
    pool: asyncpg.Pool,
    campaign_id: uuid.UUID,
    actor: Principal,
    *,
    acks: AbortAcks,
    list_dispatchers: ListDispatchers,
    wait_seconds: float,
) -> dict[str, Any]:
    return await use_cases.abort(AsyncpgUnitOfWork(pool), campaign_id, actor, acks=acks,
                                 list_dispatchers=list_dispatchers, wait_seconds=wait_seconds)


async def apply_completed(pool: asyncpg.Pool, event: CampaignCompleted) -> None:
    await use_cases.apply_completed(AsyncpgUnitOfWork(pool), event)


async def send_individually(
    pool: asyncpg.Pool, fanout: FanOut, cmd: domain.SendIndividually, actor: Principal,
    region: str, voter_id: int | None = None,
) -> uuid.UUID:
    """One recipient, email and/or SMS: a one-recipient campaign, sent out now."""
    return await use_cases.send_individually(AsyncpgUnitOfWork(pool), fanout, cmd, actor,
                                             region, voter_id)


async def send_to_voter(
    pool: asyncpg.Pool, fanout: FanoutRunner, voter_id: int, cmd: domain.SendToVoter,
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
    return await send_individually(pool, fanout, individual, actor, region, voter_id)


# --- API tokens ----------------------------------------------------------------------------------
# Issued and revoked inside the caller's transaction, their events written to the outbox in it:
# published once committed, never for a token the rollback undid.

async def issue_token(conn: Conn, user: Principal) -> str:
    token = auth.new_token()
    token_hash = auth.hash_token(token)
    await repo.insert_token(conn, user.user_id, token_hash)
    await outbox.add(conn, outbox.identity([ApiTokenIssued(
        token_hash=token_hash.hex(), user_id=user.user_id,
        organisation_id=user.organisation_id, user_name=user.name)]))
    return token


async def revoke_tokens(conn: Conn, user: Principal) -> int:
    hashes = await repo.revoke_tokens(conn, user.user_id)
    await outbox.add(conn, outbox.identity([
        ApiTokenRevoked(token_hash=h.hex(), user_id=user.user_id,
                        organisation_id=user.organisation_id) for h in hashes]))
    return len(hashes)


async def publish_all_tokens(pool: asyncpg.Pool, publish: PublishIdentity) -> int:
    """At start: say again what every token is, so a tracker with a new database (or tokens
    issued before the identity topic existed) learns them. Idempotent for consumers."""
    async with pool.acquire() as conn:
        rows = await repo.all_tokens(conn)
    events: list[ApiTokenIssued | ApiTokenRevoked] = []
    for r in rows:
        common = {"token_hash": r["token_hash"].hex(), "user_id": r["user_id"],
                  "organisation_id": r["organisation_id"]}
        events.append(ApiTokenRevoked(**common) if r["revoked_at"] is not None
                      else ApiTokenIssued(**common, user_name=r["name"]))
    if events:
        await publish(events)
    return len(events)
