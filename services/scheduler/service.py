"""Scheduler use cases: each operator command as one function, its dependencies passed in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.scheduler import auth, domain, outbox, repo
from services.scheduler.fanout import FanoutRunner
from services.scheduler.recipients_csv import RecipientsCsv
from services.scheduler.voters import repo as voters_repo
from shared.auth import Principal
from shared.db import Conn
from shared.events import (
    AbortAcknowledged,
    ApiTokenIssued,
    ApiTokenRevoked,
    CampaignAborted,
    CampaignCanceled,
    CampaignCompleted,
    CampaignScheduled,
)

log = logging.getLogger(__name__)
# Recipients per COPY while a CSV streams in.
CSV_BATCH_ROWS = 5000

PublishIdentity = Callable[[list[ApiTokenIssued | ApiTokenRevoked]], Awaitable[None]]
ListDispatchers = Callable[[], Awaitable[set[str]]]


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


async def _template(conn: Conn, campaign_id: uuid.UUID) -> tuple[Any, Any]:
    row = await repo.get_campaign(conn, campaign_id)
    assert row is not None
    template = domain.TemplateVersion(row["template_id"], row["template_version"],
                                      row["email_subject"], row["email_body"], row["sms_body"])
    return row, template


async def _ensure_recipients_fit(conn: Conn, campaign_id: uuid.UUID) -> int:
    """Before anything is sent: recipients exist and each can fill the template.

    Voters of target lists count too; they are checked against the template once copied into
    recipients (at send-now, in the same transaction; for a schedule, when it fires).
    """
    row, template = await _template(conn, campaign_id)
    recipients = int(row["recipients"]) + await repo.list_voter_count(conn, campaign_id)
    if recipients == 0:
        raise domain.Invalid(f"campaign {campaign_id} has no recipients")
    variables = template.variables(row["channels"])
    count, ids = await repo.recipients_missing_variables(conn, campaign_id, variables)
    if count:
        raise domain.missing_variables_error(count, ids, variables)
    return recipients


async def create_campaign(
    pool: asyncpg.Pool,
    cmd: domain.CreateCampaign,
    actor: Principal,
    kind: str | None = None,
) -> uuid.UUID:
    """The campaign belongs to the actor's organisation and may use only its senders and
    templates (another organisation's are "not found")."""
    org = actor.organisation_id
    async with pool.acquire() as conn, conn.transaction():
        if cmd.sender is not None:
            sender = await repo.insert_sender(conn, cmd.sender, org)
        else:
            assert cmd.sender_id is not None
            found = await repo.get_sender(conn, cmd.sender_id, org)
            if found is None:
                raise domain.Invalid(f"sender {cmd.sender_id} does not exist")
            sender = found
        inline = cmd.inline_template()
        if inline is not None:
            template = await repo.insert_template(conn, inline, org)
        else:
            assert cmd.template_id is not None
            latest = await repo.latest_template(conn, cmd.template_id, org)
            if latest is None:
                raise domain.Invalid(f"template {cmd.template_id} does not exist")
            template = latest
        domain.ensure_fits_channels(cmd.channels, sender, template)
        campaign_id = await repo.insert_campaign(
            conn, name=cmd.name, kind=kind or cmd.kind, channels=cmd.channels,
            sender_id=sender.id, template=template, organisation_id=org,
        )
        await repo.audit(conn, campaign_id, "created", actor,
                         {"channels": cmd.channels, "template_version": template.version})
    return campaign_id


async def add_recipients(
    pool: asyncpg.Pool,
    campaign_id: uuid.UUID,
    recipients: list[domain.Recipient],
    region: str,
    actor: Principal,
    voter_id: int | None = None,
) -> int:
    rows = [domain.to_row(r, region, voter_id) for r in recipients]
    async with pool.acquire() as conn, conn.transaction():
        state = await _locked_state(conn, campaign_id, actor)
        domain.ensure_can_add_recipients(campaign_id, state)
        return await repo.copy_recipients(conn, campaign_id, rows)


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


async def send_now(
    pool: asyncpg.Pool, fanout: FanoutRunner, campaign_id: uuid.UUID, actor: Principal
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        domain.ensure_can_send_now(campaign_id, await _locked_state(conn, campaign_id, actor))
        # The campaign's list voters as they are now: later edits do not change this send-out.
        await voters_repo.snapshot_lists_into_recipients(conn, campaign_id)
        await _ensure_recipients_fit(conn, campaign_id)
        total = await repo.start_sending(conn, campaign_id)
        await repo.audit(conn, campaign_id, "sent out now", actor, {"total": total})
    # Committed first, then fanned out: if this process dies now, the scanner resumes it.
    fanout.kick(campaign_id)


async def schedule(
    pool: asyncpg.Pool, campaign_id: uuid.UUID, at: Any, actor: Principal
) -> None:
    at = domain.ensure_schedulable_time(at)
    async with pool.acquire() as conn, conn.transaction():
        state = await _locked_state(conn, campaign_id, actor)
        domain.ensure_allowed(campaign_id, state, "schedule")
        recipients = await _ensure_recipients_fit(conn, campaign_id)
        await repo.set_scheduled(conn, campaign_id, at)
        await repo.audit(conn, campaign_id, "scheduled", actor,
                         {"scheduled_for": at.isoformat(), "recipients": recipients})
        await outbox.add(conn, [outbox.lifecycle(
            CampaignScheduled(campaign_id=campaign_id, scheduled_for=at))])


async def cancel(pool: asyncpg.Pool, campaign_id: uuid.UUID, actor: Principal) -> None:
    async with pool.acquire() as conn, conn.transaction():
        state = await _locked_state(conn, campaign_id, actor)
        domain.ensure_allowed(campaign_id, state, "cancel the schedule")
        await repo.set_draft(conn, campaign_id)
        # Canceled before its time, a campaign sends to nobody: SENDs queued so far are void.
        await repo.clear_presses(conn, campaign_id)
        await repo.release_senders(conn, [campaign_id])
        await repo.audit(conn, campaign_id, "canceled", actor, {})
        await outbox.add(conn, [outbox.lifecycle(CampaignCanceled(campaign_id=campaign_id))])


async def fire_due(pool: asyncpg.Pool, fanout: FanoutRunner, limit: int = 50) -> list[uuid.UUID]:
    """Start every scheduled campaign whose time has come. Safe with many replicas: a due row
    is locked by the one that claims it, and the state change makes it fire once."""
    async with pool.acquire() as conn, conn.transaction():
        due = await repo.claim_due(conn, limit)
        for campaign in due:
            campaign_id = campaign["id"]
            await voters_repo.snapshot_lists_into_recipients(conn, campaign_id)
            total = await repo.start_sending(conn, campaign_id)
            await repo.audit(conn, campaign_id, "sent on schedule", "scheduler", {"total": total})
            if campaign["kind"] == "p2p" and not await repo.pressed_count(conn, campaign_id):
                # Nobody pressed SEND before the time: nobody is messaged; it is completed.
                await repo.end_campaign(conn, campaign_id)
                await repo.release_senders(conn, [campaign_id])
                await repo.audit(conn, campaign_id, "ended", "scheduler", {"pressed": 0})
    for campaign in due:
        fanout.kick(campaign["id"])
    return [c["id"] for c in due]


@dataclass
class _Wait:
    # Instances whose answer is awaited: the dispatchers' group members once they are known.
    expected: set[str] | None = None
    acks: dict[str, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, instances: set[str]) -> None:
        self.expected = set(instances)
        self._check()

    def acknowledged(self, instance: str, settled: int) -> None:
        self.acks[instance] = settled
        self._check()

    def _check(self) -> None:
        # Done once someone answered and every member known answered: silence is no answer.
        if self.expected is not None and self.acks and self.expected <= set(self.acks):
            self.done.set()


class AbortAcks:
    """Collects dispatcher instances' abort acknowledgements for waiting abort requests."""

    def __init__(self) -> None:
        self._waits: dict[uuid.UUID, _Wait] = {}

    @contextlib.contextmanager
    def expecting(self, campaign_id: uuid.UUID) -> Any:
        """Collect the campaign's acknowledgements from now on (before its abort can be
        published: the relay may publish it as soon as the transaction commits)."""
        wait = _Wait()
        self._waits[campaign_id] = wait
        try:
            yield wait
        finally:
            self._waits.pop(campaign_id, None)

    def acknowledged(self, event: AbortAcknowledged) -> None:
        wait = self._waits.get(event.campaign_id)
        if wait is not None:
            wait.acknowledged(event.instance, event.settled)


async def abort(
    pool: asyncpg.Pool,
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
        async with pool.acquire() as conn, conn.transaction():
            state = await _locked_state(conn, campaign_id, actor)
            domain.ensure_allowed(campaign_id, state, "abort")
            await repo.set_aborting(conn, campaign_id)
            outbox_id = await outbox.add(
                conn, [outbox.lifecycle(CampaignAborted(campaign_id=campaign_id))])
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
    async with pool.acquire() as conn, conn.transaction():
        row = await repo.get_campaign(conn, campaign_id)
        assert row is not None
        relayed = not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = $1)",
                                          outbox_id)
        result = domain.abort_answer(
            total=row["total"], members=wait.expected or set(), acks=wait.acks,
            relayed=relayed, waited_seconds=wait_seconds,
        )
        if result["pending"] is not None:
            await repo.set_abort_pending(conn, campaign_id, result["pending"])
        await repo.audit(conn, campaign_id, "aborted", actor, result)
    if not result["acknowledged"]:
        # `message` would clash with the log record's own.
        log.error("abort not acknowledged by every dispatcher",
                  extra={"campaign_id": str(campaign_id), "answer": result})
    return result


async def apply_completed(pool: asyncpg.Pool, event: CampaignCompleted) -> None:
    counts = {"completed": event.completed, "failed": event.failed, "skipped": event.skipped}
    async with pool.acquire() as conn, conn.transaction():
        if not await repo.first_time(conn, event.event_id):
            return
        state = await repo.lock_campaign_state(conn, event.campaign_id)
        if state not in ("sending", "aborting", "completed"):
            return
        final = domain.state_after_completion(state)
        await repo.finish(conn, event.campaign_id, final, counts)
        await repo.release_senders(conn, [event.campaign_id])
        await repo.audit(conn, event.campaign_id, final, "tracker", counts)


async def send_individually(
    pool: asyncpg.Pool, fanout: FanoutRunner, cmd: domain.SendIndividually, actor: Principal,
    region: str, voter_id: int | None = None,
) -> uuid.UUID:
    """One recipient, email and/or SMS: a one-recipient campaign, sent out now."""
    create = domain.CreateCampaign(
        name=cmd.name or "Individual send", channels=cmd.channels, sender_id=cmd.sender_id,
        template_id=cmd.template_id,
    )
    campaign_id = await create_campaign(pool, create, actor, kind="individual")
    await add_recipients(pool, campaign_id, [cmd.recipient], region, actor, voter_id)
    await send_now(pool, fanout, campaign_id, actor)
    return campaign_id


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
