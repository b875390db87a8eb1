"""The use cases' unit of work over asyncpg: one pooled connection, one transaction, the
repositories (campaigns, voters, identity, content, opt-outs) and the outbox on it. The SQL
itself is in adapters/repositories.py, and still in services/scheduler/repo.py and
voters/repo.py."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from services.scheduler import domain, outbox, repo
from services.scheduler.adapters.repositories import (
    AsyncpgContent,
    AsyncpgIdentity,
    AsyncpgOptOuts,
)
from services.scheduler.campaigns.model import Campaign, Kind, State
from services.scheduler.campaigns.unit_of_work import Actor, OutboxRecord, RecipientsFit
from services.scheduler.domain import RecipientRow, Sender, SenderIn, TemplateIn, TemplateVersion
from services.scheduler.fanout import campaign_context, lock_key
from services.scheduler.voters import repo as voters_repo
from services.scheduler.voters.domain import ImportRow
from shared import wire
from shared.db import Conn


def _campaign(row: asyncpg.Record) -> Campaign:
    return Campaign(id=row["id"], kind=row["kind"], state=row["state"],
                    organisation_id=row["organisation_id"], scheduled_for=row["scheduled_for"],
                    channels=list(row["channels"]))


class AsyncpgCampaigns:
    """The campaign repository on the unit of work's connection."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def add_sender(self, sender: SenderIn, organisation_id: uuid.UUID) -> Sender:
        return await AsyncpgContent(self._conn).add_sender(sender, organisation_id)

    async def sender(self, sender_id: uuid.UUID, organisation_id: uuid.UUID) -> Sender | None:
        return await AsyncpgContent(self._conn).sender(sender_id, organisation_id)

    async def add_template(
        self, template: TemplateIn, organisation_id: uuid.UUID
    ) -> TemplateVersion:
        return await AsyncpgContent(self._conn).add_template(template, organisation_id)

    async def latest_template(
        self, template_id: uuid.UUID, organisation_id: uuid.UUID
    ) -> TemplateVersion | None:
        return await AsyncpgContent(self._conn).latest_template(template_id, organisation_id)

    async def add(
        self, *, name: str, kind: Kind, channels: Sequence[str], sender_id: uuid.UUID,
        template: TemplateVersion, organisation_id: uuid.UUID,
    ) -> uuid.UUID:
        return await repo.insert_campaign(
            self._conn, name=name, kind=kind, channels=channels, sender_id=sender_id,
            template=template, organisation_id=organisation_id)

    async def add_recipients(
        self, campaign_id: uuid.UUID, rows: Sequence[RecipientRow]
    ) -> int:
        return await repo.copy_recipients(self._conn, campaign_id, rows)

    async def voter(
        self, organisation_id: uuid.UUID, voter_id: int
    ) -> Mapping[str, Any] | None:
        row = await voters_repo.get_voter(self._conn, organisation_id, voter_id)
        # A Record reads as a mapping; asyncpg's stubs do not say so.
        return cast("Mapping[str, Any] | None", row)

    async def get(
        self, campaign_id: uuid.UUID, organisation_id: uuid.UUID | None = None,
        *, share: bool = False,
    ) -> Campaign | None:
        row = await repo.lock_campaign(self._conn, campaign_id, share=share,
                                       organisation_id=organisation_id)
        return _campaign(row) if row is not None else None

    async def claim_due(self, limit: int) -> list[Campaign]:
        return [_campaign(r) for r in await repo.claim_due(self._conn, limit)]

    async def recipients_fit(self, campaign_id: uuid.UUID) -> RecipientsFit:
        row = await repo.get_campaign(self._conn, campaign_id)
        assert row is not None
        template = domain.TemplateVersion(row["template_id"], row["template_version"],
                                          row["email_subject"], row["email_body"],
                                          row["sms_body"])
        recipients = int(row["recipients"]) + await repo.list_voter_count(self._conn,
                                                                          campaign_id)
        variables = template.variables(row["channels"])
        if recipients == 0:
            return RecipientsFit(recipients=0, variables=variables)
        count, ids = await repo.recipients_missing_variables(self._conn, campaign_id, variables)
        return RecipientsFit(recipients, variables, count, ids)

    async def snapshot_lists(self, campaign_id: uuid.UUID) -> int:
        return await voters_repo.snapshot_lists_into_recipients(self._conn, campaign_id)

    async def start_sending(self, campaign_id: uuid.UUID) -> int:
        return await repo.start_sending(self._conn, campaign_id)

    async def set_scheduled(self, campaign_id: uuid.UUID, at: datetime) -> None:
        await repo.set_scheduled(self._conn, campaign_id, at)

    async def set_draft(self, campaign_id: uuid.UUID) -> None:
        await repo.set_draft(self._conn, campaign_id)

    async def set_aborting(self, campaign_id: uuid.UUID) -> None:
        await repo.set_aborting(self._conn, campaign_id)

    async def set_abort_pending(self, campaign_id: uuid.UUID, pending: int) -> None:
        await repo.set_abort_pending(self._conn, campaign_id, pending)

    async def end(self, campaign_id: uuid.UUID) -> None:
        await repo.end_campaign(self._conn, campaign_id)

    async def finish(
        self, campaign_id: uuid.UUID, state: State, counts: dict[str, Any]
    ) -> None:
        await repo.finish(self._conn, campaign_id, state, counts)

    async def total(self, campaign_id: uuid.UUID) -> int:
        row = await repo.get_campaign(self._conn, campaign_id)
        assert row is not None
        return int(row["total"])

    async def clear_presses(self, campaign_id: uuid.UUID) -> None:
        await repo.clear_presses(self._conn, campaign_id)

    async def pressed_count(self, campaign_id: uuid.UUID) -> int:
        return await repo.pressed_count(self._conn, campaign_id)

    async def release_senders(self, campaign_ids: Sequence[uuid.UUID]) -> None:
        await repo.release_senders(self._conn, campaign_ids)

    async def claim_sender(
        self, user_id: uuid.UUID, campaign_id: uuid.UUID
    ) -> tuple[bool, uuid.UUID | None]:
        return await repo.claim_sender(self._conn, user_id, campaign_id)

    async def is_sender(self, user_id: uuid.UUID, campaign_id: uuid.UUID) -> bool:
        return await repo.is_sender(self._conn, user_id, campaign_id)

    async def press(
        self, campaign_id: uuid.UUID, recipient_id: int, user_id: uuid.UUID
    ) -> tuple[Mapping[str, Any] | None, bool]:
        row, first = await repo.press(self._conn, campaign_id, recipient_id, user_id)
        # A Record reads as a mapping; asyncpg's stubs do not say so.
        return cast("Mapping[str, Any] | None", row), first

    async def context(self, campaign_id: uuid.UUID) -> wire.CampaignContext:
        row = await repo.get_campaign(self._conn, campaign_id)
        assert row is not None
        return campaign_context(row)

    async def opted_out(
        self, organisation_id: uuid.UUID, addresses: Sequence[str]
    ) -> set[str]:
        return await AsyncpgOptOuts(self._conn).opted_out(organisation_id, addresses)

    async def wait_for_fanout_pass(self, campaign_id: uuid.UUID) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(campaign_id))

    async def first_time(self, event_id: uuid.UUID) -> bool:
        return await repo.first_time(self._conn, event_id)

    async def audit(
        self, campaign_id: uuid.UUID, action: str, actor: Actor, details: dict[str, Any]
    ) -> None:
        await repo.audit(self._conn, campaign_id, action, actor, details)


class AsyncpgVoters:
    """The voter repository on the unit of work's connection."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def list_exists(self, organisation_id: uuid.UUID, list_id: uuid.UUID) -> bool:
        return await voters_repo.get_list(self._conn, organisation_id, list_id) is not None

    async def upsert_import_batch(
        self, organisation_id: uuid.UUID, rows: Sequence[ImportRow], *,
        columns: Sequence[str], merge_attributes: bool, list_id: uuid.UUID | None,
    ) -> tuple[int, int, list[tuple[int, int]]]:
        return await voters_repo.upsert_import_batch(
            self._conn, organisation_id, rows, columns=columns,
            merge_attributes=merge_attributes, list_id=list_id)


class AsyncpgUnitOfWork:
    """`async with uow:` takes a pooled connection and begins a transaction; `commit()` commits
    it; leaving without a commit rolls back. Reusable: each `async with` is a new one."""

    campaigns: AsyncpgCampaigns
    voters: AsyncpgVoters
    identity: AsyncpgIdentity
    content: AsyncpgContent
    opt_outs: AsyncpgOptOuts

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: PoolConnectionProxy | None = None
        self._transaction: Transaction | None = None
        self._committed = False

    async def __aenter__(self) -> AsyncpgUnitOfWork:
        conn = await self._pool.acquire()
        try:
            transaction = conn.transaction()
            await transaction.start()
        except BaseException:
            await self._pool.release(conn)
            raise
        self._conn, self._transaction, self._committed = conn, transaction, False
        self.campaigns = AsyncpgCampaigns(conn)
        self.voters = AsyncpgVoters(conn)
        self.identity = AsyncpgIdentity(conn)
        self.content = AsyncpgContent(conn)
        self.opt_outs = AsyncpgOptOuts(conn)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, transaction = self._conn, self._transaction
        self._conn = self._transaction = None
        assert conn is not None and transaction is not None
        try:
            if not self._committed:
                await transaction.rollback()
        finally:
            await self._pool.release(conn)

    def _connection(self) -> Conn:
        if self._conn is None:
            raise RuntimeError("the unit of work is used inside `async with uow:`")
        return self._conn

    async def add_to_outbox(self, records: Sequence[OutboxRecord]) -> int | None:
        return await outbox.add(self._connection(), records)

    async def relayed(self, outbox_id: int | None) -> bool:
        return not await self._connection().fetchval(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE id = $1)", outbox_id)

    async def commit(self) -> None:
        assert self._transaction is not None
        await self._transaction.commit()
        self._committed = True
