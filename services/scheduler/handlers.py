"""Scheduler entry points: HTTP routes (operator commands) and its Kafka subscriber."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, Request, status
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage

from services.scheduler import domain, repo
from services.scheduler.fanout import FanoutRunner
from shared import topics
from shared.events import LIFECYCLE, CampaignCompleted
from shared.kafka import BATCH_CONSUMER, dead_letter, decode_records, pause_then_reraise, records_of

SERVICE = "scheduler"
MAX_CSV_BYTES = 200 * 1024 * 1024


def campaign_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "channel": row["channel"],
        "sender": {
            "name": row["sender_name"],
            "email": row["sender_email"],
            "sms_sender_id": row["sender_sms_id"],
        },
        "subject": row["subject"],
        "template": row["template_body"],
        "state": row["state"],
        "recipients": row["recipients"],
        "total": row["total"],
        "final_counts": row["final_counts"],
        "created_at": row["created_at"].isoformat(),
        "started_at": row["started_at"] and row["started_at"].isoformat(),
        "completed_at": row["completed_at"] and row["completed_at"].isoformat(),
    }


def http_router(pool: asyncpg.Pool, fanout: FanoutRunner) -> APIRouter:
    router = APIRouter(prefix="/campaigns", tags=["campaigns"])

    async def load(conn: asyncpg.Connection, campaign_id: uuid.UUID) -> asyncpg.Record:
        row = await repo.get_campaign(conn, campaign_id)
        if row is None:
            raise domain.NotFound(f"campaign {campaign_id} not found")
        return row

    @router.post("", status_code=status.HTTP_201_CREATED)
    async def create_campaign(cmd: domain.CreateCampaign) -> dict[str, Any]:
        async with pool.acquire() as conn:
            row = await repo.insert_campaign(conn, uuid.uuid4(), cmd)
        return campaign_view(row)

    @router.get("/{campaign_id}")
    async def get_campaign(campaign_id: uuid.UUID) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return campaign_view(await load(conn, campaign_id))

    async def add(campaign_id: uuid.UUID, recipients: list[domain.Recipient]) -> dict[str, Any]:
        async with pool.acquire() as conn, conn.transaction():
            state = await repo.lock_campaign_state(conn, campaign_id)
            if state is None:
                raise domain.NotFound(f"campaign {campaign_id} not found")
            domain.ensure_can_add_recipients(campaign_id, state)
            added = await repo.copy_recipients(conn, campaign_id, recipients)
        return {"added": added}

    @router.post("/{campaign_id}/recipients", status_code=status.HTTP_201_CREATED)
    async def add_recipients(campaign_id: uuid.UUID, cmd: domain.AddRecipients) -> dict[str, Any]:
        return await add(campaign_id, cmd.recipients)

    @router.post(
        "/{campaign_id}/recipients.csv",
        status_code=status.HTTP_201_CREATED,
        openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    )
    async def upload_recipients_csv(campaign_id: uuid.UUID, request: Request) -> dict[str, Any]:
        """Body: CSV with a header (email, phone, first_name, last_name, any attribute...)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_CSV_BYTES:
                raise HTTPException(413, f"CSV larger than {MAX_CSV_BYTES} bytes")
            chunks.append(chunk)
        recipients = domain.parse_csv(domain.csv_lines(b"".join(chunks)))
        return await add(campaign_id, recipients)

    @router.post("/{campaign_id}/send-now", status_code=status.HTTP_202_ACCEPTED)
    async def send_now(campaign_id: uuid.UUID) -> dict[str, Any]:
        async with pool.acquire() as conn:
            async with conn.transaction():
                state = await repo.lock_campaign_state(conn, campaign_id)
                if state is None:
                    raise domain.NotFound(f"campaign {campaign_id} not found")
                domain.ensure_can_send_now(campaign_id, state)
                started = await repo.start_sending(conn, campaign_id)
                if started["total"] == 0:
                    raise domain.Invalid(f"campaign {campaign_id} has no recipients")
            row = await load(conn, campaign_id)
        # Committed first, then fanned out: if this process dies now, the scanner resumes it.
        fanout.kick(campaign_id)
        return campaign_view(row)

    return router


def kafka_router(pool: asyncpg.Pool) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        group_id="sendout-scheduler",
        max_records=500,
        description="Learns from the tracker when a campaign has nothing pending any more.",
        **BATCH_CONSUMER,
    )
    async def on_lifecycle(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        try:
            good, bad = decode_records(records_of(msg), LIFECYCLE)
            await dead_letter(broker, bad, service=SERVICE)
            completed = [e for _, e in good if isinstance(e, CampaignCompleted)]
            if completed:
                async with pool.acquire() as conn, conn.transaction():
                    for event in completed:
                        await repo.mark_completed(
                            conn, event.event_id, event.campaign_id,
                            {"completed": event.completed, "failed": event.failed,
                             "skipped": event.skipped},
                        )
        except Exception as exc:
            await pause_then_reraise(exc)

    return router
