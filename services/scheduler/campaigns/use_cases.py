"""Campaign use cases: a command in, the campaign model decides, the unit of work stores the
change and its events in one transaction, the fan-out is kicked once it committed.

No SQL and no Kafka here: storage is the unit of work's (unit_of_work.py), the rules are the
model's (model.py). Each use case opens the unit of work, and commits it only if everything
it did is to stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from services.scheduler import domain, outbox
from services.scheduler.campaigns.aborts import AbortAcks
from services.scheduler.campaigns.model import (
    Campaign,
    CampaignEvent,
    Ended,
    Finished,
    Kind,
    SendingStarted,
    fans_out,
)
from services.scheduler.campaigns.unit_of_work import FanOut, UnitOfWork
from services.scheduler.errors import Busy, Conflict, Invalid, NotFound
from services.scheduler.recipients_csv import RecipientsCsv
from shared import wire
from shared.auth import Principal
from shared.events import (
    CampaignAborted,
    CampaignCanceled,
    CampaignCompleted,
    CampaignScheduled,
    Channel,
)

log = logging.getLogger(__name__)

ListDispatchers = Callable[[], Awaitable[set[str]]]
# Recipients per COPY while a CSV streams in.
CSV_BATCH_ROWS = 5000


async def _campaign(
    uow: UnitOfWork, campaign_id: uuid.UUID, actor: Principal | None, *, share: bool = False
) -> Campaign:
    """The campaign, locked; 404 unless it is the acting user's organisation's (`actor` None:
    the scheduler itself acts)."""
    org = actor.organisation_id if actor is not None else None
    campaign = await uow.campaigns.get(campaign_id, org, share=share)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


async def ensure_recipients_fit(uow: UnitOfWork, campaign_id: uuid.UUID) -> int:
    """Before anything is sent: recipients exist and each can fill the template. Voters of
    target lists count too (checked against the template once copied into recipients)."""
    fit = await uow.campaigns.recipients_fit(campaign_id)
    if fit.recipients == 0:
        raise Invalid(f"campaign {campaign_id} has no recipients")
    if fit.missing:
        raise domain.missing_variables_error(fit.missing, fit.missing_ids, fit.variables)
    return fit.recipients


async def _to_outbox(uow: UnitOfWork, events: Iterable[CampaignEvent]) -> int | None:
    """The transition's lifecycle events, to be published once the unit of work commits."""
    lifecycle = (CampaignScheduled, CampaignCanceled, CampaignAborted)
    return await uow.add_to_outbox(
        [outbox.lifecycle(e) for e in events if isinstance(e, lifecycle)])


def _kick(fanout: FanOut, events: Sequence[CampaignEvent]) -> None:
    """Once committed: a fan-out pass for each campaign an event calls for (if this process
    dies first, the fan-out scanner finds the campaign)."""
    for campaign_id in dict.fromkeys(e.campaign_id for e in events if fans_out(e)):
        fanout.kick(campaign_id)


# --- before it starts ---------------------------------------------------------------------------

async def create_campaign(
    uow: UnitOfWork, cmd: domain.CreateCampaign, actor: Principal, kind: Kind | None = None
) -> uuid.UUID:
    """A draft campaign of the actor's organisation, with one of its senders and templates
    (another organisation's are "not found") or inline ones."""
    org = actor.organisation_id
    async with uow:
        if cmd.sender is not None:
            sender = await uow.campaigns.add_sender(cmd.sender, org)
        else:
            assert cmd.sender_id is not None
            found = await uow.campaigns.sender(cmd.sender_id, org)
            if found is None:
                raise Invalid(f"sender {cmd.sender_id} does not exist")
            sender = found
        inline = cmd.inline_template()
        if inline is not None:
            template = await uow.campaigns.add_template(inline, org)
        else:
            assert cmd.template_id is not None
            latest = await uow.campaigns.latest_template(cmd.template_id, org)
            if latest is None:
                raise Invalid(f"template {cmd.template_id} does not exist")
            template = latest
        domain.ensure_fits_channels(cmd.channels, sender, template)
        campaign_id = await uow.campaigns.add(
            name=cmd.name, kind=Kind(kind or cmd.kind), channels=cmd.channels,
            sender_id=sender.id, template=template, organisation_id=org,
        )
        await uow.campaigns.audit(campaign_id, "created", actor,
                                  {"channels": cmd.channels, "template_version": template.version})
        await uow.commit()
    return campaign_id


async def add_recipients(
    uow: UnitOfWork,
    campaign_id: uuid.UUID,
    recipients: Sequence[domain.Recipient],
    region: str,
    actor: Principal,
    voter_id: int | None = None,
) -> int:
    rows = [domain.to_row(r, region, voter_id) for r in recipients]
    async with uow:
        campaign = await _campaign(uow, campaign_id, actor)
        campaign.ensure_recipients_can_change()
        added = await uow.campaigns.add_recipients(campaign_id, rows)
        await uow.commit()
    return added


async def add_recipients_csv(
    uow: UnitOfWork,
    campaign_id: uuid.UUID,
    body: AsyncIterator[bytes],
    region: str,
    actor: Principal,
    batch_rows: int = CSV_BATCH_ROWS,
) -> domain.CsvAdded:
    """Stream a recipients CSV into a draft campaign: parsed as it arrives (off the event
    loop) and copied in batches, so memory stays flat whatever the file's size. Good rows are
    kept, bad rows refused and listed by line, as voters.csv does. One unit of work (the
    campaign stays locked while the file arrives, so it cannot start with half a file): the
    rows are added once the whole file was read, or none if the upload breaks off. A header
    that cannot be read, or a file without one good row, raises `Invalid` (nothing added)."""
    parser = RecipientsCsv(region)
    added = 0
    async with uow:
        campaign = await _campaign(uow, campaign_id, actor)
        campaign.ensure_recipients_can_change()
        pending: list[domain.RecipientRow] = []
        async for chunk in body:
            pending += await asyncio.to_thread(parser.feed, chunk)
            if len(pending) >= batch_rows:
                added += await uow.campaigns.add_recipients(campaign_id, pending)
                pending = []
        pending += await asyncio.to_thread(parser.close)
        added += await uow.campaigns.add_recipients(campaign_id, pending) if pending else 0
        if not added:
            raise Invalid(
                f"no recipients added: {parser.rejected} rows refused (read as "
                f"{parser.detected['encoding']}, {parser.detected['delimiter']}-separated)"
                if parser.rejected else "CSV has a header but no recipients",
                parser.errors)
        await uow.commit()
    return domain.CsvAdded(added=added, rejected=parser.rejected,
                           errors=[domain.RowError.model_validate(e) for e in parser.errors],
                           detected=domain.Detected.model_validate(parser.detected))


async def send_to_voter(
    uow: UnitOfWork, fanout: FanOut, voter_id: int, cmd: domain.SendToVoter,
    actor: Principal, region: str,
) -> uuid.UUID:
    """The "send email / SMS" action of a voter's page: an individual send to the voter
    (not to one who opted out)."""
    async with uow:
        voter = await uow.campaigns.voter(actor.organisation_id, voter_id)
    if voter is None:
        raise NotFound(f"voter {voter_id} not found")
    if voter["opted_out"]:
        raise Invalid(f"voter {voter_id} opted out of messages; nothing was sent")
    name = " ".join(n for n in (voter["first_name"], voter["last_name"]) if n) or str(voter_id)
    individual = domain.SendIndividually(
        recipient=domain.voter_recipient(voter), channels=cmd.channels,
        sender_id=cmd.sender_id, template_id=cmd.template_id, name=f"To {name}",
    )
    return await send_individually(uow, fanout, individual, actor, region, voter_id)


async def send_individually(
    uow: UnitOfWork, fanout: FanOut, cmd: domain.SendIndividually, actor: Principal,
    region: str, voter_id: int | None = None,
) -> uuid.UUID:
    """One recipient, email and/or SMS: a one-recipient campaign, sent out now."""
    create = domain.CreateCampaign(
        name=cmd.name or "Individual send", channels=cmd.channels, sender_id=cmd.sender_id,
        template_id=cmd.template_id,
    )
    campaign_id = await create_campaign(uow, create, actor, kind=Kind.INDIVIDUAL)
    await add_recipients(uow, campaign_id, [cmd.recipient], region, actor, voter_id)
    await send_now(uow, fanout, campaign_id, actor)
    return campaign_id


async def send_now(
    uow: UnitOfWork, fanout: FanOut, campaign_id: uuid.UUID, actor: Principal
) -> None:
    async with uow:
        campaign = await _campaign(uow, campaign_id, actor)
        events = campaign.send_now()
        # The campaign's list voters as they are now: later edits do not change this send-out.
        await uow.campaigns.snapshot_lists(campaign_id)
        await ensure_recipients_fit(uow, campaign_id)
        total = await uow.campaigns.start_sending(campaign_id)
        await uow.campaigns.audit(campaign_id, "sent out now", actor, {"total": total})
        await uow.commit()
    _kick(fanout, events)


async def schedule(
    uow: UnitOfWork, campaign_id: uuid.UUID, at: datetime, actor: Principal
) -> None:
    at = domain.ensure_schedulable_time(at)
    async with uow:
        campaign = await _campaign(uow, campaign_id, actor)
        events = campaign.schedule(at)
        recipients = await ensure_recipients_fit(uow, campaign_id)
        await uow.campaigns.set_scheduled(campaign_id, at)
        await uow.campaigns.audit(campaign_id, "scheduled", actor,
                                  {"scheduled_for": at.isoformat(), "recipients": recipients})
        await _to_outbox(uow, events)
        await uow.commit()


async def cancel(uow: UnitOfWork, campaign_id: uuid.UUID, actor: Principal) -> None:
    async with uow:
        campaign = await _campaign(uow, campaign_id, actor)
        events = campaign.cancel_schedule()
        await uow.campaigns.set_draft(campaign_id)
        # Canceled before its time, a campaign sends to nobody: SENDs queued so far are void.
        await uow.campaigns.clear_presses(campaign_id)
        await uow.campaigns.release_senders([campaign_id])
        await uow.campaigns.audit(campaign_id, "canceled", actor, {})
        await _to_outbox(uow, events)
        await uow.commit()


async def fire_due(uow: UnitOfWork, fanout: FanOut, limit: int = 50) -> list[uuid.UUID]:
    """Start every scheduled campaign whose time has come. Safe with many replicas: a due
    campaign is locked by the one that claims it, and the state change makes it fire once."""
    events: list[CampaignEvent] = []
    async with uow:
        due = await uow.campaigns.claim_due(limit)
        for campaign in due:
            pressed = await uow.campaigns.pressed_count(campaign.id) if campaign.is_p2p else 0
            fired = campaign.fire_due(pressed)
            await uow.campaigns.snapshot_lists(campaign.id)
            total = await uow.campaigns.start_sending(campaign.id)
            await uow.campaigns.audit(campaign.id, "sent on schedule", "scheduler",
                                      {"total": total})
            if any(isinstance(e, Ended) for e in fired):
                await uow.campaigns.end(campaign.id)
                await uow.campaigns.release_senders([campaign.id])
                await uow.campaigns.audit(campaign.id, "ended", "scheduler", {"pressed": 0})
            events += fired
        await uow.commit()
    _kick(fanout, events)
    return [c.id for c in due]


# --- while it sends -----------------------------------------------------------------------------

async def abort(
    uow: UnitOfWork,
    campaign_id: uuid.UUID,
    actor: Principal,
    *,
    acks: AbortAcks,
    list_dispatchers: ListDispatchers,
    wait_seconds: float,
) -> dict[str, Any]:
    """Stop a send-out: answer once the dispatchers confirmed that no provider call for the
    campaign will start any more (or the wait ran out), with how many messages were still
    pending. Acknowledged only if at least one dispatcher answered and every live member of
    their group did."""
    with acks.expecting(campaign_id) as wait:
        async with uow:
            campaign = await _campaign(uow, campaign_id, actor)
            events = campaign.abort()
            await uow.campaigns.set_aborting(campaign_id)
            outbox_id = await _to_outbox(uow, events)
            await uow.commit()
        # Committed: the relay publishes the abort now, and dispatchers answer it.
        try:
            members = await list_dispatchers()
        except Exception:
            # Committed already: answer with what the dispatchers say, without the roll call.
            log.exception("could not list the dispatchers' group members",
                          extra={"campaign_id": str(campaign_id)})
            members = set()
        wait.expect(members)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait.done.wait(), wait_seconds)
    async with uow:
        result = domain.abort_answer(
            total=await uow.campaigns.total(campaign_id), members=wait.expected or set(),
            acks=wait.acks, relayed=await uow.relayed(outbox_id), waited_seconds=wait_seconds,
        )
        if result["pending"] is not None:
            await uow.campaigns.set_abort_pending(campaign_id, result["pending"])
        await uow.campaigns.audit(campaign_id, "aborted", actor, result)
        await uow.commit()
    if not result["acknowledged"]:
        # `message` would clash with the log record's own.
        log.error("abort not acknowledged by every dispatcher",
                  extra={"campaign_id": str(campaign_id), "answer": result})
    return result


async def apply_completed(uow: UnitOfWork, event: CampaignCompleted) -> None:
    """The tracker says nothing is pending: the campaign is completed (or aborted)."""
    counts = {"completed": event.completed, "failed": event.failed, "skipped": event.skipped}
    async with uow:
        if not await uow.campaigns.first_time(event.event_id):
            return
        campaign = await uow.campaigns.get(event.campaign_id)
        for finished in campaign.complete() if campaign is not None else []:
            if isinstance(finished, Finished):
                await uow.campaigns.finish(finished.campaign_id, finished.state, counts)
                await uow.campaigns.release_senders([finished.campaign_id])
                await uow.campaigns.audit(finished.campaign_id, finished.state, "tracker",
                                          counts)
        # Committed whatever the state: the event is recorded as applied.
        await uow.commit()


# --- peer to peer -------------------------------------------------------------------------------

async def start_sending(
    uow: UnitOfWork, fanout: FanOut, campaign_id: uuid.UUID, principal: Principal
) -> str:
    """The user begins sending from this campaign (a draft starts sending now; a scheduled
    one stays scheduled, and SEND queues until its time). One campaign at a time per user:
    the database decides (`Busy` names the campaign the user is sending already)."""
    async with uow:
        campaign = await _campaign(uow, campaign_id, principal)
        events = campaign.start_sending()
        claimed, active = await uow.campaigns.claim_sender(principal.user_id, campaign_id)
        if not claimed:
            assert active is not None
            raise Busy(principal.name, active)
        if any(isinstance(e, SendingStarted) for e in events):
            await ensure_recipients_fit(uow, campaign_id)
            await uow.campaigns.start_sending(campaign_id)
        await uow.campaigns.audit(campaign_id, "started sending", principal, {})
        await uow.commit()
    _kick(fanout, events)
    return campaign.state


async def _send_pressed(
    uow: UnitOfWork,
    campaign_id: uuid.UUID,
    campaign: Campaign,
    recipient: Mapping[str, Any],
    batch_size: int,
) -> None:
    """The pressed recipient's send requests into the outbox, with the press."""
    context = await uow.campaigns.context(campaign_id)
    addresses = [a for a in (recipient["email"], recipient["phone"]) if a]
    assert campaign.organisation_id is not None
    suppressed = await uow.campaigns.opted_out(campaign.organisation_id, addresses)
    # With the press: published once it commits (the request's id is stable,
    # dispatchers dedupe a repeat). The record carries the campaign's templates and
    # sender, so it goes out without waiting for anything else.
    requests = [
        domain.send_requested_for(campaign_id=campaign_id, channel=cast(Channel, channel),
                                  template=context.template, row=recipient,
                                  opted_out=suppressed)
        for channel in campaign.channels
    ]
    await uow.add_to_outbox(outbox.send_requests(
        wire.request_records(requests, batch_size, context)))


async def press_send(
    uow: UnitOfWork,
    campaign_id: uuid.UUID,
    recipient_id: int,
    principal: Principal,
    batch_size: int,
) -> dict[str, Any]:
    """SEND for one recipient: sent now (its requests through the outbox, with the press), or
    queued for the scheduled time."""
    async with uow:
        # Shared: presses run side by side, but not beside the schedule firing or an end.
        campaign = await _campaign(uow, campaign_id, principal, share=True)
        goes_now = campaign.press_send()
        if not await uow.campaigns.is_sender(principal.user_id, campaign_id):
            raise Conflict(f"start sending campaign {campaign_id} before pressing SEND")
        recipient, first = await uow.campaigns.press(campaign_id, recipient_id,
                                                     principal.user_id)
        if recipient is None:
            raise NotFound(f"recipient {recipient_id} not found in campaign {campaign_id}")
        if not goes_now:
            await uow.commit()
            assert campaign.scheduled_for is not None
            return {"recipient_id": recipient_id, "status": "queued",
                    "goes_at": campaign.scheduled_for.isoformat()}
        if first:
            await _send_pressed(uow, campaign_id, campaign, recipient, batch_size)
        await uow.commit()
    return {"recipient_id": recipient_id, "status": "sent" if first else "already sent"}


async def end(
    uow: UnitOfWork, fanout: FanOut, campaign_id: uuid.UUID, principal: Principal
) -> None:
    """End Campaign: completed; recipients already SENT still go, nobody else is messaged."""
    async with uow:
        # Before the row lock: a fan-out pass in flight updates the row, and must not wait on
        # us; the last pass starts after this ends.
        await uow.campaigns.wait_for_fanout_pass(campaign_id)
        campaign = await _campaign(uow, campaign_id, principal)
        events = campaign.end()
        if any(isinstance(e, Ended) and e.never_started for e in events):
            # Never started: nobody is messaged, not even those queued with SEND.
            await uow.campaigns.clear_presses(campaign_id)
            await uow.campaigns.start_sending(campaign_id)
        await uow.campaigns.end(campaign_id)
        await uow.campaigns.release_senders([campaign_id])
        await uow.campaigns.audit(campaign_id, "ended", principal,
                                  {"pressed": await uow.campaigns.pressed_count(campaign_id)})
        await uow.commit()
    _kick(fanout, events)

