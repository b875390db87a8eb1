"""Voter directory use cases: each takes its dependencies as arguments, owns its transaction,
and raises the scheduler's typed domain errors (mapped to HTTP once, at the edge)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.scheduler import outbox
from services.scheduler import repo as campaigns_repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.csv_reader import MAX_LISTED_ERRORS
from services.scheduler.domain import Invalid, NotFound
from services.scheduler.voters import domain, repo
from services.scheduler.voters.domain import ImportRow
from services.scheduler.voters.unit_of_work import VotersUnitOfWork
from shared.events import ErasedRecipient, RecipientsErased

log = logging.getLogger(__name__)
# Rows per COPY + upsert transaction: large enough to amortise round trips, small enough that
# a batch's locks and a failed batch's loss stay small.
IMPORT_BATCH_ROWS = 5000


@dataclass
class ImportResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    # The file's encoding and separator, as detected.
    detected: dict[str, str] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged,
            "rejected": self.rejected, "detected": self.detected,
            "errors": sorted(self.errors, key=lambda e: e["line"])[:MAX_LISTED_ERRORS],
        }


async def import_csv(
    pool: asyncpg.Pool,
    body: AsyncIterator[bytes],
    *,
    org: uuid.UUID,
    region: str,
    list_id: uuid.UUID | None = None,
    batch_rows: int = IMPORT_BATCH_ROWS,
) -> ImportResult:
    """Stream a voter CSV into the directory (and into a list, if given): `import_voters`
    over the asyncpg unit of work."""
    return await import_voters(AsyncpgUnitOfWork(pool), body, org=org, region=region,
                               list_id=list_id, batch_rows=batch_rows)


async def import_voters(
    uow: VotersUnitOfWork,
    body: AsyncIterator[bytes],
    *,
    org: uuid.UUID,
    region: str,
    list_id: uuid.UUID | None = None,
    batch_rows: int = IMPORT_BATCH_ROWS,
) -> ImportResult:
    """Stream a voter CSV into the directory (and into a list, if given).

    The body is parsed as it arrives and written in batches, each its own unit of work, so
    memory stays flat and no connection is held while waiting for the client. Good rows are
    kept; bad rows are counted and listed (line and message). A header that cannot be read
    raises `Invalid` before anything is written.
    """
    if list_id is not None:
        async with uow:
            if not await uow.voters.list_exists(org, list_id):
                raise NotFound(f"list {list_id} not found")
    parser = domain.CsvImport(region)
    result = ImportResult()
    pending: list[ImportRow] = []
    superseded: list[tuple[int, int]] = []
    started = time.monotonic()

    async def write(rows: list[ImportRow]) -> None:
        async with uow:
            inserted, updated, lost = await uow.voters.upsert_import_batch(
                org, rows, columns=parser.columns,
                merge_attributes=parser.has_attributes, list_id=list_id,
            )
            await uow.commit()
        result.inserted += inserted
        result.updated += updated
        result.unchanged += len(rows) - len(lost) - inserted - updated
        # Not reported to the parser yet: it may be parsing in its thread right now.
        superseded.extend(lost)

    # One batch is written while the next is parsed (one write at a time: the unit of work
    # is not shared): parsing is Python CPU work (~80 µs a row, mostly phone validation),
    # writing is PostgreSQL's, so the two overlap.
    writing: asyncio.Task[None] | None = None
    try:
        async for chunk in body:
            # Off the event loop, so that other requests and the fan-out are served meanwhile.
            pending += await asyncio.to_thread(parser.feed, chunk)
            while len(pending) >= batch_rows:
                if writing is not None:
                    await writing
                writing = asyncio.create_task(write(pending[:batch_rows]))
                del pending[:batch_rows]
        pending += parser.close()
    finally:
        if writing is not None:
            await writing
    if pending:
        await write(pending)
    for line, kept in superseded:
        parser.reject(line, f"same voter as line {kept}, which was kept")
    result.rejected = parser.rejected
    result.errors = parser.errors
    result.detected = parser.detected
    log.info(
        "voters imported",
        extra={"inserted": result.inserted, "updated": result.updated,
               "unchanged": result.unchanged, "rejected": result.rejected,
               "seconds": round(time.monotonic() - started, 3)},
    )
    return result


async def create_voter(
    pool: asyncpg.Pool, cmd: domain.VoterIn, *, org: uuid.UUID, region: str
) -> asyncpg.Record:
    fields = domain.new_voter(cmd, region)
    async with pool.acquire() as conn:
        row = await repo.insert_voter(conn, org, fields)
        if row is None:
            existing = await repo.voter_with_identity(conn, org, fields)
            raise Invalid(f"voter {existing} has the same external_id, email or phone")
    return row


async def edit_voter(
    pool: asyncpg.Pool, voter_id: int, cmd: domain.EditVoter, *, org: uuid.UUID, region: str
) -> asyncpg.Record:
    async with pool.acquire() as conn, conn.transaction():
        current = await repo.get_voter(conn, org, voter_id, lock=True)
        if current is None:
            raise NotFound(f"voter {voter_id} not found")
        fields = domain.edited_voter(domain.as_fields(current), cmd, region)
        try:
            async with conn.transaction():
                return await repo.update_voter(conn, org, voter_id, fields)
        except asyncpg.UniqueViolationError:
            existing = await repo.voter_with_identity(conn, org, fields)
            raise Invalid(
                f"voter {existing} has the same external_id, email or phone"
            ) from None


async def delete_voter(
    pool: asyncpg.Pool, voter_id: int, *, org: uuid.UUID, erase: bool
) -> dict[str, Any]:
    """Delete a voter. Campaigns keep their recipient copy (marked `voter_deleted`), so a
    send-out in progress goes on. With `erase`, the copies' personal fields are blanked too:
    at once in finished campaigns, when the campaign ends in the others."""
    async with pool.acquire() as conn, conn.transaction():
        # Locked first: a campaign starting now waits, then snapshots without this voter.
        if await repo.get_voter(conn, org, voter_id, lock=True) is None:
            raise NotFound(f"voter {voter_id} not found")
        campaigns = await repo.lock_campaigns_of_voter(conn, voter_id)
        finished = [c for c, state in campaigns if state in domain.FINISHED]
        running = [c for c, state in campaigns if state not in domain.FINISHED]
        erase_now, erase_later = (finished, running) if erase else ([], [])
        erased = await repo.release_snapshots(
            conn, voter_id, erase_now=erase_now, erase_later=erase_later
        )
        await repo.delete_voter(conn, org, voter_id)
        if erased:
            # The other services' copies (report rows, recorded outcomes) go too; those of
            # running campaigns when they end (the trigger of migration 080 writes that event).
            await outbox.add(conn, [outbox.erasure(RecipientsErased(
                organisation_id=org, voter_id=voter_id,
                recipients=[ErasedRecipient(campaign_id=c, recipient_id=r) for c, r in erased],
            ))])
    return {
        "deleted": voter_id,
        "campaigns": len(campaigns),
        "erased": len(erase_now),
        "erase_when_finished": len(erase_later),
    }


async def search_voters(
    pool: asyncpg.Pool, q: str | None, *, org: uuid.UUID, after: int, limit: int
) -> list[asyncpg.Record]:
    pattern = domain.search_pattern(q) if q is not None else None
    async with pool.acquire() as conn:
        return await repo.search_voters(conn, org, pattern, after, limit)


async def voter_page(pool: asyncpg.Pool, voter_id: int, *, org: uuid.UUID) -> dict[str, Any]:
    async with pool.acquire() as conn:
        voter = await repo.get_voter(conn, org, voter_id)
        if voter is None:
            raise NotFound(f"voter {voter_id} not found")
        return {
            "voter": voter,
            "lists": await repo.lists_of_voter(conn, voter_id),
            "campaigns": await repo.campaigns_of_voter(conn, voter_id),
        }


async def voter_export(pool: asyncpg.Pool, voter_id: int, *, org: uuid.UUID) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        voter = await repo.get_voter(conn, org, voter_id)
        if voter is None:
            raise NotFound(f"voter {voter_id} not found")
        return {
            "voter": voter,
            "lists": await repo.lists_of_voter(conn, voter_id),
            "recipient_snapshots": await repo.snapshots_of_voter(conn, voter_id),
        }


async def create_list(
    pool: asyncpg.Pool, cmd: domain.CreateList, *, org: uuid.UUID
) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await repo.insert_list(conn, org, uuid.uuid4(), cmd.name)
    if row is None:
        raise Invalid(f"a list named {cmd.name!r} exists already")
    return row


async def all_lists(pool: asyncpg.Pool, *, org: uuid.UUID) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await repo.all_lists(conn, org)


async def get_list(pool: asyncpg.Pool, list_id: uuid.UUID, *, org: uuid.UUID) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await repo.get_list(conn, org, list_id)
    if row is None:
        raise NotFound(f"list {list_id} not found")
    return row


async def delete_list(pool: asyncpg.Pool, list_id: uuid.UUID, *, org: uuid.UUID) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # Locked: a campaign cannot start targeting the list while we check who targets it.
        if await repo.get_list(conn, org, list_id, lock=True) is None:
            raise NotFound(f"list {list_id} not found")
        domain.ensure_list_unused(list_id, await repo.unstarted_campaigns_targeting(conn, list_id))
        await repo.delete_list(conn, list_id)


async def change_members(
    pool: asyncpg.Pool, list_id: uuid.UUID, cmd: domain.VoterIds, *, org: uuid.UUID, add: bool
) -> int:
    """Add (all or nothing: every id must be a voter) or remove voters of a list."""
    async with pool.acquire() as conn, conn.transaction():
        if await repo.get_list(conn, org, list_id) is None:
            raise NotFound(f"list {list_id} not found")
        if not add:
            return await repo.remove_members(conn, list_id, cmd.voter_ids)
        unknown = await repo.unknown_voters(conn, org, cmd.voter_ids)
        if unknown:
            raise Invalid(
                f"{len(unknown)} unknown voter ids; nothing was added",
                [{"voter_id": v, "error": "not found"} for v in unknown[:100]],
            )
        return await repo.add_members(conn, list_id, cmd.voter_ids)


async def members_page(
    pool: asyncpg.Pool, list_id: uuid.UUID, *, org: uuid.UUID, after: int, limit: int
) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        if await repo.get_list(conn, org, list_id) is None:
            raise NotFound(f"list {list_id} not found")
        return await repo.members_page(conn, list_id, after, limit)


async def target_lists(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, cmd: domain.TargetLists, *, org: uuid.UUID
) -> list[asyncpg.Record]:
    """A draft campaign will send to the voters of these lists (snapshotted when it starts)."""
    async with pool.acquire() as conn, conn.transaction():
        state = await campaigns_repo.lock_campaign_state(conn, campaign_id, org)
        if state is None:
            raise NotFound(f"campaign {campaign_id} not found")
        domain.ensure_can_target_lists(campaign_id, state)
        unknown = await repo.unknown_lists(conn, org, cmd.list_ids)
        if unknown:
            raise NotFound(f"list {unknown[0]} not found")
        await repo.target_lists(conn, campaign_id, cmd.list_ids)
        return await repo.lists_of_campaign(conn, campaign_id)


async def untarget_list(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, list_id: uuid.UUID, *, org: uuid.UUID
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        state = await campaigns_repo.lock_campaign_state(conn, campaign_id, org)
        if state is None:
            raise NotFound(f"campaign {campaign_id} not found")
        domain.ensure_can_target_lists(campaign_id, state)
        if not await repo.untarget_list(conn, campaign_id, list_id):
            raise NotFound(f"campaign {campaign_id} does not target list {list_id}")


async def lists_of_campaign(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, *, org: uuid.UUID
) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        if await campaigns_repo.get_campaign(conn, campaign_id, org) is None:
            raise NotFound(f"campaign {campaign_id} not found")
        return await repo.lists_of_campaign(conn, campaign_id)
