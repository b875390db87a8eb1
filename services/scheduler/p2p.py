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

from services.scheduler import domain, outbox, repo
from services.scheduler.auth import Principal
from services.scheduler.fanout import FanoutRunner, campaign_context, lock_key
from services.scheduler.service import _ensure_recipients_fit
from shared import wire
from shared.db import Conn
from shared.events import AddressOptedOut


class Busy(domain.Conflict):
    # None: the user's other campaign ended between the claim and the look-up of it.
    def __init__(self, user: str, campaign_id: uuid.UUID | None) -> None:
        super().__init__(f"user {user} is already sending campaign {campaign_id}; end it first")
        self.active_campaign = campaign_id


async def _campaign(
    conn: Conn, campaign_id: uuid.UUID, principal: Principal, *, share: bool
) -> asyncpg.Record:
    row = await repo.lock_campaign(conn, campaign_id, share=share)
    # Another organisation's campaign does not exist, as far as this user can tell.
    if row is None or row["organisation_id"] != principal.organisation_id:
        raise domain.NotFound(f"campaign {campaign_id} not found")
    domain.ensure_p2p(campaign_id, row["kind"])
    return row


async def start_sending(
    pool: asyncpg.Pool, fanout: FanoutRunner, campaign_id: uuid.UUID, principal: Principal
) -> str:
    """The user begins sending from this campaign (a draft starts sending now; a scheduled
    one stays scheduled, and SEND queues until its time)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _campaign(conn, campaign_id, principal, share=False)
        if row["state"] not in ("draft", "scheduled", "sending"):
            raise domain.InvalidTransition(campaign_id, row["state"], "start sending")
        claimed, active = await repo.claim_sender(conn, principal.user_id, campaign_id)
        if not claimed:
            raise Busy(principal.name, active)
        state: str = row["state"]
        if state == "draft":
            await _ensure_recipients_fit(conn, campaign_id)
            await repo.start_sending(conn, campaign_id)
            state = "sending"
        await repo.audit(conn, campaign_id, "started sending", principal, {})
    if state == "sending":
        fanout.kick(campaign_id)
    return state


async def press_send(
    pool: asyncpg.Pool,
    campaign_id: uuid.UUID,
    recipient_id: int,
    principal: Principal,
    batch_size: int,
) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.transaction():
        # FOR SHARE: presses run side by side, but not beside the schedule firing or an end.
        row = await _campaign(conn, campaign_id, principal, share=True)
        if row["state"] not in ("scheduled", "sending"):
            raise domain.InvalidTransition(campaign_id, row["state"], "press SEND")
        if not await repo.is_sender(conn, principal.user_id, campaign_id):
            raise domain.Conflict(f"start sending campaign {campaign_id} before pressing SEND")
        recipient, first = await repo.press(conn, campaign_id, recipient_id, principal.user_id)
        if recipient is None:
            raise domain.NotFound(f"recipient {recipient_id} not found in campaign {campaign_id}")
        if row["state"] == "scheduled":
            return {"recipient_id": recipient_id, "status": "queued",
                    "goes_at": row["scheduled_for"].isoformat()}
        if first:
            campaign = await repo.get_campaign(conn, campaign_id)
            assert campaign is not None
            context = campaign_context(campaign)
            addresses = [a for a in (recipient["email"], recipient["phone"]) if a]
            suppressed = await repo.opted_out(conn, row["organisation_id"], addresses)
            # With the press, in its transaction: published once it commits (the request's id
            # is stable, dispatchers dedupe a repeat). The record carries the campaign's
            # templates and sender, so it goes out without waiting for anything else.
            requests = [
                domain.send_requested_for(campaign_id=campaign_id, channel=channel,
                                          template=context.template, row=recipient,
                                          opted_out=suppressed)
                for channel in row["channels"]
            ]
            await outbox.add(conn, outbox.send_requests(
                wire.request_records(requests, batch_size, context)))
        return {"recipient_id": recipient_id, "status": "sent" if first else "already sent"}


async def end(
    pool: asyncpg.Pool,
    fanout: FanoutRunner,
    campaign_id: uuid.UUID,
    principal: Principal,
    cmd: domain.EndCampaign,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # Wait for a fan-out pass in flight, so that the last pass starts after this ends.
        # Before the row lock: a pass in flight updates the row, and must not wait on us.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(campaign_id))
        row = await _campaign(conn, campaign_id, principal, share=False)
        if row["state"] not in ("draft", "scheduled", "sending"):
            raise domain.InvalidTransition(campaign_id, row["state"], "end the campaign")
        if row["state"] in ("draft", "scheduled"):
            # Never started: nobody is messaged, not even those queued with SEND.
            await repo.clear_presses(conn, campaign_id)
            await repo.start_sending(conn, campaign_id)
        await repo.end_campaign(conn, campaign_id)
        await repo.release_senders(conn, [campaign_id])
        await repo.audit(conn, campaign_id, "ended", principal,
                         {"pressed": await repo.pressed_count(conn, campaign_id)})
    fanout.kick(campaign_id)


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
