"""Fan-out: turn a sending campaign's recipients into `send-requested` events.

Pages through recipients by id (keyset) and publishes each page without awaiting each record,
then stores the page's last id as a checkpoint. After a crash the fan-out resumes from the
checkpoint; a page published twice carries the same event ids, so consumers drop the copies.
A campaign's fan-out is driven by one process at a time: whoever holds its advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from services.scheduler import domain, repo
from services.scheduler.adapters.repositories import AsyncpgOptOuts
from services.scheduler.campaigns.model import Campaign
from shared import wire
from shared.db import Conn
from shared.events import CampaignStarted, Channel, ChannelTemplate, SenderInfo, TemplateRef

log = logging.getLogger(__name__)

# One campaign's requests, with the campaign's context for every record to carry.
PublishRequests = Callable[[wire.CampaignContext, list[wire.SendRequested]], Awaitable[None]]
PublishStarted = Callable[[CampaignStarted], Awaitable[None]]


def lock_key(campaign_id: uuid.UUID) -> int:
    return int.from_bytes(hashlib.sha256(b"fanout:" + campaign_id.bytes).digest()[:8], "big",
                          signed=True)


def started_event(row: asyncpg.Record) -> CampaignStarted:
    channels = row["channels"]
    templates: dict[Channel, ChannelTemplate] = {}
    if "email" in channels:
        templates["email"] = ChannelTemplate(body=row["email_body"], subject=row["email_subject"])
    if "sms" in channels:
        templates["sms"] = ChannelTemplate(body=row["sms_body"])
    per_channel = row["total"] // len(channels)
    return CampaignStarted(
        event_id=row["started_event_id"],
        campaign_id=row["id"],
        organisation_id=row["organisation_id"],
        total=row["total"],
        totals=dict.fromkeys(channels, per_channel),
        template=TemplateRef(id=row["template_id"], version=row["template_version"]),
        templates=templates,
        sender=SenderInfo(
            name=row["sender_name"], email=row["sender_email"], sms_sender_id=row["sender_sms_id"]
        ),
    )


def campaign_context(row: asyncpg.Record) -> wire.CampaignContext:
    """The templates and sender every send request of the campaign carries: what its
    `started` event says (`started_event(row).context()`), as the hot path encodes it."""
    channels = row["channels"]
    templates: dict[Channel, wire.ChannelTemplate] = {}
    if "email" in channels:
        templates["email"] = wire.ChannelTemplate(body=row["email_body"],
                                                  subject=row["email_subject"])
    if "sms" in channels:
        templates["sms"] = wire.ChannelTemplate(body=row["sms_body"])
    return wire.CampaignContext(
        organisation_id=row["organisation_id"],
        template=wire.TemplateRef(id=row["template_id"], version=row["template_version"]),
        templates=templates,
        sender=wire.SenderInfo(name=row["sender_name"], email=row["sender_email"],
                               sms_sender_id=row["sender_sms_id"]),
    )


async def _publish_pages(
    conn: Conn,
    campaign_id: uuid.UUID,
    row: asyncpg.Record,
    campaign: Campaign,
    *,
    publish_requests: PublishRequests,
    page_size: int,
) -> int:
    """Publish the campaign's send requests page by page from its checkpoint, saving the
    checkpoint after each page; the number of recipients published."""
    context = campaign_context(row)
    pressed, skip_reason = campaign.fan_out_selection()
    after_id: int = row["fanout_after_id"]
    published = 0
    while True:
        page = await repo.recipients_page_where(
            conn, campaign_id, after_id, page_size, pressed=pressed
        )
        if page:
            await _publish_page(
                conn, campaign_id, row, context, page, skip_reason, publish_requests
            )
            after_id = page[-1]["id"]
            published += len(page)
        done = len(page) < page_size
        await repo.save_fanout_checkpoint(conn, campaign_id, after_id, done)
        if done:
            return published


async def _publish_page(
    conn: Conn,
    campaign_id: uuid.UUID,
    row: asyncpg.Record,
    context: wire.CampaignContext,
    page: list[asyncpg.Record],
    skip_reason: str | None,
    publish_requests: PublishRequests,
) -> None:
    addresses = [a for r in page for a in (r["email"], r["phone"]) if a]
    suppressed = await AsyncpgOptOuts(conn).opted_out(row["organisation_id"], addresses)
    now = datetime.now(UTC)
    template = context.template
    await publish_requests(
        context,
        [
            domain.send_requested_for(
                campaign_id=campaign_id, channel=channel, template=template,
                row=r, opted_out=suppressed, skip_reason=skip_reason, now=now,
            )
            for r in page
            for channel in row["channels"]
        ]
    )


async def fan_out(
    pool: asyncpg.Pool,
    campaign_id: uuid.UUID,
    *,
    publish_started: PublishStarted,
    publish_requests: PublishRequests,
    page_size: int,
) -> bool:
    """Drive one campaign's fan-out to its end. False if another process is driving it."""
    # One connection for the lock and the queries: a fan-out never waits on the pool while
    # holding a connection (many fan-outs at once would otherwise starve each other).
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(campaign_id)):
            return False
        try:
            row = await repo.get_campaign(conn, campaign_id)
            if row is None or row["fanout_done"]:
                return True
            campaign = Campaign(id=campaign_id, kind=row["kind"], state=row["state"])
            if not campaign.fans_out():
                return True
            # Re-published on resume on purpose: same event id, consumers apply it once.
            await publish_started(started_event(row))
            published = await _publish_pages(
                conn, campaign_id, row, campaign,
                publish_requests=publish_requests, page_size=page_size,
            )
            log.info("fan-out finished",
                     extra={"campaign_id": str(campaign_id), "published": published})
            return True
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key(campaign_id))


class FanoutRunner:
    """Runs fan-outs as supervised background tasks and picks up orphaned ones periodically."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        publish_started: PublishStarted,
        publish_requests: PublishRequests,
        page_size: int,
        rescan_seconds: float,
        max_parallel: int = 4,
    ) -> None:
        self._pool = pool
        self._publish_started = publish_started
        self._publish_requests = publish_requests
        self._page_size = page_size
        self._rescan_seconds = rescan_seconds
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Fan-outs at once, each holding one pooled connection: leaves the pool room for the
        # HTTP API.
        self._slots = asyncio.Semaphore(max_parallel)
        self._scanner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._scanner = asyncio.create_task(self._scan_forever(), name="fanout-scanner")

    async def stop(self) -> None:
        tasks = [*self._running.values(), *([self._scanner] if self._scanner else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def kick(self, campaign_id: uuid.UUID) -> None:
        if campaign_id in self._running:
            return
        task = asyncio.create_task(self._drive(campaign_id), name=f"fanout-{campaign_id}")
        self._running[campaign_id] = task
        task.add_done_callback(lambda _t: self._running.pop(campaign_id, None))

    async def _drive(self, campaign_id: uuid.UUID) -> None:
        try:
            async with self._slots:
                await fan_out(
                    self._pool, campaign_id,
                    publish_started=self._publish_started,
                    publish_requests=self._publish_requests,
                    page_size=self._page_size,
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            # Nothing is lost: the checkpoint is in the database and the scanner retries.
            log.exception("fan-out interrupted; will resume",
                          extra={"campaign_id": str(campaign_id)})

    async def _scan_forever(self) -> None:
        while True:
            try:
                async with self._pool.acquire() as conn:
                    for campaign_id in await repo.unfinished_fanouts(conn):
                        self.kick(campaign_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fan-out scan failed; retrying")
            await asyncio.sleep(self._rescan_seconds)
