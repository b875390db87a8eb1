"""Scheduler entry points: HTTP routes (operator commands) and its Kafka subscribers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage
from pydantic import ValidationError

from services.scheduler import auth, domain, p2p, passwords, repo, service
from services.scheduler.fanout import FanoutRunner
from services.scheduler.settings import SchedulerSettings
from shared import topics, webhooks
from shared.auth import Principal
from shared.db import Conn
from shared.events import LIFECYCLE, AbortAcknowledged, CampaignCompleted, LifecycleEvent
from shared.http_input import After, BigId, BodyLimit, validation_detail
from shared.kafka import (
    BATCH_CONSUMER,
    BROADCAST_CONSUMER,
    decode_records,
    process_bounded,
    records_of,
)

SERVICE = "scheduler"
INBOUND_SMS_MAX_SKEW_SECONDS = 300
MAX_CSV_BYTES = 200 * 1024 * 1024
_UUID = "[^/]+"
# Request body limits (413 beyond them, before the body is read); every other route: 1 MiB.
# The routes with large limits check the caller's token before reading any of the body.
BODY_LIMITS = (
    BodyLimit("POST", f"/campaigns/{_UUID}/recipients.csv", MAX_CSV_BYTES, True),
    BodyLimit("POST", "/voters.csv", MAX_CSV_BYTES, True),
    BodyLimit("POST", f"/lists/{_UUID}/voters.csv", MAX_CSV_BYTES, True),
    # Up to 100,000 recipients as JSON.
    BodyLimit("POST", f"/campaigns/{_UUID}/recipients", 64 * 1024 * 1024, True),
    BodyLimit("POST", f"/organisations/{_UUID}/inbound-sms", 16 * 1024),
)

# What the OpenAPI document says besides each route's own answer (shared/openapi.py).
SIGNED_PATHS = frozenset({"/organisations/{organisation_id}/inbound-sms",
                          "/organisations/{organisation_id}/inbound-sms/twilio"})
OTHER_ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", "/auth/sign-in"): {401: "Wrong user name, e-mail or password",
                                429: "Too many failed sign-ins; try again later"},
    ("PUT", "/auth/password"): {403: "The current password is wrong"},
    ("POST", "/organisations/{organisation_id}/inbound-sms"): {
        503: "Inbound SMS not configured (SENDOUT_INBOUND_SMS_SECRET)"},
    ("POST", "/organisations/{organisation_id}/inbound-sms/twilio"): {
        400: "Body is not UTF-8", 503: "Twilio not configured (SENDOUT_TWILIO_AUTH_TOKEN)"},
}


def may_conflict(method: str, path: str) -> bool:
    """Whether an operation answers 409: it changes a campaign, which may be in the wrong
    state for it, or deletes a list that a campaign yet to start targets."""
    return (method != "GET" and path.startswith("/campaigns/{campaign_id}")) or (
        method, path) == ("DELETE", "/lists/{list_id}")


@dataclass
class Deps:
    pool: asyncpg.Pool
    fanout: FanoutRunner
    acks: service.AbortAcks
    list_dispatchers: service.ListDispatchers
    settings: SchedulerSettings


def campaign_view(row: asyncpg.Record) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": str(row["id"]),
        "name": row["name"],
        "kind": row["kind"],
        "channels": row["channels"],
        "sender": {"id": str(row["sender_id"]), "name": row["sender_name"],
                   "email": row["sender_email"], "sms_sender_id": row["sender_sms_id"]},
        "template": {"id": str(row["template_id"]), "version": row["template_version"],
                     "email_subject": row["email_subject"], "email_body": row["email_body"],
                     "sms_body": row["sms_body"]},
        "state": row["state"],
        "scheduled_for": iso(row["scheduled_for"]),
        "recipients": row["recipients"],
        # Peer to peer: recipients a user pressed SEND for (the seed's "processed").
        "processed": row["processed"],
        "total": row["total"],
        "abort_pending": row["abort_pending"],
        "final_counts": row["final_counts"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "aborted_at": iso(row["aborted_at"]),
        "completed_at": iso(row["completed_at"]),
    }


def http_router(deps: Deps, user: Any) -> APIRouter:
    """Every route here needs a user's API token (`user`: the FastAPI dependency giving the
    caller) and acts within the caller's organisation: another organisation's campaign,
    sender, template or voter is "not found" (404), so its existence does not leak."""
    router = APIRouter()
    pool = deps.pool
    region = deps.settings.default_phone_region

    async def view(campaign_id: uuid.UUID, principal: auth.Principal) -> dict[str, Any]:
        async with pool.acquire() as conn:
            row = await repo.get_campaign(conn, campaign_id, principal.organisation_id)
        if row is None:
            raise domain.NotFound(f"campaign {campaign_id} not found")
        return campaign_view(row)

    @router.post("/senders", status_code=status.HTTP_201_CREATED, tags=["senders"])
    async def create_sender(cmd: domain.SenderIn, principal: Principal = user) -> dict[str, Any]:
        async with pool.acquire() as conn:
            sender = await repo.insert_sender(conn, cmd, principal.organisation_id)
        return {"id": str(sender.id), **cmd.model_dump()}

    @router.get("/senders", tags=["senders"])
    async def list_senders(principal: Principal = user) -> dict[str, Any]:
        async with pool.acquire() as conn:
            rows = await repo.senders_of(conn, principal.organisation_id)
        return {"senders": [{**dict(r), "id": str(r["id"])} for r in rows]}

    @router.post("/templates", status_code=status.HTTP_201_CREATED, tags=["templates"])
    async def create_template(
        cmd: domain.TemplateIn, principal: Principal = user
    ) -> dict[str, Any]:
        async with pool.acquire() as conn, conn.transaction():
            version = await repo.insert_template(conn, cmd, principal.organisation_id)
        return {"id": str(version.template_id), "version": version.version, **cmd.model_dump()}

    @router.get("/templates", tags=["templates"])
    async def list_templates(principal: Principal = user) -> dict[str, Any]:
        """The organisation's templates, each at its latest version."""
        async with pool.acquire() as conn:
            rows = await repo.templates_of(conn, principal.organisation_id)
        return {"templates": [{**dict(r), "id": str(r["id"])} for r in rows]}

    @router.put("/templates/{template_id}", tags=["templates"])
    async def edit_template(
        template_id: uuid.UUID, cmd: domain.TemplateIn, principal: Principal = user
    ) -> dict[str, Any]:
        """Adds a version; campaigns already created keep the version they pinned."""
        async with pool.acquire() as conn, conn.transaction():
            if await repo.template_name(conn, template_id, principal.organisation_id) is None:
                raise domain.NotFound(f"template {template_id} not found")
            version = await repo.add_template_version(conn, template_id, cmd)
        return {"id": str(template_id), "version": version.version, **cmd.model_dump()}

    @router.post("/campaigns", status_code=status.HTTP_201_CREATED, tags=["campaigns"])
    async def create_campaign(
        cmd: domain.CreateCampaign, principal: Principal = user
    ) -> dict[str, Any]:
        """The campaign belongs to the caller's organisation."""
        return await view(await service.create_campaign(pool, cmd, principal), principal)

    @router.get("/campaigns/{campaign_id}", tags=["campaigns"])
    async def get_campaign(campaign_id: uuid.UUID, principal: Principal = user) -> dict[str, Any]:
        return await view(campaign_id, principal)

    @router.post("/campaigns/{campaign_id}/recipients", status_code=201, tags=["campaigns"])
    async def add_recipients(
        campaign_id: uuid.UUID, cmd: domain.AddRecipients, principal: Principal = user
    ) -> dict[str, Any]:
        added = await service.add_recipients(pool, campaign_id, cmd.recipients, region, principal)
        return {"added": added}

    @router.post(
        "/campaigns/{campaign_id}/recipients.csv",
        status_code=status.HTTP_201_CREATED,
        tags=["campaigns"],
        openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    )
    async def upload_recipients_csv(
        campaign_id: uuid.UUID, request: Request, principal: Principal = user
    ) -> domain.CsvAdded:
        """Body: CSV with a header (email, phone, first_name, last_name, any attribute...).
        Streamed (at most 200 MiB), parsed as it arrives. Good rows are added; a row with an
        invalid email or phone, an unstorable field or more fields than the header is refused:
        `rejected` counts them, `errors` lists them by line (the first 100). 422 if no row is
        good. Encoding (UTF-8 with or without BOM, UTF-16, Windows-1252) and separator (comma,
        semicolon, tab) are detected and said in `detected`."""
        await view(campaign_id, principal)  # 404 before reading a body meant for nobody
        return await service.add_recipients_csv(
            pool, campaign_id, request.stream(), region, principal)

    @router.post("/campaigns/{campaign_id}/send-now", status_code=202, tags=["campaigns"])
    async def send_now(campaign_id: uuid.UUID, principal: Principal = user) -> dict[str, Any]:
        await service.send_now(pool, deps.fanout, campaign_id, principal)
        return await view(campaign_id, principal)

    @router.post("/campaigns/{campaign_id}/schedule", status_code=202, tags=["campaigns"])
    async def schedule(
        campaign_id: uuid.UUID, cmd: domain.ScheduleCampaign, principal: Principal = user
    ) -> dict[str, Any]:
        await service.schedule(pool, campaign_id, cmd.at, principal)
        return await view(campaign_id, principal)

    @router.post("/campaigns/{campaign_id}/cancel", tags=["campaigns"])
    async def cancel(campaign_id: uuid.UUID, principal: Principal = user) -> dict[str, Any]:
        """Cancel a schedule before its time: nothing is sent; the campaign is a draft again."""
        await service.cancel(pool, campaign_id, principal)
        return await view(campaign_id, principal)

    @router.post("/campaigns/{campaign_id}/abort", status_code=202, tags=["campaigns"])
    async def abort(campaign_id: uuid.UUID, principal: Principal = user) -> dict[str, Any]:
        """Answers once no provider call for the campaign can start any more."""
        result = await service.abort(
            pool, campaign_id, principal, acks=deps.acks,
            list_dispatchers=deps.list_dispatchers,
            wait_seconds=deps.settings.abort_ack_timeout_seconds,
        )
        return {**await view(campaign_id, principal), "abort": result}

    @router.get("/campaigns/{campaign_id}/audit", tags=["campaigns"])
    async def audit(campaign_id: uuid.UUID, principal: Principal = user) -> dict[str, Any]:
        await view(campaign_id, principal)
        async with pool.acquire() as conn:
            return {"events": await repo.audit_trail(conn, campaign_id)}

    @router.post("/individual-sends", status_code=202, tags=["campaigns"])
    async def send_individually(
        cmd: domain.SendIndividually, principal: Principal = user
    ) -> dict[str, Any]:
        """Send one recipient an email and/or SMS: a one-recipient campaign, sent now."""
        campaign_id = await service.send_individually(pool, deps.fanout, cmd, principal, region)
        return await view(campaign_id, principal)

    @router.post("/voters/{voter_id}/send", status_code=202, tags=["voters"])
    async def send_to_voter(
        voter_id: BigId, cmd: domain.SendToVoter, principal: Principal = user
    ) -> dict[str, Any]:
        """The voter's page action "send email / SMS": an individual send with the chosen
        sender and template, rendered with the voter's attributes."""
        campaign_id = await service.send_to_voter(
            pool, deps.fanout, voter_id, cmd, principal, region
        )
        return await view(campaign_id, principal)

    # --- users (administration) ----------------------------------------------------------------

    admin = [Depends(auth.require_admin(deps.settings.admin_token))]

    def user_view(user: Principal, **extra: Any) -> dict[str, Any]:
        return {"user_id": str(user.user_id), "organisation_id": str(user.organisation_id),
                "name": user.name, **extra}

    async def user_or_404(conn: Conn, user_id: uuid.UUID) -> Principal:
        user = await repo.get_user(conn, user_id)
        if user is None:
            raise domain.NotFound(f"user {user_id} not found")
        return user

    @router.post("/admin/users", status_code=201, tags=["admin"], dependencies=admin)
    async def create_user(cmd: domain.CreateUser) -> dict[str, Any]:
        """Creates the organisation if new, and the user (or, for an existing user, a further
        token); the API token is shown only here. An optional password (and e-mail) lets the
        user sign in to the console."""
        password_hash = await passwords.hash_password(cmd.password) if cmd.password else None
        async with pool.acquire() as conn, conn.transaction():
            org = await repo.ensure_organisation(conn, cmd.organisation)
            user = Principal(await repo.upsert_user(conn, org, cmd.name), org, cmd.name)
            if password_hash:
                await passwords.set_password(conn, user.user_id, password_hash, cmd.email)
            token = await service.issue_token(conn, user)
        return user_view(user, token=token)

    @router.post("/admin/users/{user_id}/tokens", status_code=201, tags=["admin"],
                 dependencies=admin)
    async def add_token(user_id: uuid.UUID) -> dict[str, Any]:
        """A further token for the user (e.g. to rotate: add, switch, then revoke the old)."""
        async with pool.acquire() as conn, conn.transaction():
            user = await user_or_404(conn, user_id)
            token = await service.issue_token(conn, user)
        return user_view(user, token=token)

    @router.delete("/admin/users/{user_id}/tokens", tags=["admin"], dependencies=admin)
    async def revoke_tokens(user_id: uuid.UUID) -> dict[str, Any]:
        """Revoke every token of the user, in every service."""
        async with pool.acquire() as conn, conn.transaction():
            user = await user_or_404(conn, user_id)
            revoked = await service.revoke_tokens(conn, user)
        return user_view(user, revoked=revoked)

    # --- peer to peer ------------------------------------------------------------------------

    @router.post("/campaigns/{campaign_id}/p2p/start", tags=["peer to peer"])
    async def start_sending(campaign_id: uuid.UUID, principal: Principal = user) -> dict[str, Any]:
        """Start sending from this campaign. One campaign at a time per user: 409 names the
        campaign the user is already sending."""
        try:
            state = await p2p.start_sending(pool, deps.fanout, campaign_id, principal)
        except p2p.Busy as busy:
            raise HTTPException(409, {"message": str(busy),
                                      "active_campaign": str(busy.active_campaign)}) from busy
        return {"campaign_id": str(campaign_id), "state": state}

    @router.get("/campaigns/{campaign_id}/p2p/recipients", tags=["peer to peer"])
    async def p2p_recipients(
        campaign_id: uuid.UUID,
        after: After = 0,
        limit: int = Query(100, ge=1, le=1000),
        *,
        principal: Principal = user,
    ) -> dict[str, Any]:
        """The recipients to press SEND for, with whether SEND was pressed."""
        async with pool.acquire() as conn:
            row = await repo.lock_campaign(conn, campaign_id, share=True)
            if row is None or row["organisation_id"] != principal.organisation_id:
                raise domain.NotFound(f"campaign {campaign_id} not found")
            rows = await repo.p2p_recipients(conn, campaign_id, after, limit)
        return {
            "recipients": [
                {"id": r["id"], "first_name": r["first_name"], "last_name": r["last_name"],
                 "email": r["email"], "phone": r["phone"],
                 "sent": r["pressed_at"] is not None} for r in rows],
            "next_after": rows[-1]["id"] if len(rows) == limit else None,
        }

    @router.post("/campaigns/{campaign_id}/recipients/{recipient_id}/send", tags=["peer to peer"])
    async def press_send(
        campaign_id: uuid.UUID, recipient_id: BigId, principal: Principal = user
    ) -> dict[str, Any]:
        """SEND (or Enter) for one recipient: sends now, or queues it for the scheduled time."""
        return await p2p.press_send(pool, campaign_id, recipient_id, principal,
                                    deps.settings.send_batch_size)

    @router.post("/campaigns/{campaign_id}/end", tags=["peer to peer"])
    async def end_campaign(
        campaign_id: uuid.UUID, cmd: domain.EndCampaign, principal: Principal = user
    ) -> dict[str, Any]:
        """End Campaign: needs {"confirmation": "END"}; the campaign moves to Completed."""
        await p2p.end(pool, deps.fanout, campaign_id, principal, cmd)
        return await view(campaign_id, principal)

    @router.get("/campaigns", tags=["campaigns"])
    async def list_campaigns(
        principal: Principal = user, state: str | None = None
    ) -> dict[str, Any]:
        """The organisation's campaigns, e.g. `?state=completed` for Completed Campaigns."""
        async with pool.acquire() as conn:
            rows = await repo.campaigns_of(conn, principal.organisation_id, state, limit=500)
        return {"campaigns": [campaign_view(r) for r in rows]}

    # --- opt-outs ----------------------------------------------------------------------------

    @router.post("/opt-outs", status_code=201, tags=["opt-outs"])
    async def add_opt_out(cmd: domain.OptOut, principal: Principal = user) -> dict[str, Any]:
        address = await p2p.opt_out(pool, principal.organisation_id, cmd.address, source="api",
                                    keyword=None, region=region)
        return {"address": address, "opted_out": True}

    inbound_nonces = webhooks.NonceStore(pool, INBOUND_SMS_MAX_SKEW_SECONDS)

    @router.post("/organisations/{organisation_id}/inbound-sms", tags=["opt-outs"])
    async def inbound_sms(organisation_id: uuid.UUID, request: Request) -> dict[str, Any]:
        """The SMS provider's inbound-message callback `{from, to?, body}`, signed like the
        receipts webhook (shared/webhooks.py: method, this path, timestamp and nonce; a nonce
        is accepted once): STOP and its synonyms opt the sender out. 404 for an organisation
        that does not exist."""
        secret = deps.settings.inbound_sms_secret
        if secret is None:
            raise HTTPException(503, "inbound SMS not configured (SENDOUT_INBOUND_SMS_SECRET)")
        body, claimed = await webhooks.signed_body(
            request, secret.get_secret_value().encode(),
            max_skew_seconds=INBOUND_SMS_MAX_SKEW_SECONDS)
        try:
            msg = domain.InboundSms.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, validation_detail(exc.errors())) from exc
        async with pool.acquire() as conn:
            if not await repo.organisation_exists(conn, organisation_id):
                raise domain.NotFound(f"organisation {organisation_id} not found")
        async with inbound_nonces.claimed(claimed.nonce):
            if not domain.is_stop_message(msg.body):
                return {"opted_out": False}
            address = await p2p.opt_out(pool, organisation_id, msg.sender, source="inbound_sms",
                                        keyword=msg.body.strip().upper(), region=region)
        return {"opted_out": True, "address": address}

    return router


def kafka_router(pool: asyncpg.Pool, acks: service.AbortAcks) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        group_id="sendout-scheduler",
        max_records=500,
        description="Learns from the tracker when a campaign has nothing pending any more.",
        **BATCH_CONSUMER,
    )
    async def on_lifecycle(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], LifecycleEvent]]) -> None:
            for _, event in good:
                if isinstance(event, CampaignCompleted):
                    await service.apply_completed(pool, event)

        await process_bounded(msg, broker, LIFECYCLE, apply, service=SERVICE)

    # No group: every scheduler process sees every acknowledgement, since the abort request
    # waiting for it may be on any of them. Bad records are the group consumer's to park.
    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        description="Abort acknowledgements from dispatcher instances.",
        **BROADCAST_CONSUMER,
    )
    async def on_abort_acks(body: list[bytes], msg: KafkaMessage) -> None:
        good, _ = decode_records(records_of(msg), LIFECYCLE)
        for _, event in good:
            if isinstance(event, AbortAcknowledged):
                acks.acknowledged(event)

    return router
