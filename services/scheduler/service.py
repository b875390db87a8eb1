"""Scheduler commands not yet over a unit of work: the streamed recipients CSV, an individual
send to a voter, senders and templates, users and their API tokens. Each takes the pool (or
the caller's connection) and does its work in one transaction. The campaign's transitions are
services/scheduler/campaigns/use_cases.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from services.scheduler import auth, domain, outbox, passwords, repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns import use_cases
from services.scheduler.campaigns.unit_of_work import FanOut
from services.scheduler.recipients_csv import RecipientsCsv
from services.scheduler.voters import repo as voters_repo
from shared.auth import Principal
from shared.db import Conn
from shared.events import ApiTokenIssued, ApiTokenRevoked

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


# --- senders and templates ----------------------------------------------------------------------

async def create_sender(
    pool: asyncpg.Pool, cmd: domain.SenderIn, organisation_id: uuid.UUID
) -> domain.Sender:
    async with pool.acquire() as conn:
        return await repo.insert_sender(conn, cmd, organisation_id)


async def create_template(
    pool: asyncpg.Pool, cmd: domain.TemplateIn, organisation_id: uuid.UUID
) -> domain.TemplateVersion:
    async with pool.acquire() as conn, conn.transaction():
        return await repo.insert_template(conn, cmd, organisation_id)


async def edit_template(
    pool: asyncpg.Pool, template_id: uuid.UUID, cmd: domain.TemplateIn,
    organisation_id: uuid.UUID,
) -> domain.TemplateVersion:
    """Adds a version; campaigns already created keep the version they pinned."""
    async with pool.acquire() as conn, conn.transaction():
        if await repo.template_name(conn, template_id, organisation_id) is None:
            raise domain.NotFound(f"template {template_id} not found")
        return await repo.add_template_version(conn, template_id, cmd)


# --- users (administration) ----------------------------------------------------------------------

async def create_user(pool: asyncpg.Pool, cmd: domain.CreateUser) -> tuple[Principal, str]:
    """The organisation if new, and the user (or, for an existing user, a further token), with
    an optional password; the user and their new API token."""
    password_hash = await passwords.hash_password(cmd.password) if cmd.password else None
    async with pool.acquire() as conn, conn.transaction():
        org = await repo.ensure_organisation(conn, cmd.organisation)
        user = Principal(await repo.upsert_user(conn, org, cmd.name), org, cmd.name)
        if password_hash:
            await passwords.set_password(conn, user.user_id, password_hash, cmd.email)
        token = await issue_token(conn, user)
    return user, token


async def _user_or_404(conn: Conn, user_id: uuid.UUID) -> Principal:
    user = await repo.get_user(conn, user_id)
    if user is None:
        raise domain.NotFound(f"user {user_id} not found")
    return user


async def add_token(pool: asyncpg.Pool, user_id: uuid.UUID) -> tuple[Principal, str]:
    """A further token for the user (e.g. to rotate: add, switch, then revoke the old)."""
    async with pool.acquire() as conn, conn.transaction():
        user = await _user_or_404(conn, user_id)
        return user, await issue_token(conn, user)


async def revoke_all_tokens(pool: asyncpg.Pool, user_id: uuid.UUID) -> tuple[Principal, int]:
    """Revoke every token of the user, in every service."""
    async with pool.acquire() as conn, conn.transaction():
        user = await _user_or_404(conn, user_id)
        return user, await revoke_tokens(conn, user)


async def sign_in(pool: asyncpg.Pool, login: str, password: str) -> dict[str, Any] | None:
    """A person's sign-in → a fresh API token and who they are; None for an unknown login or
    a wrong password (told apart by nobody)."""
    row = await passwords.user_signing_in(pool, login, password)
    if row is None:
        return None
    principal = Principal(row["id"], row["organisation_id"], row["name"])
    async with pool.acquire() as conn, conn.transaction():
        # Announced to the other services through the outbox, with this transaction.
        token = await issue_token(conn, principal)
    return {"token": token, "user_id": str(row["id"]),
            "organisation_id": str(row["organisation_id"]),
            "organisation": row["organisation"], "name": row["name"]}


async def change_password(
    pool: asyncpg.Pool, user_id: uuid.UUID, current_password: str, new_password: str
) -> None:
    """The current password is required (`Forbidden` if wrong)."""
    async with pool.acquire() as conn:
        current = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
    if current is not None and not await passwords.verify(current, current_password):
        raise passwords.WrongPassword("the current password is wrong")
    new_hash = await passwords.hash_password(new_password)
    async with pool.acquire() as conn:
        await passwords.set_password(conn, user_id, new_hash)


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
