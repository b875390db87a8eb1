"""Progress: a campaign's counters, and its recipients' outcomes, paged."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query

from services.tracker import repo
from services.tracker.domain import Progress
from services.tracker.entrypoints.http.dependencies import Caller, Pool
from shared.auth import Principal
from shared.db import Conn
from shared.http_input import After

router = APIRouter(prefix="/campaigns", tags=["progress"])


def not_found(campaign_id: uuid.UUID) -> HTTPException:
    # The same answer for "not started yet" and "another organisation's": existence does not
    # leak across organisations.
    return HTTPException(404, f"no progress for campaign {campaign_id}: not started")


async def progress_for(conn: Conn, campaign_id: uuid.UUID, principal: Principal) -> Progress:
    p = await repo.get_progress(conn, campaign_id)
    if p is None or p.organisation_id != principal.organisation_id:
        raise not_found(campaign_id)
    return p


@router.get("/{campaign_id}/progress")
async def progress(campaign_id: uuid.UUID, principal: Caller, pool: Pool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        p = await progress_for(conn, campaign_id, principal)
    return p.view()


@router.get("/{campaign_id}/recipients")
async def recipients(
    campaign_id: uuid.UUID,
    after: After = 0,
    limit: int = Query(1000, ge=1, le=10_000),
    status: Literal["completed", "failed", "skipped"] | None = None,
    *,
    principal: Caller,
    pool: Pool,
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        await progress_for(conn, campaign_id, principal)
        rows = await repo.recipient_outcomes(
            conn, campaign_id, after_recipient_id=after, limit=limit, status=status
        )
    distinct = len({r["recipient_id"] for r in rows})
    return {
        "recipients": rows,
        "next_after": rows[-1]["recipient_id"] if distinct == limit else None,
    }
