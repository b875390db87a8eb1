"""The recipient report: one CSV row per recipient and channel, streamed."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from services.tracker import identity
from services.tracker.entrypoints.http.dependencies import Caller, Pool
from services.tracker.report import csv_chunks

router = APIRouter(prefix="/campaigns", tags=["progress"])


@router.get("/{campaign_id}/report.csv", response_class=StreamingResponse)
async def report(campaign_id: uuid.UUID, principal: Caller, pool: Pool) -> StreamingResponse:
    """The recipient report: per recipient and channel its address, when it was processed,
    its status and reason, the provider's message id, and delivered / not delivered with
    the provider's reason (empty until the receipt arrives).

    Only settled recipients are listed: the tracker learns of a recipient from its outcome,
    so recipients still pending are not in the report yet.
    """
    async with pool.acquire() as conn:
        if not await identity.campaign_is_theirs(conn, campaign_id, principal):
            raise HTTPException(404, f"no progress for campaign {campaign_id}: not started")
    return StreamingResponse(
        csv_chunks(pool, campaign_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{campaign_id}-report.csv"'},
    )
